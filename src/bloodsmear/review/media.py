"""The images the review page shows, written once into OUT_DIR/_review/media (the server never serves a file
from outside OUT_DIR): each field in full resolution and as a preview (longest side `PREVIEW_SIDE`, shown
at once while the full image loads), and each cell's crop, framed as the classifier framed it.

The originals are read from where `analyze` found them (results.json's `source`, or `--images DIR`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from bloodsmear.errors import InputError
from bloodsmear.inference.stages import crop_cells
from bloodsmear.io import atomic_path, read_image
from bloodsmear.preprocess.cells import PBC_FRAME_RBC
from bloodsmear.preprocess.resize import resize_longer_side, resize_square
from bloodsmear.review.store import CellRow, SlideRow
from bloodsmear.types import Cell

MEDIA_DIR = Path("_review") / "media"
PREVIEW_SIDE = 1600
CROP_SIDE = 144
JPEG_QUALITY = 90


def write_jpeg(dest: Path, rgb: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - cv2 encodes any uint8 RGB
        raise InputError(dest, "could not encode JPEG")
    with atomic_path(dest) as tmp:
        buf.tofile(str(tmp))
    return dest


class Media:
    """Field images and cell crops of one analyze folder, made on first request and kept."""

    def __init__(self, out_dir: Path, frame_rbc: float | None = PBC_FRAME_RBC) -> None:
        self.root = Path(out_dir) / MEDIA_DIR
        self.frame_rbc = frame_rbc
        self._lock = threading.Lock()
        self._decoded: OrderedDict[int, np.ndarray] = OrderedDict()  # the last few fields, decoded

    def _source(self, slide: SlideRow) -> Path:
        if not slide.source or not Path(slide.source).is_file():
            raise InputError(slide.source or slide.name, "image file not found (moved since it was analysed?): "
                                                         "start the review with --images DIR, the folder of the fields")
        return Path(slide.source)

    def _rgb(self, slide: SlideRow) -> np.ndarray:
        with self._lock:
            if slide.id in self._decoded:
                self._decoded.move_to_end(slide.id)
                return self._decoded[slide.id]
        rgb = read_image(self._source(slide))
        with self._lock:
            self._decoded[slide.id] = rgb
            while len(self._decoded) > 2:
                self._decoded.popitem(last=False)
        return rgb

    def slide_file(self, slide: SlideRow, which: str) -> Path:
        """`which`: "full" (a JPEG original is served as it is) or "preview"."""
        dest = self.root / "slides" / f"{slide.id}-{which}.jpg"
        if dest.is_file():
            return dest
        src = self._source(slide)
        if which == "full":
            if src.suffix.lower() in (".jpg", ".jpeg"):
                with atomic_path(dest) as tmp:
                    shutil.copyfile(src, tmp)
                return dest
            return write_jpeg(dest, self._rgb(slide))
        rgb = self._rgb(slide)
        return write_jpeg(dest, rgb if max(rgb.shape[:2]) <= PREVIEW_SIDE else resize_longer_side(rgb, PREVIEW_SIDE))

    def crop(self, cell: CellRow, slide: SlideRow, *, side: int | None = CROP_SIDE) -> np.ndarray:
        """The cell's crop (RGB), framed as the pipeline frames it for the classifier (by the field's red-cell
        size where known), resized to `side` (None: as cut)."""
        poly = np.asarray(cell.polygon, dtype=float).reshape(-1, 2)
        c = Cell(label=cell.label, polygon=poly if len(poly) >= 3 else None,
                 box=None if len(poly) >= 3 else (0.0, 0.0, 1.0, 1.0))
        crop = crop_cells(self._rgb(slide), [c], rbc_px=slide.rbc_px, frame_rbc=self.frame_rbc)[0]
        return crop if side is None else resize_square(crop, side)

    def cell_file(self, cell: CellRow, slide: SlideRow) -> Path:
        key = hashlib.sha1(json.dumps(cell.polygon).encode()).hexdigest()[:10]
        dest = self.root / "cells" / f"{cell.id}-{key}.jpg"
        if dest.is_file():
            return dest
        return write_jpeg(dest, self.crop(cell, slide))
