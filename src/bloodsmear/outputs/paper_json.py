"""The paper's JSON output (its section 5.1), documented by `schemas/results.schema.json`.

`image_record(result)` turns one `SlideResult` into the paper's per-image object; `record_to_result`
reads it back (the batch runner keeps one record per image and rebuilds every aggregate file from
them). `results_document` wraps records into the file `results.json`; `validate` checks a document
against the JSON Schema shipped in the package.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import numpy as np

from bloodsmear.errors import InputError
from bloodsmear.io import write_json_atomic
from bloodsmear.settings import PACKAGE_DIR
from bloodsmear.types import Cell, SlideResult

SCHEMA_PATH = PACKAGE_DIR / "schemas" / "results.schema.json"
FORMAT = "bloodsmear-results"
VERSION = 1
_NDIGITS = 2  # coordinates rounded to 1/100 pixel


def _num(v: Any) -> float | None:
    return None if v is None else round(float(v), 6)


def cell_record(cell: Cell) -> dict:
    """One predicted cell as the paper's cell object."""
    a = cell.attributes
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
    }


def image_record(result: SlideResult) -> dict:
    """One analysed image as the paper's image object (plus scale, RBC diameter, its source and stage
    timings)."""
    return {
        "filename": result.name,
        "height": int(result.height),
        "width": int(result.width),
        "scale": _num(result.scale),
        "rbc_diameter_px": _num(result.rbc_diameter_px),
        "scale_source": result.meta.get("scale_source"),
        "timings_s": {k: round(float(v), 5) for k, v in result.timings.items()},
        "cells": [cell_record(c) for c in result.cells],
    }


def record_to_result(rec: dict) -> SlideResult:
    """Inverse of `image_record` (masks are not stored; polygons are)."""
    cells = []
    for c in rec.get("cells", []):
        bb = c["bounding_box"]
        cells.append(Cell(
            label=c["class_name"],
            polygon=np.asarray(c["vertices"], dtype=float).reshape(-1, 2),
            box=(bb["x1"], bb["y1"], bb["x2"], bb["y2"]),
            score=c["score"],
            attributes={k: c.get(k) for k in ("detection_score", "screening_label", "screening_score",
                                              "refined_label", "refined_score", "review")},
        ))
    return SlideResult(
        name=rec["filename"], width=int(rec["width"]), height=int(rec["height"]), cells=cells,
        scale=float(rec.get("scale") or 1.0), rbc_diameter_px=rec.get("rbc_diameter_px"),
        timings=dict(rec.get("timings_s") or {}),
        meta={"scale_source": rec["scale_source"]} if rec.get("scale_source") else {},
    )


def results_document(records: Iterable[dict], pipeline: dict | None = None) -> dict:
    """The whole `results.json` object."""
    doc: dict = {"format": FORMAT, "version": VERSION}
    if pipeline is not None:
        doc["pipeline"] = pipeline
    doc["images"] = list(records)
    return doc


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
                       *, check: bool = True) -> Path:
    """Write `results.json` atomically (validated against the schema first when `check`)."""
    doc = results_document(records, pipeline)
    if check:
        validate(doc, path=dest)
    return write_json_atomic(dest, doc, indent=None)


def read_results_json(path: str | Path) -> list[SlideResult]:
    """Read a `results.json` back into `SlideResult`s (validated)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(path, f"not a readable JSON file ({e})") from e
    validate(doc, path=path)
    return [record_to_result(r) for r in doc["images"]]
