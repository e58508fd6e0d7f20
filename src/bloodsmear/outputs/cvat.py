"""CVAT-for-images XML of the predictions (the pre-annotation the paper's future-scope section asks
for), written with the Foundation CVAT writer so that `bloodsmear.data.cvat.read_cvat` and CVAT's
"CVAT for images 1.1" import read it back. Each cell is a polygon labelled with its final class and a
`score` attribute; images are named by their path relative to the input root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from bloodsmear.data.cvat import write_cvat
from bloodsmear.outputs.coco import to_annotated_images
from bloodsmear.types import SlideResult


def write_cvat_xml(dest: str | Path, results: Sequence[SlideResult], classes: Iterable[str] = ()) -> Path:
    """Write `annotations.xml` atomically; the task's labels are `classes` plus every label used."""
    labels = sorted(set(classes) | {c.label for r in results for c in r.cells})
    return write_cvat(to_annotated_images(results), dest, root=Path("."), labels=labels)
