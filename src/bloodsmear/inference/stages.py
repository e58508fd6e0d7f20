"""Adapters between the pipeline and the stage modules: classifier folders, cell crops
and the red-cell scale estimate."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from bloodsmear.errors import InputError
from bloodsmear.inference.classify import CellClassifier
from bloodsmear.models.artifact import load_model
from bloodsmear.preprocess.cells import (  # PBC_FRAME_RBC, FRAME_BOX_RANGE: also imported from here
    FRAME_BOX_RANGE,
    PBC_FRAME_RBC,
    background_color,
    cell_box,
    crop_cell,
    frame_side,
)
from bloodsmear.preprocess.scale import estimate_rbc_diameter
from bloodsmear.types import Cell

log = logging.getLogger(__name__)


def load_classifier(ref: str | Path, *, base_dir: str | Path | None = None, tta: str = "none") -> CellClassifier:
    """A classifier model folder (`models.folder.resolve_model`: a path, relative to `base_dir` - the
    pipeline config's folder - or the working directory, or a shipped name) as the pipeline's
    `CellClassifier` (`classes`, batched `predict_proba`), with test-time augmentation `tta`
    (none | flip | d8). A segmenter folder named here is one InputError naming its kind."""
    return CellClassifier(load_model(ref, base_dir=base_dir), tta=tta)


#: Crops at least this large (px a side) at the downscaled copy's resolution are cut from that copy:
#: classifiers take ~80-224 px inputs, so a 12 MP photo's crops need not come from full resolution.
MIN_CROP_PX = 256


@dataclass
class CropSource:
    """The original image and, optionally, a copy of it resized by `f` (< 1) to cut large crops from."""

    full: np.ndarray
    small: np.ndarray | None = None
    f: float = 1.0


def crop_cells(rgb: np.ndarray | CropSource, cells: Sequence[Cell], *, padding: float | None = None,
               rbc_px: float | None = None, frame_rbc: float | None = PBC_FRAME_RBC,
               frame_cell: float | None = None) -> list[np.ndarray]:
    """One square crop per cell from the original image (`preprocess.cells.crop_cell`; `rgb` is not
    modified; parts outside the field get the field's median colour).

    With `rbc_px` (red-cell diameter, original px) and `frame_rbc`, each crop is framed as a PBC image:
    `frame_rbc` red-cell diameters wide, centred on the cell, kept within `FRAME_BOX_RANGE` times the
    cell's longest box side, so a cell keeps its size relative to the red cells, as the classifier saw
    in training. Otherwise, with `frame_cell` (e.g. `preprocess.cells.FRAME_CELL_K`), by the cell's own
    outline: `frame_cell` times its equivalent diameter (`preprocess.cells.frame_side`, independent of
    magnification and framing); else the square is the cell's box plus `padding` (default 0.15) a side.
    With a `CropSource`, crops that stay >= `MIN_CROP_PX` wide on its downscaled copy are cut there.
    """
    if not cells:
        return []
    src = rgb if isinstance(rgb, CropSource) else CropSource(rgb)
    fill = background_color(src.small if src.small is not None else src.full)
    lo, hi = FRAME_BOX_RANGE
    out = []
    for c in cells:
        x1, y1, x2, y2 = cell_box(c)
        long_side = max(x2 - x1, y2 - y1, 1.0)
        if frame_cell and not (rbc_px and frame_rbc):  # by the cell's own outline
            side = frame_side(c, k=frame_cell)
            if src.small is not None and side * src.f >= MIN_CROP_PX:
                f = src.f
                small_cell = Cell(c.label, box=(x1 * f, y1 * f, x2 * f, y2 * f))
                out.append(crop_cell(src.small, small_cell, side=side * f, background=fill))
            else:
                out.append(crop_cell(src.full, c, side=side, background=fill))
            continue
        if rbc_px and frame_rbc:
            pad = (float(np.clip(rbc_px * frame_rbc, lo * long_side, hi * long_side)) / long_side - 1.0) / 2.0
        else:
            pad = 0.15 if padding is None else padding
        if src.small is not None and long_side * (1 + 2 * pad) * src.f >= MIN_CROP_PX:
            f = src.f
            out.append(crop_cell(src.small, Cell(c.label, box=(x1 * f, y1 * f, x2 * f, y2 * f)), pad, background=fill))
        else:
            out.append(crop_cell(src.full, c, pad, background=fill))
    return out


def rbc_estimate(small: np.ndarray, f: float = 1.0) -> tuple[float | None, float | None]:
    """(typical red-cell diameter in ORIGINAL pixels, its confidence), measured on `small` = the image
    resized by `f` (`preprocess.scale.estimate_rbc_diameter`); (None, None) when it cannot be measured."""
    try:
        d = estimate_rbc_diameter(small)
    except (ValueError, InputError) as e:
        log.debug("red-cell size not estimated: %s", e)
        return None, None
    conf = getattr(d, "confidence", None)
    d = getattr(d, "diameter_px", d)  # a result object or a plain number
    return (None if d is None else float(d) / f), conf


def estimate_rbc_diameter_px(small: np.ndarray, f: float = 1.0) -> float | None:
    """Typical red-cell diameter in ORIGINAL pixels, measured on `small` = the image resized by `f`
    (None when no red cells are found)."""
    return rbc_estimate(small, f)[0]
