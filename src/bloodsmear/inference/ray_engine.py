"""`analyze --engine ray`: the local engine's run spread over a Ray cluster (or a local Ray) with Ray Data.

The driver checks the inputs and starts the run as the local engine does (`batch.start_run`: identity,
resume, `fresh`), then builds a dataset of *file paths*, one row per group of images (`batch.groups_of`:
the local engine's groups, so the classifier sees the same batches and the results are the same). An
actor pool (`ActorPoolStrategy`) runs `map_batches` over it: each actor loads the pipeline once
(`factory()`), decodes its images itself (pixels never travel through the object store: the inputs must
be on a path every node sees) and runs the one per-image path of both engines, `batch.analyse_group`.
Per image it sends back a compact record: the paper record (`image_record`, JSON text) and the overlay
PNG, or the reason the image was skipped. The driver writes each image's overlay and then its record
atomically, keyed by the image name, exactly where the local engine does, and rebuilds the aggregate
files from all the records at the end (`batch.finish_run`).

Scale ("auto", "folder"): a first pass on the workers measures every field's own red-cell diameter; the
driver pools them per folder (`scale_plan.plan_for`) and each group row carries its fields' choices.

Faults: an actor that dies (killed, out of memory, a crash in native code) is restarted and its group
retried (`MAX_RESTARTS`, `MAX_TASK_RETRIES`). A group's records reach the driver only when the whole group
is done, and are written keyed by name: a retried group cannot lose an image or count one twice. A run
that fails anyway resumes on a re-run (the per-image records are the resume state).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import resource
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bloodsmear.errors import BloodsmearError
from bloodsmear.inference.batch import (
    BATCH_IMAGES,
    BatchSummary,
    ImageJob,
    analyse_group,
    check_inputs,
    count_image,
    finish_run,
    groups_of,
    review_threshold,
    start_run,
)
from bloodsmear.inference.pipeline import Pipeline
from bloodsmear.inference.run_folder import overlay_path, record_path, run_identity
from bloodsmear.inference.scale_plan import measure_field, plan_for
from bloodsmear.io import atomic_path, json_default, write_text_atomic
from bloodsmear.outputs.overlay import overlay_png
from bloodsmear.outputs.paper_json import image_record
from bloodsmear.preprocess.scale import ScaleChoice

log = logging.getLogger(__name__)

RAY_PIN = "ray[data]==2.60.0"
INSTALL_HINT = f"--engine ray needs Ray: pip install 'bloodsmear[ray]' (installs {RAY_PIN})"
MAX_RESTARTS = 4  # restarts of a dead actor
MAX_TASK_RETRIES = 3  # retries of a group whose actor died (then the run fails; a re-run resumes)
ADDRESS_HELP = ("Ray cluster to run on: auto (the cluster this machine belongs to, `ray start`), or "
                "ray://HEAD:10001 (Ray Client). Default: a local Ray with --workers CPUs.")


def import_ray():
    """The `ray` module, or one clear error naming the extra to install."""
    try:
        import ray  # noqa: PLC0415 - optional extra (bloodsmear[ray]): imported only by this engine
        import ray.data  # noqa: F401, PLC0415
    except ImportError as e:
        raise BloodsmearError(INSTALL_HINT) from e
    return ray


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


_loaded: dict[bytes, object] = {}  # per worker process: the pipeline of the last factory (loaded once)


def _pipeline(factory: Callable[[], object], identity: dict, scale, threads: int):
    """The pipeline `factory` builds, loaded once per worker process (the scale pass's tasks and the
    analysis actors of a run share it where Ray puts them in the same process), checked against the
    driver's run identity."""
    try:
        key = pickle.dumps((factory, threads))
    except (pickle.PicklingError, AttributeError, TypeError):  # a lambda, a local function: Ray's pickler
        from ray import cloudpickle  # noqa: PLC0415 - optional extra, present on a worker

        key = cloudpickle.dumps((factory, threads))
    if key not in _loaded:
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(max(1, threads))
        _loaded.clear()
        _loaded[key] = factory()
    pipe = _loaded[key]
    if run_identity(pipe, scale) != identity:  # another bloodsmear, other models or another config here
        raise BloodsmearError(f"ray worker on {os.uname().nodename}: its pipeline differs from the driver's "
                              "(install the same bloodsmear, models and config on every machine)")
    return pipe


def _measure_batch(batch, *, factory: Callable[[], object], identity: dict, scale, threads: int, **_):
    """The scale pass (Ray tasks): `scale_plan`'s measurement of each field, made where it is decoded."""
    import pyarrow as pa  # noqa: PLC0415 - comes with the optional Ray extra

    pipe = _pipeline(factory, identity, scale, threads)
    paths = [p for g in batch.column("group").to_pylist() for p in json.loads(g)["paths"]]
    out = [measure_field(Path(p), pipe.estimate_rbc, None) for p in paths]
    return pa.table({"path": paths, "measure": [None if m is None else json.dumps([m[0], list(m[1])]) for m in out]})


class _Worker:
    """A Ray Data actor: the pipeline loaded once, then groups of files analysed."""

    def __init__(self, factory: Callable[[], object], identity: dict, scale, overlays: bool, threads: int):
        self.pipeline = _pipeline(factory, identity, scale, threads)
        self.scale, self.overlays = scale, overlays

    def __call__(self, batch):
        import pyarrow as pa  # noqa: PLC0415 - comes with the optional Ray extra

        rows = [json.loads(g) for g in batch.column("group").to_pylist()]
        names, paths, records, pngs, reasons = [], [], [], [], []
        threshold = review_threshold(self.pipeline)
        results: dict[str, tuple[str, bytes]] = {}

        def done(job: ImageJob, result, rgb: np.ndarray) -> None:
            png = (overlay_png(rgb, result, review_threshold=threshold) if self.overlays else b"")
            results[job.name] = (json.dumps(image_record(result), default=json_default), png)

        for r in rows:
            jobs = [ImageJob(Path(p), n) for p, n in zip(r["paths"], r["names"])]
            scales = {Path(p): ScaleChoice(*c) for p, c in zip(r["paths"], r["scales"]) if c is not None}
            for job, reason in analyse_group(jobs, self.pipeline, self.scale, done, scales):
                rec, png = results.pop(job.name, ("", b""))
                names.append(job.name)
                paths.append(str(job.path))
                records.append(rec)
                pngs.append(png)
                reasons.append(reason or "")
        return pa.table({"name": names, "path": paths, "record": records,
                         "overlay": pa.array(pngs, pa.binary()), "reason": reasons,
                         "pid": [os.getpid()] * len(names), "rss_mb": [_peak_rss_mb()] * len(names)})


def _connect(ray, address: str | None, workers: int) -> bool:
    """Join the cluster at `address`, or start a local Ray of `workers` CPUs; True when this call started
    or joined it (and the run shuts it down). A Ray already initialised in this process is used as it is."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
    return True


def _dataset(ray, rows: list[dict], worker_args: dict, workers: int, cpus: float, *, measure: bool = False):
    """Rows (one block each) mapped by the analysis actors, or, for the scale pass, by tasks."""
    ds = ray.data.from_items([{"group": json.dumps(r)} for r in rows], override_num_blocks=max(1, len(rows)))
    if measure:  # tasks are retried by Ray Data (max_retries) and leave their worker process warm
        return ds.map_batches(_measure_batch, batch_size=None, batch_format="pyarrow", fn_kwargs=worker_args,
                              compute=ray.data.TaskPoolStrategy(size=min(workers, len(rows))), num_cpus=cpus)
    with warnings.catch_warnings():  # Ray 2.60 has no named parameter for the actors' retries (pinned)
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return ds.map_batches(_Worker, batch_size=None, batch_format="pyarrow", fn_constructor_kwargs=worker_args,
                              compute=ray.data.ActorPoolStrategy(size=min(workers, len(rows))), num_cpus=cpus,
                              max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)


def _measure_remote(ray, paths: Sequence[Path], worker_args: dict, workers: int, cpus: float) -> list:
    """`scale_plan`'s measurements of `paths`, made on the workers ((estimate, (h, w)) or None per path)."""
    rows = [{"paths": [str(p) for p in paths[i:i + BATCH_IMAGES * 4]]}
            for i in range(0, len(paths), BATCH_IMAGES * 4)]
    got: dict[str, object] = {}
    ds = _dataset(ray, rows, worker_args, workers, cpus, measure=True)
    for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for p, m in zip(b.column("path").to_pylist(), b.column("measure").to_pylist()):
            got[p] = None if m is None else (lambda v: (v[0], tuple(v[1])))(json.loads(m))
    return [got.get(str(p)) for p in paths]


def analyze_ray(inputs: Sequence[str | Path], out_dir: str | Path, pipeline, *,
                factory: Callable[[], object] | None = None, address: str | None = None,
                workers: int | None = None, cpus_per_worker: float = 1.0, threads: int | None = None,
                scale: str | float | None = None, overlays: bool = True, progress: bool = True,
                batch_images: int = BATCH_IMAGES, fresh: bool = False, level: str = "group",
                jobs: Sequence[ImageJob] | None = None, stats: dict | None = None) -> BatchSummary:
    """`batch.analyze` on Ray: the same outputs in `out_dir`, the same resume state, the same summary.

    `pipeline`: the driver's pipeline (the run's identity, the aggregates' classes); `factory`: a picklable
    callable that builds the same pipeline on a worker (default: `Pipeline.from_config` of its config;
    every actor checks that its pipeline has the driver's identity). `address`: as `ray.init` ("auto",
    "ray://HEAD:10001"); None: a local Ray with `workers` CPUs. `workers`: actors (default 2),
    `cpus_per_worker` Ray CPUs each, `threads` torch threads each (default: on a local Ray the machine's
    cores shared out, as the local engine does; on a cluster `cpus_per_worker`). `stats`, when given,
    receives timings (`ray_init_s`, `scale_s`, `first_s`, `first_n`, `analyse_s`: see `_run_groups`) and
    `worker_peak_rss_mb` ({pid: MB})."""
    if getattr(getattr(pipeline, "config", None), "adapt_bn", False):
        raise BloodsmearError("--adapt-bn is not supported by --engine ray yet (each actor would adapt on its own "
                              "crops): run it with the local engine")
    ray = import_ray()
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    jobs = list(jobs) if jobs is not None else check_inputs(inputs, out_dir)
    identity, summary, todo = start_run(out_dir, jobs, pipeline, scale, overlays=overlays, fresh=fresh)
    workers = max(1, int(workers or 2))
    groups = groups_of(todo, batch_images)
    if threads is None:  # as the local engine shares out the cores
        threads = (max(1, (os.cpu_count() or 1) // min(workers, max(1, len(groups)))) if address is None
                   else max(1, int(cpus_per_worker)))
    if factory is None:
        factory = partial(Pipeline.from_config, pipeline.config)
    worker_args = {"factory": factory, "identity": identity, "scale": scale, "overlays": overlays,
                   "threads": threads}
    t0 = time.perf_counter()
    started = _connect(ray, address, workers) if todo else False
    st: dict = {"worker_peak_rss_mb": {}, **({"ray_init_s": time.perf_counter() - t0} if started else {})}
    ray.data.DataContext.get_current().enable_progress_bars = progress
    try:
        if todo:
            t0 = time.perf_counter()
            plan = plan_for(pipeline, [j.path for j in jobs], scale,
                            map_fn=lambda _fn, ps: _measure_remote(ray, ps, worker_args, workers, cpus_per_worker))
            st["scale_s"] = time.perf_counter() - t0
            _run_groups(ray, groups, plan, out_dir, summary, worker_args, workers, cpus_per_worker, st)
    except ray.exceptions.RayError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise BloodsmearError(f"ray engine: the run failed ({first}); re-running the same command resumes it") from e
    finally:
        if started:
            ray.shutdown()
    if stats is not None:
        stats.update(st)
    return finish_run(out_dir, jobs, pipeline, summary, identity, level=level, t_start=t_start)


def _run_groups(ray, groups: list[list[ImageJob]], plan: dict, out_dir: Path, summary: BatchSummary,
                worker_args: dict, workers: int, cpus: float, stats: dict) -> None:
    """Analyse `groups` on the actors; write every image's overlay, then its record, as it comes back.
    `stats`: the actors' peak RSS, when the first group came back and how many images it had, the end."""
    rows = [{"paths": [str(j.path) for j in g], "names": [j.name for j in g],
             "scales": [None if (c := plan.get(j.path)) is None else [c.diameter_px, c.source] for j in g]}
            for g in groups]
    by_name = {j.name: j for g in groups for j in g}
    seen: set[str] = set()
    rss = stats["worker_peak_rss_mb"]
    t0 = time.perf_counter()
    for b in _dataset(ray, rows, worker_args, workers, cpus).iter_batches(batch_size=None, batch_format="pyarrow"):
        cols = {k: b.column(k).to_pylist() for k in ("name", "record", "overlay", "reason", "pid", "rss_mb")}
        if "first_s" not in stats:  # the actors' start (import, models) is in here
            stats["first_s"], stats["first_n"] = time.perf_counter() - t0, b.num_rows
        for name, rec, png, reason, pid, mb in zip(*cols.values()):
            rss[pid] = max(rss.get(pid, 0.0), mb)
            if name in seen:  # a group delivered twice (a retry after its output was sent): once only
                continue
            seen.add(name)
            if not reason:
                if png:
                    with atomic_path(overlay_path(out_dir, name)) as tmp:
                        tmp.write_bytes(png)
                write_text_atomic(record_path(out_dir, name), rec + "\n")
            count_image(summary, by_name[name], reason or None)
    stats["analyse_s"] = time.perf_counter() - t0
