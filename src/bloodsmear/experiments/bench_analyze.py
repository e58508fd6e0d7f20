"""`bloodsmear bench analyze`: end-to-end speed of the default pipeline and the Mask R-CNN pipeline on the
same fields, in one process (decode, scale, segment, crop, classify, per-image outputs incl. overlays,
aggregate files), plus an optional synthetic 4032x3024 photo timed and memory-measured in a fresh
process; with `engine="ray"` (`bench_engines`), the local engine and the Ray engine side by side for 1..N
workers, each run in a fresh process (the machine's speed drifts within minutes: the two are interleaved)."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from bloodsmear.errors import InputError
from bloodsmear.inference.batch import ImageJob, analyze, collect_images, default_workers
from bloodsmear.inference.pipeline import Pipeline
from bloodsmear.inference.pipeline_config import PipelineConfig
from bloodsmear.inference.ray_engine import analyze_ray, import_ray, steady_rate
from bloodsmear.io import read_image, write_image_atomic

log = logging.getLogger(__name__)

PHOTO_SIZE = (4032, 3024)  # width, height of an RV-PBS phone photo


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class PipelineTiming:
    pipeline: str
    n_fields: int
    seconds: float
    fields_per_s: float
    ms_per_field: float
    n_cells: int
    load_s: float
    peak_rss_mb: float  # process peak after this pipeline ran (the first pipeline's is its own)
    stage_ms: dict
    cpu_ms_per_field: float = float("nan")  # the process's user + system CPU during `analyze`, per field


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_pipeline(config: str, files: Sequence[Path], *, overlays: bool = True,
                  workers: int | None = None, scale: str | float | None = None,
                  backend: str | None = None) -> PipelineTiming:
    """Load a pipeline (`backend`: torch or onnx over the config's), warm it up on one field, then time
    `analyze` over `files` into a temp folder (wall and CPU time)."""
    t0 = time.perf_counter()
    pipe = Pipeline.from_config(PipelineConfig.load(config).updated(backend=backend) if backend else config)
    load_s = time.perf_counter() - t0
    jobs = collect_images(files)

    pipe.run(read_image(jobs[0].path), "warm-up")
    with tempfile.TemporaryDirectory(prefix="bench-analyze-") as tmp:
        t0, c0 = time.perf_counter(), cpu_seconds()
        s = analyze(files, tmp, pipe, overlays=overlays, progress=False, workers=workers, scale=scale)
        secs, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        stage = _stage_ms(Path(tmp))
    n = s.n_analysed
    return PipelineTiming(config, n, secs, n / secs if secs else float("nan"), 1000 * secs / max(n, 1), s.n_cells,
                          load_s, peak_rss_mb(), stage, 1000 * cpu / max(n, 1))


def pipe_backend(config: str) -> str:
    return PipelineConfig.load(config).backend


def _stage_ms(out_dir: Path) -> dict:
    """Mean ms per field of each pipeline stage, from the per-image records."""
    acc: dict[str, list[float]] = {}
    for p in (out_dir / "_per_image").rglob("*.json"):
        for k, v in json.loads(p.read_text()).get("timings_s", {}).items():
            acc.setdefault(k, []).append(v)
    return {k: round(1000 * float(np.mean(v)), 2) for k, v in sorted(acc.items())}


def synthetic_photo(source: np.ndarray | None = None, size: tuple[int, int] = PHOTO_SIZE, seed: int = 0) -> np.ndarray:
    """A 4032x3024 RGB 'phone photo': a real field enlarged 3.5x (WBCs ~700 px as in RV-PBS) and tiled
    2x2, or, without a source, pale red discs and a few dark purple ones on a light background."""
    w, h = size
    if source is not None:
        big = cv2.resize(source, None, fx=3.5, fy=3.5, interpolation=cv2.INTER_CUBIC)
        reps = (int(np.ceil(h / big.shape[0])), int(np.ceil(w / big.shape[1])), 1)
        return np.ascontiguousarray(np.tile(big, reps)[:h, :w])
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (232, 214, 222), np.uint8)
    for _ in range(400):
        cv2.circle(img, (int(rng.integers(w)), int(rng.integers(h))), int(rng.integers(180, 220)), (205, 140, 150), -1)
    for _ in range(4):
        cv2.circle(img, (int(rng.integers(w)), int(rng.integers(h))), 330, (110, 60, 150), -1)
    return img


def _photo_worker(config: str, photo: str, repeats: int) -> dict:
    """In a fresh process: analyse the photo `repeats` times (first one is warm-up), report time and peak RSS."""
    torch.set_num_threads(2)
    pipe = Pipeline.from_config(config)
    rss_loaded = peak_rss_mb()
    secs = []
    for _ in range(repeats + 1):
        with tempfile.TemporaryDirectory(prefix="bench-photo-") as tmp:
            t0 = time.perf_counter()
            s = analyze([photo], tmp, pipe, progress=False)
            secs.append(time.perf_counter() - t0)
            stage = _stage_ms(Path(tmp))
    return {"photo_s": statistics.median(secs[1:]), "photo_first_s": secs[0], "photo_cells": s.n_cells,
            "photo_peak_rss_mb": peak_rss_mb(), "photo_rss_after_load_mb": rss_loaded, "photo_stage_ms": stage}


def bench_photo(config: str, source: np.ndarray | None = None, *, repeats: int = 3) -> dict:
    """Time one synthetic 4032x3024 JPEG end to end (decode .. outputs) in a fresh spawned process."""
    with tempfile.TemporaryDirectory(prefix="bench-photo-in-") as tmp:
        path = Path(tmp) / "photo_4032x3024.jpg"
        write_image_atomic(path, synthetic_photo(source), quality=90)
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
            return ex.submit(_photo_worker, config, str(path), repeats).result()


def bench_analyze(images_dir: str | Path, *, limit: int | None = None, pipeline: str = "default",
                  compare: str | None = "maskrcnn", compare_limit: int | None = None, photo: bool = False,
                  overlays: bool = True, workers: int | None = None, photo_source: str | Path | None = None,
                  scale: str | float | None = None, backend: str | None = None) -> dict:
    """Figures: `fields_per_s`, `ms_per_field`, `cpu_ms_per_field` (the process's CPU time per field:
    steadier than fields/s on a shared machine), `peak_rss_mb` of `pipeline` (`backend`: over its
    config's); `maskrcnn_fields_per_s`, `maskrcnn_ms_per_field`, `maskrcnn_peak_rss_mb` and `ratio`
    (speed-up) when `compare`; with `photo`, `photo_s` and `photo_peak_rss_mb` of a synthetic 4032x3024 photo made from `photo_source` (default:
    the first field) enlarged 3.5x and tiled 2x2. `scale`: as `analyze --scale` (None: the configs')."""
    jobs = collect_images([images_dir])
    if limit:
        jobs = jobs[:limit]
    if not jobs:
        raise InputError(images_dir, "no images found")
    files = [j.path for j in jobs]

    out: dict = {"images_dir": str(images_dir), "n_fields": len(files), "workers": workers or default_workers()}
    photo_res = None
    if photo:  # first, so the fresh process's memory is not confused with this one's

        photo_res = bench_photo(pipeline, read_image(photo_source or files[0]))
    d = time_pipeline(pipeline, files, overlays=overlays, workers=workers, scale=scale, backend=backend)
    out.update({"pipeline": pipeline, "backend": backend or pipe_backend(pipeline), "fields_per_s": d.fields_per_s,
                "ms_per_field": d.ms_per_field, "cpu_ms_per_field": d.cpu_ms_per_field,
                "peak_rss_mb": d.peak_rss_mb, "n_cells": d.n_cells, "stage_ms": d.stage_ms, "load_s": d.load_s})
    if compare and compare_limit != 0:  # --compare-limit 0: no comparison
        cfiles = files[:compare_limit] if compare_limit else files
        m = time_pipeline(compare, cfiles, overlays=overlays, workers=workers, scale=scale)
        out.update({"compare": compare, "maskrcnn_fields_per_s": m.fields_per_s,
                    "maskrcnn_ms_per_field": m.ms_per_field,
                    "maskrcnn_peak_rss_mb": m.peak_rss_mb, "maskrcnn_n_fields": m.n_fields,
                    "maskrcnn_n_cells": m.n_cells, "maskrcnn_stage_ms": m.stage_ms,
                    "ratio": d.fields_per_s / m.fields_per_s if m.fields_per_s else None})
    if photo_res:
        out.update(photo_res)
    return out


def _engine_worker(engine: str, config: str, jobs: list[ImageJob], workers: int, threads: int, overlays: bool,
                   scale) -> dict:
    """In a fresh process: load and warm the pipeline, then time one `analyze` run of `engine` with
    `workers` of `threads` torch threads each (Ray: a local Ray of workers x threads CPUs, started before
    the clock starts, as a cluster is up; actors of `threads` CPUs)."""
    pipe = Pipeline.from_config(config)
    pipe.run(read_image(jobs[0].path), "warm-up")
    stats: dict = {}
    files = [j.path for j in jobs]
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        if engine == "ray":
            ray = import_ray()
            t0 = time.perf_counter()
            ray.init(num_cpus=workers * threads, include_dashboard=False, logging_level=logging.WARNING)
            ray_init_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            s = analyze_ray(files, tmp, pipe, workers=workers, cpus_per_worker=threads, threads=threads,
                            overlays=overlays, scale=scale, progress=False, stats=stats, jobs=jobs)
            secs = time.perf_counter() - t0
            ray.shutdown()
        else:
            t0 = time.perf_counter()
            s = analyze(files, tmp, pipe, workers=workers, threads=threads, overlays=overlays, scale=scale,
                        progress=False, jobs=jobs)
            secs = time.perf_counter() - t0
    n = s.n_analysed
    out = {"engine": engine, "workers": workers, "threads": threads, "n_fields": n, "seconds": secs,
           "fields_per_s": n / secs, "ms_per_field": 1000 * secs / max(n, 1), "peak_rss_mb": peak_rss_mb()}
    if engine == "ray":
        actors = stats.get("worker_peak_rss_mb", {})
        steady, startup = steady_rate(stats)
        out.update({"driver_rss_mb": out["peak_rss_mb"], "actors_rss_mb": sum(actors.values()),
                    "peak_rss_mb": out["peak_rss_mb"] + sum(actors.values()), "ray_init_s": ray_init_s,
                    "scale_pass_s": stats.get("scale_s", 0.0), "startup_s": startup,
                    "first_group_s": stats["first_s"], "steady_fields_per_s": steady,
                    "actor_load_begin_s": min(a[3] for a in stats["actor_spans"].values()) - stats["wall_start"],
                    "actor_load_s": max(a[4] - a[3] for a in stats["actor_spans"].values())})
    return out


def fields_within(local_fps: float, ray_seconds: float, n: int, steady_fps: float | None,
                  pct: float = 15.0) -> float | None:
    """Fields from which a Ray run, modelled as a fixed start (its measured time less `n` fields at its
    steady rate) plus the steady rate, is within `pct` % of the local engine's time end to end; None when
    the steady rate itself is more than `pct` % slower."""
    if not steady_fps or steady_fps <= 0:
        return None
    fixed = max(0.0, ray_seconds - n / steady_fps)
    margin = (1 + pct / 100) / local_fps - 1 / steady_fps  # seconds per field to spare
    return fixed / margin if margin > 0 else None


def bench_engines(images_dir: str | Path, *, limit: int | None = None, pipeline: str = "default",
                  max_workers: int = 2, overlays: bool = True, scale: str | float | None = None,
                  rounds: int = 1, threads: int = 1, repeat: int = 1) -> dict:
    """The local and the Ray engine on the same fields for 1..`max_workers` workers of `threads` torch
    threads each (Ray: actors of `threads` CPUs), interleaved (local, ray, local, ray, ... `rounds` times;
    the median run of each kept), each in a fresh process: fields/s end to end and (Ray) steady, once the
    actors are up (`ray_engine.steady_rate`); Ray's start-up (`startup_s`: the call until the first actor
    begins its first group, with the driver's scale pass and the actors' start in it; `ray_init_s` apart);
    ms per field, peak RSS (Ray: the driver's plus its actors'), and Ray's overhead over local
    (`overhead_pct` end to end, `steady_overhead_pct`) with `fields_15pct`, the run size from which
    Ray's end to end is within 15 % of local (`fields_within`).
    `repeat`: the first `limit` fields `repeat` times, uniquely named (a larger run)."""
    import_ray()  # one clear line before anything runs when the extra is missing
    jobs = collect_images([images_dir])[:limit] if limit else collect_images([images_dir])
    if not jobs:
        raise InputError(images_dir, "no images found")
    jobs = collect_images([j.path for j in jobs] * max(1, repeat)) if repeat > 1 else jobs
    runs: dict[tuple[str, int], list[dict]] = {}
    ctx = mp.get_context("spawn")
    for w in range(1, max(1, max_workers) + 1):
        for _ in range(max(1, rounds)):
            for engine in ("local", "ray"):
                with ProcessPoolExecutor(1, mp_context=ctx) as ex:
                    r = ex.submit(_engine_worker, engine, pipeline, jobs, w, max(1, threads), overlays, scale).result()
                log.info("%s, %d worker(s): %.1f fields/s", engine, w, r["fields_per_s"])
                runs.setdefault((engine, w), []).append(r)
    rows = []
    for (engine, w), rs in runs.items():
        row = dict(sorted(rs, key=lambda r: r["seconds"])[len(rs) // 2])
        if engine == "ray":
            loc = rows[-1]
            row["overhead_pct"] = 100 * (row["seconds"] / loc["seconds"] - 1)
            if row.get("steady_fields_per_s"):
                row["steady_overhead_pct"] = 100 * (loc["fields_per_s"] / row["steady_fields_per_s"] - 1)
            row["fields_15pct"] = fields_within(loc["fields_per_s"], row["seconds"], row["n_fields"],
                                                row.get("steady_fields_per_s"))
        rows.append(row)
    return {"images_dir": str(images_dir), "n_fields": len(jobs), "pipeline": pipeline, "rounds": rounds,
            "threads": threads, "repeat": repeat, "rows": rows}
