"""Instance post-processing of a WBC label image, in red-cell units: merge over-split cells, drop
instances without a stained nucleus.

Two rules, each a pure function of a label image (int, 0 = background) at the segmenter's working
scale, where red cells are `rbc_diameter_px` wide; areas are in *red-cell disc areas*
(pi/4 * rbc_diameter_px**2), so the rules mean the same at any magnification.

1. `merge_split_instances` - one cell cut in two by the watershed (a lobed neutrophil or eosinophil
   nucleus, a monocyte's folded nucleus gives two centredness peaks). Two touching instances are
   merged when the centredness map barely dips between them: the *saddle* (the highest centredness
   on their shared border) is within `dynamics` of the lower of their two peaks (the h-dynamics
   rule of marker-based watershed), and their union is still one plausible cell: at most
   `max_area_rbc` red-cell areas and convex (solidity >= `min_solidity`). Two touching cells have a
   deep dip (the network predicts a low centredness at a cell border) and stay apart.
2. `drop_unstained` - red cells, overlapping red-cell pairs and dark dirt (grey, no stain) and loose
   platelet clumps (a few small stained fragments) look like a WBC to the network at low
   confidence. Every WBC has a nucleus stained purple by the Romanowsky stains (Wright, Giemsa,
   Leishman, May-Gruenwald): it absorbs green light much more than blue, unlike red cells (pink or
   lavender) and unlike neutral grey dirt. `purple_index` measures that per pixel as the optical
   density difference OD(green) - OD(blue), relative to the field's own red cells; an instance
   with fewer than `min_nucleus_rbc` red-cell areas of pixels above `stain_threshold` is dropped
   (a lymphocyte's nucleus is ~1 red-cell area, a platelet clump's stained fragments ~0.1-0.4).

`FilterConfig` holds the thresholds (the segmenter folder's config.json, see
`bloodsmear.models.segmenter.FastSegConfig`); a 0 threshold switches its rule off. No function here
modifies its input.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: Pixels whose mean optical density is below this are background (not part of any cell).
CELL_OD = 0.1
#: Fewer red-cell pixels than this: the red-cell reference of `purple_index` is 0.
MIN_REFERENCE_PX = 50


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the two rules (documented defaults, tuned on LISC all + BCCD train/val)."""

    merge_dynamics: float = 0.15  # merge touching instances whose centredness saddle is this close to the lower peak
    merge_max_area_rbc: float = 16.0  # ... only into a cell of at most this many red-cell disc areas
    merge_min_solidity: float = 0.85  # ... whose union is this convex (area / convex hull area)
    min_nucleus_rbc: float = 0.45  # instances with less nucleus-stained area (red-cell disc areas) are dropped
    stain_threshold: float = 0.25  # purple index (OD green - OD blue above the red cells') of a nucleus pixel


def rbc_area(rbc_diameter_px: float) -> float:
    """Area in px of a red-cell disc of that diameter."""
    return float(np.pi / 4 * rbc_diameter_px ** 2)


def relabel(lab: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..N in order of their old ids (int32, 0 stays background)."""
    ids = np.unique(lab)
    ids = ids[ids > 0]
    lut = np.zeros(int(lab.max()) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[lab]


# ---------------------------------------------------------------------------------------------- merge


def touching_saddles(lab: np.ndarray, center: np.ndarray) -> dict[tuple[int, int], float]:
    """{(a, b): saddle} for every pair of 4-connected touching instances a < b; saddle = the highest
    min(center) over the pixel pairs across their shared border."""
    n = int(lab.max()) + 1
    keys, vals = [], []
    for a, b, ca, cb in ((lab[:, :-1], lab[:, 1:], center[:, :-1], center[:, 1:]),
                         (lab[:-1, :], lab[1:, :], center[:-1, :], center[1:, :])):
        m = (a != b) & (a > 0) & (b > 0)
        if m.any():
            lo, hi = np.minimum(a[m], b[m]).astype(np.int64), np.maximum(a[m], b[m]).astype(np.int64)
            keys.append(lo * n + hi)
            vals.append(np.minimum(ca[m], cb[m]).astype(np.float64))
    if not keys:
        return {}
    k, v = np.concatenate(keys), np.concatenate(vals)
    uk, inv = np.unique(k, return_inverse=True)
    best = np.full(len(uk), -np.inf)
    np.maximum.at(best, inv, v)
    return {(int(x // n), int(x % n)): float(s) for x, s in zip(uk, best)}


def solidity(mask: np.ndarray) -> float:
    """Area / convex-hull area of a boolean mask (pixel counts; 1.0 for a convex blob, 0 when empty)."""
    m = mask.astype(np.uint8)
    area = int(m.sum())
    if area == 0:
        return 0.0
    pts = cv2.findNonZero(m)
    hull = np.zeros_like(m)
    cv2.fillConvexPoly(hull, cv2.convexHull(pts), 1)
    return area / max(area, int(hull.sum()))


def merge_split_instances(lab: np.ndarray, center: np.ndarray, rbc_diameter_px: float, *, dynamics: float = 0.15,
                          max_area_rbc: float = 16.0, min_solidity: float = 0.85) -> np.ndarray:
    """A new label image (int32, relabelled 1..N) where touching instances that are one cell are merged.

    A touching pair is *shallow* when min(peak_a, peak_b) - saddle <= `dynamics` (peak = an instance's
    highest centredness). A union is *one plausible cell* when it covers at most `max_area_rbc`
    red-cell disc areas and its solidity is >= `min_solidity`. First every connected group of 3+
    instances linked by shallow pairs is merged whole when the whole is one plausible cell (a cell cut
    in three: any two of its pieces are a notched disc); then the remaining shallow pairs merge from
    the highest saddle down (groups grow like a Kruskal tree; peaks of merged groups are their maxima)
    when their union is one plausible cell.
    """
    lab = np.asarray(lab)
    if dynamics <= 0 or lab.max() < 2:
        return relabel(lab.astype(np.int32, copy=True))
    center = np.asarray(center, np.float64)
    n = int(lab.max()) + 1
    flat = lab.ravel()
    peak = np.zeros(n)
    np.maximum.at(peak, flat, center.ravel())
    shallow = [(a, b, s) for (a, b), s in sorted(touching_saddles(lab, center).items(), key=lambda kv: -kv[1])
               if min(peak[a], peak[b]) - s <= dynamics]
    if not shallow:
        return relabel(lab.astype(np.int32, copy=True))
    area = np.bincount(flat, minlength=n).astype(np.float64)
    boxes = [None, *ndi.find_objects(lab.astype(np.int32))]
    max_area = max_area_rbc * rbc_area(rbc_diameter_px)

    def one_cell(ids: list[int]) -> bool:
        if area[ids].sum() > max_area:
            return False
        y0, y1 = min(boxes[i][0].start for i in ids), max(boxes[i][0].stop for i in ids)
        x0, x1 = min(boxes[i][1].start for i in ids), max(boxes[i][1].stop for i in ids)
        return solidity(np.isin(lab[y0:y1, x0:x1], ids)) >= min_solidity

    parent = np.arange(n)
    members: dict[int, list[int]] = {i: [i] for i in range(1, n)}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(ra: int, rb: int) -> None:
        parent[rb] = ra
        members[ra] = members[ra] + members.pop(rb)
        peak[ra] = max(peak[ra], peak[rb])

    pa, pb = np.array([p[0] for p in shallow]), np.array([p[1] for p in shallow])
    _, comp = connected_components(coo_matrix((np.ones(len(pa)), (pa, pb)), shape=(n, n)), directed=False)
    nodes = np.unique(np.concatenate([pa, pb]))
    for c in np.unique(comp[nodes]):
        ids = [int(i) for i in nodes[comp[nodes] == c]]
        if len(ids) > 2 and one_cell(ids):
            for i in ids[1:]:
                join(find(ids[0]), find(i))
    for a, b, s in shallow:
        ra, rb = find(a), find(b)
        if ra != rb and min(peak[ra], peak[rb]) - s <= dynamics and one_cell(members[ra] + members[rb]):
            join(ra, rb)
    roots = np.array([find(i) for i in range(n)], np.int32)
    roots[0] = 0
    return relabel(roots[lab])


# ---------------------------------------------------------------------------------------------- stain


def _percentile_u8(channel: np.ndarray, q: float) -> float:
    """The q-th percentile (0..100) of a uint8 array, from its histogram."""
    cdf = np.cumsum(np.bincount(channel.ravel(), minlength=256))
    return float(np.searchsorted(cdf, q / 100.0 * cdf[-1]))


def purple_index(rgb: np.ndarray, exclude: np.ndarray | None = None, *, margin_px: int = 2) -> np.ndarray:
    """Per-pixel OD(green) - OD(blue) minus the red cells' median (float32, H x W).

    Optical density OD = -log(I / I_background) per channel, I_background = the image's 99th
    percentile (its bright, empty glass); the red-cell reference is the median over the pixels
    darker than the background (mean OD > `CELL_OD`) outside `exclude` (e.g. the instances, grown
    by `margin_px`); 0 when fewer than `MIN_REFERENCE_PX` such pixels remain.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    u8 = rgb if rgb.dtype == np.uint8 else np.clip(rgb, 0, 255).astype(np.uint8)
    levels = np.arange(256, dtype=np.float32) + 1.0
    # per-channel OD lookup tables: exact -log((v + 1) / (background + 1)) for every uint8 value
    lut = [np.log((_percentile_u8(u8[::2, ::2, c], 99) + 1.0) / levels).astype(np.float32) for c in range(3)]
    g, b = lut[1][u8[..., 1]], lut[2][u8[..., 2]]
    p = g - b
    cells = (lut[0][u8[..., 0]] + g + b) > 3 * CELL_OD
    if exclude is not None and exclude.any():
        ex = exclude.astype(np.uint8)
        if margin_px > 0:
            ex = cv2.dilate(ex, np.ones((2 * margin_px + 1, 2 * margin_px + 1), np.uint8))
        cells &= ex == 0
    ref = float(np.median(p[cells])) if cells.sum() >= MIN_REFERENCE_PX else 0.0
    return p - np.float32(ref)


def nucleus_areas(lab: np.ndarray, rgb: np.ndarray, *, stain_threshold: float = 0.25, margin_px: int = 2) -> np.ndarray:
    """Per label (index = label id, [0] = background) the number of nucleus-stained pixels
    (`purple_index` with the instances, grown by `margin_px`, left out of the red-cell reference)."""
    lab = np.asarray(lab)
    stained = purple_index(rgb, lab > 0, margin_px=margin_px) > stain_threshold
    return np.bincount(lab.ravel(), weights=stained.ravel(), minlength=int(lab.max()) + 1)


def drop_unstained(lab: np.ndarray, rgb: np.ndarray, rbc_diameter_px: float, *, min_nucleus_rbc: float = 0.45,
                   stain_threshold: float = 0.25) -> np.ndarray:
    """A new label image (int32, relabelled) without the instances holding less than `min_nucleus_rbc`
    red-cell disc areas of nucleus-stained pixels (`purple_index` > `stain_threshold`; the red-cell
    reference leaves out the instances grown by a tenth of a red-cell diameter)."""
    lab = np.asarray(lab)
    if rgb.shape[:2] != lab.shape:
        raise ValueError(f"label image {lab.shape} and RGB image {rgb.shape[:2]} differ in size")
    if min_nucleus_rbc <= 0 or lab.max() == 0:
        return relabel(lab.astype(np.int32, copy=True))
    nuc = nucleus_areas(lab, rgb, stain_threshold=stain_threshold, margin_px=max(1, round(0.1 * rbc_diameter_px)))
    weak = np.flatnonzero(nuc < min_nucleus_rbc * rbc_area(rbc_diameter_px))
    weak = weak[weak > 0]
    out = lab.astype(np.int32, copy=True)
    if len(weak):
        out[np.isin(out, weak)] = 0
    return relabel(out)
