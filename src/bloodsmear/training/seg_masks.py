"""Classical whole-cell WBC masks, used to make segmentation training targets where a dataset gives
only boxes (BCCD) or only the image class (LISC, PBC).

1. Nucleus: the WBC nucleus is the most saturated (purple) thing in a smear. HSV saturation,
   smoothed, thresholded by Otsu *inside the search region*, then the components kept.
2. Whole cell: OpenCV GrabCut initialised with a rectangle (the annotated box, or the nucleus box
   grown by a margin), the nucleus pixels as sure foreground and everything outside the rectangle as
   sure background; the component touching the nucleus is kept, smoothed by an opening and its holes
   filled.

Pure functions; inputs are never modified. Documented in docs/training-masks.md.
"""

from __future__ import annotations

import cv2
import numpy as np

from bloodsmear.preprocess.scale import fill_holes

Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive end)


def saturation(rgb: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    return cv2.GaussianBlur(hsv[:, :, 1], (0, 0), sigma)


def nucleus_in_region(rgb: np.ndarray, rect: Rect, *, min_frac: float = 0.01) -> np.ndarray:
    """Boolean full-image mask of the nucleus (high saturation, Otsu inside `rect`)."""
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = _clip(rect, w, h)
    s = saturation(rgb[y1:y2, x1:x2])
    t, _ = cv2.threshold(s, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Otsu inside a box with little nucleus can split RBCs from background: demand real saturation.
    t = max(t, _background_saturation(rgb) + 25)
    m = (s > t).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = np.zeros_like(m)
    min_area = max(4, int(min_frac * m.size))
    for k in range(1, n):
        if stats[k, cv2.CC_STAT_AREA] >= min_area:
            keep[lab == k] = 1
    out = np.zeros((h, w), bool)
    out[y1:y2, x1:x2] = keep.astype(bool)
    return out


def _background_saturation(rgb: np.ndarray) -> float:
    s = saturation(rgb[::4, ::4], sigma=1.0)
    return float(np.percentile(s, 50))


def _clip(rect: Rect, w: int, h: int) -> Rect:
    x1, y1, x2, y2 = (int(round(v)) for v in rect)
    return max(0, x1), max(0, y1), min(w, x2), min(h, y2)


def grow(rect: Rect, margin: float, w: int, h: int) -> Rect:
    x1, y1, x2, y2 = rect
    return _clip((x1 - margin, y1 - margin, x2 + margin, y2 + margin), w, h)


def whole_cell_mask(rgb: np.ndarray, rect: Rect, nucleus: np.ndarray | None = None, *,
                    iters: int = 4, context: float = 0.25) -> np.ndarray:
    """Boolean full-image whole-cell mask of the WBC inside `rect` (GrabCut, nucleus = sure FG).

    Returns an empty mask when no nucleus is found in the rectangle.
    """
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = _clip(rect, w, h)
    if x2 - x1 < 4 or y2 - y1 < 4:
        return np.zeros((h, w), bool)
    if nucleus is None:
        nucleus = nucleus_in_region(rgb, (x1, y1, x2, y2))
    if not nucleus[y1:y2, x1:x2].any():
        return np.zeros((h, w), bool)
    side = max(x2 - x1, y2 - y1)
    rx1, ry1, rx2, ry2 = grow((x1, y1, x2, y2), context * side, w, h)
    roi = np.ascontiguousarray(rgb[ry1:ry2, rx1:rx2, ::-1])  # GrabCut models BGR colour, any order works
    gc = np.full(roi.shape[:2], cv2.GC_BGD, np.uint8)
    gc[y1 - ry1:y2 - ry1, x1 - rx1:x2 - rx1] = cv2.GC_PR_FGD
    nuc_roi = nucleus[ry1:ry2, rx1:rx2]
    inside = np.zeros_like(nuc_roi)
    inside[y1 - ry1:y2 - ry1, x1 - rx1:x2 - rx1] = True
    gc[nuc_roi & inside] = cv2.GC_FGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(roi, gc, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        fg = (nuc_roi & inside).astype(np.uint8)
    else:
        fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
    k = max(3, int(side * 0.06) | 1)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    fg = fill_holes(fg | (nuc_roi & inside).astype(np.uint8))
    n, lab = cv2.connectedComponents(fg, connectivity=8)
    touching = np.unique(lab[(nuc_roi & inside) & (lab > 0)])
    fg = np.isin(lab, touching[touching > 0])
    out = np.zeros((h, w), bool)
    out[ry1:ry2, rx1:rx2] = fg
    return out


def central_wbc(rgb: np.ndarray, rbc_diameter_px: float) -> np.ndarray:
    """Whole-cell mask of THE WBC of a single-WBC field (LISC) or crop (PBC).

    The nucleus is the component with the largest excess saturation (above an Otsu threshold among
    the coloured pixels), mildly weighted towards the image centre; its box is grown by 0.35 RBC diameters (plus 15 % of its size)
    and handed to `whole_cell_mask`.
    """
    h, w = rgb.shape[:2]
    sat = saturation(rgb)
    bg = _background_saturation(rgb)
    coloured = sat[sat > bg + 10]
    if coloured.size < 16:
        return np.zeros((h, w), bool)
    # Otsu among the coloured pixels separates the (most saturated) nucleus from the red cells
    t, _ = cv2.threshold(coloured.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    t = max(float(t), bg + 25)
    nuc_all = (sat > t).astype(np.uint8)
    n, lab, stats, cent = cv2.connectedComponentsWithStats(nuc_all, connectivity=8)
    if n <= 1:
        return np.zeros((h, w), bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    excess = np.bincount(lab.ravel(), weights=(sat.astype(float) - t).ravel(), minlength=n)[1:]
    dist = np.hypot(cent[1:, 0] - w / 2, cent[1:, 1] - h / 2) / (0.5 * np.hypot(w, h))
    score = excess / (1.0 + dist ** 2)
    k0 = int(np.argmax(score)) + 1
    # a lobed nucleus is several components: take those within ~1 RBC diameter of the chosen one
    x, y, bw, bh = stats[k0, :4]
    near = (x - rbc_diameter_px * 0.6, y - rbc_diameter_px * 0.6,
            x + bw + rbc_diameter_px * 0.6, y + bh + rbc_diameter_px * 0.6)
    nuc = np.zeros((h, w), bool)
    for k in range(1, n):
        sx, sy, sw, sh, a = stats[k]
        if a >= 0.02 * areas.max() and sx >= near[0] and sy >= near[1] and sx + sw <= near[2] and sy + sh <= near[3]:
            nuc |= lab == k
    ys, xs = np.nonzero(nuc)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    margin = 0.35 * rbc_diameter_px + 0.15 * max(box[2] - box[0], box[3] - box[1])
    return whole_cell_mask(rgb, grow(box, margin, w, h), nuc)
