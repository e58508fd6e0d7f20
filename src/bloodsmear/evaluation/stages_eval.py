"""The classification stages of a pipeline (screening -> refine routing) on labelled single-cell images.

    rep = evaluate_stages("pbc224", pipeline="default", manifest="zoo/pbc-screen-stain/split.json")

Each image is taken as one cell's crop (PBC images are framed as the pipeline frames its crops) and
goes through `Pipeline.classify_crops`: the screening classifier, then the refine classifier where the
pipeline routes the cell to it. Scored against the folder labels over the pipeline's classes: the
figures say what the routing costs or gains on cells whose class the refine model does not know.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bloodsmear.classes import canonical
from bloodsmear.config import resolve_dataset_path
from bloodsmear.data import load_dataset
from bloodsmear.data.splits import seeded_sample
from bloodsmear.errors import InputError
from bloodsmear.evaluation.pipeline_eval import _load_pipeline, select_split
from bloodsmear.io import read_image
from bloodsmear.metrics.classification import classification_report_arrays

log = logging.getLogger(__name__)


@dataclass
class StagesEvaluation:
    pipeline: str
    dataset: str
    split: str
    n: int
    n_refined: int
    report: object  # ClassificationReport
    skipped_labels: int = 0
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"pipeline": self.pipeline, "dataset": self.dataset, "split": self.split, "n": self.n,
                "n_refined": self.n_refined, "skipped_labels": self.skipped_labels, **self.report.headline(),
                "report": self.report.to_dict(), "config": self.config}


def evaluate_stages(dataset: str | Path, *, pipeline=None, manifest: str | Path | None = None,
                    split: str | None = None, fmt: str = "auto", limit: int | None = None, seed: int = 0,
                    batch_size: int = 256, progress: bool = True) -> StagesEvaluation:
    """Score the pipeline's screening + refine stages on a class-per-folder set of single-cell images
    (`split` of `manifest`, or of the dataset's official split, or all); `limit`: a seeded sample."""
    pipe = _load_pipeline(pipeline, None)
    root = resolve_dataset_path(dataset)
    if not root.exists():
        raise InputError(root, "dataset folder not found")
    images, where = select_split(load_dataset(root, fmt), split, manifest)
    classes = list(pipe.classes)
    keep = [(im.path, classes.index(canonical(im.label))) for im in images
            if im.label is not None and canonical(im.label) in classes]
    skipped = len(images) - len(keep)
    keep = seeded_sample(keep, limit, seed)
    if not keep:
        raise InputError(root, f"no images of the pipeline's classes in {where}")
    pred, n_refined = [], 0
    for b in tqdm(range(0, len(keep), batch_size), desc="stages", unit="batch", disable=not progress):
        crops = [read_image(p) for p, _ in keep[b:b + batch_size]]
        for a in pipe.classify_crops(crops):
            n_refined += a["refined_label"] is not None
            pred.append(classes.index(a["refined_label"] or a["screening_label"]))
    rep = classification_report_arrays(np.array([y for _, y in keep]), np.array(pred), classes)
    cfg = pipe.config.to_dict()
    return StagesEvaluation(pipeline=cfg.get("name", ""), dataset=str(root), split=where, n=len(keep),
                            n_refined=n_refined, report=rep, skipped_labels=skipped, config=cfg)


__all__ = ["StagesEvaluation", "evaluate_stages"]
