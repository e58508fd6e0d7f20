"""Cell crops from annotated fields: one padded (square) crop per `bloodsmear.types.Cell`.

`crop_cell` is a pure function (the input image is never modified); parts of the crop outside the
field are filled with a background colour. `frame_side` / `frame_cell` frame a cell as a PBC training
image, whatever the magnification: by the red-cell size where that is reliable, else by the cell's own
outline (docs/framing.md). `crop_dataset_cells` cuts every annotated WBC of a dataset
into ``DST/<class>/<image stem>_<index>.jpg`` (``bloodsmear crop cells``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from bloodsmear.classes import OTHER_KINDS, canonical, is_known
from bloodsmear.errors import BloodsmearError, InputError
from bloodsmear.geometry import paste_mask, polygon_to_mask
from bloodsmear.io import read_image, write_image_atomic
from bloodsmear.preprocess.resize import resize_longer_side, resize_square
from bloodsmear.types import Cell, Dataset

log = logging.getLogger(__name__)

Color = Sequence[float] | float | int

#: PBC cell images (360x363, the classifiers' training data) span ~5.45 red-cell diameters (RBCs ~66 px,
#: measured with `preprocess.scale.estimate_rbc_diameter` on PBC's platelet and neutrophil images).
PBC_FRAME_RBC = 5.45
#: ... and 2-4 WBC diameters (monocytes to lymphocytes): frames from a wrong red-cell estimate stay in this range.
FRAME_BOX_RANGE = (2.0, 4.0)
#: A PBC image's side is FRAME_CELL_K x its WBC's equivalent diameter (the median over 600 seeded PBC
#: train images of the 6 WBC classes, WBC found by `wbc-seg-fast`; `bloodsmear bench framing pbc224
#: --measure-k`, docs/framing.md).
FRAME_CELL_K = 2.64


def cell_box(cell: Cell) -> tuple[float, float, float, float]:
    """The cell's (x1, y1, x2, y2): its box, else its polygon's bounding box."""
    if cell.box is not None:
        return tuple(float(v) for v in cell.box)  # type: ignore[return-value]
    if cell.polygon is not None and len(cell.polygon):
        p = np.asarray(cell.polygon, dtype=float)
        return (float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max()))
    raise InputError(None, f"cell {cell.label!r} has neither a box nor a polygon")


def background_color(rgb: np.ndarray) -> np.ndarray:
    """The median colour of a field (a fair stand-in for smear background), as uint8 RGB."""
    step = max(1, min(rgb.shape[:2]) // 64)
    return np.median(rgb[::step, ::step].reshape(-1, rgb.shape[2]), axis=0).round().astype(np.uint8)


def crop_cell(
    rgb: np.ndarray,
    cell: Cell,
    pad: float = 0.15,
    *,
    square: bool = True,
    mask_background: bool = False,
    background: Color | None = None,
    out_size: int | None = None,
    padding: float | None = None,
    side: float | None = None,
) -> np.ndarray:
    """A crop around one cell (a new array; `rgb` is not modified).

    `pad`: margin on each side as a fraction of the box's longest side (`padding` is an alias).
    `square`: a square of side ``longest side * (1 + 2 * pad)`` centred on the box; else the padded box.
    `side`: a square of this side (px) centred on the box instead (`frame_side`; `pad` is then unused).
    Parts outside the image are filled with `background` (an RGB colour or grey level; default the
    field's median colour). `mask_background`: pixels outside the cell's polygon (or its mask) get the
    background colour too; a cell with only a box is left as it is. `out_size`: resize so the longer
    side is `out_size` px (a square crop becomes out_size x out_size).
    """
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise InputError(None, f"expected an RGB uint8 image (H, W, 3), got {a.dtype} {a.shape}")
    if padding is not None:
        pad = padding
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    h, w = a.shape[:2]
    x1, y1, x2, y2 = cell_box(cell)
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    m = pad * max(bw, bh)
    if side is not None:
        if not side > 0:
            raise ValueError(f"side must be > 0, got {side}")
        sw = sh = float(side)
    elif square:
        sw = sh = max(bw, bh) + 2 * m
    else:
        sw, sh = bw + 2 * m, bh + 2 * m
    xa, ya = int(round(cx - sw / 2.0)), int(round(cy - sh / 2.0))
    xb, yb = xa + max(1, int(round(sw))), ya + max(1, int(round(sh)))
    fill = background_color(a) if background is None else np.broadcast_to(
        np.asarray(background, dtype=float), (3,)).clip(0, 255).round().astype(np.uint8)

    ix0, iy0, ix1, iy1 = max(xa, 0), max(ya, 0), min(xb, w), min(yb, h)
    if ix1 > ix0 and iy1 > iy0:  # the part inside the image, padded with the fill (always a new array)
        out = cv2.copyMakeBorder(np.ascontiguousarray(a[iy0:iy1, ix0:ix1]), iy0 - ya, yb - iy1, ix0 - xa, xb - ix1,
                                 cv2.BORDER_CONSTANT, value=tuple(int(v) for v in fill))
    else:
        out = np.empty((yb - ya, xb - xa, 3), np.uint8)
        out[:] = fill
    if mask_background:
        keep = _cell_mask(cell, (xa, ya), out.shape[:2])
        if keep is not None:
            out[~keep] = fill
    if out_size:
        out = resize_longer_side(out, int(out_size))
    return out


def outline_diameter(cell: Cell) -> float:
    """The cell's outline size: its equivalent diameter ``sqrt(4 area / pi)`` (`Cell.area`: polygon, else
    mask, else box), at least 1 px. Steadier than a box side against pseudopods and loose boxes."""
    return max(1.0, float(np.sqrt(4.0 * max(cell.area, 0.0) / np.pi)))


def frame_side(cell: Cell, *, k: float = FRAME_CELL_K, rbc_px: float | None = None,
               frame_rbc: float | None = PBC_FRAME_RBC) -> float:
    """Side (px) of a square that frames `cell` as PBC frames its cells, at any magnification.

    With a reliable red-cell diameter `rbc_px` (px; the caller decides what is reliable, see
    docs/framing.md) and `frame_rbc`: ``frame_rbc * rbc_px``, kept within `FRAME_BOX_RANGE` times the
    cell's longest box side (the pipeline's framing; the cell keeps its size relative to the red cells).
    Otherwise by its own outline: ``k * outline_diameter(cell)`` (PBC's median WBC framing)."""
    if rbc_px and frame_rbc:
        x1, y1, x2, y2 = cell_box(cell)
        long_side = max(x2 - x1, y2 - y1, 1.0)
        lo, hi = FRAME_BOX_RANGE
        return float(np.clip(rbc_px * frame_rbc, lo * long_side, hi * long_side))
    if not k > 0:
        raise ValueError(f"k must be > 0, got {k}")
    return float(k) * outline_diameter(cell)


def frame_cell(rgb: np.ndarray, cell: Cell, *, k: float = FRAME_CELL_K, rbc_px: float | None = None,
               frame_rbc: float | None = PBC_FRAME_RBC, background: Color | None = None) -> np.ndarray:
    """`crop_cell` of the square `frame_side` gives (a new array; parts outside the image get
    `background`, default the field's median colour)."""
    return crop_cell(rgb, cell, side=frame_side(cell, k=k, rbc_px=rbc_px, frame_rbc=frame_rbc),
                     background=background)


def _cell_mask(cell: Cell, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray | None:
    """Boolean mask of the cell in crop coordinates (crop top-left at `origin` in the image)."""
    xa, ya = origin
    if cell.polygon is not None and len(cell.polygon) >= 3:
        return polygon_to_mask(cell.polygon, shape, origin=(xa, ya), subpixel=True)
    if cell.mask is not None:
        if cell.mask_full:
            ox, oy = 0, 0
        else:
            bx1, by1, _, _ = cell_box(cell)
            ox, oy = int(round(bx1)), int(round(by1))
        # the mask sits at image offset (ox, oy), the crop at (xa, ya)
        return paste_mask(cell.mask, (ox - xa, oy - ya), shape)
    return None


# --------------------------------------------------------------------------------------------------
# a whole dataset


def cell_class(cell: Cell) -> str | None:
    """Class folder of a cell: its WBC class; for a generic "wbc" box its subtype (BCCD's CSV);
    None for other kinds (rbc, platelet) and for WBCs without a known subtype."""
    label = cell.label
    if label == "wbc":
        sub = cell.subclass or cell.attributes.get("wbc_type")
        if not sub or not is_known(str(sub)):
            return None
        label = canonical(str(sub))
    elif is_known(label):
        label = canonical(label)
    if label in OTHER_KINDS:
        return None
    return label


@dataclass
class CellCropSummary:
    """What `crop_dataset_cells` did."""

    written: int = 0
    existing: int = 0  # already there from an earlier run (skipped)
    no_class: int = 0  # WBC cells without a subtype (no class folder)
    other_kinds: int = 0  # rbc / platelet cells (not WBCs)
    images: int = 0
    failed_images: list[str] = field(default_factory=list)  # "path: problem"
    failed_cells: list[str] = field(default_factory=list)
    per_class: dict[str, int] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return len(self.failed_images) + len(self.failed_cells)

    def to_dict(self) -> dict:
        return {
            "written": self.written, "existing": self.existing, "no_class": self.no_class,
            "other_kinds": self.other_kinds, "images": self.images, "skipped": self.skipped,
            "failed_images": self.failed_images, "failed_cells": self.failed_cells,
            "per_class": dict(sorted(self.per_class.items())),
        }


def crop_dataset_cells(
    dataset: Dataset,
    dst: str | Path,
    *,
    pad: float = 0.15,
    mask_background: bool = False,
    size: int | None = None,
    suffix: str = ".jpg",
    progress: bool = True,
    classes: Iterable[str] | None = None,
) -> CellCropSummary:
    """Crop every annotated WBC of `dataset` into ``dst/<class>/<image stem>_<cell index><suffix>``.

    Images that are missing or unreadable are reported (``failed_images``) and skipped; files already
    written by an earlier run are kept. `size`: square output of size x size px. `classes`: only these.
    """
    dst = Path(dst)
    want = None if classes is None else {canonical(c) for c in classes}
    summary = CellCropSummary()
    for im in tqdm(dataset.images, desc="crop cells", unit="img", disable=not progress):
        todo = []
        for k, cell in enumerate(im.cells):
            cls = cell_class(cell)
            if cls is None:
                if cell.label in OTHER_KINDS and cell.label != "wbc":
                    summary.other_kinds += 1
                else:
                    summary.no_class += 1
                continue
            if want is not None and cls not in want:
                continue
            todo.append((k, cell, dst / cls / f"{Path(im.name).stem}_{k}{suffix}"))
        if not todo:
            continue
        summary.images += 1
        pending = [t for t in todo if not t[2].exists()]
        summary.existing += len(todo) - len(pending)
        if not pending:
            continue
        if not Path(im.path).is_file():
            msg = f"{im.path}: image file missing ({len(pending)} annotated cell(s) not cropped)"
            summary.failed_images.append(msg)
            log.debug(msg)
            continue
        try:
            rgb = read_image(im.path)
        except BloodsmearError as e:
            summary.failed_images.append(str(e))
            log.debug("skipped %s", e)
            continue
        for k, cell, dest in pending:
            try:
                crop = crop_cell(rgb, cell, pad, mask_background=mask_background)
                if size:
                    crop = resize_square(crop, int(size))
                write_image_atomic(dest, crop)
            except (BloodsmearError, ValueError, cv2.error) as e:
                summary.failed_cells.append(f"{im.path} cell {k}: {e}")
                continue
            summary.written += 1
            cls = dest.parent.name
            summary.per_class[cls] = summary.per_class.get(cls, 0) + 1
    return summary
