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
        }
    )
