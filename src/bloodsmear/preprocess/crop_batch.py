"""Folder-wide C-PBC cropping (``bloodsmear crop pbc``) and the crop benchmark (``bloodsmear bench crop``).

`crop_pbc_folder` turns a PBC-style class-per-folder set into a C-PBC-style one: same class folders
and file names, each image cropped by `bloodsmear.preprocess.crop` (fast or paper method). Bad files
are reported and skipped, writes are atomic and a re-run skips files already done.

`bench_crop` runs the paper's and the fast method on the same images in one process, image by image
(so a load change on the machine hits both alike), and reports ms/image, their ratio and the
crop-box IoU between them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bloodsmear.errors import BloodsmearError, InputError
from bloodsmear.io import list_images, read_image, write_image_atomic
from bloodsmear.geometry import box_iou
from bloodsmear.preprocess.crop import METHODS, crop, crop_box, fast_crop, paper_crop
from bloodsmear.preprocess.resize import resize_square

log = logging.getLogger(__name__)


@dataclass
class FolderCropSummary:
    """What `crop_pbc_folder` did."""

    total: int = 0
    written: int = 0
    existing: int = 0  # already done by an earlier run (skipped)
    not_found: int = 0  # no stained segment: the whole image was kept
    failed: list[str] = field(default_factory=list)  # "path: problem"

    @property
    def skipped(self) -> int:
        return len(self.failed)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = self.skipped
        return d


def crop_pbc_folder(
    src: str | Path,
    dst: str | Path,
    *,
    method: str = "fast",
    size: int | None = None,
    quality: int = 95,
    progress: bool = True,
) -> FolderCropSummary:
    """Crop every image under `src` into the same relative path under `dst`.

    `size`: resize each crop to size x size. Images already present in `dst` are skipped (resume).
    A file that is not a readable colour image is reported in ``failed`` and skipped.
    """
    if method not in METHODS:
        raise ValueError(f"unknown crop method {method!r} (valid: {', '.join(METHODS)})")
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise InputError(src, "not a folder")
    if dst.resolve() == src.resolve():
        raise InputError(dst, "the output folder must differ from the source folder")
    files = list_images(src)
    summary = FolderCropSummary(total=len(files))
    for path in tqdm(files, desc=f"crop ({method})", unit="img", disable=not progress):
        dest = dst / path.relative_to(src)
        if dest.exists():
            summary.existing += 1
            continue
        try:
            rgb = read_image(path)
            res = crop_box(rgb, method)
            out = crop(rgb, res)
            if size:
                out = resize_square(out, int(size))
            write_image_atomic(dest, out, quality=quality)
        except BloodsmearError as e:
            summary.failed.append(str(e))
            log.debug("skipped %s", e)
            continue
        summary.written += 1
        summary.not_found += int(not res.found)
    if summary.failed:
        log.warning("%d of %d file(s) skipped (not readable images)", len(summary.failed), summary.total)
    return summary


@dataclass
class CropBench:
    """`bench_crop` figures: milliseconds per image of each method, speed ratio, crop-box IoU."""

    images: int
    repeat: int
    paper_ms: float
    fast_ms: float
    ratio: float
    iou: float
    iou_min: float
    iou_ge_090: float  # fraction of images with IoU >= 0.9
    paper_cpu_ms: float
    fast_cpu_ms: float
    cpu_ratio: float
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def bench_crop(
    images: str | Path, *, limit: int | None = None, repeat: int = 1, progress: bool = True
) -> CropBench:
    """Time `paper_crop` and `fast_crop` on the same images (one process, alternating per image).

    Reading the files is not timed. Both wall-clock (`perf_counter`) and process CPU time are kept; the
    headline figures (``paper_ms``, ``fast_ms``, ``ratio``) are wall-clock. With `repeat` > 1 each
    method runs that many times per image and the fastest run counts (as `timeit` does), which keeps
    a busy machine's pauses out of the figures.
    """
    files = list_images(Path(images))
    if limit:
        files = files[: int(limit)]
    rgbs, skipped = [], []
    for p in files:
        try:
            rgbs.append(read_image(p))
        except BloodsmearError as e:
            skipped.append(str(e))
    if not rgbs:
        raise InputError(images, "no readable images to benchmark")
    paper_crop(rgbs[0]), fast_crop(rgbs[0])  # warm-up: imports, caches
    wall = np.zeros((len(rgbs), 2))
    cpu = np.zeros((len(rgbs), 2))
    ious = np.zeros(len(rgbs))
    wall[:] = cpu[:] = np.inf
    for i, rgb in enumerate(tqdm(rgbs, desc="bench crop", unit="img", disable=not progress)):
        for _ in range(max(1, int(repeat))):
            t0, c0 = time.perf_counter(), time.process_time()
            a = paper_crop(rgb)
            t1, c1 = time.perf_counter(), time.process_time()
            b = fast_crop(rgb)
            t2, c2 = time.perf_counter(), time.process_time()
            wall[i] = np.minimum(wall[i], (t1 - t0, t2 - t1))
            cpu[i] = np.minimum(cpu[i], (c1 - c0, c2 - c1))
        ious[i] = box_iou(a.box, b.box)
    pw, fw = wall.mean(0) * 1000
    pc, fc = cpu.mean(0) * 1000
    return CropBench(
        images=len(rgbs), repeat=max(1, int(repeat)), paper_ms=float(pw), fast_ms=float(fw), ratio=float(pw / fw),
        iou=float(ious.mean()), iou_min=float(ious.min()), iou_ge_090=float((ious >= 0.9).mean()),
        paper_cpu_ms=float(pc), fast_cpu_ms=float(fc), cpu_ratio=float(pc / fc) if fc > 0 else float("inf"),
        skipped=skipped,
    )
