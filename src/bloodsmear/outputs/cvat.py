"""CVAT-for-images XML of the predictions (the pre-annotation the paper's future-scope section asks
for), written with the Foundation CVAT writer so that `bloodsmear.data.cvat.read_cvat` and CVAT's
"CVAT for images 1.1" import read it back. Each cell is a polygon labelled with its final class at the
chosen class `level` ("group", default, or "fine"; see `outputs.coco`) and a `score` attribute; a
group-only label (ig, neutrophil) carries ``level=group``, so that the reader does not take "neutrophil"
for RV-PBS's segmented neutrophil. Images are named by their path relative to the input root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from bloodsmear.classes import label_at
from bloodsmear.data.cvat import write_cvat
from bloodsmear.outputs.coco import to_annotated_images
from bloodsmear.types import SlideResult


def write_cvat_xml(dest: str | Path, results: Sequence[SlideResult], classes: Iterable[str] = (), *,
                   level: str = "group") -> Path:
    """Write `annotations.xml` atomically at class `level`; the task's labels are `classes` plus every
    label used, at that level."""
    labels = sorted({label_at(x, level) for x in classes}
                    | {label_at(c.label, level) for r in results for c in r.cells})
    return write_cvat(to_annotated_images(results, level=level), dest, root=Path("."), labels=labels)
