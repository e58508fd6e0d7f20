"""`bloodsmear bench framing`: does a cell's class survive another magnification or framing?

PBC test images (a seeded sample of the WBC classes from the model's split.json test part) are rescaled
(0.5x ... 2x) or padded / cut (+-30 % of the side, padding in the image's border colour) and classified
three ways: `classify` with cell framing (segmenter + `frame_cell`, `inference.single_cell`), `classify`
with the old centre framing, and `analyze` (the default pipeline, the image as a lone field; the answer
is its central cell's class). Accuracy per condition and the largest drop from 1x (docs/framing.md).

`measure_frame_k` measures `preprocess.cells.FRAME_CELL_K` on PBC train images.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from bloodsmear.config import resolve_dataset_path
from bloodsmear.data import load_dataset
from bloodsmear.data.splits import load_manifest, seeded_sample
from bloodsmear.errors import InputError
from bloodsmear.inference.classify import CellClassifier, predict_images
from bloodsmear.inference.pipeline import Pipeline
from bloodsmear.inference.single_cell import CellFramer, central_cell
from bloodsmear.io import read_image
from bloodsmear.preprocess.cells import outline_diameter
from bloodsmear.preprocess.resize import resize_by

log = logging.getLogger(__name__)

__all__ = ["CONDITIONS", "WBC_CLASSES", "bench_framing", "condition_image", "measure_frame_k", "pbc_sample"]

#: The conditions: ("scale", f) resizes by f; ("frame", f) pads (f > 1) or cuts (f < 1) the image to f x its side.
CONDITIONS = (("scale", 0.5), ("scale", 0.75), ("scale", 1.0), ("scale", 1.5), ("scale", 2.0),
              ("frame", 1.3), ("frame", 0.7))
#: Classes the bench samples: the WBC classes, those `analyze` answers (the default pipeline's screening_classes).
WBC_CLASSES = ("basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil")
METHODS = ("classify_cell", "classify_centre", "analyze")


def condition_name(kind: str, f: float) -> str:
    return f"{f:g}x" if kind == "scale" else f"{'pad' if f > 1 else 'cut'} {round((f - 1) * 100):+d}%"


def border_color(rgb: np.ndarray) -> tuple[int, int, int]:
    """The median colour of the image's outermost pixel ring."""
    ring = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return tuple(int(v) for v in np.median(ring, axis=0).round())


def condition_image(rgb: np.ndarray, kind: str, f: float) -> np.ndarray:
    """`rgb` rescaled by `f` ("scale") or padded / cut about its centre to `f` x its size ("frame"; padding
    in the border colour); a new array."""
    if kind == "scale":
        return resize_by(rgb, f).copy()
    h, w = rgb.shape[:2]
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    if f >= 1:
        t, lft = (nh - h) // 2, (nw - w) // 2
        return cv2.copyMakeBorder(rgb, t, nh - h - t, lft, nw - w - lft, cv2.BORDER_CONSTANT, value=border_color(rgb))
    t, lft = (h - nh) // 2, (w - nw) // 2
    return rgb[t:t + nh, lft:lft + nw].copy()


def pbc_sample(dataset: str | Path, manifest: str | Path, part: str, limit: int | None, seed: int = 0,
               classes: tuple[str, ...] = WBC_CLASSES) -> list[tuple[Path, str]]:
    """(path, class) of a seeded sample of `part` of a split manifest, of `classes` only."""
    root = resolve_dataset_path(dataset)
    if not root.is_dir():
        raise InputError(root, "dataset folder not found")
    images = load_manifest(manifest).subset(load_dataset(root, "pbc"), part)
    keep = [(Path(im.path), im.label) for im in images if im.label in classes]
    if not keep:
        raise InputError(root, f"no images of {', '.join(classes)} in {manifest}:{part}")
    return seeded_sample(keep, limit, seed)


def measure_frame_k(dataset: str | Path = "pbc224", *, manifest: str | Path | None = None, limit: int = 600,
                    seed: int = 0, progress: bool = True) -> dict:
    """Median over a seeded sample of PBC train images of (image side / the WBC's equivalent diameter),
    the WBC found by the default pipeline's segmenter (`CellFramer.find`): `FRAME_CELL_K`."""
    framer = CellFramer.from_pipeline("default")
    manifest = manifest or CellClassifier.load("default").loaded.path / "split.json"
    ratios, none = [], 0
    for path, _ in tqdm(pbc_sample(dataset, manifest, "train", limit, seed), desc="measure k", disable=not progress):
        rgb = read_image(path)
        cell, _ = framer.find(rgb)
        if cell is None:
            none += 1
            continue
        ratios.append(max(rgb.shape[:2]) / outline_diameter(cell))
    r = np.asarray(ratios)
    return {"k": float(np.median(r)), "n": len(r), "no_cell": none, "q25": float(np.percentile(r, 25)),
            "q75": float(np.percentile(r, 75)), "seed": seed, "limit": limit}


@dataclass
class _Scorer:
    clf: CellClassifier
    framer: CellFramer
    pipeline: Pipeline

    def answers(self, rgb: np.ndarray) -> dict[str, str | None]:
        """Each method's class for one image (None: no cell found)."""
        out: dict[str, str | None] = {}
        for name, framer in (("classify_cell", self.framer), ("classify_centre", None)):
            p = predict_images(self.clf, [rgb], framer)[0]
            out[name] = None if p is None else self.clf.classes[int(p.argmax())]
        res = self.pipeline.run(rgb)
        cell = central_cell(res.cells, res.width, res.height)
        out["analyze"] = None if cell is None else cell.label
        return out


def bench_framing(dataset: str | Path = "pbc224", *, model: str = "default", pipeline: str = "default",
                  limit: int | None = 400, seed: int = 0, progress: bool = True) -> dict:
    """Accuracy per condition (`CONDITIONS`) and method (`METHODS`) on a seeded sample of PBC test images,
    with each method's largest drop from 1x (points) and its no-cell counts."""
    clf = CellClassifier.load(model)
    scorer = _Scorer(clf, CellFramer.from_pipeline(pipeline), Pipeline.from_config(pipeline))
    sample = pbc_sample(dataset, clf.loaded.path / "split.json", "test", limit, seed)
    names = [condition_name(*c) for c in CONDITIONS]
    right = {m: {c: 0 for c in names} for m in METHODS}
    no_cell = {m: {c: 0 for c in names} for m in METHODS}
    t0 = time.perf_counter()
    for path, label in tqdm(sample, desc="bench framing", unit="img", disable=not progress):
        rgb = read_image(path)
        for cond, name in zip(CONDITIONS, names):
            for m, a in scorer.answers(condition_image(rgb, *cond)).items():
                right[m][name] += a == label
                no_cell[m][name] += a is None
    n = len(sample)
    acc = {m: {c: 100.0 * right[m][c] / n for c in names} for m in METHODS}
    ref = condition_name("scale", 1.0)
    drop = {m: max(acc[m][ref] - v for v in acc[m].values()) for m in METHODS}
    return {"n": n, "seed": seed, "dataset": str(resolve_dataset_path(dataset)), "model": str(clf.loaded.path),
            "pipeline": pipeline, "classes": list(WBC_CLASSES), "conditions": names, "accuracy": acc,
            "largest_drop": drop, "within_2_points": {m: drop[m] <= 2.0 for m in METHODS}, "no_cell": no_cell,
            "seconds": round(time.perf_counter() - t0, 1)}
