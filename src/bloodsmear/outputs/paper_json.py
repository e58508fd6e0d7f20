"""The paper's JSON output (its section 5.1), documented by `schemas/results.schema.json`.

The paper's tool writes one object per analysed image under "data", keyed "0", "1", ... in order:

    {"data": {"0": {"filename": ..., "height": ..., "width": ...,
                    "masks": [{"class_name": ..., "score": ..., "bounding_box": {"x1", "x2", "y1", "y2"},
                               "vertices": [[x, y], ...]}, ...]},
              "1": ...},
     "run": {"format": "bloodsmear-results", "version": 2, "pipeline": {...}, "identity": {...}}}

bloodsmear writes exactly that envelope; its images and masks carry more fields (both classifier stages,
area, review flag, scale), and the run's metadata sits in "run" beside "data". A file of the paper's
own tool (no "run", masks with the paper's four fields only) reads back as well.

`image_record(result)` turns one `SlideResult` into the paper's per-image object; `record_to_result`
reads it back (the batch runner keeps one record per image and rebuilds every aggregate file from
them). `results_document` wraps records into the file `results.json`, `document_records` takes them
out again; `validate` checks a document against the JSON Schema shipped in the package.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import numpy as np

from bloodsmear.classes import cell_levels
from bloodsmear.errors import InputError
from bloodsmear.io import write_json_atomic
from bloodsmear.settings import PACKAGE_DIR
from bloodsmear.types import CELL_RESULT_KEYS, Cell, SlideResult

SCHEMA_PATH = PACKAGE_DIR / "schemas" / "results.schema.json"
FORMAT = "bloodsmear-results"
VERSION = 2  # 1: {"format", "version", "pipeline", "images": [{..., "cells": [...]}]}
_NDIGITS = 2  # coordinates rounded to 1/100 pixel


def _num(v: Any) -> float | None:
    return None if v is None else round(float(v), 6)


def cell_record(cell: Cell) -> dict:
    """One predicted cell as the paper's mask object (plus both stages, area, review flag, and the class at
    both levels: `fine_class`, null for a group-only answer, and `group`)."""
    a = cell.attributes
    levels = cell_levels(cell.label)
    x1, y1, x2, y2 = cell.box if cell.box is not None else (0.0, 0.0, 0.0, 0.0)
    poly = cell.polygon if cell.polygon is not None else np.zeros((0, 2))
    return {
        "class_name": cell.label,
        "score": _num(cell.score if cell.score is not None else 0.0),
        "detection_score": _num(a.get("detection_score")),
        "bounding_box": {"x1": round(x1, _NDIGITS), "x2": round(x2, _NDIGITS),
                         "y1": round(y1, _NDIGITS), "y2": round(y2, _NDIGITS)},
        "vertices": np.round(poly, _NDIGITS).tolist(),
        "screening_label": a.get("screening_label", cell.label),
        "screening_score": _num(a.get("screening_score", cell.score or 0.0)),
        "refined_label": a.get("refined_label"),
        "refined_score": _num(a.get("refined_score")),
        "area": round(float(cell.area), _NDIGITS),
        "review": bool(a.get("review", False)),
        "fine_class": levels["fine_label"],
        "group": levels["group_label"],
    }


def image_record(result: SlideResult) -> dict:
    """One analysed image as the paper's image object (plus scale, RBC diameter, where that came from, the
    image file's absolute path (`source`: what `bloodsmear review` shows) and stage timings)."""
    return {
        "filename": result.name,
        "height": int(result.height),
        "width": int(result.width),
        "scale": _num(result.scale),
        "rbc_diameter_px": _num(result.rbc_diameter_px),
        "scale_source": result.meta.get("scale_source"),
        "source": str(Path(result.path).resolve()) if result.path is not None else None,
        "timings_s": {k: round(float(v), 5) for k, v in result.timings.items()},
        "masks": [cell_record(c) for c in result.cells],
    }


def _vertices(v: Any) -> np.ndarray:
    """[[x, y], ...] (or a flat [x1, y1, x2, y2, ...]) as an (N, 2) float array."""
    return np.asarray(v if v is not None else [], dtype=float).reshape(-1, 2)


def record_to_result(rec: dict) -> SlideResult:
    """Inverse of `image_record` (pixel masks are not stored; polygons are). A record of the paper's own
    tool (class_name, score, bounding_box, vertices only) reads too: the screening stage is taken to be
    the final class, and the fields it lacks are None."""
    cells = []
    for c in rec.get("masks", []):
        bb = c["bounding_box"]
        score = None if c.get("score") is None else float(c["score"])
        attributes = {k: c.get(k) for k in CELL_RESULT_KEYS}
        attributes["screening_label"] = attributes["screening_label"] or c["class_name"]
        attributes["screening_score"] = score if attributes["screening_score"] is None else attributes["screening_score"]
        attributes["review"] = bool(attributes["review"])
        levels = cell_levels(c["class_name"])  # files written before the fine classes lack both fields
        attributes["fine_label"] = c.get("fine_class", levels["fine_label"])
        attributes["group_label"] = c.get("group") or levels["group_label"]
        poly = _vertices(c.get("vertices"))
        cells.append(Cell(label=c["class_name"], polygon=poly if len(poly) else None,
                          box=(bb["x1"], bb["y1"], bb["x2"], bb["y2"]), score=score, attributes=attributes))
    return SlideResult(
        name=rec["filename"], width=int(rec["width"]), height=int(rec["height"]), cells=cells,
        scale=float(rec.get("scale") or 1.0), rbc_diameter_px=rec.get("rbc_diameter_px"),
        timings=dict(rec.get("timings_s") or {}),
        meta={"scale_source": rec["scale_source"]} if rec.get("scale_source") else {},
        path=Path(rec["source"]) if rec.get("source") else None,
    )


def results_document(records: Iterable[dict], pipeline: dict | None = None, *, run: dict | None = None) -> dict:
    """The whole `results.json` object: the paper's {"data": {"0": record, ...}} and, beside it, "run":
    format, version, the pipeline's description and any other run metadata (`run`, e.g. its identity)."""
    meta: dict = {"format": FORMAT, "version": VERSION}
    if pipeline is not None:
        meta["pipeline"] = pipeline
    meta.update(run or {})
    return {"data": {str(i): rec for i, rec in enumerate(records)}, "run": meta}


def document_records(doc: dict) -> list[dict]:
    """The per-image records of a results document, in the order of their keys ("0", "1", ...)."""
    data = doc.get("data") or {}
    return [data[k] for k in sorted(data, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))]


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate(doc: dict, *, path: str | Path | None = None) -> None:
    """Raise `InputError` (naming the first problem and where it is) unless `doc` follows the schema."""
    validator = jsonschema.Draft202012Validator(schema())
    err = next(iter(sorted(validator.iter_errors(doc), key=lambda e: list(e.path))), None)
    if err is not None:
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        raise InputError(path, f"not a valid results document at {where}: {err.message}")


def write_results_json(dest: str | Path, records: Iterable[dict], pipeline: dict | None = None,
                       *, run: dict | None = None, check: bool = True) -> Path:
    """Write `results.json` atomically (validated against the schema first when `check`)."""
    doc = results_document(records, pipeline, run=run)
    if check:
        validate(doc, path=dest)
    return write_json_atomic(dest, doc, indent=None)


def read_results_json(path: str | Path) -> list[SlideResult]:
    """Read a `results.json` back into `SlideResult`s (validated): bloodsmear's, or one the paper's own
    tool wrote."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(path, f"not a readable JSON file ({e})") from e
    validate(doc, path=path)
    return [record_to_result(r) for r in document_records(doc)]
