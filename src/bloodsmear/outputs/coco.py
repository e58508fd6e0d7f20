"""COCO instances JSON of the predictions, loadable by pycocotools (`COCO(path)`), so results can be
scored with COCOeval; written with the Foundation COCO writer (`bloodsmear.data.coco.to_coco_dict`).
Images are named by their path relative to the input root; categories are the pipeline's classes (ids
from 1, sorted by name); every annotation holds a polygon `segmentation`, an xywh `bbox`, `area` (the
cell's `Cell.area`, as in results.json) and `score` = detection score x final class score, with both
factors kept as `detection_score` and `class_score`, and the `review` flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from bloodsmear.data.coco import to_coco_dict
from bloodsmear.io import write_json_atomic
from bloodsmear.types import AnnotatedImage, Cell, SlideResult


def to_annotated_images(results: Sequence[SlideResult], *, detection_weighted: bool = False) -> list[AnnotatedImage]:
    """SlideResults as canonical annotated images (path = the relative image name). Scores are the final
    class scores, or detection x class scores when `detection_weighted`."""

    def score(c: Cell) -> float | None:
        det = c.attributes.get("detection_score")
        if not detection_weighted or c.score is None or det is None:
            return c.score
        return float(det) * float(c.score)

    return [
        AnnotatedImage(path=Path(r.name), width=r.width, height=r.height, source="bloodsmear",
                       cells=[Cell(label=c.label, polygon=c.polygon, box=c.box, score=score(c)) for c in r.cells])
        for r in results
    ]


def to_coco_results(results: Sequence[SlideResult], classes: Iterable[str] = ()) -> dict:
    """A COCO instances dict (images, annotations with scores, categories)."""
    names = sorted(set(classes) | {c.label for r in results for c in r.cells})
    d = to_coco_dict(to_annotated_images(results, detection_weighted=True), names, root=Path("."),
                     info={"description": "bloodsmear analyze predictions", "version": "1.0"})
    cells = [c for r in results for c in r.cells]
    for ann, c in zip(d["annotations"], cells):
        det = c.attributes.get("detection_score")
        ann.update(area=round(float(c.area), 2), score=round(ann.get("score", 1.0), 6),
                   detection_score=None if det is None else round(float(det), 6),
                   class_score=None if c.score is None else round(float(c.score), 6),
                   review=bool(c.attributes.get("review", False)))
    return d


def write_coco_results(dest: str | Path, results: Sequence[SlideResult], classes: Iterable[str] = ()) -> Path:
    return write_json_atomic(dest, to_coco_results(results, classes), indent=None)
