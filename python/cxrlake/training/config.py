"""Training run parameters, importable without torch (the CLI builds its options from them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

MODEL_NAME = "cxrlake-pneumonia-effnetlite0"

#: A JSON object as the run writes it (``metrics.json``, ``history.json``, ``candidate.json``,
#: ``ood.json``) and the model card reads it back: the file is the boundary, its keys are
#: documented where each is written (`cxrlake.training.train.finalize`, `cxrlake.training.ood`).
JsonObject = dict[str, Any]


class Augmentation(TypedDict, total=False):
    """Training-time augmentation ranges (`cxrlake.training.augment`); a recipe overrides some.

    Geometry and exposure: rotation in degrees, scale and contrast ranges, translation as a
    fraction of the size, brightness offset (0..1 pixel units). Acquisition shift (another site,
    scanner or period): each applied to a random fraction ``shift_p`` of the batch. gamma:
    exponent range; noise: Gaussian sigma (0..1 pixel units); blur: Gaussian sigma in pixels;
    lowres: down-then-up scale range (a lower-resolution acquisition or resize path); sharpen:
    unsharp-mask amount (scanner edge enhancement).
    """

    rotation_deg: float
    scale: list[float]
    translate: float
    brightness: float
    contrast: list[float]
    hflip: bool
    shift_p: float
    gamma: list[float]
    noise: list[float]
    blur: list[float]
    lowres: list[float]
    sharpen: list[float]


class Recipe(TypedDict, total=False):
    """A named recipe: overrides of the `TrainConfig` defaults; ``augment`` entries update the
    default augmentation and ``budget_factor`` multiplies the step budget."""

    size: int
    augment: Augmentation
    budget_factor: int
    label_smoothing: float
    mixup_alpha: float


def default_augmentation() -> Augmentation:
    """The augmentation of `TrainConfig` (model 1.1.0's: with the acquisition shifts)."""
    return {
        "rotation_deg": 10.0,
        "scale": [0.9, 1.1],
        "translate": 0.06,
        "brightness": 0.1,
        "contrast": [0.85, 1.15],
        "hflip": False,
        "shift_p": 0.5,
        "gamma": [0.7, 1.4],
        "noise": [0.0, 0.04],
        "blur": [0.3, 1.2],
        "lowres": [0.4, 0.9],
        "sharpen": [0.2, 1.0],
    }


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
    val_fraction: float = 0.18  # split "patients" only
    # "acquisition": hold out the latest ``held_out_batches`` of ``n_batches`` acquisition batches
    # (cxrlake.training.data.acquisition_split; from 1.2.0); "patients": random patient groups
    split: str = "acquisition"
    n_batches: int = 12
    held_out_batches: int = 3
    # threshold rule: best specificity with sensitivity >= this on the (held-out) validation
    target_sensitivity: float = 0.95
    # Fixed budget of optimizer steps (the one-cycle schedule spans it); None = epochs * the
    # steps of one pass over the training split.
    steps: int | None = None
    # Model selection / early stopping on the validation split: evaluate every ``eval_every``
    # steps (None: once per epoch), keep the weights with the best mean per-batch AUC, stop
    # after ``patience`` evaluations without improvement (None: never stop early).
    eval_every: int | None = None
    patience: int | None = None
    # Regularisers against over-confidence on new films: BCE targets y(1-e)+e/2; mixup of
    # image pairs with a Beta(alpha, alpha) weight (0 = off).
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    recipe: str | None = None
    seed: int = 42
    limit: int | None = None  # per class, for quick runs/tests
    # path -> label for files whose current label differs from their folder (radiologist
    # corrections from silver.label_history, `cxrlake train --labels-from`)
    label_overrides: dict[str, int] = field(default_factory=dict)
    pretrained: bool = True
    threads: int = 2
    model_name: str = MODEL_NAME
    model_version: str = "1.2.0"
    augment: Augmentation = field(default_factory=default_augmentation)


#: Augmentation of the 1.0.0 recipe: the same geometry and exposure, no acquisition shifts.
_NO_SHIFT: Augmentation = {"shift_p": 0.0}

#: Named training recipes (``cxrlake train --recipe NAME``): overrides of the TrainConfig
#: defaults; ``augment`` entries update the default augmentation dict. Every candidate of the
#: model card is one of these with the same step budget (``steps``) unless its name says longer.
RECIPES: dict[str, Recipe] = {
    # model 1.0.0: 160 px, geometry + exposure augmentation only
    "1.0.0": {"size": 160, "augment": _NO_SHIFT},
    # model 1.1.0: + simulated acquisition shifts (gamma, noise, blur, resolution, sharpening)
    "1.1.0": {"size": 160},
    "224px": {"size": 224},
    "longer": {"size": 160, "budget_factor": 2},
    "label-smoothing": {"size": 160, "label_smoothing": 0.1},
    "mixup": {"size": 160, "mixup_alpha": 0.4},
    "1.0.0+label-smoothing": {"size": 160, "augment": _NO_SHIFT, "label_smoothing": 0.1},
    "1.0.0+mixup": {"size": 160, "augment": _NO_SHIFT, "mixup_alpha": 0.4},
    "1.0.0+longer": {"size": 160, "augment": _NO_SHIFT, "budget_factor": 2},
    "1.0.0+224px": {"size": 224, "augment": _NO_SHIFT},
}

#: The recipe of the shipped model 1.2.0 (1.0.0+longer: 80 optimizer steps, no simulated-shift
#: augmentation; python/cxrlake/models/MODEL_CARD.md, docs/model_candidates/): what the
#: Databricks training job (jobs/train_model.py) trains.
SHIPPED_RECIPE = "1.0.0+longer"

#: The step budget every candidate got (``steps``; ``longer`` gets ``budget_factor`` times it).
CANDIDATE_STEPS = 40


def recipe_config(
    name: str, data: str, run_dir: str, steps: int | None = None, **extra: object
) -> TrainConfig:
    """The TrainConfig of recipe ``name`` (see :data:`RECIPES`); ``extra`` overrides fields."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    cfg = TrainConfig(data=data, run_dir=run_dir, recipe=name)
    for key, value in recipe.items():
        if key not in ("budget_factor", "augment"):
            setattr(cfg, key, value)
    augment = Augmentation(**cfg.augment)
    augment.update(recipe.get("augment", {}))
    cfg.augment = augment
    cfg.steps = (steps or CANDIDATE_STEPS) * recipe.get("budget_factor", 1)
    # one evaluation on the held-out batches, at the end of the budget (2 shared cores); set
    # eval_every / patience for model selection and early stopping within a longer run
    cfg.eval_every = cfg.steps
    for key, value in extra.items():
        setattr(cfg, key, value)
    return cfg
