"""What `bloodsmear evaluate --errors DIR` writes: every detection error of a run, for a person to review.

An annotator checking a dataset (or a pipeline) wants the cases, not only the figures: the predicted
WBCs no annotation matches (a false positive, or a WBC the annotation missed), the annotated WBCs no
prediction matches, and - on one-WBC-per-field sets such as LISC - the fields with no WBC or more than
one. `detection_errors` lists them per image (pure); `draw_errors` returns a new overlay image (the input
is never modified); `write_errors` writes `errors.csv` (one row per error, sorted by image) and one
overlay PNG per image with an error, named by the image's path relative to the dataset root:

    green   annotated WBC box, matched        yellow  annotated WBC box, missed
    blue    predicted WBC outline, matched    red     predicted WBC outline, unmatched (score beside it)
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from bloodsmear.io import read_image, write_image_atomic, write_text_atomic
from bloodsmear.preprocess.resize import resize_bilinear
from bloodsmear.types import AnnotatedImage, Cell

#: `DetectionError.kind` values.
UNMATCHED_PREDICTION = "unmatched_prediction"
MISSED_WBC = "missed_wbc"
NO_WBC_FOUND = "no_wbc_found"
EXTRA_WBC = "extra_wbc"

GREEN, YELLOW, BLUE, RED = (0, 170, 0), (230, 190, 0), (0, 90, 255), (230, 0, 0)


@dataclass(frozen=True)
class DetectionError:
    """One error of one image (box in original pixels; score and class of the prediction, if any)."""

    image: str  # path relative to the dataset root (posix)
    kind: str
    x1: float | None = None
    y1: float | None = None
    x2: float | None = None
    y2: float | None = None
    score: float | None = None
    predicted_class: str | None = None
    annotated_class: str | None = None


def _box(cell: Cell) -> dict:
    x1, y1, x2, y2 = (round(float(v), 1) for v in cell.box)  # type: ignore[union-attr]
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2}


def detection_errors(name: str, gt: Sequence[Cell], pred: Sequence[Cell], matches: Sequence[tuple[int, int, float]],
                     *, one_per_field: bool = False) -> list[DetectionError]:
    """The errors of one image. Boxes mode: unmatched predictions and missed annotated WBCs (`matches` =
    `match_cells(gt, pred)`). `one_per_field` (no boxes, one WBC per field): `no_wbc_found` when nothing
    was predicted, else one `extra_wbc` row per prediction after the highest-scoring one."""
    out: list[DetectionError] = []
    if one_per_field:
        if not pred:
            return [DetectionError(name, NO_WBC_FOUND)]
        ranked = sorted(pred, key=lambda c: -(c.score or 0.0))
        return [DetectionError(name, EXTRA_WBC, **_box(c), score=c.score, predicted_class=c.attributes.get("class"))
                for c in ranked[1:]]
    hit_gt = {i for i, _, _ in matches}
    hit_pred = {j for _, j, _ in matches}
    for j, c in enumerate(pred):
        if j not in hit_pred:
            out.append(DetectionError(name, UNMATCHED_PREDICTION, **_box(c), score=c.score,
                                      predicted_class=c.attributes.get("class")))
    for i, c in enumerate(gt):
        if i not in hit_gt:
            out.append(DetectionError(name, MISSED_WBC, **_box(c), annotated_class=c.subclass))
    return out


def draw_errors(rgb: np.ndarray, gt: Sequence[Cell], pred: Sequence[Cell],
                matches: Sequence[tuple[int, int, float]]) -> np.ndarray:
    """A new RGB image: annotated boxes (green matched / yellow missed), predicted outlines (blue matched /
    red unmatched, with the detection score)."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    t = max(1, round(max(out.shape[:2]) / 400))
    hit_gt = {i for i, _, _ in matches}
    hit_pred = {j for _, j, _ in matches}
    for i, c in enumerate(gt):
        if c.box is not None:
            x1, y1, x2, y2 = (int(round(v)) for v in c.box)
            cv2.rectangle(out, (x1, y1), (x2, y2), GREEN if i in hit_gt else YELLOW, t)
    for j, c in enumerate(pred):
        colour = BLUE if j in hit_pred else RED
        if c.polygon is not None and len(c.polygon) >= 3:
            cv2.polylines(out, [np.round(c.polygon).astype(np.int32).reshape(-1, 1, 2)], True, colour, t)
        elif c.box is not None:
            x1, y1, x2, y2 = (int(round(v)) for v in c.box)
            cv2.rectangle(out, (x1, y1), (x2, y2), colour, t)
        if c.box is not None and c.score is not None:
            org = (int(c.box[0]), max(12 * t, int(c.box[1]) - 3 * t))
            cv2.putText(out, f"{c.score:.2f}", org, cv2.FONT_HERSHEY_SIMPLEX, 0.45 * t, colour, t, cv2.LINE_AA)
    return out


def errors_csv(errors: Sequence[DetectionError]) -> str:
    """CSV text of the errors (header: the `DetectionError` fields), sorted by image then kind."""
    buf = io.StringIO()
    cols = list(DetectionError.__dataclass_fields__)
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for e in sorted(errors, key=lambda e: (e.image, e.kind)):
        w.writerow({k: ("" if v is None else v) for k, v in asdict(e).items()})
    return buf.getvalue()


def write_errors(out_dir: str | Path, root: Path, items: Sequence[tuple[AnnotatedImage, list[Cell], list[Cell],
                                                                        list[tuple[int, int, float]], bool]]
                 ) -> list[DetectionError]:
    """Write `errors.csv` and an overlay per image with an error into `out_dir`; `items` = (annotated image
    with the GT WBCs, GT cells, predicted cells, matches, one_per_field) per image. Returns the errors."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    errors: list[DetectionError] = []
    for im, gt, pred, matches, one in items:
        try:
            name = Path(im.path).relative_to(root).as_posix()
        except ValueError:
            name = Path(im.path).name
        errs = detection_errors(name, gt, pred, matches, one_per_field=one)
        if not errs:
            continue
        errors.extend(errs)
        rgb = read_image(im.path)
        if rgb.shape[:2] != (im.height, im.width):
            rgb = resize_bilinear(rgb, (im.width, im.height))
        write_image_atomic(out / "overlays" / (Path(name).with_suffix("").as_posix() + ".png"),
                           draw_errors(rgb, gt, pred, matches))
    write_text_atomic(out / "errors.csv", errors_csv(errors))
    return errors
