"""Training run parameters, importable without torch (the CLI builds its options from them)."""

from __future__ import annotations

from dataclasses import dataclass, field

MODEL_NAME = "cxrlake-pneumonia-effnetlite0"


@dataclass
class TrainConfig:
    """Every parameter of a training run (recorded in the checkpoint, metrics.json and MLflow)."""

    data: str
    run_dir: str
    size: int = 160
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.15
    freeze_blocks: int = 3
    dropout: float = 0.2
    val_fraction: float = 0.18
    target_sensitivity: float = 0.98
    seed: int = 42
    limit: int | None = None  # per class, for quick runs/tests
    # path -> label for files whose current label differs from their folder (radiologist
    # corrections from silver.label_history, `cxrlake train --labels-from`)
    label_overrides: dict = field(default_factory=dict)
    pretrained: bool = True
    threads: int = 2
    model_name: str = MODEL_NAME
    model_version: str = "1.0.0"
    augment: dict = field(
        default_factory=lambda: {
            "rotation_deg": 10.0,
            "scale": [0.9, 1.1],
            "translate": 0.06,
            "brightness": 0.1,
            "contrast": [0.85, 1.15],
            "hflip": False,
            # Acquisition shift (another site, scanner or period): each applied to a random
            # fraction ``p`` of the batch. gamma: exponent range; noise: Gaussian sigma (0..1
            # pixel units); blur: Gaussian sigma in pixels; lowres: down-then-up scale range
            # (a lower-resolution acquisition or resize path); sharpen: unsharp-mask amount
            # (scanner edge enhancement).
            "shift_p": 0.5,
            "gamma": [0.7, 1.4],
            "noise": [0.0, 0.04],
            "blur": [0.3, 1.2],
            "lowres": [0.4, 0.9],
            "sharpen": [0.2, 1.0],
        }
    )
