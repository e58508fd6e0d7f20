"""`analyze`: the pipeline over files and folders, with progress, skipping of bad images and resume.

Output folder layout:

    results.json      the paper's JSON (schemas/results.schema.json)
    coco.json         COCO instances with scores (pycocotools-loadable)
    annotations.xml   CVAT for images 1.1 (pre-annotation)
    counts.csv        counts per image and class, totals and percentages
    skipped.csv       images that could not be analysed, and why (only when there are any)
    overlays/<name>.png
    _per_image/<name>.json   one paper record per analysed image: the resume state
    _run.json         the identity of the run the records belong to (`run_identity`)

Every file is written atomically. An image counts as done when its per-image record exists (its
overlay is written first); a re-run skips done images, removes temp files a killed run left behind,
and rebuilds the aggregate files from the per-image records of all the inputs. A re-run with another
pipeline, other models or another scale setting is refused (`RunMismatchError`) unless it asks to
start over (`fresh=True`, `analyze --fresh`): its records would be mixed with the old ones.
The inputs and `out_dir` are checked before anything is written.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from bloodsmear import __version__
from bloodsmear.errors import BloodsmearError, InputError
from bloodsmear.inference.decoded import DecodedCache
from bloodsmear.inference.pipeline import Detection, detect_all
from bloodsmear.inference.run_adapt import adapted_for_run
from bloodsmear.inference.run_context import log_above_bars, torch_threads
from bloodsmear.inference.run_folder import (
    AGGREGATES,
    RUN_FILE,
    check_run,
    clean_temp_files,
    overlay_path,
    record_path,
    remove_run,
    run_identity,
)
from bloodsmear.inference.scale_plan import plan_for
from bloodsmear.io import (
    IMAGE_SUFFIXES,
    list_images,
    read_image,
    write_json_atomic,
    write_text_atomic,
)
from bloodsmear.outputs.coco import write_coco_results
from bloodsmear.outputs.counts import write_counts_csv
from bloodsmear.outputs.cvat import write_cvat_xml
from bloodsmear.outputs.overlay import write_overlay
from bloodsmear.outputs.paper_json import (
    FORMAT,
    VERSION,
    image_record,
    record_to_result,
    results_document,
    validate,
    write_results_json,
)
from bloodsmear.types import SlideResult

log = logging.getLogger(__name__)

BATCH_IMAGES = 8  # images per worker batch: their cells go through the classifier in one call
GROUP_PIXELS = 16_000_000  # ... with at most this many decoded pixels (one 12 MP photo at a time)
VALIDATE_SAMPLE = 20  # per-image records checked against the JSON Schema when results.json is rebuilt
MAX_DEFAULT_WORKERS = 3
WORKERS_HELP = (f"Images analysed at once (worker threads; default: one more than the CPU cores, at most "
                f"{MAX_DEFAULT_WORKERS}).")


@dataclass
class ImageJob:
    path: Path
    name: str  # relative to its input root, posix


@dataclass
class BatchSummary:
    out_dir: Path
    n_images: int = 0  # images found in the inputs
    n_analysed: int = 0  # analysed in this run
    n_resumed: int = 0  # already done by an earlier run
    n_skipped: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    n_cells: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir), "n_images": self.n_images, "n_analysed": self.n_analysed,
            "n_resumed": self.n_resumed, "n_skipped": self.n_skipped,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped], "n_cells": self.n_cells,
            "counts": self.counts, "seconds": round(self.seconds, 3),
            "images_per_s": round(self.n_analysed / self.seconds, 3) if self.seconds > 0 else None,
            "files": self.files,
        }


def collect_images(inputs: Sequence[str | Path]) -> list[ImageJob]:
    """Image files of the inputs (files, or folders walked recursively), each named by its path relative
    to its input (a file given directly: its file name). Names made unique by prefixing the input
    folder's name where two inputs share one. `InputError` for an input that does not exist."""
    jobs: list[ImageJob] = []
    roots: list[Path] = []
    for inp in inputs:
        p = Path(inp)
        if not p.exists():
            raise InputError(p, "no such file or folder")
        if p.is_file():
            jobs.append(ImageJob(p, p.name))
            roots.append(p.parent)
        else:
            for f in list_images(p):
                jobs.append(ImageJob(f, f.relative_to(p).as_posix()))
                roots.append(p)
    seen: dict[str, int] = {}
    for j in jobs:
        seen[j.name] = seen.get(j.name, 0) + 1
    used: set[str] = set()
    for j, root in zip(jobs, roots):
        if seen[j.name] > 1:
            j.name = f"{root.resolve().name}/{j.name}"
        base, k = j.name, 1
        while j.name in used:
            k += 1
            j.name = f"{base}~{k}"
        used.add(j.name)
    return jobs


def _load_record(path: Path) -> dict | None:
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        return rec if isinstance(rec, dict) and "masks" in rec else None
    except (OSError, ValueError):
        return None


#: what an image's analysis may fail with and still leave the run going (the image is skipped, its
#: reason in skipped.csv): input errors, and OpenCV / numpy / file errors on odd pixels. Anything else
#: (a TypeError, AttributeError, ...) is a bug of the pipeline or a stage: it stops the run.
IMAGE_ERRORS = (BloodsmearError, ValueError, OSError, cv2.error)


def _is_done(out_dir: Path, job: ImageJob, overlays: bool) -> bool:
    return record_path(out_dir, job.name).is_file() and (not overlays or overlay_path(out_dir, job.name).is_file())


#: what is done with an analysed image: done(job, result, rgb) (the local engine writes its outputs)
ImageDone = Callable[[ImageJob, SlideResult, np.ndarray], None]


def review_threshold(pipeline) -> float | None:
    return getattr(getattr(pipeline, "config", None), "review_threshold", None)


def output_writer(out_dir: Path, pipeline, overlays: bool) -> ImageDone:
    """The local engine's `ImageDone`: the overlay first (the per-image record marks the image done)."""
    threshold = review_threshold(pipeline)

    def done(job: ImageJob, result: SlideResult, rgb: np.ndarray) -> None:
        if overlays:
            write_overlay(overlay_path(out_dir, result.name), rgb, result, review_threshold=threshold)
        write_json_atomic(record_path(out_dir, result.name), image_record(result), indent=None)

    return done


def analyse_group(jobs: Sequence[ImageJob], pipeline, scale, done: ImageDone, scales: dict | None = None, *,
                  read: Callable[[Path], np.ndarray] = read_image) -> list[tuple[ImageJob, str | None]]:
    """Read (`read`) and analyse a group of images (cells of the group classified in one batch), `done`
    called for each analysed one; for each image the reason it was skipped, or None when done. Decoded
    pixels per batch stay below `GROUP_PIXELS` (a group of large photos is split). The one per-image path
    of both engines (local threads, `inference.ray_engine`'s actors)."""
    out: list[tuple[ImageJob, str | None]] = []
    ready: list[tuple[ImageJob, np.ndarray]] = []
    pixels = 0

    def flush() -> None:
        if ready:
            out.extend(_analyse_ready(ready, pipeline, scale, done, scales or {}))
            ready.clear()

    for job in jobs:
        try:
            rgb = read(job.path)
        except Exception as e:  # noqa: BLE001 - one bad image never stops the run
            out.append((job, _reason(job, e)))
            continue
        if ready and pixels + rgb.shape[0] * rgb.shape[1] > GROUP_PIXELS:
            flush()
            pixels = 0
        ready.append((job, rgb))
        pixels += rgb.shape[0] * rgb.shape[1]
    flush()
    return out


def _analyse_ready(ready: list[tuple[ImageJob, np.ndarray]], pipeline, scale, done: ImageDone,
                   scales: dict) -> list[tuple[ImageJob, str | None]]:
    out: list[tuple[ImageJob, str | None]] = []
    todo: list[tuple[ImageJob, np.ndarray, Detection]] = []
    dets = detect_all(pipeline, [(rgb, scales.get(job.path, scale), job.name, job.path) for job, rgb in ready],
                      errors=IMAGE_ERRORS)
    for (job, rgb), det in zip(ready, dets):  # a bad image is skipped alone
        if isinstance(det, BaseException):
            out.append((job, _reason(job, det)))
        else:
            todo.append((job, rgb, det))
    try:
        t0 = time.perf_counter()
        pipeline.classify_many([(d.crop_source, d.cells, d.rbc_diameter_px) for _, _, d in todo])
        share = (time.perf_counter() - t0) / max(1, len(todo))
    except IMAGE_ERRORS as e:
        return out + [(job, _reason(job, e)) for job, _, _ in todo]
    for job, rgb, det in todo:
        det.timings["classify"] = share
        done(job, det.to_result(), rgb)
        out.append((job, None))
    return out


def _reason(job: ImageJob, e: Exception) -> str:
    if not isinstance(e, BloodsmearError):
        log.debug("analysis of %s failed", job.path, exc_info=True)
    return getattr(e, "problem", None) or f"analysis failed ({e.__class__.__name__}: {e})"


def default_workers() -> int:
    """Worker threads: one more than the CPU cores, at most 3 (each stage is small; threads overlap
    decoding, scale estimation, the networks and PNG encoding, which all release the GIL)."""
    return max(1, min(MAX_DEFAULT_WORKERS, (os.cpu_count() or 1) + 1))


def analyze(inputs: Sequence[str | Path], out_dir: str | Path, pipeline, *, scale: str | float | None = None,
            overlays: bool = True, progress: bool = True, workers: int | None = None,
            batch_images: int = BATCH_IMAGES, fresh: bool = False, level: str = "group",
            jobs: Sequence[ImageJob] | None = None, threads: int | None = None) -> BatchSummary:
    """Run `pipeline` (a `bloodsmear.inference.pipeline.Pipeline`) over the inputs into `out_dir`:
    `workers` threads (default: `default_workers()`) of `threads` torch threads each (default: the CPU
    cores shared out), each taking `batch_images` images at a time (their cells classified in one
    batch). `scale`: a mode ("auto", "field", "folder"; None = the pipeline config's) or a red-cell diameter in pixels; with "auto" and "folder" every input's red
    cells are measured first and pooled per folder (`inference.scale_plan`).

    Resumes the run `out_dir` holds when it is the same run (`run_identity`), else `RunMismatchError`;
    `fresh`: remove what an earlier run wrote there and start over. `InputError`, before anything is
    written, for an input that does not exist, inputs without any image, an `out_dir` that is a file.
    `level`: the class level of coco.json's and annotations.xml's categories, "group" or "fine"
    (`outputs.coco`); counts.csv holds both, results.json the answer with both. `jobs`: what
    `check_inputs(inputs, out_dir)` already returned (the inputs are not walked again)."""
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    jobs = list(jobs) if jobs is not None else check_inputs(inputs, out_dir)
    identity, summary, todo = start_run(out_dir, jobs, pipeline, scale, overlays=overlays, fresh=fresh)
    workers = max(1, int(workers or default_workers()))
    groups = groups_of(todo, batch_images)
    done_fn = output_writer(out_dir, pipeline, overlays)
    threads = max(1, int(threads or (os.cpu_count() or 1) // min(workers, max(1, len(groups)))))
    bar = tqdm(total=len(todo), unit="img", desc="analyze", disable=not progress or None)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="analyze")
    decoded = DecodedCache([j.path for j in todo])  # the scale pass's decoded fields, for the analysis
    try:
        with torch_threads(threads), log_above_bars():
            scales = _plan(jobs, pipeline, scale, pool, progress, decoded.read) if todo else {}
            if todo and getattr(getattr(pipeline, "config", None), "adapt_bn", False):  # groups: the adapted model
                pipeline = adapted_for_run(pipeline, [j.path for j in jobs], scales, scale)
            queue = iter(groups)
            running: set[Future] = set()
            while True:
                while len(running) < workers:  # bounded: one group of decoded images per worker
                    group = next(queue, None)
                    if group is None:
                        break
                    running.add(pool.submit(analyse_group, group, pipeline, scale, done_fn, scales,
                                            read=decoded.read_for_analysis))
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    for job, reason in fut.result():  # a writer error or an interrupt is raised here
                        count_image(summary, job, reason)
                        bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return finish_run(out_dir, jobs, pipeline, summary, identity, level=level, t_start=t_start)


def start_run(out_dir: Path, jobs: Sequence[ImageJob], pipeline, scale, *, overlays: bool,
              fresh: bool) -> tuple[dict, BatchSummary, list[ImageJob]]:
    """Both engines' start of a run: (its identity, the summary so far, the jobs left to do). Checks
    (`check_run`) or clears (`fresh`) the folder, records the identity, removes temp files."""
    identity = run_identity(pipeline, scale)
    if fresh:
        n_removed = remove_run(out_dir)
        if n_removed:
            log.info("--fresh: removed %d file(s) of the earlier run in %s", n_removed, out_dir)
    else:
        check_run(out_dir, identity)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / RUN_FILE, {"format": FORMAT, "version": VERSION, "identity": identity})
    n_tmp = clean_temp_files(out_dir)
    if n_tmp:
        log.info("removed %d temp file(s) left by an interrupted run", n_tmp)
    summary = BatchSummary(out_dir=out_dir, n_images=len(jobs))
    todo = [j for j in jobs if not _is_done(out_dir, j, overlays)]
    summary.n_resumed = len(jobs) - len(todo)
    if summary.n_resumed:
        log.info("resuming: %d of %d image(s) already done in %s", summary.n_resumed, len(jobs), out_dir)
    return identity, summary, todo


def groups_of(todo: Sequence[ImageJob], batch_images: int = BATCH_IMAGES) -> list[list[ImageJob]]:
    """The groups `analyse_group` takes, in input order (both engines: the same classifier batches)."""
    n = max(1, int(batch_images))
    return [list(todo[i:i + n]) for i in range(0, len(todo), n)]


def count_image(summary: BatchSummary, job: ImageJob, reason: str | None) -> None:
    """An image's outcome into the summary (a skipped one logged)."""
    if reason is None:
        summary.n_analysed += 1
    else:
        log.warning("skipped %s: %s", job.path, reason)
        summary.skipped.append((str(job.path), reason))


def finish_run(out_dir: Path, jobs: Sequence[ImageJob], pipeline, summary: BatchSummary, identity: dict, *,
               level: str, t_start: float) -> BatchSummary:
    """Both engines' end of a run: the aggregate files rebuilt from all the records, the totals."""
    summary.skipped.sort()
    summary.n_skipped = len(summary.skipped)
    results = rebuild_aggregates(out_dir, jobs, pipeline, summary,
                                 run={"identity": identity, "bloodsmear_version": __version__}, level=level)
    summary.n_cells = sum(len(r.cells) for r in results)
    for r in results:
        for k, v in r.class_counts().items():
            summary.counts[k] = summary.counts.get(k, 0) + v
    summary.seconds = time.perf_counter() - t_start
    if summary.n_skipped:
        log.warning("%d image(s) skipped (listed in %s)", summary.n_skipped, out_dir / "skipped.csv")
    return summary


def check_inputs(inputs: Sequence[str | Path], out_dir: str | Path) -> list[ImageJob]:
    """The image jobs of `inputs` (`collect_images`, less any file inside `out_dir`), checked before
    anything is written: `InputError` for an input that does not exist, inputs without any image, an
    `out_dir` that exists and is not a folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder (the output folder must be a folder)")
    jobs = _without(collect_images(inputs), out_dir)
    if not jobs:
        where = str(inputs[0]) if len(inputs) == 1 else None
        kinds = ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES)
        raise InputError(where, f"no images found (looked for {kinds})"
                                + ("" if where else f" in {', '.join(str(i) for i in inputs) or 'no inputs'}"))
    return jobs


def _without(jobs: list[ImageJob], out_dir: Path) -> list[ImageJob]:
    """`jobs` less the files inside `out_dir` (an output folder inside an input folder: its overlays are
    no inputs)."""
    out = out_dir.resolve()
    return [j for j in jobs if out not in j.path.resolve().parents]


def _plan(jobs: Sequence[ImageJob], pipeline, scale, pool: ThreadPoolExecutor, progress: bool,
          read: Callable[[Path], np.ndarray]) -> dict:
    """{path: ScaleChoice} of every input for the modes that pool a folder's fields, else {}."""
    def measure_all(fn, paths):
        return tqdm(pool.map(fn, paths), total=len(paths), unit="img", desc="scale", leave=False,
                    disable=not progress or None)

    return plan_for(pipeline, [j.path for j in jobs], scale, map_fn=measure_all, read=read)


def rebuild_aggregates(out_dir: Path, jobs: Sequence[ImageJob], pipeline, summary: BatchSummary, *,
                       run: dict | None = None, level: str = "group") -> list[SlideResult]:
    """Write results.json, coco.json, annotations.xml and counts.csv from the per-image records of `jobs`
    (in input order), plus skipped.csv; every file atomically. `run`: more metadata for results.json's
    "run" (beside the pipeline's description)."""
    records = []
    for j in jobs:
        rec = _load_record(record_path(out_dir, j.name))
        if rec is not None:
            records.append(rec)
    results = [record_to_result(r) for r in records]
    classes = list(getattr(pipeline, "classes", []))
    describe = pipeline.describe() if hasattr(pipeline, "describe") else None
    # records come from `image_record`; checking a sample against the schema keeps big runs fast
    validate(results_document(records[:VALIDATE_SAMPLE], describe, run=run), path=out_dir / "results.json")
    write_results_json(out_dir / "results.json", records, describe, run=run, check=False)
    write_coco_results(out_dir / "coco.json", results, classes, level=level)
    write_cvat_xml(out_dir / "annotations.xml", results, classes, level=level)
    write_counts_csv(out_dir / "counts.csv", results, classes)
    summary.files = [str(out_dir / f) for f in AGGREGATES]
    skipped_csv = out_dir / "skipped.csv"
    if summary.skipped:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "reason"])
        w.writerows(summary.skipped)
        write_text_atomic(skipped_csv, buf.getvalue())
        summary.files.append(str(skipped_csv))
    elif skipped_csv.exists():
        skipped_csv.unlink()
    return results
