"""``cxrlake train``: fit, export, evaluate, ship and register the pneumonia model."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cxrlake.cli_support import UsageError

DEFAULT_RUNS = "train_runs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cxrlake train`` (shared with ``python -m cxrlake.training.train``)."""
    from cxrlake.training.config import TrainConfig

    defaults = TrainConfig(data="", run_dir="")
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


def build_parser() -> argparse.ArgumentParser:
    """Stand-alone parser (``python -m cxrlake.training.train``)."""
    parser = argparse.ArgumentParser(prog="cxrlake-train", description=__doc__)
    add_arguments(parser)
    return parser


def register(subparsers) -> None:
    """Add the ``train`` subcommand to the main ``cxrlake`` CLI."""
    parser = subparsers.add_parser(
        "train",
        help="train the pneumonia CNN (patient-grouped split), export ONNX, log to MLflow",
        description=__doc__,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``cxrlake train`` with parsed ``args``; prints the validation summary as JSON."""
    from cxrlake.training.card import write_card
    from cxrlake.training.train import TrainConfig, finalize, fit

    run_dir = Path(args.run_dir or Path(DEFAULT_RUNS) / time.strftime("%Y%m%d-%H%M%S"))
    if not args.finalize_only:
        if not args.data:
            raise UsageError("--data is required")
        common = dict(
            val_fraction=args.val_fraction,
            split=args.split,
            target_sensitivity=args.target_sensitivity,
            seed=args.seed,
            limit=args.limit,
            # `--labels-from` (added by cxrlake.review.cli): radiologist-corrected labels
            label_overrides=getattr(args, "label_overrides", None) or {},
            pretrained=not args.no_pretrained,
            threads=args.threads,
            model_version=args.model_version,
        )
        if args.recipe:
            from cxrlake.training.config import recipe_config

            cfg = recipe_config(
                args.recipe, str(Path(args.data).resolve()), str(run_dir), args.steps, **common
            )
        else:
            cfg = TrainConfig(
                data=str(Path(args.data).resolve()),
                run_dir=str(run_dir),
                size=args.size,
                epochs=args.epochs,
                steps=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                freeze_blocks=args.freeze_blocks,
                **common,
            )
        fit(cfg)
        if args.fit_only:
            return 0
    summary = finalize(
        run_dir,
        ship_to=args.out,
        try_int8=not args.no_int8,
        target_sensitivity=args.target_sensitivity,
    )
    if not getattr(args, "no_ood", False):
        # the out-of-distribution reference of the shipped file (cxrlake.training.ood)
        from cxrlake.training.ood import fit_run

        summary["ood"] = fit_run(run_dir, ship_to=args.out, threads=args.threads)
    cards = [run_dir / "MODEL_CARD.md", *args.card]
    if args.out:
        cards.append(Path(args.out) / "MODEL_CARD.md")
    write_card(run_dir, *cards)
    if (args.mlflow_uri or "").lower() != "none":
        from cxrlake.training.registry import log_and_register

        uri = args.mlflow_uri or f"sqlite:///{run_dir.resolve().parent / 'mlflow.db'}"
        summary["mlflow"] = log_and_register(
            run_dir, tracking_uri=uri, experiment=args.experiment, name=args.registered_name
        )
    validation = {
        k: summary["validation"][k]
        for k in ("auc", "sensitivity", "specificity", "accuracy", "f1", "brier", "threshold")
    }
    print(json.dumps({"run_dir": str(run_dir), "shipped": summary["shipped"], **validation}))
    return 0
