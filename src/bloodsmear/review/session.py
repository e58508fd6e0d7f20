"""One analyze output folder under review: its store rows read as the API's objects (docs/review-api.md).

    run = ReviewRun.open(out_dir, db_url=None)      # imports results.json into the store the first time
    run.case_summaries(); run.gallery("bccd"); run.relabel(cell_id, "eosinophil", version=1, who="ana")

Cases are the fields' folders (the part of an image's name before its file name); fields analysed from a
flat folder form one case named after that folder (or the output folder). Labels a person may give: the
run's classes, the fine and group classes, and `classes.REVIEW_KINDS` (artefact, smudge_cell).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from bloodsmear.classes import FINE_CLASSES, GROUP_CLASSES, REVIEW_KINDS, canonical, cell_levels, is_known
from bloodsmear.errors import BloodsmearError, InputError
from bloodsmear.io import read_json
from bloodsmear.outputs.paper_json import document_records, validate
from bloodsmear.review.store import (CaseRow, CellRow, ConflictError, SlideInput, SlideRow, Store, Tally,
                                     default_url)

MAX_VERTICES = 4000
#: Not counted in the differential (reported apart).
NOT_IN_DIFFERENTIAL = (*REVIEW_KINDS, "erythroblast", "platelet", "rbc", "wbc")


class ValidationError(BloodsmearError):
    """A write the server refuses as it is (unknown class, polygon outside the image, ...)."""


def _case_name(name: str, source: str | None, out_dir: Path) -> str:
    parent = str(PurePosixPath(name).parent)
    if parent not in ("", "."):
        return parent
    return Path(source).parent.name if source else out_dir.resolve().name


def read_slides(out_dir: Path, images: Path | None = None) -> tuple[str, list[SlideInput], dict]:
    """(checksum of results.json, its fields as SlideInputs, its "run" metadata). With `images`, each
    field's file is `images/<name>` (a folder moved since it was analysed)."""
    path = out_dir / "results.json"
    if not path.is_file():
        raise InputError(out_dir, "no results.json here: not an analyze output folder (run `bloodsmear analyze` first)")
    raw = path.read_bytes()
    doc = read_json(path)
    validate(doc, path=path)
    slides = []
    for rec in document_records(doc):
        source = str(images / rec["filename"]) if images is not None else rec.get("source")
        slides.append(SlideInput(case=_case_name(rec["filename"], rec.get("source"), out_dir), name=rec["filename"],
                                 width=int(rec["width"]), height=int(rec["height"]), source=source,
                                 rbc_px=rec.get("rbc_diameter_px"), masks=list(rec.get("masks") or [])))
    return hashlib.sha256(raw).hexdigest(), slides, dict(doc.get("run") or {})


@dataclass
class ReviewRun:
    out_dir: Path
    store: Store
    run_id: int
    meta: dict

    @classmethod
    def open(cls, out_dir: str | Path, *, db_url: str | None = None, images: str | Path | None = None) -> "ReviewRun":
        out_dir = Path(out_dir)
        if not out_dir.is_dir():
            raise InputError(out_dir, "not a folder")
        sha, slides, meta = read_slides(out_dir, Path(images) if images else None)
        store = Store(db_url or default_url(out_dir))
        return cls(out_dir, store, store.import_run(str(out_dir.resolve()), sha, slides), meta)

    # ---------------------------------------------------------------------------------------- vocabulary
    @property
    def model_classes(self) -> list[str]:
        return list((self.meta.get("pipeline") or {}).get("classes") or [])

    @property
    def classes(self) -> list[str]:
        """Every label a person may give, the run's own classes first."""
        out = list(dict.fromkeys([*self.model_classes, *GROUP_CLASSES, *FINE_CLASSES, *REVIEW_KINDS]))
        return [c for c in out if is_known(c)]

    def check_label(self, label: object) -> str:
        if not isinstance(label, str) or not is_known(label) or canonical(label) not in self.classes:
            raise ValidationError(f"unknown class {label!r} (known: {', '.join(self.classes)})")
        return canonical(label)

    def check_polygon(self, polygon: object, slide: SlideRow) -> list[list[float]]:
        try:
            p = np.asarray(polygon, dtype=float)
        except (TypeError, ValueError):
            raise ValidationError("polygon: not a list of [x, y] points") from None
        if p.ndim != 2 or p.shape[1] != 2 or not 3 <= len(p) <= MAX_VERTICES or not np.isfinite(p).all():
            raise ValidationError(f"polygon: 3 to {MAX_VERTICES} [x, y] points needed")
        if p.min() < 0 or (p[:, 0] > slide.width).any() or (p[:, 1] > slide.height).any():
            raise ValidationError(f"polygon: outside the image ({slide.width} x {slide.height})")
        return np.round(p, 2).tolist()

    # ---------------------------------------------------------------------------------------- objects
    def cell_view(self, cell: CellRow, case: str | None = None) -> dict:
        m = cell.model
        p = np.asarray(cell.polygon, dtype=float).reshape(-1, 2)
        box = [float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())] if len(p) else None
        levels = cell_levels(cell.label)
        if cell.origin == "person":
            state = "deleted" if cell.deleted else "added"
        elif cell.deleted:
            state = "deleted"
        elif cell.answered:
            state = "confirmed" if cell.label == m.get("class_name") else "corrected"
        else:
            state = "model"
        return {
            "id": cell.id, "slide_id": cell.slide_id, "case": case, "index": cell.index, "polygon": cell.polygon,
            "box": box, "label": cell.label, "group": levels["group_label"], "fine": levels["fine_label"],
            "origin": cell.origin, "state": state, "deleted": cell.deleted, "flagged": cell.flagged,
            "unidentified": cell.unidentified, "score": m.get("score") if m else None,
            "model": None if m is None else {
                "label": m.get("class_name"), "score": m.get("score"), "screening_label": m.get("screening_label"),
                "screening_score": m.get("screening_score"), "refined_label": m.get("refined_label"),
                "refined_score": m.get("refined_score"), "flagged": bool(m.get("review"))},
            "version": cell.version, "crop": f"/media/cells/{cell.id}.jpg?v={cell.version}",
            "updated_by": cell.updated_by,
            "updated_at": cell.updated_at.isoformat() if cell.updated_at else None,
        }

    def differential(self, cells: list[CellRow] | list[Tally]) -> dict:
        live = [c for c in cells if not c.deleted]
        counted = [c for c in live if c.label not in NOT_IN_DIFFERENTIAL]
        n = len(counted)

        def rows(labels: list[str]) -> list[dict]:
            return [{"label": k, "count": v, "percent": round(100.0 * v / n, 1) if n else 0.0}
                    for k, v in Counter(labels).most_common()]
        levels = [cell_levels(c.label) for c in counted]
        excluded = Counter(c.label for c in live if c.label in NOT_IN_DIFFERENTIAL)
        return {"total": n, "unidentified": sum(c.unidentified for c in cells),
                "group": rows([lv["group_label"] for lv in levels]),
                "fine": rows([lv["fine_label"] or f"{lv['group_label']} (unspecified)" for lv in levels]),
                "excluded": {**{k: excluded.get(k, 0) for k in REVIEW_KINDS}, **{k: v for k, v in excluded.items()
                                                                                if k not in REVIEW_KINDS},
                             "deleted": sum(c.deleted for c in cells)}}

    def case_summary(self, case: CaseRow, cells: list[CellRow] | list[Tally] | None = None) -> dict:
        cells = cells if cells is not None else self.store.tallies(case.id)
        live = [c for c in cells if not c.deleted]
        reviewed = sum(c.answered for c in live)
        return {"name": case.name, "slides": len(self.store.slides(case.id)), "cells": len(live), "reviewed": reviewed,
                "reviewed_share": round(reviewed / len(live), 4) if live else 1.0,
                "unidentified": sum(c.unidentified for c in cells), "status": case.status,
                "signed_by": case.signed_by, "signed_at": case.signed_at.isoformat() if case.signed_at else None}

    def case_summaries(self) -> list[dict]:
        return [self.case_summary(c) for c in self.store.cases(self.run_id)]

    def case_detail(self, name: str) -> dict:
        case = self.store.case(self.run_id, name)
        cells = self.store.tallies(case.id)
        per_slide: dict[int, list[Tally]] = {}
        for c in cells:
            per_slide.setdefault(c.slide_id, []).append(c)
        slides = [{"id": s.id, "name": s.name, "width": s.width, "height": s.height,
                   "cells": sum(not c.deleted for c in per_slide.get(s.id, [])),
                   "unidentified": sum(c.unidentified for c in per_slide.get(s.id, []))}
                  for s in self.store.slides(case.id)]
        return {**self.case_summary(case, cells), "slides": slides, "differential": self.differential(cells)}

    def gallery(self, name: str) -> dict:
        case = self.store.case(self.run_id, name)
        live = [c for c in self.store.cells(case_id=case.id) if not c.deleted]

        def order(c: CellRow) -> tuple:
            return (not c.flagged, c.model.get("score", 1.0) if c.model else 1.0, c.id)
        groups: dict[str, list[CellRow]] = {"unidentified": sorted((c for c in live if c.unidentified), key=order)}
        rest = [c for c in live if not c.unidentified]
        for label, _ in Counter(c.label for c in rest).most_common():
            groups[label] = sorted((c for c in rest if c.label == label), key=order)
        return {"groups": [{"label": k, "cells": [self.cell_view(c, name) for c in v]} for k, v in groups.items()
                           if v or k == "unidentified"]}

    def slide_view(self, slide_id: int) -> dict:
        slide = self.store.slide(slide_id)
        case = self.store.case_of_slide(slide_id)
        ids = [s.id for s in self.store.slides(case.id)]
        i = ids.index(slide_id)
        return {"id": slide.id, "case": case.name, "name": slide.name, "width": slide.width, "height": slide.height,
                "image": f"/media/slides/{slide.id}/full.jpg", "preview": f"/media/slides/{slide.id}/preview.jpg",
                "cells": [self.cell_view(c, case.name) for c in self.store.cells(slide_id=slide_id)],
                "prev": ids[i - 1] if i > 0 else None, "next": ids[i + 1] if i + 1 < len(ids) else None}

    def events(self, name: str) -> list[dict]:
        case = self.store.case(self.run_id, name)
        return [{"id": e.id, "kind": e.kind, "who": e.who, "at": e.at.isoformat(), "cell_id": e.cell_id,
                 "before": e.before, "after": e.after, "applied": e.applied, "undone_by": e.undone_by, "note": e.note}
                for e in self.store.events(case.id)]

    # ---------------------------------------------------------------------------------------- writes
    def _answer(self, cell: CellRow) -> dict:
        case = self.store.case_of_slide(cell.slide_id)
        return {"cell": self.cell_view(cell, case.name), "differential": self.differential(self.store.tallies(case.id))}

    def relabel(self, cell_id: int, label: object, *, version: int, who: str) -> dict:
        lab = self.check_label(label)
        return self._answer(self.store.edit(cell_id, "label", who, version, label=lab, answered=True))

    def confirm(self, cell_id: int, *, version: int, who: str) -> dict:
        return self._answer(self.store.edit(cell_id, "confirm", who, version, answered=True))

    def delete(self, cell_id: int, *, version: int, who: str) -> dict:
        return self._answer(self.store.edit(cell_id, "delete", who, version, deleted=True, answered=True))

    def restore(self, cell_id: int, *, version: int, who: str) -> dict:
        return self._answer(self.store.edit(cell_id, "restore", who, version, deleted=False))

    def move(self, cell_id: int, polygon: object, *, version: int, who: str) -> dict:
        cell = self.store.cell(cell_id)
        poly = self.check_polygon(polygon, self.store.slide(cell.slide_id))
        return self._answer(self.store.edit(cell_id, "polygon", who, version, polygon=poly))

    def add(self, slide_id: int, polygon: object, label: object, *, who: str) -> dict:
        slide = self.store.slide(slide_id)
        poly = self.check_polygon(polygon, slide)
        return self._answer(self.store.add_cell(slide_id, who, self.check_label(label), poly))

    def undo(self, name: str, *, who: str) -> dict:
        case = self.store.case(self.run_id, name)
        cell, ev = self.store.undo(case.id, who)
        return {**self._answer(cell), "undone": {"id": ev.id, "kind": ev.kind, "cell_id": ev.cell_id}}

    def sign(self, name: str, *, who: str) -> dict:
        case = self.store.case(self.run_id, name)
        left = sum(c.unidentified for c in self.store.tallies(case.id))
        return self.case_summary(self.store.sign(case.id, who, left))

    def reopen(self, name: str, reason: str, *, who: str) -> dict:
        if not reason or not reason.strip():
            raise ValidationError("reopening a signed case needs a reason")
        case = self.store.case(self.run_id, name)
        return self.case_summary(self.store.reopen(case.id, who, reason.strip()[:1000]))


def conflict_body(err: ConflictError, run: ReviewRun) -> dict:
    body: dict = {"detail": str(err)}
    if err.current is not None:
        body["current"] = run.cell_view(err.current, run.store.case_of_slide(err.current.slide_id).name)
    return body


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))
