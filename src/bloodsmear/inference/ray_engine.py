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

Scale ("auto", "folder"): the scale pass (`scale_plan.plan_for`: every field's own red-cell diameter,
pooled per folder) starts on the driver, which has the pipeline loaded, *while* the actors start
(importing torch and loading the models is most of a run's fixed cost); a tiny holder actor (no CPU) hands
out its pieces, which the driver's threads and, once up, the actors measure (`_shared_map`). The driver
`ray.put`s the plan and the holder hands its ObjectRef to every actor, which fetches it once before its
first group. No second pool of worker processes; the pass spreads over the cluster as the analysis does.

Threads: on a local Ray an actor is given `cpus_per_worker` Ray CPUs (default 1) and as many torch (and
ONNX Runtime) threads, so `--workers N` means N processes of one core each, as on a cluster.

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
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
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
    """The pipeline `factory` builds with `threads` torch threads, loaded once per worker process (an actor
    restarted in the same process finds it), checked against the driver's run identity."""
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


SCALE_CHUNK = 2 * BATCH_IMAGES  # fields per piece of the scale pass (claimed by the driver or an actor)


def _plan_holder(ray):
    """A Ray actor class (no CPU): the run's scale pass as pieces of paths that the driver's threads and
    the analysis actors claim (`offer`, `claim`, `put`, `measured`), then the plan: `set([ref])` by the
    driver, `get()` by each actor (it waits until then). Built here so that Ray pickles it by value: its
    worker process imports neither bloodsmear nor torch."""
    import asyncio  # noqa: PLC0415 - only the holder's process needs it

    class PlanHolder:
        def __init__(self):
            self.event, self.value, self.pieces, self.next, self.done = asyncio.Event(), None, [], 0, {}

        async def offer(self, pieces):
            self.pieces, self.next = pieces, 0

        async def claim(self):
            if self.event.is_set() or self.next >= len(self.pieces):
                return None
            self.next += 1
            return self.next - 1, self.pieces[self.next - 1]

        async def put(self, i, measures):
            self.done.setdefault(i, measures)

        async def measured(self):
            return self.done

        async def set(self, value):
            self.value = value
            self.event.set()

        async def get(self):
            await self.event.wait()
            return self.value

    return ray.remote(num_cpus=0, max_restarts=0)(PlanHolder)


def _encode(m) -> list | None:
    """`measure_field`'s answer as JSON-able data (and back: `_decode`)."""
    return None if m is None else [m[0], list(m[1])]


def _decode(v):
    return None if v is None else (v[0], tuple(v[1]))


class _Worker:
    """A Ray Data actor: the pipeline loaded once, then groups of files analysed."""

    def __init__(self, factory: Callable[[], object], identity: dict, scale, overlays: bool, threads: int,
                 plan=None):
        t0 = time.time()
        self.pipeline = _pipeline(factory, identity, scale, threads)
        self.init = (t0, time.time())  # when this actor began and ended loading (imports were before t0)
        self.scale, self.overlays = scale, overlays
        self.holder, self.plan = plan, None if plan is not None else {}

    def _scales(self) -> dict[str, tuple]:
        """{path: (diameter_px, source)}: the driver's scale plan, fetched once; until it is ready, this
        actor measures pieces of the scale pass too."""
        if self.plan is None:
            import ray  # noqa: PLC0415 - optional extra, present on a worker

            while (piece := ray.get(self.holder.claim.remote())) is not None:  # help the scale pass
                i, paths = piece
                est = self.pipeline.estimate_rbc
                self.holder.put.remote(i, [_encode(measure_field(Path(p), est, None)) for p in paths])
            got = ray.get(self.holder.get.remote())
            if isinstance(got, str):  # the driver's scale pass failed: it reports why
                raise BloodsmearError(f"ray worker: no scale plan ({got})")
            self.plan = ray.get(got[0])
        return self.plan

    def __call__(self, batch):
        import pyarrow as pa  # noqa: PLC0415 - comes with the optional Ray extra

        rows = [json.loads(g) for g in batch.column("group").to_pylist()]
        plan = self._scales()
        t_begin = time.time()  # wall clock (the driver's timings compare it with its own)
        names, paths, records, pngs, reasons = [], [], [], [], []
        threshold = review_threshold(self.pipeline)
        results: dict[str, tuple[str, bytes]] = {}

        def done(job: ImageJob, result, rgb: np.ndarray) -> None:
            png = (overlay_png(rgb, result, review_threshold=threshold) if self.overlays else b"")
            results[job.name] = (json.dumps(image_record(result), default=json_default), png)

        for r in rows:
            jobs = [ImageJob(Path(p), n) for p, n in zip(r["paths"], r["names"])]
            scales = {Path(p): ScaleChoice(*plan[p]) for p in r["paths"] if p in plan}
            for job, reason in analyse_group(jobs, self.pipeline, self.scale, done, scales):
                rec, png = results.pop(job.name, ("", b""))
                names.append(job.name)
                paths.append(str(job.path))
                records.append(rec)
                pngs.append(png)
                reasons.append(reason or "")
        return pa.table({"name": names, "path": paths, "record": records,
                         "overlay": pa.array(pngs, pa.binary()), "reason": reasons,
                         "pid": [os.getpid()] * len(names), "rss_mb": [_peak_rss_mb()] * len(names),
                         "t_begin": [t_begin] * len(names), "t_end": [time.time()] * len(names),
                         "t_init": [self.init[0]] * len(names), "t_ready": [self.init[1]] * len(names)})


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


def _dataset(ray, rows: list[dict], worker_args: dict, workers: int, cpus: float):
    """Rows (one block each) mapped by the analysis actors."""
    ds = ray.data.from_items([{"group": json.dumps(r)} for r in rows], override_num_blocks=max(1, len(rows)))
    with warnings.catch_warnings():  # Ray 2.60 has no named parameter for the actors' retries (pinned)
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return ds.map_batches(_Worker, batch_size=None, batch_format="pyarrow", fn_constructor_kwargs=worker_args,
                              compute=ray.data.ActorPoolStrategy(size=min(workers, len(rows))), num_cpus=cpus,
                              max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)


def _shared_map(ray, holder, threads: int):
    """A `plan_for` map_fn for the scale pass: the paths offered to `holder` in pieces, which the driver's
    `threads` and the analysis actors (once up) claim and measure; pieces claimed but not returned (an
    actor still on one, or dead) the driver measures itself. The measurements, in the order of the paths."""
    def map_fn(fn, paths):
        paths = list(paths)
        pieces = [paths[i:i + SCALE_CHUNK] for i in range(0, len(paths), SCALE_CHUNK)]
        ray.get(holder.offer.remote([[str(p) for p in piece] for piece in pieces]))
        mine: dict[int, list] = {}

        def work() -> None:
            while (piece := ray.get(holder.claim.remote())) is not None:
                mine[piece[0]] = [fn(p) for p in pieces[piece[0]]]

        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="ray-scale") as pool:
            list(pool.map(lambda _: work(), range(max(1, threads))))
            theirs = ray.get(holder.measured.remote())
            missing = [i for i in range(len(pieces)) if i not in mine and i not in theirs]
            for i, got in zip(missing, pool.map(lambda i: [fn(p) for p in pieces[i]], missing)):
                mine[i] = got
        return [m for i in range(len(pieces))
                for m in (mine[i] if i in mine else [_decode(v) for v in theirs[i]])]

    return map_fn


def _plan_in_background(ray, pipeline, paths: Sequence[Path], scale, workers: int, holder, stats: dict):
    """Start the scale pass (`_shared_map`: the driver's `workers` threads and the actors) and return its
    thread; when it is done the plan's ObjectRef goes to `holder` (on a failure: why, as text, and the
    thread keeps the error)."""
    box: dict = {}

    def run() -> None:
        t0 = time.perf_counter()
        try:
            plan = plan_for(pipeline, paths, scale, map_fn=_shared_map(ray, holder, workers))
            ref = ray.put({str(p): [c.diameter_px, c.source] for p, c in plan.items()})
            holder.set.remote([ref])  # in a list: the actors receive the ref, not its value
        except BaseException as e:  # noqa: BLE001 - the actors must not wait forever; re-raised by the driver
            box["error"] = e
            holder.set.remote(f"{type(e).__name__}: {e}")
        stats["scale_s"] = time.perf_counter() - t0

    thread = threading.Thread(target=run, name="ray-scale-plan", daemon=True)
    thread.box = box  # type: ignore[attr-defined]
    thread.start()
    return thread


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
    `cpus_per_worker` Ray CPUs each, `threads` torch/ONNX Runtime threads each (default: `cpus_per_worker`,
    at least 1, on a local Ray as on a cluster). `stats`, when given, receives seconds since this call
    (`ray_init_s`; `scale_s`, the driver's scale pass, overlapped with the actors' start; `first_s`, when
    the first group came back, `first_n` its images; `analyse_s`, the last), `worker_peak_rss_mb` ({pid: MB})
    and `actor_spans` ({pid: [wall time its first group began, its last ended, images, its load began,
    ended]}, with `wall_start`
    this call's wall time: the actors' start and their steady rate, see `steady_rate`)."""
    if getattr(getattr(pipeline, "config", None), "adapt_bn", False):
        raise BloodsmearError("--adapt-bn is not supported by --engine ray yet (each actor would adapt on its own "
                              "crops): run it with the local engine")
    ray = import_ray()
    t_start, wall_start = time.perf_counter(), time.time()
    out_dir = Path(out_dir)
    jobs = list(jobs) if jobs is not None else check_inputs(inputs, out_dir)
    identity, summary, todo = start_run(out_dir, jobs, pipeline, scale, overlays=overlays, fresh=fresh)
    workers = max(1, int(workers or 2))
    groups = groups_of(todo, batch_images)
    if threads is None:  # an actor of one Ray CPU computes with one thread, on a local Ray as on a cluster
        threads = max(1, int(cpus_per_worker))
    if factory is None:
        factory = partial(Pipeline.from_config, pipeline.config)
    worker_args = {"factory": factory, "identity": identity, "scale": scale, "overlays": overlays,
                   "threads": threads}
    t0 = time.perf_counter()
    started = _connect(ray, address, workers) if todo else False
    st: dict = {"worker_peak_rss_mb": {}, "actor_spans": {}, "wall_start": wall_start,
                **({"ray_init_s": time.perf_counter() - t0} if started else {})}
    ray.data.DataContext.get_current().enable_progress_bars = progress
    planning = None
    try:
        if todo:  # the plan covers all the inputs (also those done), as the local engine's
            holder = _plan_holder(ray).remote()
            planning = _plan_in_background(ray, pipeline, [j.path for j in jobs], scale, workers, holder, st)
            _run_groups(ray, groups, out_dir, summary, {**worker_args, "plan": holder}, workers, cpus_per_worker,
                        st, t_start)
            planning.join()
    except ray.exceptions.RayError as e:
        if planning is not None and (err := planning.box.get("error")) is not None:
            raise err from None  # the scale pass's own error, not the actors' report of it
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise BloodsmearError(f"ray engine: the run failed ({first}); re-running the same command resumes it") from e
    finally:
        if started:
            ray.shutdown()
    if stats is not None:
        stats.update(st)
    return finish_run(out_dir, jobs, pipeline, summary, identity, level=level, t_start=t_start)


def steady_rate(stats: dict) -> tuple[float | None, float | None]:
    """(fields/s once the actors are up, seconds until the first actor began its first group) of a run's
    `stats`: each actor's images over the span from its first group's start to its last group's end,
    summed over the actors (idle time between groups counts; an actor's start does not)."""
    spans = list(stats.get("actor_spans", {}).values())
    if not spans:
        return None, None
    rate = sum(s[2] / (s[1] - s[0]) for s in spans if s[1] > s[0])
    return rate or None, min(s[0] for s in spans) - stats["wall_start"]


def _run_groups(ray, groups: list[list[ImageJob]], out_dir: Path, summary: BatchSummary, worker_args: dict,
                workers: int, cpus: float, stats: dict, t0: float) -> None:
    """Analyse `groups` on the actors; write every image's overlay, then its record, as it comes back.
    `stats`: the actors' peak RSS, when (seconds since `t0`) the first group came back and how many images
    it had, the end."""
    rows = [{"paths": [str(j.path) for j in g], "names": [j.name for j in g]} for g in groups]
    by_name = {j.name: j for g in groups for j in g}
    seen: set[str] = set()
    rss, spans = stats["worker_peak_rss_mb"], stats["actor_spans"]
    for b in _dataset(ray, rows, worker_args, workers, cpus).iter_batches(batch_size=None, batch_format="pyarrow"):
        cols = {k: b.column(k).to_pylist() for k in ("name", "record", "overlay", "reason", "pid", "rss_mb",
                                                      "t_begin", "t_end", "t_init", "t_ready")}
        if "first_s" not in stats:  # the actors' start (import, models) is in here
            stats["first_s"], stats["first_n"] = time.perf_counter() - t0, b.num_rows
        for name, rec, png, reason, pid, mb, t_begin, t_end, t_init, t_ready in zip(*cols.values()):
            rss[pid] = max(rss.get(pid, 0.0), mb)
            span = spans.setdefault(pid, [t_begin, t_end, 0, t_init, t_ready])
            span[:3] = [min(span[0], t_begin), max(span[1], t_end), span[2] + 1]
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
