"""Adapters between the pipeline and the stage modules: model references, classifier folders, cell crops
and the red-cell scale estimate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from bloodsmear.errors import InputError
from bloodsmear.settings import ZOO_DIR
from bloodsmear.types import Cell

log = logging.getLogger(__name__)


def resolve_ref(ref: str | Path, base_dir: str | Path | None = None) -> Path:
    """A model folder from a reference: an existing path (absolute, or relative to the config file's
    folder `base_dir`, or to the working directory), else a shipped model `bloodsmear/zoo/<ref>`."""
    p = Path(ref).expanduser()
    cands = [p] if p.is_absolute() else ([Path(base_dir) / p] if base_dir else []) + [p, ZOO_DIR / str(ref)]
    for c in cands:
        if c.is_dir():
            return c.resolve()
    if not p.is_absolute() and "/" not in str(ref):
        try:  # the classifier module's own resolver knows its aliases ("default")
            from bloodsmear.models.artifact import resolve_model

            return Path(resolve_model(str(ref)))
        except (ImportError, AttributeError):
            pass
        except Exception as e:  # noqa: BLE001 - its own error names what is known
            raise InputError(ref, f"no such model folder ({e})") from e
    shipped = sorted(d.name for d in ZOO_DIR.iterdir() if d.is_dir() and (d / "config.json").is_file()) \
        if ZOO_DIR.is_dir() else []
    raise InputError(ref, f"no such model folder (shipped models: {', '.join(shipped) or 'none'})")


def load_classifier(folder: str | Path):
    """A classifier model folder as the pipeline's `CellClassifier` (`classes`, batched `predict_proba`)."""
    from bloodsmear.inference.classify import CellClassifier

    return CellClassifier.load(Path(folder))


#: PBC cell images (360x363, the classifiers' training data) span ~5.45 red-cell diameters (RBCs ~66 px,
#: measured with `preprocess.scale.estimate_rbc_diameter` on PBC's platelet and neutrophil images).
PBC_FRAME_RBC = 5.45
#: ... and 2-4 WBC diameters (monocytes to lymphocytes): frames from a wrong red-cell estimate stay in this range.
FRAME_BOX_RANGE = (2.0, 4.0)


def crop_cells(rgb: np.ndarray, cells: Sequence[Cell], *, padding: float | None = None,
               rbc_px: float | None = None, frame_rbc: float | None = PBC_FRAME_RBC) -> list[np.ndarray]:
    """One crop per cell from the original image (`rgb` is not modified).

    With `rbc_px` (red-cell diameter, original px) and `frame_rbc`, each crop is framed as a PBC image:
    a square of `frame_rbc` red-cell diameters centred on the cell, kept within `FRAME_BOX_RANGE` times the
    cell's longest box side, so a cell keeps its size relative to the red cells, as the classifier saw in
    training; parts outside the field are filled with the field's median colour. Otherwise the crop
    function of `preprocess.crop` (or a square around the box with `padding`) is used.
    """
    if rbc_px and frame_rbc:
        fill = np.median(rgb[::16, ::16].reshape(-1, 3), axis=0)
        lo, hi = FRAME_BOX_RANGE
        out = []
        for c in cells:
            long_side = max(c.box[2] - c.box[0], c.box[3] - c.box[1])
            side = float(np.clip(rbc_px * frame_rbc, lo * long_side, hi * long_side))
            out.append(frame_crop(rgb, c.box, side, fill))
        return out
    try:
        from bloodsmear.preprocess.crop import crop_cell
    except ImportError:
        crop_cell = None
    out = []
    for c in cells:
        if crop_cell is not None:
            out.append(crop_cell(rgb, c) if padding is None else crop_cell(rgb, c, padding=padding))
        else:
            x1, y1, x2, y2 = c.box
            side = max(x2 - x1, y2 - y1) * (1 + 2 * (0.15 if padding is None else padding))
            out.append(frame_crop(rgb, c.box, side, None))
    return out


def frame_crop(rgb: np.ndarray, box, side: float, fill=None) -> np.ndarray:
    """A square of `side` px (at least 1.1 x the box's longest side) centred on the box. Outside the image
    it is filled with `fill` (an RGB colour) or, with `fill=None`, clipped to the image (a view)."""
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = box
    side = max(side, 1.1 * max(x2 - x1, y2 - y1), 2.0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    xa, ya = int(round(cx - side / 2)), int(round(cy - side / 2))
    xb, yb = xa + int(round(side)), ya + int(round(side))
    inner = rgb[max(0, ya):min(h, yb), max(0, xa):min(w, xb)]
    if fill is None or (xa >= 0 and ya >= 0 and xb <= w and yb <= h):
        return inner
    return cv2.copyMakeBorder(inner, max(0, -ya), max(0, yb - h), max(0, -xa), max(0, xb - w),
                              cv2.BORDER_CONSTANT, value=[float(v) for v in fill])


def estimate_rbc_diameter_px(small: np.ndarray, f: float = 1.0) -> float | None:
    """Typical red-cell diameter in ORIGINAL pixels, measured on `small` = the image resized by `f`
    (None when no red cells are found)."""
    from bloodsmear.preprocess.scale import estimate_rbc_diameter

    try:
        d = estimate_rbc_diameter(small)
    except (ValueError, InputError) as e:
        log.debug("red-cell size not estimated: %s", e)
        return None
    d = getattr(d, "diameter_px", d)  # a result object or a plain number
    return None if d is None else float(d) / f
