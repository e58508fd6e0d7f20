"""Fakes for pipeline/output/analyze tests: a segmenter that finds dark discs, a colour classifier, and
synthetic fields with known discs. No trained model is needed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from bloodsmear.inference.pipeline import Pipeline
from bloodsmear.inference.pipeline_config import PipelineConfig
from bloodsmear.types import Cell

BACKGROUND = (235, 215, 220)
#: disc colour per class (RGB): the fake classifier reads the class back from the crop's colour.
COLOURS = {"lymphocyte": (60, 40, 150), "neutrophil": (150, 40, 60)}


class DiscSegmenter:
    """Finds every dark blob (a 'WBC') by thresholding; working scale: red cells of `rbc_diameter_px`."""

    kind = "fake-discs"

    def __init__(self, rbc_diameter_px: float = 20.0):
        self.rbc_diameter_px = rbc_diameter_px
        self.seen_shapes: list[tuple[int, ...]] = []

    def predict(self, rgb: np.ndarray) -> list[Cell]:
        self.seen_shapes.append(rgb.shape)
        fg = (rgb.astype(int).sum(axis=2) < 400).astype(np.uint8)
        n, lab = cv2.connectedComponents(fg)
        cells = []
        for k in range(1, n):
            m = (lab == k).astype(np.uint8)
            if m.sum() < 4:
                continue
            cs, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            poly = max(cs, key=cv2.contourArea).reshape(-1, 2).astype(float)
            if len(poly) < 3:
                continue
            x, y, w, h = cv2.boundingRect(m)
            cells.append(Cell(label="wbc", polygon=poly, box=(x, y, x + w, y + h),
                              mask=m[y:y + h, x:x + w].astype(bool), score=0.9))
        return cells


class ColourClassifier:
    """Probabilities from the crop's darkest pixels: blue-ish -> lymphocyte, red-ish -> neutrophil."""

    def __init__(self, classes=("lymphocyte", "neutrophil"), confidence: float = 0.9):
        self.classes = list(classes)
        self.confidence = confidence
        self.calls: list[int] = []

    def predict_proba(self, crops):
        self.calls.append(len(crops))
        out = np.full((len(crops), len(self.classes)), (1 - self.confidence) / max(1, len(self.classes) - 1))
        for i, c in enumerate(crops):
            px = c.reshape(-1, 3).astype(int)
            dark = px[px.sum(axis=1) < 400]
            name = "lymphocyte" if len(dark) and dark[:, 2].mean() > dark[:, 0].mean() else "neutrophil"
            if name in self.classes:
                out[i, self.classes.index(name)] = self.confidence
            else:
                out[i] = 1.0 / len(self.classes)
        return out


def make_field(width: int, height: int, discs) -> np.ndarray:
    """A field with discs [(cx, cy, r, class_name), ...] on a pale background."""
    img = np.empty((height, width, 3), np.uint8)
    img[:] = BACKGROUND
    for cx, cy, r, cls in discs:
        cv2.circle(img, (int(cx), int(cy)), int(r), COLOURS[cls], -1)
    return img


def make_pipeline(rbc_px: float = 20.0, refine=None, **cfg) -> Pipeline:
    return Pipeline(DiscSegmenter(rbc_px), ColourClassifier(), refine, PipelineConfig(**cfg))


def write_field(path: Path, width: int, height: int, discs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(make_field(width, height, discs), cv2.COLOR_RGB2BGR))
    return path


# Fields used by the analyze tests: one lymphocyte, and a lymphocyte + a neutrophil (x, y, radius, class).
ONE = [(100, 100, 30, "lymphocyte")]
TWO = [(100, 100, 30, "lymphocyte"), (300, 200, 40, "neutrophil")]
