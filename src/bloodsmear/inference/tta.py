"""Test-time augmentation (TTA) for cell classifiers: average a crop's class probabilities over views.

A white cell on a smear has no preferred orientation, so a crop and its mirror images and quarter turns
are the same cell; averaging a classifier's probabilities over them removes part of its sensitivity to
how a cell happens to lie (most useful on another lab's images, where the classifier is less sure).

Modes (`TTA_MODES`: name -> number of views):
- ``none``: the crop itself;
- ``flip``: the crop and its left-right mirror (2 forward passes);
- ``d8``: the 8 symmetries of the square (4 quarter turns, each also mirrored).

Views are pure functions of the batch: the input array is never modified.

    probs = predict_tta(net_probs, batch, "d8")   # net_probs: (N, S, S, 3) uint8 -> (N, C)
"""

from __future__ import annotations

from typing import Callable

import numpy as np

#: mode -> number of views
TTA_MODES = {"none": 1, "flip": 2, "d8": 8}


def check_tta(mode: str | None) -> str:
    """The mode name (None -> "none"); an unknown name raises an error listing the valid ones."""
    m = "none" if mode is None else str(mode).strip().lower()
    if m not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {mode!r} (valid: {', '.join(TTA_MODES)})")
    return m


def tta_views(batch: np.ndarray, mode: str) -> list[np.ndarray]:
    """The views of an (N, H, W, C) image batch for `mode`, each a new contiguous array (square images
    for the quarter turns of ``d8``); the first view is the batch itself (copied)."""
    mode = check_tta(mode)
    b = np.asarray(batch)
    if b.ndim != 4:
        raise ValueError(f"expected an (N, H, W, C) batch, got shape {b.shape}")
    if mode == "none":
        return [b.copy()]
    if mode == "flip":
        return [b.copy(), np.ascontiguousarray(b[:, :, ::-1])]
    if b.shape[1] != b.shape[2]:
        raise ValueError(f"d8 needs square images, got {b.shape[1]}x{b.shape[2]}")
    out = []
    for k in range(4):
        r = np.rot90(b, k, axes=(1, 2))
        out += [np.ascontiguousarray(r), np.ascontiguousarray(r[:, :, ::-1])]
    return out


def predict_tta(predict: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, mode: str) -> np.ndarray:
    """Mean of `predict(view)` over the views of `batch` (one call on all views stacked, so a network
    runs one larger batch); `predict` maps (M, H, W, C) images to (M, C) probabilities."""
    if check_tta(mode) == "none":  # the batch itself: no copy on the default path
        return np.asarray(predict(batch))
    views = tta_views(batch, mode)
    n = len(views[0])
    if n == 0:
        return np.asarray(predict(views[0]))
    probs = np.asarray(predict(np.concatenate(views)))
    return probs.reshape(len(views), n, *probs.shape[1:]).mean(0)


__all__ = ["TTA_MODES", "check_tta", "tta_views", "predict_tta"]
