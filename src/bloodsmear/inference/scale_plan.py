"""Red-cell scale of a run's fields, pooled per folder before any field is analysed.

Fields of one folder and one pixel size come from one microscope and camera: their magnification is
one. `plan_scales` measures every field's own red-cell diameter (the pipeline's `estimate_rbc`), groups
the fields by (folder, height, width) and applies `bloodsmear.preprocess.scale.choose_diameters`; the
pipeline then analyses each field at its `ScaleChoice`. The plan covers all the inputs (also those a
resumed run has already done), so a field's scale does not depend on which fields were left to do.
Unreadable images are left out of the plan (the analysis reports them), and so are, in the modes that
pool ("auto", "folder"), the fields of a group too small for a consensus (fewer than
`CONSENSUS_MIN_FIELDS` estimates): the pipeline checks each of those against its own size and parts
(`Pipeline.working_factor`, `preprocess.scale.lone_field_choice`), as when it is analysed alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from bloodsmear.inference.pipeline_config import scale_mode
from bloodsmear.io import read_image
from bloodsmear.preprocess.scale import CONSENSUS_MIN_FIELDS, ScaleChoice, choose_diameters

log = logging.getLogger(__name__)


def folder_group(path: Path, shape: Sequence[int]) -> tuple:
    """The group whose fields share a magnification: (folder, height, width)."""
    return Path(path).parent, int(shape[0]), int(shape[1])


def measure_field(path: Path, estimate: Callable[[np.ndarray], float | None],
                  transform: Callable[[np.ndarray], np.ndarray] | None, *,
                  read: Callable[[Path], np.ndarray] = read_image) -> tuple[float | None, tuple[int, int]] | None:
    """(own red-cell diameter or None, (height, width)) of the field at `path` (decoded by `read`), or None
    when it cannot be read."""
    try:
        rgb = read(path)
        if transform is not None:
            rgb = transform(rgb)
        return estimate(rgb), rgb.shape[:2]
    except Exception as e:  # noqa: BLE001 - the analysis itself reports unreadable images
        log.debug("no scale estimate for %s: %s", path, e)
        return None


def plan_scales(paths: Sequence[Path], estimate: Callable[[np.ndarray], float | None], mode: str = "auto", *,
                transform: Callable[[np.ndarray], np.ndarray] | None = None,
                map_fn: Callable[..., Iterable] = map,
                read: Callable[[Path], np.ndarray] = read_image) -> dict[Path, ScaleChoice]:
    """{path: ScaleChoice} for every readable image of `paths` (`mode`: see `choose_diameters`), except,
    in the modes that pool, the fields of groups with too few estimates for a consensus.

    `estimate(rgb)` gives a field's own red-cell diameter in original pixels (or None); `transform` is
    applied to each image first (e.g. `evaluate --rescale`); `map_fn` runs the measurements (a thread
    pool's `map` runs them in parallel); `read` decodes a field (`inference.decoded.DecodedCache.read`
    keeps it for the analysis)."""
    paths = [Path(p) for p in paths]
    measured = list(map_fn(lambda p: measure_field(p, estimate, transform, read=read), paths))
    keep = [(p, m) for p, m in zip(paths, measured) if m is not None]
    return pool_scales([p for p, _ in keep], [m[0] for _, m in keep], [m[1] for _, m in keep], mode)


def pool_scales(paths: Sequence[Path], estimates: Sequence[float | None], shapes: Sequence[Sequence[int]],
                mode: str = "auto") -> dict[Path, ScaleChoice]:
    """`plan_scales` of fields already measured: `estimates[i]` is the own red-cell diameter (original
    px, or None) of the field `paths[i]` of `shapes[i]` (height, width). The fields left out (groups too
    small for a consensus, in the modes that pool) get `inference.pipeline.own_choice`."""
    if not paths:
        return {}
    paths = [Path(p) for p in paths]
    groups = [folder_group(p, s) for p, s in zip(paths, shapes)]
    choices = choose_diameters(list(estimates), groups, mode)
    n_est: dict[tuple, int] = {}
    for e, g in zip(estimates, groups):
        n_est[g] = n_est.get(g, 0) + (e is not None and np.isfinite(e) and e > 0)
    plan = {p: c for p, g, c in zip(paths, groups, choices)
            if mode == "field" or n_est[g] >= CONSENSUS_MIN_FIELDS}
    n_pooled = sum(c.source == "folder-median" for c in choices)
    if n_pooled and mode == "auto":
        log.info("scale: %d of %d field(s) analysed at their folder's median red-cell diameter (own estimate "
                 "off by more than the tolerance, or missing)", n_pooled, len(choices))
    return plan


def plan_for(pipeline, paths: Sequence[Path], scale=None, *,
             transform: Callable[[np.ndarray], np.ndarray] | None = None,
             map_fn: Callable[..., Iterable] = map,
             read: Callable[[Path], np.ndarray] = read_image) -> dict[Path, ScaleChoice]:
    """`plan_scales` for a pipeline run: {} unless the scale (None: the pipeline config's) is a mode that
    pools a folder's fields ("auto", "folder") and the pipeline measures red cells (`estimate_rbc`)."""
    if scale is None:
        scale = getattr(getattr(pipeline, "config", None), "scale", "auto")
    mode = scale_mode(scale)
    if mode not in ("auto", "folder") or not hasattr(pipeline, "estimate_rbc"):
        return {}
    if len(paths) < CONSENSUS_MIN_FIELDS:  # no group can reach a consensus: nothing to measure ahead
        return {}
    return plan_scales(paths, pipeline.estimate_rbc, mode, transform=transform, map_fn=map_fn, read=read)
