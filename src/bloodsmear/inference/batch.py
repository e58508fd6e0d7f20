"""`analyze`: the pipeline over files and folders, with progress, skipping of bad images and resume.

Output folder layout:

    results.json      the paper's JSON (schemas/results.schema.json)
    coco.json         COCO instances with scores (pycocotools-loadable)
    annotations.xml   CVAT for images 1.1 (pre-annotation)
    counts.csv        counts per image and class, totals and percentages
    skipped.csv       images that could not be analysed, and why (only when there are any)
    overlays/<name>.png
    _per_image/<name>.json   one paper record per analysed image: the resume state

Every file is written atomically. An image counts as done when its per-image record exists (its
overlay is written first); a re-run skips done images, removes temp files a killed run left behind,
and rebuilds the aggregate files from the per-image records of all the inputs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from bloodsmear.errors import BloodsmearError, InputError
from bloodsmear.io import list_images, read_image, write_json_atomic, write_text_atomic
from bloodsmear.outputs.coco import write_coco_results
from bloodsmear.outputs.counts import write_counts_csv
from bloodsmear.outputs.cvat import write_cvat_xml
from bloodsmear.outputs.overlay import write_overlay
from bloodsmear.outputs.paper_json import (
    image_record,
    record_to_result,
    results_document,
    validate,
    write_results_json,
)
from bloodsmear.types import SlideResult

log = logging.getLogger(__name__)

PER_IMAGE_DIR = "_per_image"
OVERLAY_DIR = "overlays"
VALIDATE_SAMPLE = 20  # per-image records checked against the JSON Schema when results.json is rebuilt
AGGREGATES = ("results.json", "coco.json", "annotations.xml", "counts.csv")


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


def record_path(out_dir: Path, name: str) -> Path:
    return out_dir / PER_IMAGE_DIR / f"{name}.json"


def overlay_path(out_dir: Path, name: str) -> Path:
    return out_dir / OVERLAY_DIR / f"{name}.png"


def clean_temp_files(out_dir: Path) -> int:
    """Remove the temp files (`.<name>.<random>.part<suffix>`) a killed run left behind."""
    n = 0
    if out_dir.is_dir():
        for p in out_dir.rglob(".*.part*"):
            if p.is_file():
                p.unlink()
                n += 1
    return n


def _load_record(path: Path) -> dict | None:
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        return rec if isinstance(rec, dict) and "cells" in rec else None
    except (OSError, ValueError):
        return None


def _is_done(out_dir: Path, job: ImageJob, overlays: bool) -> bool:
    return record_path(out_dir, job.name).is_file() and (not overlays or overlay_path(out_dir, job.name).is_file())


def _read(job: ImageJob) -> np.ndarray | BloodsmearError:
    try:
        return read_image(job.path)
    except BloodsmearError as e:
        return e
    except Exception as e:  # noqa: BLE001 - any decoder failure is reported per image
        return InputError(job.path, f"unreadable image ({e.__class__.__name__}: {e})")


def _prefetch(jobs: list[ImageJob], pool: ThreadPoolExecutor, depth: int = 2) -> Iterator[tuple[ImageJob, Future]]:
    """Decode images `depth` ahead in a worker thread (the decoder releases the GIL)."""
    futs: list[tuple[ImageJob, Future]] = []
    it = iter(jobs)
    for job in it:
        futs.append((job, pool.submit(_read, job)))
        if len(futs) > depth:
            yield futs.pop(0)
    yield from futs


def _write_outputs(out_dir: Path, rgb: np.ndarray, result: SlideResult, overlays: bool) -> None:
    if overlays:
        write_overlay(overlay_path(out_dir, result.name), rgb, result)
    write_json_atomic(record_path(out_dir, result.name), image_record(result), indent=None)


def analyze(inputs: Sequence[str | Path], out_dir: str | Path, pipeline, *, scale: str | float | None = None,
            overlays: bool = True, progress: bool = True) -> BatchSummary:
    """Run `pipeline` (a `bloodsmear.inference.pipeline.Pipeline`) over the inputs into `out_dir`."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = collect_images(inputs)
    n_tmp = clean_temp_files(out_dir)
    if n_tmp:
        log.info("removed %d temp file(s) left by an interrupted run", n_tmp)
    summary = BatchSummary(out_dir=out_dir, n_images=len(jobs))
    todo = [j for j in jobs if not _is_done(out_dir, j, overlays)]
    summary.n_resumed = len(jobs) - len(todo)
    if summary.n_resumed:
        log.info("resuming: %d of %d image(s) already done in %s", summary.n_resumed, len(jobs), out_dir)
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer, logging_redirect_tqdm():
        pending: list[Future] = []
        bar = tqdm(total=len(todo), unit="img", desc="analyze", disable=not progress or None)
        for job, fut in _prefetch(todo, reader):
            rgb = fut.result()
            try:
                if isinstance(rgb, BloodsmearError):
                    raise rgb
                result = pipeline.run(rgb, job.name, scale=scale, path=job.path)
            except Exception as e:  # noqa: BLE001 - one bad image never stops the run
                reason = getattr(e, "problem", None) or f"analysis failed ({e.__class__.__name__}: {e})"
                if not isinstance(e, BloodsmearError):
                    log.debug("analysis of %s failed", job.path, exc_info=True)
                log.warning("skipped %s: %s", job.path, reason)
                summary.skipped.append((str(job.path), reason))
            else:
                pending.append(writer.submit(_write_outputs, out_dir, rgb, result, overlays))
                summary.n_analysed += 1
            while pending and (pending[0].done() or len(pending) > 2):
                pending.pop(0).result()  # raises a writer error here
            bar.update(1)
        for f in pending:
            f.result()
        bar.close()
    summary.n_skipped = len(summary.skipped)
    results = rebuild_aggregates(out_dir, jobs, pipeline, summary)
    summary.n_cells = sum(len(r.cells) for r in results)
    for r in results:
        for k, v in r.class_counts().items():
            summary.counts[k] = summary.counts.get(k, 0) + v
    summary.seconds = time.perf_counter() - t_start
    if summary.n_skipped:
        log.warning("%d image(s) skipped (listed in %s)", summary.n_skipped, out_dir / "skipped.csv")
    return summary


def rebuild_aggregates(out_dir: Path, jobs: Sequence[ImageJob], pipeline, summary: BatchSummary) -> list[SlideResult]:
    """Write results.json, coco.json, annotations.xml and counts.csv from the per-image records of `jobs`
    (in input order), plus skipped.csv; every file atomically."""
    records = []
    for j in jobs:
        rec = _load_record(record_path(out_dir, j.name))
        if rec is not None:
            records.append(rec)
    results = [record_to_result(r) for r in records]
    classes = list(getattr(pipeline, "classes", []))
    describe = pipeline.describe() if hasattr(pipeline, "describe") else None
    # records come from `image_record`; checking a sample against the schema keeps big runs fast
    validate(results_document(records[:VALIDATE_SAMPLE], describe), path=out_dir / "results.json")
    write_results_json(out_dir / "results.json", records, describe, check=False)
    write_coco_results(out_dir / "coco.json", results, classes)
    write_cvat_xml(out_dir / "annotations.xml", results, classes)
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
