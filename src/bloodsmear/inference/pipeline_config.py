"""A pipeline's config (`PipelineConfig`): every stage's model folder and the thresholds, from YAML/JSON.

    cfg = PipelineConfig.load("default")          # a shipped pipeline (bloodsmear/zoo/pipelines/<name>.yaml)
    cfg = PipelineConfig.load("my_pipeline.yaml")  # or a file; relative model paths resolve from its folder
    cfg.updated(review_threshold=0.7)              # a changed copy, validated (also `validate()`)

Unknown keys and wrong types are one `InputError` line (see `bloodsmear.config`); `validate()` checks
the values that depend on each other. `parse_scale` / `scale_mode` read the `scale` setting (also the
`--scale` option of the CLI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from bloodsmear.config import StrictConfig, read_config_dict, validate_config
from bloodsmear.errors import InputError
from bloodsmear.inference.stages import PBC_FRAME_RBC
from bloodsmear.inference.tta import check_tta
from bloodsmear.preprocess.scale import SCALE_MODES, ScaleChoice
from bloodsmear.settings import ZOO_DIR

#: Shipped pipeline configs: `bloodsmear/zoo/pipelines/<name>.yaml`.
PIPELINES_DIR = ZOO_DIR / "pipelines"
DEFAULT_PIPELINE = "default"


class PipelineConfig(StrictConfig):
    """One pipeline: every stage's model folder (shipped name or path) and the thresholds."""

    segmenter: str = "wbc-seg-fast"
    screening: str = "default"
    screening_classes: list[str] | None = None  # the classes the screening stage may answer (its probabilities
    #                                             renormalised over them); None: all it knows
    refine: str | None = None
    refine_classes: list[str] | None = None  # None: every class the refine model knows
    refine_mass: float | None = None  # also refine cells whose screening probability summed over refine_classes
    #                                   is >= this (None: only cells the screening labels with one, the paper's routing)
    review_threshold: float = 0.5  # final score below this -> review flag (class kept)
    scale: str | float = "auto"  # "auto", "field", "folder" (see preprocess.scale) or the red-cell diameter in px
    crop_frame_rbc: float | None = PBC_FRAME_RBC  # crop side in red-cell diameters (PBC framing); None: box crops
    crop_padding: float | None = None  # box crops only: None = the crop function's default
    refine_crop: dict | None = None  # the refine stage's own crops {frame_rbc, padding}; None: the same crops
    screening_tta: str = "none"  # test-time augmentation of the screening stage: none | flip | d8 (inference/tta.py)
    refine_tta: str = "none"  # ... of the refine stage
    detection_threshold: float | None = None  # None: the segmenter's own threshold
    tile_size: int = 1024  # working-scale images larger than this are segmented in overlapping tiles
    tile_overlap: int = 256  # >= the largest WBC diameter at working scale (each cell whole in one tile)
    scale_max_side: int = 1024  # red cells are measured on a copy at most this large (also the resize source)
    adapt_bn: bool = False  # re-estimate the screening model's batch norm on the run's own crops (inference/run_adapt.py)
    adapt_bn_fields: int = 64  # ... on up to this many of the run's fields, evenly spaced
    adapt_bn_min_cells: int = 32  # ... if they hold at least this many WBCs (a tiny run keeps the shipped statistics)
    # how the networks run (the results do not depend on it: kept out of to_dict, the run identity):
    backend: Literal["torch", "onnx"] = Field(default="torch", exclude=True)  # onnx: inference/onnx_backend.py
    segment_batch: int = Field(default=1, ge=1, exclude=True)  # fields of one working size per segmenter batch
    name: str = ""
    base_dir: str | None = Field(default=None, repr=False, exclude=True)  # relative model paths resolve from here

    @classmethod
    def load(cls, ref: str | Path | None = None) -> "PipelineConfig":
        """Load a config: a YAML/JSON path, or a shipped pipeline name (default: "default")."""
        ref = DEFAULT_PIPELINE if ref is None else ref
        path = Path(ref)
        if not path.is_file():
            shipped = PIPELINES_DIR / f"{ref}.yaml"
            if not shipped.is_file():
                known = sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml"))
                raise InputError(ref, f"no such pipeline config file or shipped pipeline (shipped: {', '.join(known)})")
            path = shipped
        raw = read_config_dict(path)
        if "base_dir" in raw:
            raise InputError(path, "base_dir is not a setting (relative model paths resolve from the config's folder)")
        raw.setdefault("name", path.stem)
        cfg = validate_config(cls, {**raw, "base_dir": str(path.parent.resolve())}, path)
        cfg.validate(path)
        return cfg

    def updated(self, **changes) -> "PipelineConfig":
        """`StrictConfig.updated`, then `validate()` (the values that depend on each other)."""
        cfg = super().updated(**changes)
        cfg.validate()
        return cfg

    def validate(self, where: object = None) -> None:  # type: ignore[override]  # pydantic's is deprecated
        """Check the values that depend on each other (types are checked on construction)."""
        if not 0.0 <= float(self.review_threshold) <= 1.0:
            raise InputError(where, f"review_threshold must be in [0, 1], not {self.review_threshold}")
        if self.refine_mass is not None and not 0.0 < float(self.refine_mass) <= 1.0:
            raise InputError(where, f"refine_mass must be in (0, 1] or null, not {self.refine_mass}")
        parse_scale(self.scale, where)
        if self.refine_crop is not None and set(self.refine_crop) - {"frame_rbc", "padding"}:
            raise InputError(where, f"refine_crop must map frame_rbc and/or padding, not {self.refine_crop!r}")
        for key in ("screening_tta", "refine_tta"):
            try:
                check_tta(getattr(self, key))
            except ValueError as e:
                raise InputError(where, f"{key}: {e}") from None
        if not 0 <= self.tile_overlap < self.tile_size:
            raise InputError(where, "tile_overlap must be >= 0 and smaller than tile_size")


def parse_scale(value: str | float | None, where: object = None) -> float | None:
    """None for a mode ("auto", "field", "folder": estimated from the red cells, see
    `bloodsmear.preprocess.scale.choose_diameters`), else the red-cell diameter in pixels (> 0)."""
    if isinstance(value, ScaleChoice) or scale_mode(value) is not None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(where, f"scale must be one of {', '.join(SCALE_MODES)} or a red-cell diameter in "
                                f"pixels, not {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise InputError(where, f"scale (red-cell diameter in pixels) must be > 0, not {value!r}")
    return v


def scale_mode(value: str | float | None) -> str | None:
    """The mode named by a scale value ("auto" for None), or None for a diameter in pixels."""
    if value is None:
        return "auto"
    if isinstance(value, str) and value.strip().lower() in SCALE_MODES:
        return value.strip().lower()
    return None


__all__ = ["PipelineConfig", "PIPELINES_DIR", "DEFAULT_PIPELINE", "parse_scale", "scale_mode"]
