"""Training-time augmentation of 0..1 pixels.

`augment_batch` (geometry and exposure, then `acquisition_shift` when ``shift_p`` > 0) is applied
on the fly by `cxrlake.training.train.fit`; `acquisition_shift` with fixed ranges also makes the
"mixed" condition of the shifted validation (`cxrlake.training.shift`), and `gaussian_blur` its
blur. `mixup` blends image pairs (recipe ``mixup``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cxrlake.training.config import Augmentation


def augment_batch(
    pixels: torch.Tensor, aug: Augmentation, generator: torch.Generator
) -> torch.Tensor:
    """Random affine (rotation, scale, translation) + brightness/contrast on uint8 [B, H, W].

    Returns float32 [B, 1, H, W] in 0..1 pixel units (before the contract normalisation).
    No horizontal flip: a chest film has a real left/right (heart, stomach bubble, side markers).
    """
    b = pixels.shape[0]
    x = pixels.float().div_(255.0).unsqueeze(1)

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, generator=generator) * (high - low) + low

    angle = uniform(-aug["rotation_deg"], aug["rotation_deg"]) * math.pi / 180.0
    scale = uniform(*aug["scale"])
    tx, ty = (uniform(-aug["translate"], aug["translate"]) * 2 for _ in range(2))
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1
    )  # [B, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = uniform(*aug["contrast"]).view(b, 1, 1, 1)
    brightness = uniform(-aug["brightness"], aug["brightness"]).view(b, 1, 1, 1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)
    if aug.get("shift_p", 0.0) > 0.0:
        x = acquisition_shift(x, aug, generator)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of [B, 1, H, W] with a per-image ``sigma`` [B] (pixels)."""
    radius = int(math.ceil(3.0 * float(sigma.max()))) or 1
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2.0 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [B, K]
    b = x.shape[0]
    # grouped convolution: one kernel per image
    xs = x.transpose(0, 1)  # [1, B, H, W]
    xs = F.pad(xs, (radius, radius, 0, 0), mode="replicate")
    xs = F.conv2d(xs, kernel.view(b, 1, 1, -1), groups=b)
    xs = F.pad(xs, (0, 0, radius, radius), mode="replicate")
    xs = F.conv2d(xs, kernel.view(b, 1, -1, 1), groups=b)
    return xs.transpose(0, 1)


def acquisition_shift(
    x: torch.Tensor, aug: Augmentation, generator: torch.Generator
) -> torch.Tensor:
    """Simulated change of site: gamma, resolution path, blur or edge enhancement, noise.

    ``x`` is [B, 1, H, W] in 0..1; each transform hits a random ``aug["shift_p"]`` of the batch.
    The same function (with a fixed generator) builds the shifted validation sets of the card.
    """
    b, _, h, w = x.shape
    p = aug["shift_p"]

    def pick() -> torch.Tensor:
        return (torch.rand(b, generator=generator) < p).view(b, 1, 1, 1)

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, generator=generator) * (high - low) + low

    gamma = uniform(*aug["gamma"]).view(b, 1, 1, 1)
    x = torch.where(pick(), x.clamp(1e-4, 1.0) ** gamma, x)
    scale = float(uniform(*aug["lowres"])[0])
    small = F.interpolate(x, size=(max(8, int(h * scale)), max(8, int(w * scale))), mode="area")
    x = torch.where(pick(), F.interpolate(small, size=(h, w), mode="bilinear"), x)
    blurred = gaussian_blur(x, uniform(*aug["blur"]))
    choice = torch.rand(b, generator=generator).view(b, 1, 1, 1)
    amount = uniform(*aug["sharpen"]).view(b, 1, 1, 1)
    sharpened = (x + amount * (x - blurred)).clamp(0.0, 1.0)
    x = torch.where(choice < p / 2, blurred, torch.where(choice > 1 - p / 2, sharpened, x))
    sigma = uniform(*aug["noise"]).view(b, 1, 1, 1)
    noise = torch.randn(x.shape, generator=generator) * sigma
    return torch.where(pick(), (x + noise).clamp(0.0, 1.0), x)


def mixup(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    alpha: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each image with a random partner: x, soft targets and loss weights by Beta(a, a)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    # torch.distributions draws from the global generator (seeded by seed_everything)
    perm = torch.randperm(x.shape[0], generator=generator)
    lam = max(lam, 1.0 - lam)  # the original image dominates: its label stays the majority
    return (
        lam * x + (1.0 - lam) * x[perm],
        lam * y + (1.0 - lam) * y[perm],
        lam * weight + (1.0 - lam) * weight[perm],
    )
