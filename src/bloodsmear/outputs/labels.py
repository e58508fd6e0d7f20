"""Label placement for overlays: text boxes next to their cells, no two overlapping, none leaving the image.

`place_labels` is greedy and deterministic. Labels are placed in priority order (default: the biggest cell
first); each tries candidate places around its cell - above, below, left, right, inside its box's corners,
then the outside places nudged farther out (`rings`) - clamped into the image. A candidate that overlaps a
label already placed (or a `taken` rectangle) is never used; among the free ones the cheapest wins: the
share of the label covering other cells' boxes, plus a smaller penalty for covering its own cell and for
each ring farther out. A label with no free candidate gets None (the caller numbers it or lists it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Rect = tuple[float, float, float, float]  # x1, y1, x2, y2

OWN_COVER_WEIGHT = 0.5  # covering its own cell costs half as much as covering another's
RING_PENALTY = 0.15  # each ring farther out costs as much as covering 15 % of another cell
_ALIGN = (0.0, 0.5, 1.0)  # above / below: label left-aligned, centred, right-aligned with the box


def _candidates(box: Rect, w: float, h: float, gap: float, rings: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (K, 2) of candidate places and each one's ring, in order of preference."""
    x1, y1, x2, y2 = box
    bw, cy = x2 - x1, (y1 + y2) / 2
    out: list[tuple[float, float, int]] = []
    for r in range(rings + 1):
        dy, dx = gap + r * (h + gap), gap + r * (w / 2 + gap)
        out += [(x1 + a * (bw - w), y1 - dy - h, r) for a in _ALIGN]  # above
        out += [(x1 + a * (bw - w), y2 + dy, r) for a in _ALIGN]  # below
        out += [(x1 - dx - w, cy - h / 2, r), (x2 + dx, cy - h / 2, r)]  # left, right
        if r == 0:  # inside the box's corners
            out += [(x1 + gap, y1 + gap, 0), (x2 - gap - w, y1 + gap, 0),
                    (x1 + gap, y2 - gap - h, 0), (x2 - gap - w, y2 - gap - h, 0)]
    arr = np.asarray(out, dtype=float)
    return arr[:, :2], arr[:, 2]


def _overlap_area(c: np.ndarray, w: float, h: float, rects: np.ndarray) -> np.ndarray:
    """(K, M) overlap areas between K candidate labels (top-left `c`, size w x h) and M rectangles."""
    ix = np.minimum(c[:, None, 0] + w, rects[None, :, 2]) - np.maximum(c[:, None, 0], rects[None, :, 0])
    iy = np.minimum(c[:, None, 1] + h, rects[None, :, 3]) - np.maximum(c[:, None, 1], rects[None, :, 1])
    return np.clip(ix, 0, None) * np.clip(iy, 0, None)


def place_labels(boxes: Sequence[Rect], sizes: Sequence[tuple[float, float]], image_size: tuple[int, int],
                 *, priority: Sequence[float] | None = None, taken: Sequence[Rect] = (), gap: float = 2.0,
                 spacing: float = 1.0, rings: int = 3) -> list[tuple[int, int] | None]:
    """For each label i (size `sizes[i]` = (w, h), belonging to the cell `boxes[i]` = (x1, y1, x2, y2)),
    the integer top-left corner of its place, or None where no candidate is free.

    Guarantees: every placed label lies inside `image_size` = (width, height); no two placed labels, and no
    placed label and a `taken` rectangle, come closer than `spacing` pixels (they never overlap). Labels
    are placed highest `priority` first (default: box area; ties by input order). Inputs are not modified.
    """
    n = len(boxes)
    if len(sizes) != n or (priority is not None and len(priority) != n):
        raise ValueError("boxes, sizes and priority must have the same length")
    iw, ih = image_size
    cells = np.asarray(boxes, dtype=float).reshape(-1, 4)
    if priority is None:
        priority = list(np.clip(cells[:, 2] - cells[:, 0], 0, None) * np.clip(cells[:, 3] - cells[:, 1], 0, None))
    order = sorted(range(n), key=lambda i: (-float(priority[i]), i))
    placed = np.empty((n + len(taken), 4), dtype=float)  # rectangles no label may touch
    m = len(taken)
    if m:  # stored grown by `spacing`: a label must not come closer than that
        placed[:m] = np.asarray(taken, dtype=float).reshape(-1, 4) + (-spacing, -spacing, spacing, spacing)
    out: list[tuple[int, int] | None] = [None] * n
    for i in order:
        w, h = (float(np.ceil(v)) for v in sizes[i])
        if w <= 0 or h <= 0 or w > iw or h > ih:
            continue
        c, ring = _candidates(tuple(cells[i]), w, h, gap, rings)
        c = np.floor(np.minimum(np.maximum(c, 0.0), (iw - w, ih - h)))  # clamped into the image
        if m:
            free = ~(_overlap_area(c, w, h, placed[:m]) > 0).any(axis=1)
            c, ring = c[free], ring[free]
        if not len(c):
            continue
        cover = _overlap_area(c, w, h, cells) / (w * h)
        own = cover[:, i].copy()
        cover[:, i] = 0.0
        cost = cover.sum(axis=1) + OWN_COVER_WEIGHT * own + RING_PENALTY * ring
        k = int(np.argmin(cost))  # argmin keeps the first of equal costs: the preferred order
        x, y = int(c[k, 0]), int(c[k, 1])
        out[i] = (x, y)
        placed[m] = (x - spacing, y - spacing, x + w + spacing, y + h + spacing)
        m += 1
    return out

