"""Adaptation without labels on the run itself (issue 12 item 4): the screening classifier's batch-norm
statistics re-estimated on the run's own WBC crops before any cell is classified.

    pipe = adapted_for_run(pipeline, paths, scales)       # a new Pipeline; `pipeline` is not changed

Up to `fields` of the run's fields, evenly spaced over the whole run (the same sample when a run resumes),
are segmented and cut exactly as the classify stage cuts them; with at least `min_cells` crops, the
screening model's BatchNorm running means and variances are re-estimated on them (`training.bn_adapt`:
labels are never used, weights do not change) and the model is fused for inference again. A tiny run (fewer
crops) keeps the shipped statistics, logged. Cost: one extra detection of the sampled fields and one
forward pass over their crops (~2-3 s for 64 BCCD fields on 2 cores).

Off by default (`PipelineConfig.adapt_bn`, `analyze --adapt-bn`): leave-one-domain-out, re-estimating the
stain-normalised screening model's statistics on the held-out crops raised LISC and PBC and lowered BCCD
(docs/lodo.md, the `_bn` rows), so it is a choice per lab, measured, not a default.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bloodsmear.errors import InputError
from bloodsmear.inference.classify import CellClassifier, optimize_for_inference
from bloodsmear.inference.pipeline import screening_crops
from bloodsmear.io import read_image
from bloodsmear.training.bn_adapt import adapt_batchnorm

log = logging.getLogger(__name__)

BATCH = 64


def bn_adapted(clf: CellClassifier, crops: Sequence[np.ndarray]) -> CellClassifier:
    """A copy of `clf` whose model's batch-norm statistics are re-estimated on `crops` (fitted, stain-
    normalised and normalised exactly as `clf` classifies them); `clf` is not changed."""
    batch = clf.normalize_stain(clf.fit_batch(crops))
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    x = (x - clf._mean) / clf._std  # noqa: SLF001 - the classifier's own normalisation, one home
    loader = [x[i:i + BATCH] for i in range(0, len(x), BATCH)]
    model = adapt_batchnorm(clf.loaded.model, loader)
    out = copy.copy(clf)
    out.net = optimize_for_inference(model)
    return out


def _sample(paths: Sequence[Path], n: int) -> list[Path]:
    if len(paths) <= n:
        return list(paths)
    return [paths[int(i)] for i in np.linspace(0, len(paths) - 1, n).round()]


def adapted_for_run(pipeline, paths: Sequence[Path], scales: dict | None = None, scale=None):
    """`pipeline` with its screening classifier adapted to the run's fields `paths` (module doc), or
    `pipeline` itself when it has no trainable screening classifier or the sample has too few cells."""
    cfg = pipeline.config
    if not isinstance(pipeline.screening, CellClassifier):
        return pipeline
    t0 = time.perf_counter()
    crops: list[np.ndarray] = []
    sample = _sample(sorted(Path(p) for p in paths), int(cfg.adapt_bn_fields))
    for p in sample:
        try:
            rgb = read_image(p)
        except InputError as e:
            log.warning("batch-norm adaptation: %s skipped (%s)", p, e.problem)
            continue
        choice = (scales or {}).get(p, scale)
        det = pipeline.detect(rgb, scale=choice, name=p.name, path=p)
        crops += screening_crops([(det.crop_source, det.cells, det.rbc_diameter_px)], cfg)
    if len(crops) < int(cfg.adapt_bn_min_cells):
        log.info("batch-norm adaptation skipped: %d WBC crop(s) in %d field(s), fewer than %d",
                 len(crops), len(sample), cfg.adapt_bn_min_cells)
        return pipeline
    out = copy.copy(pipeline)
    out.screening = bn_adapted(pipeline.screening, crops)
    log.info("screening batch norm re-estimated on %d WBC crops of %d field(s) in %.1f s", len(crops), len(sample),
             time.perf_counter() - t0)
    return out
