"""Exports of a reviewed analyze folder with the person's corrections applied (`bloodsmear export`, and the
page's export menu): the model's results with every relabel, deletion, drawn cell and moved outline of the
review store. Written by the same writers as `analyze`'s own outputs:

- `cvat`: CVAT-for-images 1.1 XML (`annotations.xml`), which CVAT and `bloodsmear.data.cvat.read_cvat` import;
- `coco`: COCO instances (`coco.json`) that pycocotools loads;
- `paper-json`: the paper's JSON (`results.json`, schema-checked) with a "review" entry in "run";
- `csv`: `counts.csv`, per field and in total, at both class levels;
- `crops`: `crops/<class>/<field>_<n>.jpg`, each cell framed as the classifier framed it: a class-per-folder
  set that `bloodsmear learn` takes directly (artefacts and smudge cells left out: they are no WBC type).

A person's answer (relabelled, confirmed, drawn) has score 1 (the crops' manifest.csv names the reviewer); cells
still unidentified keep their `review` flag.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np

from bloodsmear.classes import REVIEW_KINDS
from bloodsmear.errors import BloodsmearError
from bloodsmear.io import write_text_atomic
from bloodsmear.outputs.coco import write_coco_results
from bloodsmear.outputs.counts import write_counts_csv
from bloodsmear.outputs.cvat import write_cvat_xml
from bloodsmear.outputs.paper_json import image_record, write_results_json
from bloodsmear.review.media import Media, write_jpeg
from bloodsmear.review.session import ReviewRun
from bloodsmear.review.store import CellRow
from bloodsmear.types import CELL_RESULT_KEYS, Cell, SlideResult

EXPORT_FORMATS = ("cvat", "coco", "paper-json", "csv", "crops")
FILE_OF = {"cvat": "annotations.xml", "coco": "coco.json", "paper-json": "results.json", "csv": "counts.csv",
           "crops": "crops"}


def _cell(row: CellRow, unidentified: bool) -> Cell:
    """A store cell as the writers take it: the model's stage attributes, its current label and outline; a
    person's answer (drawn, relabelled or confirmed) scores 1."""
    m = row.model or {}
    attributes = {k: m.get(k) for k in CELL_RESULT_KEYS}
    attributes["review"] = unidentified
    if attributes["detection_score"] is None:
        attributes["detection_score"] = 1.0
    attributes["screening_label"] = attributes.get("screening_label") or row.label
    attributes["screening_score"] = attributes.get("screening_score") or 1.0
    poly = np.asarray(row.polygon, dtype=float).reshape(-1, 2)
    person = row.origin == "person" or row.answered
    return Cell(label=row.label, polygon=poly, score=1.0 if person else m.get("score"), attributes=attributes)


def corrected_results(run: ReviewRun, case: str | None = None) -> list[SlideResult]:
    """Every field (of `case`, or all) as a SlideResult with the review applied; deleted cells left out."""
    cases = [run.store.case(run.run_id, case)] if case else run.store.cases(run.run_id)
    out = []
    for c in cases:
        cells = run.store.cells(case_id=c.id)
        for sl in run.store.slides(c.id):
            rows = [r for r in cells if r.slide_id == sl.id and not r.deleted]
            out.append(SlideResult(name=sl.name, width=sl.width, height=sl.height,
                                   cells=[_cell(r, r.unidentified) for r in rows],
                                   path=Path(sl.source) if sl.source else None, rbc_diameter_px=sl.rbc_px))
    return out


def _review_meta(run: ReviewRun, case: str | None) -> dict:
    cases = [run.store.case(run.run_id, case)] if case else run.store.cases(run.run_id)
    return {"exported_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            "cases": [{"name": c.name, "status": c.status, "signed_by": c.signed_by,
                       "signed_at": c.signed_at.isoformat() if c.signed_at else None} for c in cases]}


def export(run: ReviewRun, fmt: str, dest_dir: str | Path, *, case: str | None = None, level: str = "fine",
           media: Media | None = None) -> Path:
    """Write the export `fmt` into `dest_dir` (created); returns the file (or, for crops, the folder)."""
    if fmt not in EXPORT_FORMATS:
        raise BloodsmearError(f"unknown export format {fmt!r} (choose from {', '.join(EXPORT_FORMATS)})")
    dest_dir = Path(dest_dir)
    results = corrected_results(run, case)
    classes = run.model_classes
    dest = dest_dir / FILE_OF[fmt]
    if fmt == "cvat":
        return write_cvat_xml(dest, results, classes, level=level)
    if fmt == "coco":
        return write_coco_results(dest, results, classes, level=level)
    if fmt == "csv":
        return write_counts_csv(dest, results, classes)
    if fmt == "paper-json":
        return write_results_json(dest, [image_record(r) for r in results], run.meta.get("pipeline"),
                                  run={"identity": run.meta.get("identity"), "review": _review_meta(run, case)})
    return _write_crops(run, dest, case, media or Media(run.out_dir))


def _write_crops(run: ReviewRun, dest: Path, case: str | None, media: Media) -> Path:
    cases = [run.store.case(run.run_id, case)] if case else run.store.cases(run.run_id)
    rows = []
    for c in cases:
        slides = {s.id: s for s in run.store.slides(c.id)}
        for cell in run.store.cells(case_id=c.id):
            if cell.deleted or cell.label in REVIEW_KINDS or cell.unidentified:
                continue
            sl = slides[cell.slide_id]
            stem = PurePosixPath(sl.name).with_suffix("").as_posix().replace("/", "__")
            rel = f"{cell.label}/{stem}_{cell.index}.jpg"
            write_jpeg(dest / rel, media.crop(cell, sl, side=None))
            rows.append([rel, cell.label, sl.name, cell.index, cell.origin, cell.updated_by or ""])
    if not rows:
        raise BloodsmearError("no answered WBC to export as crops (every cell deleted, unidentified or no WBC type)")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([["crop", "label", "field", "cell", "origin", "reviewed_by"], *rows])
    write_text_atomic(dest / "manifest.csv", buf.getvalue())
    return dest
