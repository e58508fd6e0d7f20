"""Synthetic smear fields with known cells (tests, smoke runs): pink red-cell discs with a pale centre
on a light background, and purple WBC discs with a dark nucleus, at known diameters and positions."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

BACKGROUND = (235, 228, 222)
RBC = (205, 140, 150)
RBC_PALLOR = (222, 180, 186)
WBC_CYTO = (190, 170, 215)
WBC_NUC = (95, 50, 140)


@dataclass
class SyntheticField:
    image: np.ndarray  # RGB uint8
    labels: np.ndarray  # int32 WBC instance labels (0 = none)
    rbc_diameter: float
    wbc_centres: list[tuple[float, float]] = field(default_factory=list)
    wbc_diameters: list[float] = field(default_factory=list)


def synthetic_field(height: int = 240, width: int = 320, rbc_diameter: float = 24.0, *,
                    wbc: list[tuple[float, float, float]] | None = None, n_rbc: int | None = None,
                    touching: bool = True, noise: float = 4.0, seed: int = 0) -> SyntheticField:
    """A field with RBC discs of `rbc_diameter` (some touching) and WBC discs given as (x, y, diameter).

    `wbc=None` places one WBC of 1.8 RBC diameters in the middle.
    """
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = BACKGROUND
    r = rbc_diameter / 2
    if wbc is None:
        wbc = [(width / 2, height / 2, 1.8 * rbc_diameter)]
    occupied = np.zeros((height, width), np.uint8)
    for x, y, d in wbc:
        cv2.circle(occupied, (int(round(x)), int(round(y))), int(round(d / 2 + 2)), 1, -1)
    n_rbc = n_rbc if n_rbc is not None else int(0.35 * height * width / (np.pi * r * r))
    placed: list[tuple[float, float]] = []
    for _ in range(n_rbc * 30):
        if len(placed) >= n_rbc:
            break
        cx, cy = rng.uniform(-r / 2, width + r / 2), rng.uniform(-r / 2, height + r / 2)
        dmin = min((np.hypot(cx - px, cy - py) for px, py in placed), default=1e9)
        if dmin < (1.9 if touching else 2.3) * r:
            continue
        if occupied[int(np.clip(cy, 0, height - 1)), int(np.clip(cx, 0, width - 1))]:
            continue
        tmp = np.zeros_like(occupied)
        cv2.circle(tmp, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1)
        if (tmp & occupied).any():
            continue
        placed.append((cx, cy))
    s = 16  # sub-pixel drawing
    for cx, cy in placed:
        c = (int(round(cx * s)), int(round(cy * s)))
        cv2.circle(img, c, int(round(r * s)), RBC, -1, lineType=cv2.LINE_AA, shift=4)
        cv2.circle(img, c, int(round(r * 0.4 * s)), RBC_PALLOR, -1, lineType=cv2.LINE_AA, shift=4)
    labels = np.zeros((height, width), np.int32)
    for k, (x, y, d) in enumerate(wbc, start=1):
        c = (int(round(x * s)), int(round(y * s)))
        cv2.circle(img, c, int(round(d / 2 * s)), WBC_CYTO, -1, lineType=cv2.LINE_AA, shift=4)
        cv2.circle(img, c, int(round(d * 0.32 * s)), WBC_NUC, -1, lineType=cv2.LINE_AA, shift=4)
        cv2.circle(labels, (int(round(x)), int(round(y))), int(round(d / 2)), k, -1)
    if noise > 0:
        img = np.clip(img.astype(np.float32) + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
    return SyntheticField(img, labels, rbc_diameter, [(x, y) for x, y, _ in wbc], [d for *_, d in wbc])
