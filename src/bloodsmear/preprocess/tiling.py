"""Overlapping tiles for images that are still large at the working scale, and the merge of the
instances found in each tile (in the spirit of stardist's `big.py`).

Large photos are mostly handled by downscaling to the working scale (a 4032x3024 phone photo with
~400 px red cells becomes ~200x150 px); tiling is for what is still larger than `size` after that.

Merge rule: every tile reports its instances in image coordinates, flagged *cut* when they touch an
inner tile edge (an edge that is not the image border). Candidates are ranked: whole before cut, then
by how central they lie in their tile, then by score; a candidate is dropped when it overlaps an
already kept one (mask IoU, or box IoU without masks, >= `iou`, or more than half of the smaller one
covered). With `overlap` >= the largest cell diameter every cell is whole in at least one tile, so
it is counted once, from the tile where it is most central.

Pure functions: the input image is never modified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import cv2
import numpy as np

from bloodsmear.types import Cell


@dataclass(frozen=True)
class Tile:
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def _starts(n: int, size: int, overlap: int) -> list[int]:
    if n <= size:
        return [0]
    step = max(1, size - overlap)
    k = int(np.ceil((n - size) / step))
    return [int(round(i * (n - size) / k)) for i in range(k + 1)]  # evenly spread, last flush with the end


def iter_tiles(h: int, w: int, size: int, overlap: int) -> Iterator[Tile]:
    """Tiles of at most `size` px a side covering an h x w image, neighbours overlapping >= `overlap`."""
    if overlap >= size:
        raise ValueError(f"tile overlap ({overlap}) must be smaller than the tile size ({size})")
    for y in _starts(h, size, overlap):
        for x in _starts(w, size, overlap):
            yield Tile(y, min(h, y + size), x, min(w, x + size))


def shift_cell(c: Cell, dx: float, dy: float) -> Cell:
    """A copy of `c` moved by (dx, dy) px (mask and attributes shared)."""
    poly = None if c.polygon is None else c.polygon + np.array([dx, dy])
    box = None if c.box is None else (c.box[0] + dx, c.box[1] + dy, c.box[2] + dx, c.box[3] + dy)
    return Cell(label=c.label, polygon=poly, box=box, mask=c.mask, mask_full=False, score=c.score,
                subclass=c.subclass, attributes=dict(c.attributes))


def _is_cut(box, tile: Tile, h: int, w: int, tol: float = 1.0) -> bool:
    x1, y1, x2, y2 = box
    return ((tile.x0 > 0 and x1 <= tile.x0 + tol) or (tile.y0 > 0 and y1 <= tile.y0 + tol)
            or (tile.x1 < w and x2 >= tile.x1 - tol) or (tile.y1 < h and y2 >= tile.y1 - tol))


def _centrality(box, tile: Tile) -> float:
    """Distance of the box centre to the nearest tile edge (bigger is more central)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return min(cx - tile.x0, tile.x1 - cx, cy - tile.y0, tile.y1 - cy)


def _overlap(a: Cell, b: Cell) -> tuple[float, float]:
    """(IoU, intersection / smaller area) of two cells: by masks when both have one, else by boxes."""
    ax1, ay1, ax2, ay2 = a.box
    bx1, by1, bx2, by2 = b.box
    ix1, iy1, ix2, iy2 = max(ax1, bx1), max(ay1, by1), min(ax2, bx2), min(ay2, by2)
    if ix2 <= ix1 or iy2 <= iy1:
        return 0.0, 0.0
    if a.mask is not None and b.mask is not None and not a.mask_full and not b.mask_full:
        X1, Y1, X2, Y2 = (int(round(v)) for v in (ix1, iy1, ix2, iy2))
        ma = a.mask[Y1 - int(round(ay1)):Y2 - int(round(ay1)), X1 - int(round(ax1)):X2 - int(round(ax1))]
        mb = b.mask[Y1 - int(round(by1)):Y2 - int(round(by1)), X1 - int(round(bx1)):X2 - int(round(bx1))]
        hh, ww = min(ma.shape[0], mb.shape[0]), min(ma.shape[1], mb.shape[1])
        inter = float(np.count_nonzero(ma[:hh, :ww] & mb[:hh, :ww]))
        sa, sb = float(np.count_nonzero(a.mask)), float(np.count_nonzero(b.mask))
    else:
        inter = (ix2 - ix1) * (iy2 - iy1)
        sa, sb = (ax2 - ax1) * (ay2 - ay1), (bx2 - bx1) * (by2 - by1)
    union = sa + sb - inter
    return (inter / union if union > 0 else 0.0), (inter / min(sa, sb) if min(sa, sb) > 0 else 0.0)


def merge_tile_cells(candidates: list[tuple[Cell, Tile, bool]], *, iou: float = 0.3) -> list[Cell]:
    """Keep each cell once from (cell in image coordinates, its tile, cut) candidates (see module doc)."""
    order = sorted(range(len(candidates)), key=lambda i: (candidates[i][2], -_centrality(candidates[i][0].box, candidates[i][1]),
                                                          -(candidates[i][0].score or 0.0)))
    kept: list[Cell] = []
    for i in order:
        c = candidates[i][0]
        if all(max(_overlap(c, k)[0] / max(iou, 1e-9), _overlap(c, k)[1] / 0.5) < 1.0 for k in kept):
            kept.append(c)
    kept.sort(key=lambda c: -(c.score or 0.0))
    return kept


def predict_tiled(predict: Callable[[np.ndarray], list[Cell]], rgb: np.ndarray, *, size: int = 1024,
                  overlap: int = 128, iou: float = 0.3) -> list[Cell]:
    """Run `predict` (image -> cells in that image's pixels) over overlapping tiles and merge.

    An image no larger than `size` is passed whole. Tiles are views, `predict` must not modify them.
    """
    h, w = rgb.shape[:2]
    if max(h, w) <= size:
        return list(predict(rgb))
    cands: list[tuple[Cell, Tile, bool]] = []
    for t in iter_tiles(h, w, size, overlap):
        for c in predict(rgb[t.slices]):
            g = shift_cell(c, t.x0, t.y0)
            cands.append((g, t, _is_cut(g.box, t, h, w)))
    return merge_tile_cells(cands, iou=iou)


def cell_to_original(c: Cell, fx: float, fy: float, width: int, height: int) -> Cell:
    """A working-scale cell in original pixels: polygon (pixel centres), box (pixel edges) and mask
    (resized to the original box, nearest neighbour) divided by the per-axis factors, clipped."""
    poly = None
    if c.polygon is not None and len(c.polygon):
        poly = (c.polygon + 0.5) / np.array([fx, fy]) - 0.5
        poly[:, 0] = np.clip(poly[:, 0], 0, width - 1)
        poly[:, 1] = np.clip(poly[:, 1], 0, height - 1)
    box = mask = None
    if c.box is not None:
        x1, y1, x2, y2 = c.box
        box = (max(0.0, x1 / fx), max(0.0, y1 / fy), min(float(width), x2 / fx), min(float(height), y2 / fy))
        if c.mask is not None and not c.mask_full:
            X1, Y1, X2, Y2 = (int(round(v)) for v in box)
            if X2 > X1 and Y2 > Y1:
                mask = cv2.resize(c.mask.astype(np.uint8), (X2 - X1, Y2 - Y1), interpolation=cv2.INTER_LINEAR) > 0
    return Cell(label=c.label, polygon=poly, box=box, mask=mask, score=c.score, subclass=c.subclass,
                attributes=dict(c.attributes))
