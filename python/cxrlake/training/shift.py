"""Shifted validation: the validation split under simulated changes of site, scanner or period.

A new site changes how films look, not what they show: exposure, contrast, the tone curve
(gamma), noise, sharpness, the resolution path (acquired small, resized twice), and the
scanner's own processing (edge enhancement, histogram equalisation, JPEG compression). Each
named condition below applies one such change, with fixed parameters and a fixed seed, to every
validation image at the model's input size; ``mixed`` applies the training-time
:func:`cxrlake.training.augment.acquisition_shift` with its own ranges. The threshold rule, the
calibration and the candidate comparison of the model card are all measured on these sets, never
on test data.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from cxrlake.training.augment import acquisition_shift, gaussian_blur
from cxrlake.training.config import TrainConfig
from cxrlake.training.export import HEAD_BIAS_KEY, onnx_session, read_metadata
from cxrlake.training.model import to_model_input

SEED = 20240611

Shift = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _gain(g: float) -> Shift:
    return lambda x, _: (x * g).clamp(0.0, 1.0)


def _offset(d: float) -> Shift:
    return lambda x, _: (x + d).clamp(0.0, 1.0)


def _contrast(c: float) -> Shift:
    def shift(x: torch.Tensor, _: torch.Generator) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        return ((x - mean) * c + mean).clamp(0.0, 1.0)

    return shift


def _gamma(g: float) -> Shift:
    return lambda x, _: x.clamp(1e-4, 1.0) ** g


def _noise(sigma: float) -> Shift:
    return lambda x, gen: (x + torch.randn(x.shape, generator=gen) * sigma).clamp(0.0, 1.0)


def _blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return gaussian_blur(x, torch.full((x.shape[0],), sigma))


def _blur(sigma: float) -> Shift:
    return lambda x, _: _blurred(x, sigma)


def _sharpen(amount: float, sigma: float = 1.0) -> Shift:
    def shift(x: torch.Tensor, _: torch.Generator) -> torch.Tensor:
        blurred = _blurred(x, sigma)
        return (x + amount * (x - blurred)).clamp(0.0, 1.0)

    return shift


def _lowres(scale: float) -> Shift:
    def shift(x: torch.Tensor, _: torch.Generator) -> torch.Tensor:
        h, w = x.shape[2:]
        small = F.interpolate(x, size=(int(h * scale), int(w * scale)), mode="area")
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)

    return shift


def _per_image_pil(transform: Callable[[Image.Image], Image.Image]) -> Shift:
    def shift(x: torch.Tensor, _: torch.Generator) -> torch.Tensor:
        out = torch.empty_like(x)
        pixels = (x[:, 0] * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
        for i, p in enumerate(pixels):
            image = transform(Image.fromarray(p, mode="L"))
            out[i, 0] = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
        return out

    return shift


def _jpeg(quality: int) -> Shift:
    def recompress(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        return Image.open(buffer).convert("L")

    return _per_image_pil(recompress)


def _mixed(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    aug = TrainConfig(data="", run_dir="").augment
    return acquisition_shift(x, aug, generator)


#: Named acquisition shifts, in the order of the card's tables. ``none`` is the plain validation.
SHIFTS: dict[str, Shift] = {
    "none": lambda x, _: x,
    "exposure -0.10": _offset(-0.10),
    "exposure +0.10": _offset(0.10),
    "gain 1.25": _gain(1.25),
    "contrast 0.75": _contrast(0.75),
    "contrast 1.30": _contrast(1.30),
    "gamma 0.70": _gamma(0.70),
    "gamma 1.40": _gamma(1.40),
    "noise 0.03": _noise(0.03),
    "blur 1.0 px": _blur(1.0),
    "resolution 0.5x": _lowres(0.5),
    "edge enhancement 0.8": _sharpen(0.8),
    "equalised histogram": _per_image_pil(ImageOps.equalize),
    "JPEG q30": _jpeg(30),
    "mixed (training ranges)": _mixed,
}


#: Conditions of a kind the training augmentation never produces (it has brightness, contrast,
#: gamma, noise, blur, a resolution path and edge enhancement): the fairest check of a model
#: trained with that augmentation.
OUTSIDE_AUGMENTATION = ("gain 1.25", "equalised histogram", "JPEG q30")


def shifted_inputs(pixels: np.ndarray, name: str, batch_size: int = 128) -> np.ndarray:
    """Contract input float32 ``[N, 3, H, W]`` of uint8 ``[N, H, W]`` under the shift ``name``.

    Deterministic: the generator is re-seeded per condition, so every model sees the same films.
    """
    shift = SHIFTS[name]
    generator = torch.Generator().manual_seed(SEED)
    out = []
    for start in range(0, len(pixels), batch_size):
        x01 = torch.from_numpy(pixels[start : start + batch_size]).float().div_(255.0)
        shifted = shift(x01.unsqueeze(1), generator)
        # The Rust core hands the model 8-bit pixels: quantise the shifted film the same way.
        shifted = (shifted * 255.0).round().clamp(0, 255) / 255.0
        out.append(to_model_input(shifted).numpy())
    return np.concatenate(out) if out else np.zeros((0, 3, *pixels.shape[1:]), np.float32)


def model_logits(
    path: str | os.PathLike[str], inputs: np.ndarray, threads: int = 2, batch_size: int = 64
) -> np.ndarray:
    """Head logits float64 ``[N]`` of the ONNX file ``path`` on contract inputs.

    Read as ``cxrlake.head_bias + mean(heatmap)`` (exact in float64, where the float32
    probability saturates at 1.0 for logits above ~17).
    """
    bias = float(read_metadata(path)[HEAD_BIAS_KEY])
    session = onnx_session(path, threads)
    out = []
    for start in range(0, len(inputs), batch_size):
        (heatmap,) = session.run(["heatmap"], {"input": inputs[start : start + batch_size]})
        out.append(bias + heatmap.reshape(len(heatmap), -1).mean(axis=1, dtype=np.float64))
    return np.concatenate(out) if out else np.zeros(0)


def shifted_logits(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    names: list[str] | None = None,
    threads: int = 2,
) -> dict[str, np.ndarray]:
    """Head logits of the ONNX file ``path`` under every shift: name -> float64 ``[N]``."""
    return {
        name: model_logits(path, shifted_inputs(pixels, name), threads)
        for name in (names or list(SHIFTS))
    }
