"""The classifier's input transforms: framing a cell image to the network's square input and turning
uint8 batches into normalised tensors. Used alike by training loaders, inference and model insight.

    sq = fit_image(rgb, 80, crop_fraction=1.0)          # (80, 80, 3) uint8, a new array
    x = to_tensor(np.stack([sq]), mean, std)            # (1, 3, 80, 80) float, channels-last
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from bloodsmear.preprocess.resize import resize_square

#: ImageNet's per-channel RGB mean and standard deviation (0..1), the default normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def fit_image(img: np.ndarray, size: int, crop_fraction: float = 1.0) -> np.ndarray:
    """Centre square of `crop_fraction` x the short side, resized to (size, size); a new uint8 array.

    Area interpolation when shrinking, bilinear when enlarging (`resize_square`). The input is not modified.
    """
    h, w = img.shape[:2]
    side = max(1, int(round(min(h, w) * crop_fraction)))
    y0, x0 = (h - side) // 2, (w - side) // 2
    sq = img[y0:y0 + side, x0:x0 + side]
    out = resize_square(sq, size)
    return out.copy() if out is sq else out


def normalizer(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor([float(v) * 255.0 for v in mean]).view(1, 3, 1, 1)
    s = torch.tensor([float(v) * 255.0 for v in std]).view(1, 3, 1, 1)
    return m, s


def to_float(batch: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in 0..255."""
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()


def to_tensor(batch: np.ndarray, mean: Sequence[float], std: Sequence[float], *,
              channels_last: bool = True) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> normalised float (B, 3, H, W), the classifier's input."""
    m, s = normalizer(mean, std)
    x = (to_float(batch) - m) / s
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
