"""The paper's full pipeline (its Fig. 23) on one image: scale -> segment -> crop -> screen -> refine.

    rgb (original pixels)
      -> typical red-cell diameter (estimated from the red cells, or given)
      -> resized to the segmenter's working scale (cv2.INTER_AREA when shrinking), tiled when still large
      -> WBC instances (any `bloodsmear.models.segmenter_base.Segmenter`)
      -> boxes and polygons mapped back to ORIGINAL pixels
      -> one crop per cell from the original image
      -> screening classifier on all crops in one batch (all its classes)
      -> refine classifier on the cells whose screening class it knows (one batch)
      -> final class = refined label where refined, else the screening label; both kept per cell;
         cells whose final score is below `review_threshold` are flagged `review` (class kept).

A pipeline is a YAML/JSON config (`PipelineConfig`) naming each stage's model folder, by shipped name
(`bloodsmear/zoo/<name>`) or path. `Pipeline` takes the loaded stages, so tests can pass fakes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import yaml

from bloodsmear.errors import InputError
from bloodsmear.inference.stages import (
    PBC_FRAME_RBC,
    CropSource,
    crop_cells,
    estimate_rbc_diameter_px,
    load_classifier,
    resolve_ref,
)
from bloodsmear.inference.tta import check_tta
from bloodsmear.models.segmenter_base import Segmenter, load_segmenter
from bloodsmear.preprocess.scale import SCALE_MODES, ScaleChoice, resize_to_scale
from bloodsmear.preprocess.tiling import cell_to_original, predict_tiled
from bloodsmear.settings import ZOO_DIR
from bloodsmear.types import Cell, SlideResult

log = logging.getLogger(__name__)

#: Shipped pipeline configs: `bloodsmear/zoo/pipelines/<name>.yaml`.
PIPELINES_DIR = ZOO_DIR / "pipelines"
DEFAULT_PIPELINE = "default"
CROP_SOURCE = "crop_source"  # SlideResult.meta key of the detect -> classify hand-over (removed by classify)
MIN_SIDE = 16  # smaller images cannot hold a white cell
FACTOR_RANGE = (1 / 64, 4.0)  # resize factors to the working scale are kept within this range


@runtime_checkable
class CellClassifier(Protocol):
    """What the pipeline needs from a classifier model folder."""

    classes: Sequence[str]

    def predict_proba(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, len(classes)) class probabilities for N RGB uint8 crops of any size."""
        ...


class WbcOnly:
    """The classifier of a segmenter-only pipeline: every cell is a "wbc" (probability 1)."""

    classes = ("wbc",)

    def predict_proba(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        return np.ones((len(crops), 1))


@dataclass
class PipelineConfig:
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
    name: str = ""
    base_dir: str | None = field(default=None, repr=False)  # relative model paths resolve from here

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
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise InputError(path, f"not a readable YAML/JSON pipeline config ({e})") from e
        if not isinstance(raw, dict):
            raise InputError(path, "a pipeline config must be a mapping of settings")
        known = {f.name for f in fields(cls)} - {"base_dir"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InputError(path, f"unknown pipeline settings {unknown} (known: {', '.join(sorted(known))})")
        raw.setdefault("name", path.stem)
        cfg = cls(**raw, base_dir=str(path.parent.resolve()))
        cfg.validate(path)
        return cfg

    def validate(self, where: object = None) -> None:
        if not 0.0 <= float(self.review_threshold) <= 1.0:
            raise InputError(where, f"review_threshold must be in [0, 1], not {self.review_threshold}")
        if self.refine_mass is not None and not 0.0 < float(self.refine_mass) <= 1.0:
            raise InputError(where, f"refine_mass must be in (0, 1] or null, not {self.refine_mass}")
        parse_scale(self.scale, where)
        if self.refine_crop is not None and (not isinstance(self.refine_crop, dict)
                                             or set(self.refine_crop) - {"frame_rbc", "padding"}):
            raise InputError(where, f"refine_crop must map frame_rbc and/or padding, not {self.refine_crop!r}")

        for key in ("screening_tta", "refine_tta"):
            try:
                check_tta(getattr(self, key))
            except ValueError as e:
                raise InputError(where, f"{key}: {e}") from None
        if not 0 <= self.tile_overlap < self.tile_size:
            raise InputError(where, "tile_overlap must be >= 0 and smaller than tile_size")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("base_dir")
        return d


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


class Pipeline:
    """Segmenter + screening classifier (+ refine classifier) with the config's thresholds."""

    def __init__(self, segmenter: Segmenter, screening: CellClassifier, refine: CellClassifier | None = None,
                 config: PipelineConfig | None = None):
        self.segmenter = segmenter
        self.screening = screening
        self.refine = refine
        self.config = config or PipelineConfig()
        self.config.validate()
        rc = self.config.refine_classes
        self.refine_classes: set[str] = set(refine.classes if rc is None else rc) if refine is not None else set()
        if refine is not None:
            missing = self.refine_classes - set(refine.classes)
            if missing:
                raise InputError(None, f"refine_classes {sorted(missing)} are not classes of the refine model "
                                       f"({', '.join(refine.classes)})")
        sc = self.config.screening_classes
        self.screening_cols: list[int] | None = None
        if sc is not None and not isinstance(screening, WbcOnly):
            s_cls = list(screening.classes)
            missing = sorted(set(sc) - set(s_cls))
            if missing or not sc:
                raise InputError(None, f"screening_classes {missing or sc} must be classes of the screening model "
                                       f"({', '.join(s_cls)})")
            self.screening_cols = [k for k, c in enumerate(s_cls) if c in set(sc)]
        if self.config.detection_threshold is not None:
            for attr in ("score_threshold", "detection_threshold", "threshold"):
                if hasattr(segmenter, attr):
                    setattr(segmenter, attr, float(self.config.detection_threshold))
                    break

    @classmethod
    def from_config(cls, config: PipelineConfig | str | Path | None = None) -> "Pipeline":
        cfg = config if isinstance(config, PipelineConfig) else PipelineConfig.load(config)
        seg = load_segmenter(resolve_ref(cfg.segmenter, cfg.base_dir))
        screening = load_classifier(resolve_ref(cfg.screening, cfg.base_dir), tta=cfg.screening_tta)
        refine = load_classifier(resolve_ref(cfg.refine, cfg.base_dir), tta=cfg.refine_tta) if cfg.refine else None
        return cls(seg, screening, refine, cfg)

    @classmethod
    def segmenter_only(cls, segmenter: str | Path, config: PipelineConfig | None = None) -> "Pipeline":
        """A pipeline of one segmenter folder: every cell is labelled "wbc" with its detection score."""
        cfg = config or PipelineConfig(segmenter=str(segmenter), screening="none", name="segmenter-only")
        return cls(load_segmenter(resolve_ref(segmenter, cfg.base_dir)), WbcOnly(), None, cfg)

    @property
    def classes(self) -> list[str]:
        out = list(self.screening.classes)
        if self.screening_cols is not None:
            out = [out[k] for k in self.screening_cols]
        if self.refine is not None:
            out += [c for c in self.refine.classes if c not in out]
        return out

    def describe(self) -> dict:
        return {**self.config.to_dict(), "segmenter_kind": getattr(self.segmenter, "kind", "?"),
                "classes": self.classes}

    # ------------------------------------------------------------------ stages

    def working_factor(self, small: np.ndarray, small_factor: float = 1.0,
                       scale: str | float | ScaleChoice | None = None) -> tuple[float, float | None, str]:
        """(resize factor original -> working scale, red-cell diameter in original px, its source);
        `small` is the image downscaled by `small_factor` (the red cells are measured there). A
        `ScaleChoice` (a folder's consensus, see `inference.scale_plan`) is used as it is."""
        target = float(self.segmenter.rbc_diameter_px)
        if isinstance(scale, ScaleChoice):
            if scale.diameter_px is None:
                return 1.0, None, "fallback"
            return float(np.clip(target / scale.diameter_px, *FACTOR_RANGE)), float(scale.diameter_px), scale.source
        given = parse_scale(self.config.scale if scale is None else scale)
        if given is not None:
            return float(np.clip(target / given, *FACTOR_RANGE)), given, "given"
        d = estimate_rbc_diameter_px(small, small_factor)
        if d is None or not np.isfinite(d) or d <= 0:
            return 1.0, None, "fallback"
        return float(np.clip(target / d, *FACTOR_RANGE)), float(d), "estimated"

    def small_copy(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """(the image downscaled to at most `scale_max_side`, that factor): red cells are measured there."""
        return small_copy(rgb, self.config.scale_max_side)

    def estimate_rbc(self, rgb: np.ndarray) -> float | None:
        """The field's own red-cell diameter estimate in original pixels (None when there is none)."""
        small, f_small = self.small_copy(rgb)
        return estimate_rbc_diameter_px(small, f_small)

    def segment(self, work: np.ndarray) -> list[Cell]:
        """Instances at working scale; overlapping tiles (merged) when the image is larger than `tile_size`."""
        return predict_tiled(self.segmenter.predict, work, size=self.config.tile_size,
                             overlap=self.config.tile_overlap)

    def classify(self, rgb: np.ndarray, cells: list[Cell], rbc_px: float | None = None) -> None:
        """Fill label, score and the stage attributes of every cell (crops from `rgb`, original pixels;
        `rbc_px`: the red-cell diameter there, for PBC-framed crops)."""
        self.classify_many([(rgb, cells, rbc_px)])

    def classify_many(self, items: Sequence[tuple[np.ndarray | CropSource, list[Cell], float | None]]) -> None:
        """`classify` for several images at once: the crops of all their cells go through each
        classifier in one batch (a field holds few WBCs; one call per field wastes the batch)."""
        cells = [c for _, cs, _ in items for c in cs]
        if not cells:
            return
        if isinstance(self.screening, WbcOnly):  # segmenter-only: no crops, the detection score stands
            for c in cells:
                c.attributes.update(screening_label="wbc", screening_score=c.score, refined_label=None,
                                    refined_score=None, review=False)
            return
        cfg = self.config
        crops = [crop for rgb, cs, rbc_px in items
                 for crop in crop_cells(rgb, cs, padding=cfg.crop_padding, rbc_px=rbc_px, frame_rbc=cfg.crop_frame_rbc)]
        refine_crops = None
        if cfg.refine_crop is not None and self.refine is not None:  # crops framed as the refine model was trained
            rc = {"frame_rbc": None, "padding": None, **cfg.refine_crop}
            refine_crops = [crop for rgb, cs, rbc_px in items for crop in crop_cells(
                rgb, cs, padding=rc["padding"], rbc_px=rbc_px, frame_rbc=rc["frame_rbc"])]
        for c, a in zip(cells, self.classify_crops(crops, refine_crops)):
            c.attributes.update(a)
            c.label = a["refined_label"] or a["screening_label"]
            c.score = a["screening_score"] if a["refined_label"] is None else a["refined_score"]
        thr = float(self.config.review_threshold)
        for c in cells:  # unsure, or the screening's first choice was a class the pipeline excludes
            c.attributes["review"] = bool(c.score < thr or c.attributes.pop("screening_excluded_top", False))

    def classify_crops(self, crops: Sequence[np.ndarray], refine_crops: Sequence[np.ndarray] | None = None
                       ) -> list[dict]:
        """The classification stages on cell crops: per crop the screening label and score (over
        `screening_classes`; `screening_excluded_top`: its first choice was another class) and, where the
        refine stage applies (a screening label among its classes, or `refine_mass` reached), the refined
        label and score (`refine_crops`: that stage's own crops of the same cells, default `crops`)."""
        if len(crops) == 0:
            return []
        cfg = self.config
        probs = np.asarray(self.screening.predict_proba(crops), dtype=float).reshape(len(crops), -1)
        s_cls = list(self.screening.classes)
        excluded = np.zeros(len(probs), bool)
        if self.screening_cols is not None:  # only the allowed classes, renormalised
            keep = np.isin(np.arange(probs.shape[1]), self.screening_cols)
            excluded = ~keep[probs.argmax(1)]
            probs = np.where(keep, probs, 0.0)
            probs = probs / np.maximum(probs.sum(1, keepdims=True), 1e-12)
        out = [{"screening_label": s_cls[int(p.argmax())], "screening_score": float(p.max()), "refined_label": None,
                "refined_score": None, "screening_excluded_top": bool(x)} for p, x in zip(probs, excluded)]
        todo = [i for i, a in enumerate(out) if a["screening_label"] in self.refine_classes]
        if cfg.refine_mass is not None:  # also cells the screening is unsure are outside the refine classes
            cols = [k for k, name in enumerate(s_cls) if name in self.refine_classes]
            mass = probs[:, cols].sum(1) if cols else np.zeros(len(out))
            labelled = set(todo)
            todo = [i for i in range(len(out)) if i in labelled or mass[i] >= float(cfg.refine_mass)]
        if todo and self.refine is not None:
            src = crops if refine_crops is None else refine_crops
            rprobs = np.asarray(self.refine.predict_proba([src[i] for i in todo]), dtype=float)
            r_cls = list(self.refine.classes)
            for i, p in zip(todo, rprobs):
                out[i].update(refined_label=r_cls[int(p.argmax())], refined_score=float(p.max()))
        return out

    def detect(self, rgb: np.ndarray, *, scale: str | float | ScaleChoice | None = None, name: str = "image",
               path: Path | None = None) -> SlideResult:
        """Segmentation only: WBC instances (label "wbc", score = detection score) in original pixels.
        A scale mode ("auto", "field", "folder") on one image is its own estimate."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InputError(path or name, f"expected an RGB uint8 image, got shape {rgb.shape} {rgb.dtype}")
        h, w = rgb.shape[:2]
        if min(h, w) < MIN_SIDE:
            raise InputError(path or name, f"image too small ({w}x{h} px; at least {MIN_SIDE} px a side)")
        t = {}
        t0 = time.perf_counter()
        small, f_small = self.small_copy(rgb)  # one pass over the full image serves scale and resize
        factor, rbc_d, source = self.working_factor(small, f_small, scale)
        t["scale"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        work = resize_by(small, factor / f_small) if factor <= f_small else resize_by(rgb, factor)
        fy, fx = work.shape[0] / h, work.shape[1] / w  # exact per-axis factors after rounding
        t["resize"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        cells = [_to_original(c, fx, fy, w, h) for c in self.segment(work)
                 if (c.polygon is not None and len(c.polygon) >= 3) or c.box is not None]
        t["segment"] = time.perf_counter() - t0
        crop_src = CropSource(rgb, small if f_small < 1.0 else None, f_small)  # large crops come from `small`
        return SlideResult(name=name, width=w, height=h, cells=cells, path=path, scale=factor,
                           rbc_diameter_px=rbc_d, timings=t, meta={"scale_source": source, CROP_SOURCE: crop_src})

    def run(self, rgb: np.ndarray, name: str = "image", *, scale: str | float | ScaleChoice | None = None,
            path: Path | None = None) -> SlideResult:
        """Analyse one RGB uint8 image (not modified). `scale` overrides the config's scale."""
        return self.run_many([(rgb, name, path)], scale=scale)[0]

    def run_many(self, images: Sequence[tuple[np.ndarray, str, Path | None]], *,
                 scale: str | float | ScaleChoice | None = None) -> list[SlideResult]:
        """`run` on several (rgb, name, path) images, their cells classified in one batch."""
        results = [self.detect(rgb, scale=scale, name=name, path=path) for rgb, name, path in images]
        t0 = time.perf_counter()
        self.classify_many([(r.meta.pop(CROP_SOURCE, rgb), r.cells, r.rbc_diameter_px)
                            for (rgb, _, _), r in zip(images, results)])
        share = (time.perf_counter() - t0) / max(1, len(results))
        for r in results:
            r.timings["classify"] = share
        return results


# ---------------------------------------------------------------------- geometry helpers


def small_copy(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """(`rgb` downscaled so its longer side is at most `max_side`, that factor <= 1)."""
    h, w = rgb.shape[:2]
    f = min(1.0, max_side / max(h, w))
    return resize_by(rgb, f), f


def resize_by(rgb: np.ndarray, factor: float) -> np.ndarray:
    """`rgb` resized by `factor` (INTER_AREA when shrinking); the same array when factor is ~1."""
    if abs(factor - 1.0) < 1e-3:
        return rgb

    return resize_to_scale(rgb, factor)


def _to_original(c: Cell, fx: float, fy: float, w: int, h: int) -> Cell:
    """A working-scale cell in original pixels (`preprocess.tiling.cell_to_original`: polygon, box and
    mask), labelled "wbc" with its detection score; a box-only detection gets its rectangle as outline."""
    if c.polygon is None or len(c.polygon) < 3:
        x1, y1, x2, y2 = c.box  # type: ignore[misc]
        c = Cell(label=c.label, polygon=np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=float), box=c.box,
                 mask=c.mask, score=c.score, attributes=c.attributes)
    o = cell_to_original(c, fx, fy, w, h)
    det = float(c.score) if c.score is not None else 1.0
    return Cell(label="wbc", polygon=o.polygon, box=o.box, mask=o.mask, score=det,
                attributes={**c.attributes, "detection_score": det})
