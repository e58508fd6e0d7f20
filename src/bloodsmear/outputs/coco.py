"""COCO instances JSON of the predictions, loadable by pycocotools (`COCO(path)`), so results can be
scored with COCOeval; written with the Foundation COCO writer (`bloodsmear.data.coco.to_coco_dict`).
Images are named by their path relative to the input root; categories are the pipeline's classes at the
chosen class `level` (ids from 1, sorted by name): "group" (default: ig, neutrophil, basophil, ...) or
"fine" (band_cell, segmented_neutrophil, myelocyte, ...; a cell the classifier answered with a group only
keeps the group's name, and that category is marked ``"level": "group"``; every category carries the
level its name belongs to, fine, group or both, and ``info["level"]`` the file's). Every annotation
also carries the cell's `fine_class` (null for a group-only answer) and `group`, as results.json. It
holds a polygon `segmentation`, an xywh `bbox`, `area` (the cell's `Cell.area`, as in results.json) and `score` = detection score x final class score, with both
factors kept as `detection_score` and `class_score`, and the `review` flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from bloodsmear.classes import cell_levels, is_known, label_at, level_of
from bloodsmear.data.coco import to_coco_dict
from bloodsmear.io import write_json_atomic
from bloodsmear.types import AnnotatedImage, Cell, SlideResult


def to_annotated_images(results: Sequence[SlideResult], *, detection_weighted: bool = False,
                        level: str | None = None) -> list[AnnotatedImage]:
    """SlideResults as canonical annotated images (path = the relative image name), labels at class
    `level` (`classes.label_at`; None: as they are). Scores are the final class scores, or detection x
    class scores when `detection_weighted`."""
    def name(label: str) -> str:
        return label if level is None else label_at(label, level)

    def score(c: Cell) -> float | None:
        det = c.attributes.get("detection_score")
        if not detection_weighted or c.score is None or det is None:
            return c.score
        return float(det) * float(c.score)

    return [
        AnnotatedImage(path=Path(r.name), width=r.width, height=r.height, source="bloodsmear",
                       cells=[Cell(label=name(c.label), polygon=c.polygon, box=c.box, score=score(c))
                              for c in r.cells])
        for r in results
    ]


def to_coco_results(results: Sequence[SlideResult], classes: Iterable[str] = (), *, level: str = "group") -> dict:
    """A COCO instances dict (images, annotations with scores, categories) at class `level`."""
    names = sorted({label_at(x, level) for x in classes}
                   | {label_at(c.label, level) for r in results for c in r.cells})
    d = to_coco_dict(to_annotated_images(results, detection_weighted=True, level=level), names, root=Path("."),
                     info={"description": "bloodsmear analyze predictions", "version": "1.0", "level": level})
    for cat in d["categories"]:
        cat["level"] = level_of(cat["name"]) if is_known(cat["name"]) else None
    cells = [c for r in results for c in r.cells]
    for ann, c in zip(d["annotations"], cells):
        det = c.attributes.get("detection_score")
        levels = cell_levels(c.label)
        ann.update(area=round(float(c.area), 2), score=round(ann.get("score", 1.0), 6),
                   detection_score=None if det is None else round(float(det), 6),
                   class_score=None if c.score is None else round(float(c.score), 6),
                   review=bool(c.attributes.get("review", False)),
                   fine_class=levels["fine_label"], group=levels["group_label"])
    return d


def write_coco_results(dest: str | Path, results: Sequence[SlideResult], classes: Iterable[str] = (), *,
                       level: str = "group") -> Path:
    return write_json_atomic(dest, to_coco_results(results, classes, level=level), indent=None)
