"""Out-of-distribution score: fitted on the training films, carried inside the ONNX model.

``python -m cxrlake.training.ood fit --model M.onnx --data DIR`` (also run by ``cxrlake train``
after export) does, in a few minutes on 2 cores:

1. takes the model's **training films** (the run's ``split.json`` with ``--run-dir``, else the
   split recorded in the model card next to the model; every one must be listed in
   ``development_films.sha256``) and their 1280-d embeddings from the core's own forward pass
   (``cxrlake.analyze``, exactly what ``predict`` computes);
2. fits a Gaussian reference to ``sqrt(embedding)`` (`transform`) with a probabilistic-PCA
   (shrinkage) covariance: the top ``k`` principal directions keep their variance ``l_j``, the
   other ``D - k`` share their mean variance ``s2``. The squared Mahalanobis distance under that
   covariance is ``sum_j (d . v_j)^2 / l_j + (|d|^2 - sum_j (d . v_j)^2) / s2``,
   ``d = sqrt(e) - mean``, and ``ood_score = sqrt(that / D)`` (about 1 for a training film);
3. sets the threshold from **out-of-fold** scores (patient-grouped folds: each fold scored by a
   reference fitted without it, as a new film would be): their ``quantile`` (0.975);
4. writes the reference into the graph as initializers and an ``ood_score`` output (Relu, Sqrt,
   Sub, one MatMul by the ``D x k`` directions, three ReduceSumSquare, a few Mul/Add/Sub: 1280 x
   64 floats, 330 kB) plus metadata ``cxrlake.ood_threshold``, ``cxrlake.ood_method`` and
   ``cxrlake.drift_reference`` (the training films' probability histogram, positive rate and
   quality-score mean/std for ``gold.drift_metrics``), so the reference ships and is versioned
   with the model;
5. evaluates the flag (``evaluate``) on the validation films, the fixed non-chest set and the
   shifted chest films of :mod:`cxrlake.training.ood_set`, writes ``ood.json`` next to the model
   and the OOD section of the model cards there (:func:`cxrlake.training.card.ood_section`).

A re-fit strips the previous ``ood/*`` nodes first, so the command can be re-run on any model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
from onnx import helper, numpy_helper

import cxrlake
from cxrlake.exceptions import CxrlakeError
from cxrlake.provenance import content_key
from cxrlake.training import data as data_mod
from cxrlake.training.card import update_ood_section
from cxrlake.training.config import JsonObject
from cxrlake.training.data import LabelledImage, split_groups
from cxrlake.training.export import read_metadata
from cxrlake.training.ood_evaluation import embed, evaluate
from cxrlake.training.progress import log_ood as log

T = TypeVar("T")

OOD_OUTPUT = "ood_score"
PREFIX = "ood/"
THRESHOLD_KEY = "cxrlake.ood_threshold"
METHOD_KEY = "cxrlake.ood_method"
REFERENCE_KEY = "cxrlake.drift_reference"
RESULT_FILE = "ood.json"
DEFAULT_COMPONENTS = 64
DEFAULT_QUANTILE = 0.975
DEFAULT_FOLDS = 5
PROBABILITY_BINS = 10


class OodFitError(CxrlakeError):
    """The reference cannot be fitted (wrong data folder, too few films, graph mismatch)."""


@dataclass(frozen=True)
class Reference:
    """A fitted reference: ``mean`` [D], ``components`` [D, k] (the top principal directions),
    ``inv_sqrt_major`` [k] (``1 / sqrt(l_j)``) and ``inv_minor`` (``1 / s2``, the mean variance
    of the other directions)."""

    mean: np.ndarray
    components: np.ndarray
    inv_sqrt_major: np.ndarray
    inv_minor: float

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """The numpy twin of the graph's ``ood_score`` (float64) for raw embeddings:
        ``sqrt((sum_j (p_j / sqrt(l_j))^2 + (|d|^2 - |p|^2) / s2) / D)``, ``p = d V``,
        ``d = transform(e) - mean``."""
        d = transform(embeddings) - self.mean
        p = d @ self.components
        major = np.square(p * self.inv_sqrt_major).sum(axis=1)
        residual = np.square(d).sum(axis=1) - np.square(p).sum(axis=1)
        return np.sqrt(np.maximum(major + residual * self.inv_minor, 0.0) / self.dim)


def transform(embeddings: np.ndarray) -> np.ndarray:
    """``sqrt(max(e, 0))`` per component (float64), the graph's Relu + Sqrt before the distance.

    The embedding is a pooled ReLU6 activation: skewed, with a mass at 0 (43 % of the training
    films' components). The square root makes it closer to Gaussian, which is what a Mahalanobis
    distance assumes; on model 1.1.0 it raised the share of flagged non-chest inputs at the same
    validation flag rate from 93 % to 100 % (see docs/ood.md)."""
    return np.sqrt(np.maximum(np.asarray(embeddings, dtype=np.float64), 0.0))


def fit_reference(embeddings: np.ndarray, components: int = DEFAULT_COMPONENTS) -> Reference:
    """The probabilistic-PCA reference of raw ``embeddings`` [N, D] (after `transform`) with
    ``components`` directions."""
    x = transform(embeddings)
    n, dim = x.shape
    k = max(1, min(components, n - 2, dim - 1))
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
    # floored at 1e-3 of the mean variance: a nearly degenerate rest would turn float32
    # rounding of |d|^2 - |p|^2 in the graph into distance
    s2 = max(float(values[k:].mean()), 1e-3 * float(values.mean()), 1e-30)
    top = np.maximum(values[:k], s2)
    return Reference(
        mean=mean,
        components=vectors[:, :k],
        inv_sqrt_major=1.0 / np.sqrt(top),
        inv_minor=1.0 / s2,
    )


def out_of_fold_scores(
    embeddings: np.ndarray, groups: np.ndarray, folds: int, components: int
) -> np.ndarray:
    """Each film's score under a reference fitted on the other folds (folds = group id mod k),
    so a film is scored like a new one and the threshold is not set on in-sample distances."""
    fold = np.asarray(groups) % folds
    scores = np.empty(len(embeddings))
    for f in range(folds):
        held = fold == f
        scores[held] = fit_reference(embeddings[~held], components).scores(embeddings[held])
    return scores


# --- the graph -------------------------------------------------------------------------------


def strip_ood(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (onnx.ModelProto) without the ``ood_score`` output, ``ood/*`` nodes and
    initializers and the OOD metadata (a copy)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    keep_nodes = [n for n in graph.node if not n.name.startswith(PREFIX)]
    del graph.node[:]
    graph.node.extend(keep_nodes)
    keep_init = [t for t in graph.initializer if not t.name.startswith(PREFIX)]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)
    keep_out = [o for o in graph.output if o.name != OOD_OUTPUT]
    del graph.output[:]
    graph.output.extend(keep_out)
    keep_meta = [
        p for p in model.metadata_props if p.key not in (THRESHOLD_KEY, METHOD_KEY, REFERENCE_KEY)
    ]
    del model.metadata_props[:]
    model.metadata_props.extend(keep_meta)
    return model


def _opset(model: onnx.ModelProto) -> int:
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def attach_ood(
    model: onnx.ModelProto, reference: Reference, threshold: float, metadata: dict[str, str]
) -> onnx.ModelProto:
    """``model`` with ``ood_score`` [N] computed from its ``embedding`` output (a copy)."""
    model = strip_ood(model)
    graph = model.graph
    if not any(o.name == "embedding" for o in graph.output):
        raise ValueError("the model has no embedding output to score")
    f32 = np.float32
    graph.initializer.extend(
        [
            numpy_helper.from_array(reference.mean.astype(f32), PREFIX + "mean"),
            numpy_helper.from_array(reference.components.astype(f32), PREFIX + "components"),
            numpy_helper.from_array(
                reference.inv_sqrt_major.astype(f32), PREFIX + "inv_sqrt_major"
            ),
            numpy_helper.from_array(np.array(reference.inv_minor, f32), PREFIX + "inv_minor"),
            numpy_helper.from_array(np.array(1.0 / reference.dim, f32), PREFIX + "inv_dim"),
        ]
    )

    def reduce(name: str, x: str) -> onnx.NodeProto:
        """Sum of squares over axis 1 (``[N, *] -> [N]``) into ``name``."""
        if _opset(model) >= 18:
            graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), name + "_ax"))
            return helper.make_node(
                "ReduceSumSquare", [x, name + "_ax"], [name], name=name, keepdims=0
            )
        return helper.make_node("ReduceSumSquare", [x], [name], name=name, axes=[1], keepdims=0)

    def node(op: str, inputs: list[str], name: str) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [name], name=name)

    p = PREFIX
    graph.node.extend(
        [
            node("Relu", ["embedding"], p + "positive"),
            node("Sqrt", [p + "positive"], p + "root"),
            node("Sub", [p + "root", p + "mean"], p + "centered"),
            node("MatMul", [p + "centered", p + "components"], p + "projected"),
            node("Mul", [p + "projected", p + "inv_sqrt_major"], p + "whitened"),
            reduce(p + "major", p + "whitened"),
            reduce(p + "total", p + "centered"),
            reduce(p + "in_span", p + "projected"),
            node("Sub", [p + "total", p + "in_span"], p + "residual"),
            node("Mul", [p + "residual", p + "inv_minor"], p + "minor"),
            node("Add", [p + "major", p + "minor"], p + "d2"),
            node("Relu", [p + "d2"], p + "d2_pos"),  # rounding can make a tiny d2 negative
            node("Mul", [p + "d2_pos", p + "inv_dim"], p + "d2_per_dim"),
            helper.make_node("Sqrt", [p + "d2_per_dim"], [OOD_OUTPUT], name=p + "sqrt"),
        ]
    )
    graph.output.append(helper.make_tensor_value_info(OOD_OUTPUT, onnx.TensorProto.FLOAT, ["N"]))
    onnx.checker.check_model(model)
    for key, value in {**metadata, THRESHOLD_KEY: f"{threshold:.6f}"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


# --- the training films ------------------------------------------------------------------------


def _card_config(model_path: Path) -> JsonObject:
    """The run configuration recorded in the model card's metrics-json block next to the model."""
    card = model_path.parent / "MODEL_CARD.md"
    if not card.is_file():
        return {}
    match = re.search(r"<!-- metrics-json\n(.*?)\n-->", card.read_text(), re.S)
    if not match:
        return {}
    try:
        data = json.loads(match.group(1))
    except ValueError:
        return {}
    return {**data, **data.get("config", {})}


def _given(cfg: JsonObject, key: str, default: T) -> T:
    """``cfg[key]`` unless absent or null (the card writes null for unused settings)."""
    value = cfg.get(key)
    return default if value is None else value


def training_split(
    model_path: Path, data: str, run_dir: str | None
) -> tuple[list[LabelledImage], list[LabelledImage], str]:
    """(train, validation, how) records of the model's own split."""
    if run_dir:
        with open(Path(run_dir) / "split.json") as handle:
            saved = json.load(handle)
        make = data_mod.LabelledImage
        train = [make(p, int(lab), pat) for p, lab, pat, *_ in saved["train"]]
        val = [make(r[0], int(r[1]), r[2]) for r in saved["validation"]]
        return train, val, f"split.json of run {Path(run_dir).name}"
    cfg = _card_config(model_path)
    records = data_mod.list_labelled_images(data)
    if cfg.get("split") == "acquisition":
        n, held = int(_given(cfg, "n_batches", 12)), int(_given(cfg, "held_out_batches", 3))
        train, val = data_mod.acquisition_split(records, n, held)
        return train, val, f"acquisition split ({held} of {n} batches held out)"
    seed, fraction = int(_given(cfg, "seed", 42)), float(_given(cfg, "val_fraction", 0.18))
    train, val = data_mod.patient_grouped_split(records, fraction, seed)
    return train, val, f"patient-grouped split (seed {seed}, val_fraction {fraction})"


def check_development_films(model_path: Path, paths: list[str]) -> None:
    """Every training film must be listed in ``development_films.sha256`` next to the model (else
    the data folder or the split is not the model's)."""
    listing = model_path.parent / "development_films.sha256"
    if not listing.is_file():
        log(f"no {listing.name} next to the model: training films not checked against it")
        return
    known = {line.strip() for line in listing.read_text().splitlines() if line.startswith("c:")}
    missing = [
        p
        for p in paths
        if content_key(hashlib.sha256(Path(p).read_bytes()).hexdigest()) not in known
    ]
    if missing:
        raise OodFitError(
            f"{len(missing)} of {len(paths)} training films are not among the model's "
            f"development films ({listing}), e.g. {missing[0]}: wrong --data or --run-dir"
        )


def drift_reference(probability: np.ndarray, quality: np.ndarray, threshold: float) -> JsonObject:
    """The training films' reference for ``gold.drift_metrics``: the share of films per
    probability bin (``PROBABILITY_BINS`` equal-width bins of 0..1, as the drift rule bins),
    positive rate at the model threshold, mean probability, quality-score mean and std."""
    p = probability[np.isfinite(probability)]
    q = quality[np.isfinite(quality)]
    bins = np.minimum((p * PROBABILITY_BINS).astype(int), PROBABILITY_BINS - 1)
    shares = np.bincount(bins, minlength=PROBABILITY_BINS) / max(len(p), 1)
    return {
        "films": len(p),
        "probability_bins": [round(float(s), 6) for s in shares],
        "positive_rate": round(float((p >= threshold).mean()), 6),
        "mean_probability": round(float(p.mean()), 6),
        "quality_mean": round(float(q.mean()), 6),
        "quality_std": round(float(q.std()), 6),
    }


def _fit_on_training_films(
    work: Path,
    train: Sequence[LabelledImage],
    how: str,
    components: int,
    quantile: float,
    folds: int,
    threads: int | None,
) -> tuple[JsonObject, Reference, float, JsonObject]:
    """Embed the training films through the model file ``work`` (without ``ood_score``), fit
    the reference and set the threshold from out-of-fold scores. Returns (the fit figures of
    ``ood.json`` so far, the reference, the threshold, the drift reference)."""
    paths = [r.path for r in train]
    log(f"embedding {len(paths)} training films ({how})")
    result = embed(work, paths, threads)
    ok = np.isfinite(result.embedding).all(axis=1)
    if ok.sum() < 20:
        raise OodFitError(f"only {int(ok.sum())} training films could be embedded")
    emb = result.embedding[ok]
    groups = np.array(split_groups([r for r, good in zip(train, ok, strict=True) if good]))
    oof = out_of_fold_scores(emb, groups, folds, components)
    threshold = float(np.quantile(oof, quantile))
    reference = fit_reference(emb, components)
    in_sample = reference.scores(emb)
    meta = read_metadata(work)
    model_threshold = float(meta.get("cxrlake.threshold", 0.5))
    drift = drift_reference(result.probability[ok], result.quality[ok], model_threshold)
    fitted = {
        "method": (
            f"Mahalanobis distance of the square-rooted embedding under a probabilistic-PCA "
            f"covariance "
            f"({reference.components.shape[1]} components + isotropic rest), "
            f"sqrt(d2 / {reference.dim})"
        ),
        "training_films": int(ok.sum()),
        "split": how,
        "components": int(reference.components.shape[1]),
        "folds": folds,
        "quantile": quantile,
        "threshold": round(threshold, 6),
        "out_of_fold_median": round(float(np.median(oof)), 4),
        "in_sample_median": round(float(np.median(in_sample)), 4),
        "model_name": meta.get("cxrlake.model_name"),
        "model_version": meta.get("cxrlake.model_version"),
    }
    return fitted, reference, threshold, drift


def _graph_vs_numpy(
    out: Path, paths: list[str], reference: Reference, threads: int | None
) -> float:
    """Max difference of the graph's ``ood_score`` and its numpy twin on 32 training films
    (float32 in the graph); raises when they disagree."""
    check = embed(out, paths[:32], threads)
    twin = reference.scores(check.embedding)
    gap = float(np.nanmax(np.abs(check.ood_score - twin)))
    if not gap < 1e-3 * max(1.0, float(np.nanmax(twin))):
        raise OodFitError(f"graph and reference disagree by {gap}")
    return gap


def fit(
    model_path: str | os.PathLike[str],
    data: str,
    out: str | os.PathLike[str] | None = None,
    run_dir: str | None = None,
    components: int = DEFAULT_COMPONENTS,
    quantile: float = DEFAULT_QUANTILE,
    folds: int = DEFAULT_FOLDS,
    threads: int | None = None,
    evaluate_after: bool = True,
) -> JsonObject:
    """Fit the reference on the training films of ``model_path`` and write the model with its
    ``ood_score`` output to ``out`` (default: in place). Returns the fit summary (and the
    evaluation when ``evaluate_after``), also written to ``ood.json`` next to ``out``."""
    model_path = Path(model_path).resolve()
    out = Path(out).resolve() if out else model_path
    started = time.time()
    train, val, how = training_split(model_path, data, run_dir)
    paths = [r.path for r in train]
    check_development_films(model_path, paths)
    base = strip_ood(onnx.load(str(model_path)))
    work = out.with_suffix(".ood-base.onnx")
    onnx.save(base, str(work))
    try:
        fitted, reference, threshold, drift = _fit_on_training_films(
            work, train, how, components, quantile, folds, threads
        )
        method = (
            f"{fitted['method']}; fitted on {fitted['training_films']} training films "
            f"({how}); threshold = quantile {quantile} of {folds}-fold out-of-fold scores"
        )
        model = attach_ood(
            base,
            reference,
            threshold,
            {METHOD_KEY: method, REFERENCE_KEY: json.dumps(drift, separators=(",", ":"))},
        )
        # replace the file in one step: a running predict never reads half a model
        partial = out.with_suffix(".ood-partial.onnx")
        onnx.save(model, str(partial))
        os.replace(partial, out)
    finally:
        work.unlink(missing_ok=True)
    fitted["graph_vs_numpy_max_diff"] = _graph_vs_numpy(out, paths, reference, threads)
    fitted["seconds_fit"] = round(time.time() - started, 1)
    fitted["drift_reference"] = drift
    log(f"threshold {threshold:.4f} ({fitted['seconds_fit']} s); wrote {out}")
    summary: JsonObject = {"fit": fitted}
    if evaluate_after:
        summary["evaluation"] = evaluate(out, val, threads=threads)
    write_results(out, summary)
    return summary


def fit_run(
    run_dir: str | os.PathLike[str],
    ship_to: str | os.PathLike[str] | None = None,
    threads: int | None = None,
) -> JsonObject:
    """After ``cxrlake train``'s export: fit the reference into ``run_dir/model.onnx`` on the
    run's own split (``split.json``), then copy the model and ``ood.json`` to ``ship_to``."""
    run_dir = Path(run_dir)
    model = run_dir / "model.onnx"
    try:
        summary = fit(model, data="", run_dir=str(run_dir), threads=threads)
    except OodFitError as e:  # the run is still good: fit later with `ood fit`
        log(f"not fitted: {e}")
        return {"skipped": str(e)}
    if ship_to is not None:
        shutil.copyfile(model, Path(ship_to) / "cxrlake_pneumonia.onnx")
        shutil.copyfile(run_dir / RESULT_FILE, Path(ship_to) / RESULT_FILE)
    return summary["fit"] | {"evaluation": summary.get("evaluation")}


def write_results(model_path: Path, summary: JsonObject) -> Path:
    """``ood.json`` next to the model, and the OOD section of the model cards there."""
    path = Path(model_path).parent / RESULT_FILE
    path.write_text(json.dumps(summary, indent=2) + "\n")
    cards = list(Path(model_path).parent.glob("MODEL_CARD.md"))
    if Path(model_path).resolve() == Path(cxrlake.default_model_path()).resolve():
        # a checkout keeps a copy of the shipped model's card at its top level
        top = Path(cxrlake.__file__).resolve().parents[2] / "MODEL_CARD.md"
        cards += [top] if top.is_file() else []
    for card in cards:
        update_ood_section(card, summary)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m cxrlake.training.ood fit|evaluate`` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m cxrlake.training.ood",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fit_p = sub.add_parser("fit", help="fit the reference, attach ood_score, evaluate")
    fit_p.add_argument("--model", required=True, help="the ONNX model (rewritten unless --out)")
    fit_p.add_argument("--data", required=True, help="the training folder (NORMAL/, PNEUMONIA/)")
    fit_p.add_argument("--out", default=None, help="write the model here instead")
    fit_p.add_argument("--run-dir", default=None, help="take the split from RUN_DIR/split.json")
    fit_p.add_argument("--components", type=int, default=DEFAULT_COMPONENTS)
    fit_p.add_argument("--quantile", type=float, default=DEFAULT_QUANTILE)
    fit_p.add_argument("--folds", type=int, default=DEFAULT_FOLDS)
    fit_p.add_argument("--threads", type=int, default=None)
    fit_p.add_argument("--no-evaluate", action="store_true")
    ev = sub.add_parser("evaluate", help="flag rates of a model that has ood_score")
    ev.add_argument("--model", required=True)
    ev.add_argument("--data", required=True)
    ev.add_argument("--run-dir", default=None)
    ev.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except OodFitError as e:
        print(f"cxrlake.training.ood: error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "fit":
        summary = fit(
            args.model,
            args.data,
            out=args.out,
            run_dir=args.run_dir,
            components=args.components,
            quantile=args.quantile,
            folds=args.folds,
            threads=args.threads,
            evaluate_after=not args.no_evaluate,
        )
    else:
        model = Path(args.model).resolve()
        _, val, _ = training_split(model, args.data, args.run_dir)
        previous = model.parent / RESULT_FILE
        summary = json.loads(previous.read_text()) if previous.is_file() else {}
        summary["evaluation"] = evaluate(model, val, threads=args.threads)
        write_results(model, summary)
    print(json.dumps({k: v for k, v in summary.get("fit", {}).items() if k != "drift_reference"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
