"""Batched two-view augmentation with per-image random parameters, on any device."""

from __future__ import annotations

import torch

# ImageNet statistics, the usual choice for SSL on ImageNet subsets.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float images (B, 3, H, W) -> float32 standardised with MEAN/STD."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std
