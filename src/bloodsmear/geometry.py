"""Box and mask geometry shared by data readers, metrics, preprocessing, models and training.

Pure functions over numpy arrays and (x1, y1, x2, y2) boxes; inputs are never modified.

    box_iou((0, 0, 40, 40), (10, 0, 50, 40))        # 0.6
    box_iou_matrix(gt_boxes, pred_boxes)             # (N, M) float64, torchvision.ops.box_iou
    poly = mask_to_polygon(mask, epsilon=0.6)        # (K, 2) float x, y of the largest outer contour
    m = polygon_to_mask(poly, (h, w))                # bool (h, w), the polygon filled
    full = paste_mask(mask, (x0, y0), (h, w))        # bool (h, w), `mask` with its top-left at (x0, y0)
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou as _tv_box_iou

__all__ = ["box_iou", "box_iou_matrix", "mask_to_polygon", "polygon_to_mask", "paste_mask"]


def box_iou_matrix(a: Sequence[Sequence[float]] | np.ndarray, b: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """(N, M) IoU of every (x1, y1, x2, y2) box of `a` with every box of `b` (torchvision.ops.box_iou in
    float64, so the same digits as the arithmetic written out in Python); 0 where the union is empty."""
    ta = torch.as_tensor(np.asarray(a, dtype=np.float64).reshape(-1, 4))
    tb = torch.as_tensor(np.asarray(b, dtype=np.float64).reshape(-1, 4))
    if len(ta) == 0 or len(tb) == 0:
        return np.zeros((len(ta), len(tb)))
    # torchvision divides by the union as it is: an empty union (0/0) and a degenerate box's negative
    # union (-0.0) count as no overlap, 0.0 (an overlap > 0 implies a union > 0)
    return (torch.nan_to_num(_tv_box_iou(ta, tb), nan=0.0) + 0.0).numpy()


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes (0.0 when they do not overlap)."""
    return float(box_iou_matrix([a], [b])[0, 0])


def mask_to_polygon(mask: np.ndarray, *, epsilon: float = 0.0, chain: str = "none") -> np.ndarray:
    """The largest outer contour (by area) of a mask as (K, 2) float x, y pixel centres; (0, 2) when the
    mask is empty. `chain` "none" keeps every boundary pixel, "simple" only the corners of straight runs
    (cv2.CHAIN_APPROX_NONE / SIMPLE). With `epsilon` > 0 a contour of more than 8 points is simplified by
    Douglas-Peucker (cv2.approxPolyDP, closed) when that leaves at least 3 points."""
    modes = {"none": cv2.CHAIN_APPROX_NONE, "simple": cv2.CHAIN_APPROX_SIMPLE}
    if chain not in modes:
        raise ValueError(f"unknown contour chain {chain!r} (valid: {', '.join(modes)})")
    m = np.ascontiguousarray(np.asarray(mask).astype(np.uint8))
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, modes[chain])
    if not contours:
        return np.zeros((0, 2))
    c = max(contours, key=cv2.contourArea)
    if epsilon > 0 and len(c) > 8:
        c2 = cv2.approxPolyDP(c, epsilon, True)
        if len(c2) >= 3:
            c = c2
    return c.reshape(-1, 2).astype(float)


def polygon_to_mask(polygon: np.ndarray, shape: tuple[int, int], *, origin: tuple[float, float] = (0, 0),
                    subpixel: bool = False) -> np.ndarray:
    """Boolean (height, width) mask of a filled polygon whose coordinates are taken relative to `origin`
    (x, y). Vertices are rounded to whole pixels, or with `subpixel` to 1/16 pixel (cv2.fillPoly shift 4)."""
    pts = np.asarray(polygon, dtype=float) - origin
    out = np.zeros(shape, np.uint8)
    if subpixel:
        cv2.fillPoly(out, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    else:
        cv2.fillPoly(out, [np.round(pts).astype(np.int32)], 1)
    return out.astype(bool)


def paste_mask(mask: np.ndarray, offset: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """A new boolean array of `shape` (height, width) holding `mask` with its top-left pixel at `offset`
    (x, y; may be negative or outside), clipped to the array; False elsewhere."""
    m = np.asarray(mask, dtype=bool)
    x0, y0 = int(offset[0]), int(offset[1])
    height, width = shape
    out = np.zeros((height, width), dtype=bool)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(height, y0 + m.shape[0]), min(width, x0 + m.shape[1])
    if ye > ys and xe > xs:
        out[ys:ye, xs:xe] = m[ys - y0:ye - y0, xs - x0:xe - x0]
    return out
