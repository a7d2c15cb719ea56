"""``cxrlake train``: fit, export, evaluate, ship and register the pneumonia model.

With ``--labels-from LAKEHOUSE`` the run trains on the current labels: the folder labels with
the radiologists' corrections from the lakehouse's ``silver.label_history`` (``cxrlake
review``). Training needs the 'train' extra (torch, onnx, MLflow), imported when the command
runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from cxrlake.cli.errors import UsageError
from cxrlake.cli.options import Subparsers
from cxrlake.review.labels import label_overrides
from cxrlake.training.config import TrainConfig, recipe_config

DEFAULT_RUNS = "train_runs"

#: The figures of the validation summary the command prints.
SUMMARY_FIGURES = ("auc", "sensitivity", "specificity", "accuracy", "f1", "brier", "threshold")


def register(subparsers: Subparsers) -> None:
    """Add ``train`` to the main parser's subcommands."""
    parser = subparsers.add_parser(
        "train",
        help="train the pneumonia CNN (patient-grouped split), export ONNX, log to MLflow",
        description="``cxrlake train``: fit, export, evaluate, ship and register the pneumonia "
        "model.",
    )
    defaults = TrainConfig(data="", run_dir="")
    _add_input_options(parser)
    _add_recipe_options(parser, defaults)
    _add_output_options(parser)
    parser.set_defaults(handler=run)


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    """Where the films come from and where the run and the shipped model go."""
    parser.add_argument(
        "--data",
        required=False,
        help="folder with NORMAL/ and PNEUMONIA/ image sub-folders (Kaggle layout)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="copy the chosen ONNX model here as cxrlake_pneumonia.onnx "
        "(e.g. python/cxrlake/models)",
    )
    parser.add_argument(
        "--run-dir",
        default=None,
        help=f"run directory for checkpoints, ONNX files and metrics "
        f"(default: {DEFAULT_RUNS}/<timestamp>)",
    )


def _add_recipe_options(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """The training recipe: split, size, schedule, threshold rule (defaults: `TrainConfig`)."""
    parser.add_argument(
        "--recipe",
        default=None,
        help="a named recipe of cxrlake.training.config.RECIPES (the model card's candidates; "
        "sets size, augmentation, regularisers and the step budget; --size, --epochs, --lr and "
        "--freeze-blocks are then ignored)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer step budget (default: --epochs passes; with --recipe: "
        "config.CANDIDATE_STEPS times the recipe's factor)",
    )
    parser.add_argument(
        "--split",
        choices=("acquisition", "patients"),
        default=defaults.split,
        help="validation: the latest acquisition batches held out (default) or random patients",
    )
    parser.add_argument("--size", type=int, default=defaults.size, help="input size in pixels")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    parser.add_argument("--freeze-blocks", type=int, default=defaults.freeze_blocks)
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    parser.add_argument(
        "--target-sensitivity",
        type=float,
        default=defaults.target_sensitivity,
        help="threshold rule: highest specificity with validation sensitivity >= this",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--limit", type=int, default=None, help="at most this many images per class"
    )
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--model-version", default=defaults.model_version)
    parser.add_argument("--no-pretrained", action="store_true", help="random init (tests only)")
    parser.add_argument("--no-int8", action="store_true", help="do not try int8 quantisation")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """Which stages run, where the run is registered and what else it writes; the labels."""
    stage = parser.add_mutually_exclusive_group()
    stage.add_argument("--fit-only", action="store_true", help="train and export, no finalize")
    stage.add_argument(
        "--finalize-only", action="store_true", help="evaluate/ship/register an existing --run-dir"
    )
    parser.add_argument(
        "--mlflow-uri",
        default=None,
        help="MLflow tracking URI (default: sqlite:///<run-dir>/../mlflow.db); 'none' to skip",
    )
    parser.add_argument("--registered-name", default="cxrlake_pneumonia")
    parser.add_argument(
        "--card",
        action="append",
        default=[],
        help="also write the rendered MODEL_CARD.md here (repeatable; always written to the run "
        "directory and next to --out)",
    )
    parser.add_argument("--experiment", default="cxrlake-pneumonia")
    parser.add_argument(
        "--no-ood",
        action="store_true",
        help="do not fit the out-of-distribution reference into the shipped file "
        "(python -m cxrlake.training.ood fit does it later)",
    )
    parser.add_argument(
        "--labels-from",
        metavar="LAKEHOUSE",
        help="train on the current labels: folder labels with the radiologists' corrections "
        "from LAKEHOUSE's silver.label_history (cxrlake review); prints how many differ",
    )


def current_labels(data: str, lakehouse: str) -> dict[str, int]:
    """``--labels-from``: path -> current label of each film under ``data`` whose label the
    radiologists corrected in ``lakehouse`` (folder label otherwise); prints how many differ."""
    overrides, total = label_overrides(Path(data).resolve(), lakehouse)
    print(
        f"cxrlake train: current labels from {lakehouse}: "
        f"{len(overrides)} of {total} differ from the folder labels",
        flush=True,
    )
    return overrides


def run(args: argparse.Namespace) -> int:
    """Execute ``cxrlake train`` with parsed ``args``; prints the validation summary as JSON."""
    from cxrlake.training.train import fit  # needs the 'train' extra (torch)

    overrides: dict[str, int] = {}
    if args.labels_from:
        if not args.data:
            raise UsageError("--labels-from needs --data")
        overrides = current_labels(args.data, args.labels_from)
    run_dir = Path(args.run_dir or Path(DEFAULT_RUNS) / time.strftime("%Y%m%d-%H%M%S"))
    if not args.finalize_only:
        if not args.data:
            raise UsageError("--data is required")
        fit(_config(args, run_dir, overrides))
        if args.fit_only:
            return 0
    summary = _finalize(args, run_dir)
    validation = {k: summary["validation"][k] for k in SUMMARY_FIGURES}
    print(json.dumps({"run_dir": str(run_dir), "shipped": summary["shipped"], **validation}))
    return 0


def _config(args: argparse.Namespace, run_dir: Path, overrides: dict[str, int]) -> TrainConfig:
    """The run's `TrainConfig`: the ``--recipe``'s, or one of ``--size``, ``--epochs`` ...;
    then the options every run takes."""
    data = str(Path(args.data).resolve())
    if args.recipe:
        cfg = recipe_config(args.recipe, data, str(run_dir), args.steps)
    else:
        cfg = TrainConfig(
            data=data,
            run_dir=str(run_dir),
            size=args.size,
            epochs=args.epochs,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            freeze_blocks=args.freeze_blocks,
        )
    return dataclasses.replace(
        cfg,
        val_fraction=args.val_fraction,
        split=args.split,
        target_sensitivity=args.target_sensitivity,
        seed=args.seed,
        limit=args.limit,
        label_overrides=overrides,
        pretrained=not args.no_pretrained,
        threads=args.threads,
        model_version=args.model_version,
    )


def _finalize(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Evaluate, ship, fit the out-of-distribution reference, write the cards and register the
    run in MLflow; returns the run's summary (JSON, as `finalize` writes it to metrics.json)."""
    from cxrlake.training.card import write_card  # needs the 'train' extra
    from cxrlake.training.train import finalize  # needs the 'train' extra (torch)

    summary = finalize(
        run_dir,
        ship_to=args.out,
        try_int8=not args.no_int8,
        target_sensitivity=args.target_sensitivity,
    )
    if not args.no_ood:
        # the out-of-distribution reference of the shipped file (cxrlake.training.ood)
        from cxrlake.training.ood import fit_run  # needs the 'train' extra (onnx)

        summary["ood"] = fit_run(run_dir, ship_to=args.out, threads=args.threads)
    cards = [run_dir / "MODEL_CARD.md", *args.card]
    if args.out:
        cards.append(Path(args.out) / "MODEL_CARD.md")
    write_card(run_dir, *cards)
    if (args.mlflow_uri or "").lower() != "none":
        from cxrlake.serving.registry import log_and_register  # needs the 'train' extra (MLflow)

        uri = args.mlflow_uri or f"sqlite:///{run_dir.resolve().parent / 'mlflow.db'}"
        summary["mlflow"] = log_and_register(
            run_dir, tracking_uri=uri, experiment=args.experiment, name=args.registered_name
        )
    return summary
