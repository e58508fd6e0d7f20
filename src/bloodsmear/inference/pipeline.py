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

A pipeline is a YAML/JSON config (`inference.pipeline_config.PipelineConfig`) naming each stage's model folder, by shipped name
(`bloodsmear/zoo/<name>`) or path. `Pipeline` takes the loaded stages, so tests can pass fakes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from bloodsmear.classes import cell_levels
from bloodsmear.errors import InputError
from bloodsmear.inference.stages import (
    CropSource,
    crop_cells,
    estimate_rbc_diameter_px,
    load_classifier,
)
from bloodsmear.inference.onnx_backend import use_onnx
from bloodsmear.inference.pipeline_config import PipelineConfig, parse_scale, scale_mode
from bloodsmear.models.segmenter_base import Segmenter, load_segmenter
from bloodsmear.preprocess.resize import resize_by
from bloodsmear.preprocess.scale import ScaleChoice, lone_field_choice, part_windows, plausible_diameter
from bloodsmear.preprocess.tiling import cell_to_original, predict_tiled
from bloodsmear.types import Cell, SlideResult

log = logging.getLogger(__name__)

MIN_SIDE = 16  # smaller images cannot hold a white cell
FACTOR_RANGE = (1 / 64, 4.0)  # resize factors to the working scale are kept within this range
SAME_SCALE = 1e-3  # a resize factor within this of 1 leaves the image as it is


@runtime_checkable
class CropClassifier(Protocol):
    """What the pipeline needs from a classifier (`inference.classify.CellClassifier`, `WbcOnly`, a fake)."""

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
class Detection:
    """What `Pipeline.detect` finds in one image: the WBC instances in original pixels (label "wbc",
    score = detection score), the working scale, and the crop source the classification stage cuts the
    cells from (the image, and its small copy for large crops). `to_result()` is the SlideResult."""

    name: str
    width: int
    height: int
    path: Path | None
    cells: list[Cell]
    scale: float  # working-scale factor (working px / original px)
    rbc_diameter_px: float | None  # red-cell diameter in original pixels
    scale_source: str  # where the scale came from: estimated, folder-median, given, fallback, ...
    crop_source: CropSource
    timings: dict[str, float] = field(default_factory=dict)

    def to_result(self) -> SlideResult:
        return SlideResult(name=self.name, width=self.width, height=self.height, cells=self.cells, path=self.path,
                           scale=self.scale, rbc_diameter_px=self.rbc_diameter_px, timings=self.timings,
                           meta={"scale_source": self.scale_source})


class Pipeline:
    """Segmenter + screening classifier (+ refine classifier) with the config's thresholds."""

    def __init__(self, segmenter: Segmenter, screening: CropClassifier, refine: CropClassifier | None = None,
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
        if self.config.backend == "onnx":  # the networks run by ONNX Runtime (exported once, cached)
            use_onnx(self)
        if self.config.detection_threshold is not None:
            for attr in ("score_threshold", "detection_threshold", "threshold"):
                if hasattr(segmenter, attr):
                    setattr(segmenter, attr, float(self.config.detection_threshold))
                    break

    @classmethod
    def from_config(cls, config: PipelineConfig | str | Path | None = None) -> "Pipeline":
        cfg = config if isinstance(config, PipelineConfig) else PipelineConfig.load(config)
        seg = load_segmenter(cfg.segmenter, base_dir=cfg.base_dir)
        screening = load_classifier(cfg.screening, base_dir=cfg.base_dir, tta=cfg.screening_tta)
        refine = load_classifier(cfg.refine, base_dir=cfg.base_dir, tta=cfg.refine_tta) if cfg.refine else None
        return cls(seg, screening, refine, cfg)

    @classmethod
    def segmenter_only(cls, segmenter: str | Path, config: PipelineConfig | None = None) -> "Pipeline":
        """A pipeline of one segmenter folder: every cell is labelled "wbc" with its detection score."""
        cfg = config or PipelineConfig(segmenter=str(segmenter), screening="none", name="segmenter-only")
        return cls(load_segmenter(segmenter, base_dir=cfg.base_dir), WbcOnly(), None, cfg)

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
                       scale: str | float | ScaleChoice | None = None, *,
                       name: object = "image") -> tuple[float, float | None, str]:
        """(resize factor original -> working scale, red-cell diameter in original px, its source);
        `small` is the image downscaled by `small_factor` (the red cells are measured there). A
        `ScaleChoice` (a folder's consensus, see `inference.scale_plan`) is used as it is; "field" is the
        field's own estimate; "auto" and "folder" on a field without a folder's consensus check its own
        estimate against its size and its parts (`own_choice`; a warning naming the field, `name`, when
        its own estimate is not used)."""
        target = float(self.segmenter.rbc_diameter_px)
        if isinstance(scale, ScaleChoice):
            if scale.diameter_px is None:
                return 1.0, None, "fallback"
            return float(np.clip(target / scale.diameter_px, *FACTOR_RANGE)), float(scale.diameter_px), scale.source
        value = self.config.scale if scale is None else scale
        given = parse_scale(value)
        if given is not None:
            return float(np.clip(target / given, *FACTOR_RANGE)), given, "given"
        d = estimate_rbc_diameter_px(small, small_factor)
        choice = own_choice(small, small_factor, scale_mode(value), d, name=name)
        if choice.diameter_px is None:
            return 1.0, None, "fallback"
        return float(np.clip(target / choice.diameter_px, *FACTOR_RANGE)), float(choice.diameter_px), choice.source

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
                                    refined_score=None, review=False, **cell_levels(c.label))
            return
        cfg = self.config
        crops = screening_crops(items, cfg)
        refine_crops = None
        if cfg.refine_crop is not None and self.refine is not None:  # crops framed as the refine model was trained
            rc = {"frame_rbc": None, "padding": None, **cfg.refine_crop}
            refine_crops = [crop for rgb, cs, rbc_px in items for crop in crop_cells(
                rgb, cs, padding=rc["padding"], rbc_px=rbc_px, frame_rbc=rc["frame_rbc"])]
        for c, a in zip(cells, self.classify_crops(crops, refine_crops)):
            c.attributes.update(a)
            c.label = a["refined_label"] or a["screening_label"]
            c.score = a["screening_score"] if a["refined_label"] is None else a["refined_score"]
            c.attributes.update(cell_levels(c.label))  # fine_label (None for a group-only answer), group_label
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
               path: Path | None = None) -> Detection:
        """Segmentation only: WBC instances (label "wbc", score = detection score) in original pixels,
        with the working scale and the crop source that `classify_many` cuts the cells from.
        A scale mode on one image: its own estimate ("field"), checked against its size and its parts
        ("auto", "folder"; see `working_factor`)."""
        prep = self._prepare(rgb, scale, name, path)
        t0 = time.perf_counter()
        cells = self.segment(prep.work)
        return self._finish(prep, cells, time.perf_counter() - t0)

    def detect_many(self, items: Sequence[tuple[np.ndarray, str | float | ScaleChoice | None, str, Path | None]],
                    *, errors: tuple[type[BaseException], ...] = (InputError,)) -> list[Detection | BaseException]:
        """`detect` on several (rgb, scale, name, path) images: per image its Detection, or the exception
        (one of `errors`) it failed with (the others go on). With `segment_batch` > 1 and a segmenter
        with `predict_many`, images whose working-scale copies share a size (and need no tiles) go
        through the segmenter in batches of up to that many (the same cells as one at a time)."""
        n = int(self.config.segment_batch)
        if n <= 1 or not hasattr(self.segmenter, "predict_many"):
            return [_attempt(errors, self.detect, rgb, scale=sc, name=nm, path=p) for rgb, sc, nm, p in items]
        preps = [_attempt(errors, self._prepare, rgb, sc, nm, p) for rgb, sc, nm, p in items]
        out: list[Detection | BaseException | None] = [p if isinstance(p, BaseException) else None for p in preps]
        same: dict[tuple, list[int]] = {}
        for i, prep in enumerate(preps):
            if not isinstance(prep, BaseException):
                tiled = max(prep.work.shape[:2]) > self.config.tile_size
                same.setdefault(("tiled", i) if tiled else prep.work.shape, []).append(i)
        for idx in same.values():
            for b in range(0, len(idx), n):
                part = idx[b:b + n]
                t0 = time.perf_counter()
                try:
                    cells = (self.segmenter.predict_many([preps[i].work for i in part]) if len(part) > 1
                             else [self.segment(preps[part[0]].work)])
                except errors:  # one bad image: each of the batch alone
                    for i in part:
                        out[i] = _attempt(errors, lambda pr: self._finish(pr, self.segment(pr.work), 0.0), preps[i])
                    continue
                share = (time.perf_counter() - t0) / len(part)
                for i, cs in zip(part, cells):
                    out[i] = self._finish(preps[i], list(cs), share)
        return out  # type: ignore[return-value]

    def _prepare(self, rgb: np.ndarray, scale, name: str, path: Path | None) -> "_Prepared":
        """`detect` up to the segmenter: the checks, the scale, the working-scale copy."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InputError(path or name, f"expected an RGB uint8 image, got shape {rgb.shape} {rgb.dtype}")
        h, w = rgb.shape[:2]
        if min(h, w) < MIN_SIDE:
            raise InputError(path or name, f"image too small ({w}x{h} px; at least {MIN_SIDE} px a side)")
        t = {}
        t0 = time.perf_counter()
        small, f_small = self.small_copy(rgb)  # one pass over the full image serves scale and resize
        factor, rbc_d, source = self.working_factor(small, f_small, scale, name=path or name)
        t["scale"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        work = (resize_by(small, factor / f_small, tol=SAME_SCALE) if factor <= f_small
                else resize_by(rgb, factor, tol=SAME_SCALE))
        t["resize"] = time.perf_counter() - t0
        return _Prepared(rgb, name, path, small, f_small, factor, rbc_d, source, work, t)

    def _finish(self, prep: "_Prepared", cells: list[Cell], seconds: float) -> Detection:
        """`detect` after the segmenter: the working-scale `cells` in original pixels (`seconds`: its time)."""
        h, w = prep.rgb.shape[:2]
        fy, fx = prep.work.shape[0] / h, prep.work.shape[1] / w  # exact per-axis factors after rounding
        t0 = time.perf_counter()
        cells = [_to_original(c, fx, fy, w, h) for c in cells
                 if (c.polygon is not None and len(c.polygon) >= 3) or c.box is not None]
        timings = {**prep.timings, "segment": seconds + time.perf_counter() - t0}
        crop_src = CropSource(prep.rgb, prep.small if prep.f_small < 1.0 else None, prep.f_small)  # large crops
        return Detection(name=prep.name, width=w, height=h, path=prep.path, cells=cells, scale=prep.factor,
                         rbc_diameter_px=prep.rbc_d, scale_source=prep.source, crop_source=crop_src, timings=timings)

    def run(self, rgb: np.ndarray, name: str = "image", *, scale: str | float | ScaleChoice | None = None,
            path: Path | None = None) -> SlideResult:
        """Analyse one RGB uint8 image (not modified). `scale` overrides the config's scale."""
        return self.run_many([(rgb, name, path)], scale=scale)[0]

    def run_many(self, images: Sequence[tuple[np.ndarray, str, Path | None]], *,
                 scale: str | float | ScaleChoice | None = None) -> list[SlideResult]:
        """`run` on several (rgb, name, path) images, their cells classified in one batch."""
        dets = [self.detect(rgb, scale=scale, name=name, path=path) for rgb, name, path in images]
        t0 = time.perf_counter()
        self.classify_many([(d.crop_source, d.cells, d.rbc_diameter_px) for d in dets])
        share = (time.perf_counter() - t0) / max(1, len(dets))
        for d in dets:
            d.timings["classify"] = share
        return [d.to_result() for d in dets]


@dataclass
class _Prepared:
    """An image on its way through `detect`: checked, scaled, resized to the working scale."""

    rgb: np.ndarray
    name: str
    path: Path | None
    small: np.ndarray
    f_small: float
    factor: float
    rbc_d: float | None
    source: str
    work: np.ndarray
    timings: dict


def _attempt(errors: tuple[type[BaseException], ...], fn, *args, **kw):
    """`fn(*args, **kw)`, or the exception (one of `errors`) it raised."""
    try:
        return fn(*args, **kw)
    except errors as e:
        return e


def detect_all(pipeline, items: Sequence[tuple[np.ndarray, object, str, Path | None]], *,
               errors: tuple[type[BaseException], ...] = (InputError,)) -> list:
    """`pipeline.detect_many(items, errors=errors)`, or, for a pipeline without it (a test's fake),
    its `detect` per image: per (rgb, scale, name, path) item its Detection or the exception."""
    if hasattr(pipeline, "detect_many"):
        return pipeline.detect_many(items, errors=errors)
    return [_attempt(errors, pipeline.detect, rgb, scale=sc, name=nm, path=p) for rgb, sc, nm, p in items]


# ---------------------------------------------------------------------- geometry helpers


def lone_choice(small: np.ndarray, small_factor: float, own: float | None) -> ScaleChoice:
    """`lone_field_choice` of a field (`small`: it downscaled by `small_factor`; `own`: its own
    estimate in original px), its parts (`part_windows`) measured on `small` too."""
    long_side = max(small.shape[:2]) / small_factor
    parts = [estimate_rbc_diameter_px(win, small_factor) for win in part_windows(small)]
    return lone_field_choice(own, parts, long_side)


def own_choice(small: np.ndarray, small_factor: float, mode: str, own: float | None, *,
               name: object = "image") -> ScaleChoice:
    """The diameter a field without a folder's consensus (see `inference.scale_plan`) is analysed at in
    scale mode `mode`: "field": its own estimate `own` (original px); "auto" and "folder": `lone_choice`,
    with a warning naming the field (`name`) when its own estimate is not used. `small`: the field
    downscaled by `small_factor`."""
    if mode == "field":
        ok = own is not None and np.isfinite(own) and own > 0
        return ScaleChoice(float(own), "estimated") if ok else ScaleChoice(None, "fallback")
    choice = lone_choice(small, small_factor, own)
    if choice.source != "estimated":
        h, w = (round(v / small_factor) for v in small.shape[:2])
        why = ("no red-cell estimate" if own is None or not np.isfinite(own) or own <= 0 else
               f"red-cell estimate {own:.0f} px implausible for a {w}x{h} field"
               if not plausible_diameter(own, max(h, w)) else
               f"red-cell estimate {own:.0f} px far off its parts' {choice.diameter_px:.0f} px")
        log.warning("%s: %s, and no folder of like fields to check it against: analysed at %.0f px "
                    "(%s)", name, why, choice.diameter_px, choice.source)
    return choice


def screening_crops(items: Sequence[tuple[np.ndarray | CropSource, list[Cell], float | None]],
                    config: PipelineConfig) -> list[np.ndarray]:
    """The crops the classification stage cuts (and the screening model sees) for every cell of `items`
    ((image or CropSource, cells, red-cell diameter in original px)), framed as `config` says; the images
    and cells are not modified."""
    return [crop for rgb, cs, rbc_px in items
            for crop in crop_cells(rgb, cs, padding=config.crop_padding, rbc_px=rbc_px,
                                   frame_rbc=config.crop_frame_rbc)]


def small_copy(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """(`rgb` downscaled so its longer side is at most `max_side`, that factor <= 1)."""
    h, w = rgb.shape[:2]
    f = min(1.0, max_side / max(h, w))
    return resize_by(rgb, f, tol=SAME_SCALE), f


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
