"""The canonical in-memory model of annotated images and cells, shared by every reader and writer.

Coordinates are original-image pixels, x to the right, y down. Boxes are (x1, y1, x2, y2) floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

Box = tuple[float, float, float, float]  # x1, y1, x2, y2


def polygon_box(polygon: np.ndarray) -> Box:
    p = np.asarray(polygon, dtype=float)
    return (float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max()))


def polygon_area(polygon: np.ndarray) -> float:
    """Shoelace area of an (N, 2) polygon."""
    p = np.asarray(polygon, dtype=float)
    x, y = p[:, 0], p[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


@dataclass
class Cell:
    """One annotated or predicted cell.

    `label` is a canonical class name from `bloodsmear.classes` (or a non-WBC kind such as "rbc").
    `polygon` is an (N, 2) float array in image pixels; `box` is (x1, y1, x2, y2).
    `mask` is an optional boolean array covering `box` (rows y1..y2, cols x1..x2, integer-rounded) or
    the whole image when `mask_full` is True.
    """

    label: str
    polygon: np.ndarray | None = None
    box: Box | None = None
    mask: np.ndarray | None = None
    mask_full: bool = False
    score: float | None = None
    subclass: str | None = None
    attributes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.polygon is not None:
            self.polygon = np.asarray(self.polygon, dtype=float).reshape(-1, 2)
            if self.box is None and len(self.polygon):
                self.box = polygon_box(self.polygon)
        if self.box is not None:
            self.box = tuple(float(v) for v in self.box)  # type: ignore[assignment]

    @property
    def area(self) -> float:
        """The cell's area in image pixels, the one definition every writer uses (results.json, coco.json):
        the area of its outline polygon; without one, its mask's pixel count; else its box's area. (The
        polygon is what every output stores and reads back, so the figure survives a round trip.)"""
        if self.polygon is not None and len(self.polygon) >= 3:
            return polygon_area(self.polygon)
        if self.mask is not None:
            return float(np.count_nonzero(self.mask))
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            return max(0.0, x2 - x1) * max(0.0, y2 - y1)
        return 0.0


@dataclass
class AnnotatedImage:
    """An image file and the cells annotated (or predicted) in it."""

    path: Path
    width: int
    height: int
    cells: list[Cell] = field(default_factory=list)
    source: str = ""  # dataset name: "pbc", "lisc", "bccd", "rv-pbs", "coco", ...
    label: str | None = None  # image-level class (single-cell datasets)
    subclass: str | None = None
    nucleus_mask_path: Path | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Dataset:
    """A named collection of annotated images (the result of every reader)."""

    name: str
    root: Path
    images: list[AnnotatedImage] = field(default_factory=list)
    format: str = ""
    splits: dict[str, list[str]] = field(default_factory=dict)  # official split: name -> image stems
    skipped: list[str] = field(default_factory=list)  # messages for entries that could not be read

    def __len__(self) -> int:
        return len(self.images)

    def class_counts(self, *, cells: bool | None = None) -> dict[str, int]:
        """Cells per class (multi-cell datasets) or images per class (class-per-folder datasets)."""
        counts: dict[str, int] = {}
        use_cells = cells if cells is not None else any(im.cells for im in self.images)
        for im in self.images:
            if use_cells:
                for c in im.cells:
                    counts[c.label] = counts.get(c.label, 0) + 1
            elif im.label is not None:
                counts[im.label] = counts.get(im.label, 0) + 1
        return dict(sorted(counts.items()))


#: Keys of `Cell.attributes` that the analysis pipeline fills for every predicted cell.
CELL_RESULT_KEYS: tuple[str, ...] = (
    "detection_score", "screening_label", "screening_score", "refined_label", "refined_score", "review",
)


@dataclass
class SlideResult:
    """One analysed image: every WBC found, in ORIGINAL image pixels, with both classifier stages.

    Each cell has `label`/`score` = the final class and its probability, `polygon` and `box` in original
    pixels, and `attributes` holding `detection_score`, `screening_label`, `screening_score`,
    `refined_label`, `refined_score` (None where the refine stage did not apply) and `review` (True when
    the final score is below the pipeline's review threshold; the class is kept).
    """

    name: str  # the image's name in the outputs: its path relative to its input root (posix)
    width: int
    height: int
    cells: list[Cell] = field(default_factory=list)
    path: Path | None = None
    scale: float = 1.0  # resize factor original -> segmenter working scale
    rbc_diameter_px: float | None = None  # typical red-cell diameter in original pixels (estimated or given)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    meta: dict = field(default_factory=dict)

    def class_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self.cells:
            counts[c.label] = counts.get(c.label, 0) + 1
        return dict(sorted(counts.items()))
