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


class FolderClassifier:
    """A classifier model folder as the pipeline's `CellClassifier` (batched predict_proba)."""

    def __init__(self, folder: Path):
        from bloodsmear.models.artifact import load_model

        self.folder = Path(folder)
        self.model = load_model(self.folder)
        self.classes = list(self.model.info.classes)

    def predict_proba(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        from bloodsmear.inference.classify import predict_proba

        if not len(crops):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.asarray(predict_proba(self.model, list(crops)))


def load_classifier(folder: str | Path) -> FolderClassifier:
    return FolderClassifier(Path(folder))


def crop_cells(rgb: np.ndarray, cells: Sequence[Cell], *, padding: float | None = None) -> list[np.ndarray]:
    """One crop per cell from the original image (views where possible; `rgb` is not modified)."""
    try:
        from bloodsmear.preprocess.crop import crop_cell
    except ImportError:
        crop_cell = None
    out = []
    for c in cells:
        if crop_cell is not None:
            out.append(crop_cell(rgb, c) if padding is None else crop_cell(rgb, c, padding=padding))
        else:
            out.append(_square_crop(rgb, c.box, 0.15 if padding is None else padding))
    return out


def _square_crop(rgb: np.ndarray, box, padding: float) -> np.ndarray:
    """A square around the box centre, side = longest box side * (1 + 2 * padding), clipped to the image."""
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1 + 2 * padding)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    xa, ya = int(max(0, round(cx - side / 2))), int(max(0, round(cy - side / 2)))
    xb, yb = int(min(w, round(cx + side / 2))), int(min(h, round(cy + side / 2)))
    return rgb[ya:max(yb, ya + 1), xa:max(xb, xa + 1)]


def estimate_rbc_diameter_px(rgb: np.ndarray, *, max_side: int = 1024) -> float | None:
    """Typical red-cell diameter in ORIGINAL pixels, estimated on a copy at most `max_side` large
    (None when no red cells are found)."""
    from bloodsmear.preprocess.scale import estimate_rbc_diameter

    h, w = rgb.shape[:2]
    f = min(1.0, max_side / max(h, w))
    small = rgb if f >= 1.0 else cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))),
                                            interpolation=cv2.INTER_AREA)
    try:
        d = estimate_rbc_diameter(small)
    except (ValueError, InputError) as e:
        log.debug("red-cell size not estimated: %s", e)
        return None
    d = getattr(d, "diameter_px", d)  # a result object or a plain number
    return None if d is None else float(d) / f
