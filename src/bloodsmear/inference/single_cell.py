"""Single-cell images framed as PBC frames its cells, whatever their magnification or framing.

    framer = CellFramer.from_pipeline("default")     # the pipeline's segmenter finds the cell
    crop = framer(rgb)                               # the cell's crop, or None: no cell found
    classify_paths(["cells/"], framer=framer)        # `bloodsmear classify` (its default --framing cell)

The cell is the segmenter's WBC that holds the image centre (the largest of those), else the one nearest
the centre. Its crop is `preprocess.cells.frame_cell`: `PBC_FRAME_RBC` red-cell diameters wide where the
field's red-cell estimate is reliable (`RELIABLE_RBC`: the field's own estimate, plausible for its size and
agreeing with its parts, or a diameter the pipeline config gives), else `FRAME_CELL_K` times the cell's
equivalent diameter (docs/framing.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from bloodsmear.inference.pipeline import Detection, Pipeline
from bloodsmear.inference.pipeline_config import PipelineConfig
from bloodsmear.preprocess.cells import FRAME_CELL_K, PBC_FRAME_RBC, frame_cell
from bloodsmear.types import Cell

log = logging.getLogger(__name__)

#: Scale sources (`Pipeline.detect`) whose red-cell diameter frames the crop: the field's own estimate,
#: checked against its size and its parts ("estimated"), or the pipeline config's fixed diameter ("given").
#: A size prior or a parts' median is a guess, so the cell is framed by its own outline there.
RELIABLE_RBC = ("estimated", "given")

__all__ = ["CellFramer", "RELIABLE_RBC", "central_cell"]


def central_cell(cells: Sequence[Cell], width: int, height: int) -> Cell | None:
    """The cell of a single-cell image: the largest of the cells whose box holds the image centre,
    else the one whose box centre is nearest the image centre (None for no cells)."""
    if not cells:
        return None
    cx, cy = width / 2.0, height / 2.0
    holding = [c for c in cells if c.box[0] <= cx <= c.box[2] and c.box[1] <= cy <= c.box[3]]
    if holding:
        return max(holding, key=lambda c: c.area)
    return min(cells, key=lambda c: np.hypot((c.box[0] + c.box[2]) / 2 - cx, (c.box[1] + c.box[3]) / 2 - cy))


class CellFramer:
    """Finds the cell of a single-cell image with a segmenter pipeline and frames it (`frame_cell`).

    `use_rbc`: frame by the red-cell size where it is reliable (`RELIABLE_RBC`); False: always by the
    cell's outline. `k`: crop side in equivalent diameters of the cell (outline framing)."""

    name = "cell"

    def __init__(self, finder: Pipeline, *, k: float = FRAME_CELL_K, use_rbc: bool = True,
                 frame_rbc: float = PBC_FRAME_RBC):
        self.finder = finder
        self.k = float(k)
        self.use_rbc = bool(use_rbc)
        self.frame_rbc = float(frame_rbc)

    @classmethod
    def from_pipeline(cls, pipeline: str | Path | PipelineConfig | None = None, **kw) -> "CellFramer":
        """A framer with the segmenter (and its scale, tiling and threshold settings) of a pipeline config
        or shipped pipeline name (default: "default"); its classifiers are not loaded."""
        cfg = pipeline if isinstance(pipeline, PipelineConfig) else PipelineConfig.load(pipeline)
        return cls(Pipeline.segmenter_only(cfg.segmenter, cfg), **kw)

    def find(self, rgb: np.ndarray) -> tuple[Cell | None, Detection]:
        """(the image's cell or None, the segmenter's detection)."""
        det = self.finder.detect(rgb)
        return central_cell(det.cells, det.width, det.height), det

    def rbc_px(self, det: Detection) -> float | None:
        """The red-cell diameter (original px) that frames the crop, None where it is not reliable."""
        if self.use_rbc and det.scale_source in RELIABLE_RBC and det.rbc_diameter_px:
            return float(det.rbc_diameter_px)
        return None

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        """The crop of the image's cell framed as a PBC image (a new array), or None when none is found."""
        cell, det = self.find(rgb)
        if cell is None:
            return None
        return frame_cell(rgb, cell, k=self.k, rbc_px=self.rbc_px(det), frame_rbc=self.frame_rbc)
