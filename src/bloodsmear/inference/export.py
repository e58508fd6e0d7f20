"""Cell crops cut from whole fields by the pipeline's own segment and crop stages.

    res = export_cell_crops(["lisc/"], "lisc-crops/", one_per_image=True)
    # lisc-crops/eosinophil/12.png ...  + lisc-crops/crops.csv (source image, box, score, red-cell size)

What a classifier sees inside `bloodsmear analyze` is a crop made by `stages.crop_cells` around a
segmented cell, framed by the red-cell size. Training or adapting a classifier on crops cut the same
way (rather than on a dataset's own framing) keeps train and use alike: this is how the DANN target
domain (`bloodsmear adapt --fields`, LISC and BCCD WBCs) is made. Inputs are walked as by `analyze`
(files or folders, names relative to the input), so a class-per-folder set of fields gives a
class-per-folder set of crops. `one_per_image` keeps only the largest cell of each field (datasets with
one WBC per field, such as LISC). Outputs are written atomically; images already exported are skipped
(re-runs resume).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from bloodsmear.errors import InputError
from bloodsmear.inference.batch import collect_images
from bloodsmear.inference.pipeline import Pipeline
from bloodsmear.inference.pipeline_config import PipelineConfig
from bloodsmear.inference.scale_plan import plan_for
from bloodsmear.inference.stages import crop_cells
from bloodsmear.io import read_image, write_image_atomic, write_text_atomic
from bloodsmear.preprocess.cells import cell_box
from bloodsmear.preprocess.resize import resize_square

log = logging.getLogger(__name__)

MANIFEST = "crops.csv"
FIELDS = ("crop", "image", "index", "x1", "y1", "x2", "y2", "score", "area", "rbc_px", "n_cells")


@dataclass
class ExportResult:
    out_dir: Path
    n_images: int = 0
    n_crops: int = 0
    n_resumed: int = 0
    no_cell: list[str] = field(default_factory=list)  # images where the segmenter found no cell
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "n_images": self.n_images, "n_crops": self.n_crops,
                "n_resumed": self.n_resumed, "n_no_cell": len(self.no_cell), "no_cell": self.no_cell,
                "n_skipped": len(self.skipped), "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}


def largest_cell(cells: Sequence) -> int | None:
    """Index of the cell with the largest area (polygon, else box), None for no cells."""
    if not cells:
        return None
    return int(np.argmax([float(c.area) for c in cells]))


def segmenting_pipeline(pipeline=None):
    """A `Pipeline` that only segments (WBC instances), with the crop settings of `pipeline` (a Pipeline,
    a `PipelineConfig`, a config path or shipped name, or None for the shipped default)."""
    if isinstance(pipeline, Pipeline):
        return pipeline
    cfg = pipeline if isinstance(pipeline, PipelineConfig) else PipelineConfig.load(pipeline)
    return Pipeline.segmenter_only(cfg.segmenter, cfg)


def field_crops(pipe, rgb: np.ndarray, *, one_per_image: bool = False, scale: str | float | None = None,
                name: str = "image", path: Path | None = None):
    """(Detection, cells, crops, number of cells found) of one field: the pipeline's segmentation and
    crop stage (`stages.crop_cells`, framed by the red-cell size as `analyze` does); `one_per_image` keeps
    the largest cell only. `rgb` is not modified."""
    det = pipe.detect(rgb, scale=scale, name=name, path=path)
    src = det.crop_source
    cells = list(det.cells)
    n_all = len(cells)
    if one_per_image and cells:
        cells = [cells[largest_cell(cells)]]
    cfg = pipe.config
    crops = crop_cells(src, cells, padding=cfg.crop_padding, rbc_px=det.rbc_diameter_px, frame_rbc=cfg.crop_frame_rbc)
    return det, cells, crops, n_all


def crop_names(name: str, n: int, one_per_image: bool, ext: str) -> list[str]:
    """Relative crop paths of an image named `name` (posix, relative to its input): `<stem>.<ext>` for one
    crop per image, else `<stem>_<k>.<ext>` (k from 0)."""
    stem = name.rsplit(".", 1)[0] if "." in Path(name).name else name
    if one_per_image:
        return [f"{stem}.{ext}"]
    return [f"{stem}_{k}.{ext}" for k in range(n)]


def export_cell_crops(inputs: Sequence[str | Path], out_dir: str | Path, *, pipeline=None,
                      one_per_image: bool = False, size: int | None = None, ext: str = "png",
                      scale: str | float | None = None, progress: bool = True) -> ExportResult:
    """Segment every image of `inputs` and write one crop per cell (see the module docstring).

    `pipeline`: a `Pipeline`, a pipeline config path/name, or None for the shipped default; only its
    segmenter and crop settings are used. `size`: resize crops to size x size (None: original pixels).
    """
    if ext not in ("png", "jpg"):
        raise ValueError(f"ext must be png or jpg, got {ext!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe = segmenting_pipeline(pipeline)
    jobs = collect_images(inputs)
    res = ExportResult(out_dir=out, n_images=len(jobs))
    rows = _read_manifest(out / MANIFEST)
    done_images = {r["image"] for r in rows}
    scales = plan_for(pipe, [j.path for j in jobs], scale) if any(j.name not in done_images for j in jobs) else {}
    for job in tqdm(jobs, desc="crop fields", disable=not progress, dynamic_ncols=True):
        if job.name in done_images:
            res.n_resumed += 1
            continue
        try:
            det, cells, crops, n_all = field_crops(pipe, read_image(job.path), one_per_image=one_per_image,
                                                   scale=scales.get(job.path, scale), name=job.name,
                                                   path=job.path)
        except InputError as e:
            res.skipped.append((str(job.path), str(e)))
            log.warning("skipped %s", e)
            continue
        if not cells:
            res.no_cell.append(job.name)
        names = crop_names(job.name, len(cells), one_per_image, ext)
        for k, (c, crop, rel) in enumerate(zip(cells, crops, names)):
            if size:
                crop = resize_square(crop, int(size))
            write_image_atomic(out / rel, crop)
            x1, y1, x2, y2 = cell_box(c)
            rows.append({"crop": rel, "image": job.name, "index": k, "x1": round(x1, 1), "y1": round(y1, 1),
                         "x2": round(x2, 1), "y2": round(y2, 1), "score": round(float(c.score or 0.0), 4),
                         "area": round(float(c.area), 1),
                         "rbc_px": None if det.rbc_diameter_px is None else round(det.rbc_diameter_px, 2),
                         "n_cells": n_all})
            res.n_crops += 1
        if not cells:  # remembered too, so a re-run does not segment it again
            rows.append({"crop": "", "image": job.name, "index": -1, "n_cells": 0})
        if len(rows) % 50 == 0:
            write_text_atomic(out / MANIFEST, _manifest_text(rows))
    write_text_atomic(out / MANIFEST, _manifest_text(rows))
    return res


def _manifest_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(FIELDS), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in FIELDS})
    return buf.getvalue()


def _read_manifest(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
