"""The files of a run directory that later steps read back: ``split.json`` (the train and
validation records, with the held-out batches) and the checkpoints (``checkpoint.pt``: the
weights model selection kept; ``checkpoint_final.pt``: the finalized weights the shipped ONNX
holds); and the library versions recorded with a run's figures."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from cxrlake.training import data as data_mod
from cxrlake.training.config import JsonObject, TrainConfig
from cxrlake.training.model import PneumoniaNet

Records = list[data_mod.LabelledImage]


def save_split(
    run_dir: Path,
    train: Sequence[data_mod.LabelledImage],
    val: Sequence[data_mod.LabelledImage],
) -> None:
    """Write ``split.json``: train ``[path, label, patient]``, validation with its batch."""
    with open(run_dir / "split.json", "w") as handle:
        json.dump(
            {
                "train": [[r.path, r.label, r.patient] for r in train],
                "validation": [[r.path, r.label, r.patient, r.batch] for r in val],
            },
            handle,
        )


def load_saved_split(run_dir: str | os.PathLike[str]) -> tuple[Records, Records]:
    """The (train, validation) records a run saved in ``split.json`` (with their batches)."""
    with open(Path(run_dir) / "split.json") as handle:
        saved = json.load(handle)
    make = data_mod.LabelledImage
    return (
        [make(p, int(lab), pat) for p, lab, pat in saved["train"]],
        [make(row[0], int(row[1]), row[2], *map(int, row[3:])) for row in saved["validation"]],
    )


def load_checkpoint(
    run_dir: str | os.PathLike[str], final: bool = False
) -> tuple[PneumoniaNet, TrainConfig, list[JsonObject]]:
    """The trained network (eval mode), its config and its per-epoch history.

    ``final=True`` loads the finalized weights (BN recalibrated) that the shipped ONNX holds.
    """
    name = "checkpoint_final.pt" if final else "checkpoint.pt"
    saved = torch.load(Path(run_dir) / name, map_location="cpu", weights_only=False)
    cfg = TrainConfig(**saved["config"])
    net = PneumoniaNet(cfg.size, pretrained=False, dropout=cfg.dropout)
    net.freeze_early(cfg.freeze_blocks)
    net.load_state_dict(saved["state_dict"])
    return net.eval(), cfg, saved["history"]


def environment() -> dict[str, str]:
    """Versions a run depends on (recorded with its figures in ``metrics.json`` and
    ``candidate.json``)."""
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }
