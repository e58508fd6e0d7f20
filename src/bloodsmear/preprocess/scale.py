"""Magnification from the red cells: the typical RBC diameter of a smear field, in pixels.

Fields come at very different magnifications (BCCD 640x480 with RBCs ~90 px, LISC 720x576 with RBCs
~40 px, RV-PBS phone photos 4032x3024 with RBCs of several hundred px). Every segmenter works at a
fixed *working scale* (its `rbc_diameter_px`); `working_scale()` gives the factor that brings a field
there.

Method (granulometry, two passes): cells are the pixels darker than the background in the green
channel (Otsu), holes (RBC central pallor) are filled, and the *pattern spectrum* of that mask is
computed: the area removed by a morphological opening with a disc of radius r, per log-radius step.
Openings are computed exactly with two distance transforms each (opening_r(X) = pixels within r of
{dt_X >= r}). The spectrum peaks at the typical cell radius; touching and overlapping cells (unions
of discs) do not move the peak, and the few WBCs add a minor peak at a larger radius. When clusters
of merged cells make a larger peak, the first peak of at least half the height of the highest is
taken. Pass 1 runs on a copy downscaled to ~160 px; pass 2 on a copy where the RBCs are ~20 px wide.

Fields of one folder and one pixel size come from one microscope and camera, so they share a
magnification: `choose_diameters` pools their estimates (the `--scale` modes `auto`, `field`,
`folder`), which corrects the few fields where granulometry fails (dense fields whose clumped red
cells make the larger peak, pale ring-shaped red cells, a large smudge cell). A field with no such
folder (analysed alone, or with fewer than `CONSENSUS_MIN_FIELDS` like fields) is checked against
itself: `lone_field_choice` trusts its estimate only where it is plausible for the field's size and
agrees with those of its parts (`part_windows`), else takes its parts' median or a prior from its size.

All functions are pure: the input image is never modified.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Hashable, Sequence

import cv2
import numpy as np

from bloodsmear.preprocess.resize import resize_by

#: RBC diameter (px) at which the second, precise pass is run.
_PASS2_RBC_PX = 20.0
_PASS1_SIDE = 160
#: `--scale` values besides a red-cell diameter in pixels (see `choose_diameters`).
SCALE_MODES = ("auto", "field", "folder")
#: `auto`: a field's estimate further than this factor from its folder's median is replaced by the median.
CONSENSUS_TOLERANCE = 1.33
#: Fewer fields with an estimate than this in a folder group: no consensus, every field keeps its own.
CONSENSUS_MIN_FIELDS = 3
#: A field's red-cell diameter as a share of its longer side, in the smear fields the shipped models were
#: made on: LISC 0.049-0.066 (~40 px of 720), BCCD ~0.134 (86 px of 640; 95 % of fields 0.118-0.154),
#: RV-PBS phone photos ~0.14 (4032 px wide, neutrophils ~820 px). A field with no folder to check its
#: estimate against (`lone_field_choice`) trusts it only inside this range.
PLAUSIBLE_RBC_SHARE = (0.04, 0.18)
#: The diameter a field is analysed at when neither its estimate nor those of its parts are plausible:
#: this share of its longer side (the geometric middle of LISC's and BCCD's).
PRIOR_RBC_SHARE = 0.085
#: `part_windows`: k x k overlapping windows, each half the field's height and width.
PART_GRID = 3


@dataclass(frozen=True)
class ScaleEstimate:
    """Typical red-cell diameter of a field (original pixels)."""

    diameter_px: float
    confidence: float  # 0..1: share of the pattern spectrum within +-25 % of the peak radius
    method: str = "granulometry"

    def to_dict(self) -> dict:
        return asdict(self)


def cell_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean mask of cells (darker than background in green, Otsu), RBC pallor holes filled."""
    g = np.ascontiguousarray(rgb[:, :, 1])
    g = cv2.GaussianBlur(g, (0, 0), 1.0)
    t, _ = cv2.threshold(g, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    m = (g < t).astype(np.uint8)
    return fill_holes(m).astype(bool)


def fill_holes(m: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the image border (uint8 0/1 in, uint8 0/1 out)."""
    h, w = m.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = m
    ff = pad.copy()
    mask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(ff, mask, (0, 0), 1)
    holes = ff[1:-1, 1:-1] == 0
    out = m.copy()
    out[holes] = 1
    return out


def pattern_spectrum(mask: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Area of the opening of `mask` by discs of each radius (exact, via distance transforms)."""
    m = mask.astype(np.uint8)
    dt = cv2.distanceTransform(m, cv2.DIST_L2, cv2.DIST_MASK_5)
    areas = np.zeros(len(radii), float)
    for k, r in enumerate(radii):
        core = (dt >= r).astype(np.uint8)
        if not core.any():
            break
        d2 = cv2.distanceTransform(1 - core, cv2.DIST_L2, cv2.DIST_MASK_5)
        areas[k] = float(np.count_nonzero(d2 < r))
    return areas


def _peak_diameter(mask: np.ndarray, rmin: float, rmax: float, n: int = 32,
                   prefer: float | None = None) -> tuple[float, float]:
    """(diameter at the chosen spectrum peak, confidence). Among the peaks at least half as high as the
    highest: the first (smallest radius), or the one nearest to the radius `prefer` when given."""
    radii = np.geomspace(max(rmin, 1.0), max(rmax, rmin * 2, 2.0), n)
    areas = pattern_spectrum(mask, radii)
    lr = np.log(radii)
    spec = -np.diff(areas) / np.diff(lr)
    spec = np.convolve(spec, [1, 2, 1], "same") / 4.0
    if not np.any(spec > 0):
        return float("nan"), 0.0
    i = int(spec.argmax())
    padded = np.r_[-np.inf, spec, -np.inf]
    peaks = [p - 1 for p in range(1, len(padded) - 1) if padded[p] >= padded[p - 1] and padded[p] > padded[p + 1]]
    peaks = [p for p in peaks if spec[p] >= 0.5 * spec[i]]
    if peaks:
        i = peaks[0]
        if prefer is not None:
            mid = (lr[:-1] + lr[1:]) / 2
            i = min(peaks, key=lambda p: abs(mid[p] - np.log(prefer)))
    mids = np.exp((lr[:-1] + lr[1:]) / 2)
    lm = np.log(mids)
    r = float(mids[i])
    if 0 < i < len(spec) - 1:  # parabolic refinement of the peak on the log-radius grid
        a, b, c = spec[i - 1], spec[i], spec[i + 1]
        den = a - 2 * b + c
        if den < 0:
            r = float(np.exp(lm[i] + 0.5 * (a - c) / den * (lm[i + 1] - lm[i])))
    pos = np.clip(spec, 0, None)
    near = (mids >= r / 1.25) & (mids <= r * 1.25)
    conf = float(pos[near].sum() / max(pos.sum(), 1e-9))
    return 2.0 * r, conf


def estimate_rbc_diameter(rgb: np.ndarray) -> ScaleEstimate:
    """Typical red-cell diameter (original pixels) of an RGB uint8 smear field."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    f0 = min(1.0, _PASS1_SIDE / max(h, w))
    x0 = resize_by(rgb, f0)
    # pass 1 ignores radii under 2.5 px (red cells under 5 px in a 160 px copy: no usable field)
    d0, c0 = _peak_diameter(cell_mask(x0), 2.5, max(x0.shape[:2]) / 4, n=20)
    if not np.isfinite(d0):
        return ScaleEstimate(float("nan"), 0.0)
    d0 /= f0
    # pass 2 with red cells ~20 px wide (small images with small cells are enlarged, up to 1024 px)
    f1 = min(_PASS2_RBC_PX / d0, max(1.0, min(2.0, 1024 / max(h, w))))
    x1 = resize_by(rgb, f1)
    d_exp = d0 * f1  # expected diameter in the pass-2 image
    d1, c1 = _peak_diameter(cell_mask(x1), max(1.0, d_exp / 8), d_exp * 1.25, n=22)
    if not np.isfinite(d1):
        return ScaleEstimate(float(d0), c0)
    return ScaleEstimate(float(d1 / f1), c1)


def working_scale(rgb: np.ndarray, target_rbc_px: float, *, estimate: ScaleEstimate | None = None,
                  min_factor: float = 1 / 64, max_factor: float = 4.0) -> float:
    """Factor to multiply the image size by so that its RBCs are `target_rbc_px` wide.

    Falls back to 1.0 when no estimate can be made (no cells found).
    """
    est = estimate if estimate is not None else estimate_rbc_diameter(rgb)
    if not np.isfinite(est.diameter_px) or est.diameter_px <= 0:
        return 1.0
    return float(np.clip(target_rbc_px / est.diameter_px, min_factor, max_factor))


@dataclass(frozen=True)
class ScaleChoice:
    """The red-cell diameter (original px) a field is analysed at, and where it comes from."""

    diameter_px: float | None  # None: no estimate at all (the field is analysed unscaled)
    source: str  # "estimated" (the field's own), "folder-median", "field-parts", "size-prior" (see
    #              `lone_field_choice`), or "fallback" (none)


def choose_diameters(estimates: Sequence[float | None], groups: Sequence[Hashable], mode: str = "auto", *,
                     tolerance: float = CONSENSUS_TOLERANCE,
                     min_fields: int = CONSENSUS_MIN_FIELDS) -> list[ScaleChoice]:
    """The diameter each field is analysed at, from the per-field `estimates` (None or NaN: no estimate)
    and each field's group (fields of one folder and pixel size share their magnification).

    - `field`: every field its own estimate;
    - `folder`: every field its group's median estimate;
    - `auto`: its own estimate, unless that is more than `tolerance` times off the group's median (or
      missing), then the median.
    Groups with fewer than `min_fields` estimates have no median: their fields keep their own.
    """
    if mode not in SCALE_MODES:
        raise ValueError(f"unknown scale mode {mode!r} (valid: {', '.join(SCALE_MODES)})")
    if len(estimates) != len(groups):
        raise ValueError(f"{len(estimates)} estimates but {len(groups)} groups")
    own = [float(e) if e is not None and math.isfinite(e) and e > 0 else None for e in estimates]
    by_group: dict[Hashable, list[float]] = {}
    for e, g in zip(own, groups):
        if e is not None:
            by_group.setdefault(g, []).append(e)
    medians = {g: float(np.median(v)) for g, v in by_group.items() if len(v) >= max(1, min_fields)}
    out = []
    for e, g in zip(own, groups):
        med = medians.get(g) if mode != "field" else None
        if med is not None and (mode == "folder" or e is None or not med / tolerance <= e <= med * tolerance):
            out.append(ScaleChoice(med, "folder-median"))
        elif e is not None:
            out.append(ScaleChoice(e, "estimated"))
        else:
            out.append(ScaleChoice(None, "fallback"))
    return out


def part_windows(rgb: np.ndarray, k: int = PART_GRID) -> list[np.ndarray]:
    """k x k overlapping windows of `rgb` (views), each half its height and width, their corners on a
    regular grid: the parts `lone_field_choice` checks a field's own estimate against."""
    h, w = rgb.shape[:2]
    wh, ww = max(1, h // 2), max(1, w // 2)
    ys = np.linspace(0, h - wh, k).round().astype(int)
    xs = np.linspace(0, w - ww, k).round().astype(int)
    return [rgb[y:y + wh, x:x + ww] for y in ys for x in xs]


def plausible_diameter(d: float | None, long_side: float) -> bool:
    """Whether a red-cell diameter (px) is within `PLAUSIBLE_RBC_SHARE` of a field's longer side (px)."""
    lo, hi = PLAUSIBLE_RBC_SHARE
    return d is not None and math.isfinite(d) and lo * long_side <= d <= hi * long_side


def lone_field_choice(own: float | None, parts: Sequence[float | None], long_side: float, *,
                      tolerance: float = CONSENSUS_TOLERANCE, min_parts: int = CONSENSUS_MIN_FIELDS) -> ScaleChoice:
    """The diameter of a field that has no folder to check its estimate against (fewer than
    `CONSENSUS_MIN_FIELDS` fields of its folder and pixel size), from its own estimate `own`, those of its
    parts (`part_windows`) and its longer side in px.

    - "estimated": its own estimate, where that is plausible for its size (`PLAUSIBLE_RBC_SHARE`) and
      within `tolerance` of its parts' median (or the parts have no plausible median);
    - "field-parts": else the parts' median, where that is plausible (a dense field whose clumped red cells
      make the larger peak: its halves show them one by one);
    - "size-prior": else `PRIOR_RBC_SHARE` of its longer side.
    Granulometry fails on a few fields in a hundred (clumped red cells; BCCD: 14 of 364 alone, 8 with
    this check, none of LISC's 242 either way)."""
    e = float(own) if own is not None and math.isfinite(own) and own > 0 else None
    valid = [float(p) for p in parts if p is not None and math.isfinite(p) and p > 0]
    med = float(np.median(valid)) if len(valid) >= max(1, min_parts) else None
    med_ok = plausible_diameter(med, long_side)
    if plausible_diameter(e, long_side) and (not med_ok or med / tolerance <= e <= med * tolerance):
        return ScaleChoice(e, "estimated")
    if med_ok:
        return ScaleChoice(med, "field-parts")
    return ScaleChoice(PRIOR_RBC_SHARE * float(long_side), "size-prior")
