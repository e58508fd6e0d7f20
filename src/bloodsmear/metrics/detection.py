"""Detection and instance-segmentation metrics of predicted cells against ground truth.

Pure functions over lists of `bloodsmear.types.AnnotatedImage` (ground truth and predictions, paired by
image path, then by file name) that return typed dataclasses:

- `coco_ap`: COCO-style AP, AP50, AP75 for boxes ("bbox") or masks ("segm") via pycocotools' COCOeval,
  with the COCO dicts built in memory (ids from 1);
- `matched_prf`: per-class precision / recall / F1 of cells matched one-to-one at IoU >= 0.5, greedily
  by descending score;
- `counting_errors`: |#pred - #gt| per image;
- `nucleus_coverage`: the fraction of nucleus-mask pixels inside the union of predicted WBC masks
  (BCCD's nucleus masks);
- `evaluate_detection`: all of the above in one `DetectionReport`.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bloodsmear.classes import PBC_CLASSES, RVPBS_CLASSES
from bloodsmear.data.coco import to_coco_dict
from bloodsmear.errors import InputError
from bloodsmear.geometry import box_iou_matrix, paste_mask, polygon_to_mask
from bloodsmear.types import AnnotatedImage, Cell

#: Every label that is a white blood cell: "wbc" and every WBC type (for class-agnostic WBC scoring).
WBC_LABELS: tuple[str, ...] = tuple(sorted({"wbc", *RVPBS_CLASSES, *PBC_CLASSES} - {"erythroblast", "platelet"}))

__all__ = [
    "WBC_LABELS", "APResult", "ClassPRF", "CountingResult", "CoverageResult", "DetectionReport",
    "cell_full_mask", "coco_ap", "matched_prf", "match_cells", "counting_errors",
    "nucleus_coverage", "evaluate_detection", "pair_images",
]


@dataclass
class APResult:
    """COCO-style average precision (IoU 0.50:0.95, 0.50, 0.75) and recall at 100 detections.

    Values are -1.0 where undefined (no ground truth), as COCOeval reports them.
    """

    iou_type: str  # "bbox" or "segm"
    ap: float
    ap50: float
    ap75: float
    ar100: float
    n_gt: int
    n_pred: int


@dataclass
class ClassPRF:
    label: str
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float


@dataclass
class CountingResult:
    per_image: dict[str, int]  # image name -> |#pred - #gt|
    mean_abs_error: float
    max_abs_error: int
    exact_fraction: float  # images whose count is exactly right


@dataclass
class CoverageResult:
    nucleus_pixels: int
    covered_pixels: int
    fraction: float  # covered / nucleus pixels (NaN when there are no nucleus pixels)
    per_image: dict[str, float] = field(default_factory=dict)


@dataclass
class DetectionReport:
    box: APResult
    mask: APResult | None
    per_class: dict[str, ClassPRF]
    counting: CountingResult
    coverage: CoverageResult | None = None
    n_images: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def figures(self, prefix: str = "wbc") -> dict[str, float]:
        """Flat headline figures: `<prefix>_box_ap50`, `<prefix>_box_ap`, `<prefix>_mask_ap`, ..."""
        out = {
            f"{prefix}_box_ap": self.box.ap, f"{prefix}_box_ap50": self.box.ap50, f"{prefix}_box_ap75": self.box.ap75,
        }
        if self.mask is not None:
            out.update({f"{prefix}_mask_ap": self.mask.ap, f"{prefix}_mask_ap50": self.mask.ap50,
                        f"{prefix}_mask_ap75": self.mask.ap75})
        for lab, r in self.per_class.items():
            out.update({f"{lab}_precision": r.precision, f"{lab}_recall": r.recall, f"{lab}_f1": r.f1})
        out["count_mae"] = self.counting.mean_abs_error
        if self.coverage is not None:
            out["nucleus_coverage"] = self.coverage.fraction
        return out


# --------------------------------------------------------------------------- geometry helpers


def _ibox(box: Sequence[float]) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    return int(round(x1)), int(round(y1)), int(round(x2)), int(round(y2))


def cell_full_mask(cell: Cell, height: int, width: int) -> np.ndarray:
    """The cell as a full-image boolean mask: its mask (pasted at the rounded box origin), else its
    polygon filled, else its box filled."""
    if cell.mask is not None:
        if cell.mask_full:
            return paste_mask(cell.mask, (0, 0), (height, width))
        if cell.box is None:
            raise ValueError("a cell mask that covers its box needs a box")
        x0, y0, _, _ = _ibox(cell.box)
        return paste_mask(cell.mask, (x0, y0), (height, width))
    if cell.polygon is not None and len(cell.polygon) >= 3:
        return polygon_to_mask(cell.polygon, (height, width))
    if cell.box is not None:
        out = np.zeros((height, width), dtype=bool)
        x1, y1, x2, y2 = _ibox(cell.box)
        out[max(0, y1):max(0, y2), max(0, x1):max(0, x2)] = True
        return out
    raise ValueError("cell has neither mask, polygon nor box")


def pair_images(gt: Sequence[AnnotatedImage], pred: Sequence[AnnotatedImage]) -> list[tuple[AnnotatedImage, AnnotatedImage]]:
    """Pair each ground-truth image with its prediction: same path, else same file name, else an empty
    prediction (every GT cell then counts as missed)."""
    by_path = {str(p.path): p for p in pred}
    by_name: dict[str, AnnotatedImage] = {}
    for p in pred:
        by_name.setdefault(p.path.name, p)
    pairs = []
    for g in gt:
        p = by_path.get(str(g.path)) or by_name.get(g.path.name)
        if p is None:
            p = AnnotatedImage(path=g.path, width=g.width, height=g.height, cells=[])
        pairs.append((g, p))
    return pairs


def _label_fn(labels: Sequence[str] | None, class_agnostic: bool) -> Callable[[Cell], str | None]:
    """Cell -> the class it is scored as (None: left out). Agnostic: every kept cell is one class,
    named after the only kept label, "wbc" when that is among them, else "object"."""
    keep = None if labels is None else set(labels)
    if class_agnostic:
        if keep is not None and len(keep) == 1:
            name = next(iter(keep))
        else:
            name = "wbc" if keep is not None and "wbc" in keep else "object"
        return lambda c: name if keep is None or c.label in keep else None
    return lambda c: c.label if keep is None or c.label in keep else None


# --------------------------------------------------------------------------- COCO AP


def _scored_copy(im: AnnotatedImage, label_of, iou_type: str, *, is_pred: bool) -> AnnotatedImage:
    """`im` with only the kept cells, relabelled as scored; for "segm" a box-only cell becomes its box
    polygon; a prediction without a score gets 1.0."""
    cells = []
    for c in im.cells:
        lab = label_of(c)
        if lab is None:
            continue
        poly = c.polygon
        if iou_type == "segm" and c.mask is None and (poly is None or len(poly) < 3) and c.box is not None:
            x1, y1, x2, y2 = c.box
            poly = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=float)
        score = (1.0 if c.score is None else float(c.score)) if is_pred else None
        cells.append(Cell(label=lab, polygon=poly, box=c.box, mask=c.mask, mask_full=c.mask_full, score=score))
    return AnnotatedImage(path=im.path, width=im.width, height=im.height, cells=cells)


def _to_coco(pairs, iou_type: str, label_of) -> tuple[dict, list[dict], list[str]]:
    """In-memory COCO ground-truth dict and result list (ids from 1), via `bloodsmear.data.coco`."""
    gts = [_scored_copy(g, label_of, iou_type, is_pred=False) for g, _ in pairs]
    preds = [_scored_copy(p, label_of, iou_type, is_pred=True) for _, p in pairs]
    cats = sorted({c.label for im in gts + preds for c in im.cells})
    gt_dict = to_coco_dict(gts, cats)
    dets = to_coco_dict(preds, cats)["annotations"]
    for d in dets:
        d.pop("id", None)
    return gt_dict, dets, cats


def coco_ap(
    gt: Sequence[AnnotatedImage],
    pred: Sequence[AnnotatedImage],
    *,
    iou_type: str = "bbox",
    labels: Sequence[str] | None = None,
    class_agnostic: bool = False,
) -> APResult:
    """COCO-style AP / AP50 / AP75 (mean over classes) via pycocotools COCOeval.

    `labels` restricts the evaluation to those classes; `class_agnostic` treats every kept cell as one
    class (e.g. any WBC type predicted as a WBC).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', not {iou_type!r}")
    pairs = pair_images(gt, pred)
    gt_dict, dets, _ = _to_coco(pairs, iou_type, _label_fn(labels, class_agnostic))
    n_gt, n_pred = len(gt_dict["annotations"]), len(dets)
    if n_gt == 0:
        return APResult(iou_type, -1.0, -1.0, -1.0, -1.0, 0, n_pred)
    if n_pred == 0:
        return APResult(iou_type, 0.0, 0.0, 0.0, 0.0, n_gt, 0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_dict
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    return APResult(iou_type, float(s[0]), float(s[1]), float(s[2]), float(s[8]), n_gt, n_pred)


# --------------------------------------------------------------------------- matching, P/R/F1


def match_cells(
    gt_cells: Sequence[Cell], pred_cells: Sequence[Cell], *, iou_threshold: float = 0.5,
    use_masks: bool = False, shape: tuple[int, int] | None = None,
) -> list[tuple[int, int, float]]:
    """One-to-one matches (gt index, pred index, IoU): predictions in descending score order each take
    the unmatched GT cell of highest IoU >= `iou_threshold`. Masks need `shape` = (height, width)."""
    if not gt_cells or not pred_cells:
        return []
    if use_masks:
        if shape is None:
            raise ValueError("mask matching needs the image shape")
        gm = [cell_full_mask(c, *shape) for c in gt_cells]
        pm = [cell_full_mask(c, *shape) for c in pred_cells]

        def iou(i: int, j: int) -> float:
            inter = np.count_nonzero(gm[i] & pm[j])
            union = np.count_nonzero(gm[i] | pm[j])
            return inter / union if union else 0.0
    else:
        ious = box_iou_matrix([c.box for c in gt_cells], [c.box for c in pred_cells])

        def iou(i: int, j: int) -> float:
            return float(ious[i, j])

    order = sorted(range(len(pred_cells)), key=lambda j: -(pred_cells[j].score or 0.0))
    taken: set[int] = set()
    out = []
    for j in order:
        best, best_i = iou_threshold, -1
        for i in range(len(gt_cells)):
            if i in taken:
                continue
            v = iou(i, j)
            if v >= best:
                best, best_i = v, i
        if best_i >= 0:
            taken.add(best_i)
            out.append((best_i, j, float(best)))
    return out


def _prf(label: str, tp: int, fp: int, fn: int) -> ClassPRF:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return ClassPRF(label, tp, fp, fn, p, r, f)


def matched_prf(
    gt: Sequence[AnnotatedImage],
    pred: Sequence[AnnotatedImage],
    *,
    iou_threshold: float = 0.5,
    labels: Sequence[str] | None = None,
    class_agnostic: bool = False,
    use_masks: bool = False,
) -> dict[str, ClassPRF]:
    """Per-class precision / recall / F1 of cells matched at IoU >= `iou_threshold` (greedy by score,
    within each class). Class-agnostic matching gives one entry."""
    label_of = _label_fn(labels, class_agnostic)
    counts: dict[str, list[int]] = {}
    for g, p in pair_images(gt, pred):
        gl = [c for c in g.cells if label_of(c) is not None]
        pl = [c for c in p.cells if label_of(c) is not None]
        for lab in sorted({label_of(c) for c in gl + pl}):  # type: ignore[type-var]
            gc = [c for c in gl if label_of(c) == lab]
            pc = [c for c in pl if label_of(c) == lab]
            m = match_cells(gc, pc, iou_threshold=iou_threshold, use_masks=use_masks, shape=(g.height, g.width))
            tp = len(m)
            acc = counts.setdefault(lab, [0, 0, 0])  # type: ignore[arg-type]
            acc[0] += tp
            acc[1] += len(pc) - tp
            acc[2] += len(gc) - tp
    return {lab: _prf(lab, *v) for lab, v in sorted(counts.items())}


def counting_errors(
    gt: Sequence[AnnotatedImage], pred: Sequence[AnnotatedImage], *,
    labels: Sequence[str] | None = None, class_agnostic: bool = True,
) -> CountingResult:
    """|#pred - #gt| per image, over the kept labels."""
    label_of = _label_fn(labels, class_agnostic)
    per: dict[str, int] = {}
    for g, p in pair_images(gt, pred):
        ng = sum(label_of(c) is not None for c in g.cells)
        npred = sum(label_of(c) is not None for c in p.cells)
        key = g.path.name if g.path.name not in per else str(g.path)
        per[key] = abs(npred - ng)
    vals = list(per.values())
    if not vals:
        return CountingResult({}, 0.0, 0, 1.0)
    return CountingResult(per, float(np.mean(vals)), int(max(vals)), float(np.mean([v == 0 for v in vals])))


def nucleus_coverage(
    pred: Sequence[AnnotatedImage],
    nucleus_masks: Sequence[np.ndarray | str | Path | None] | None = None,
    *,
    labels: Sequence[str] | None = None,
) -> CoverageResult:
    """Fraction of nucleus-mask pixels inside the union of the predicted cell masks.

    `nucleus_masks[i]` belongs to `pred[i]` (an array, a PNG path, or None to skip); by default each
    prediction's `nucleus_mask_path` is read. Mask sizes that differ from the prediction's image size
    are resized (nearest neighbour)."""
    keep = None if labels is None else set(labels)
    total = covered = 0
    per: dict[str, float] = {}
    for i, p in enumerate(pred):
        src = nucleus_masks[i] if nucleus_masks is not None else p.nucleus_mask_path
        if src is None:
            continue
        if isinstance(src, (str, Path)):
            nm = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
            if nm is None:
                raise InputError(src, "not a readable nucleus mask")
        else:
            nm = np.asarray(src)
        nm = nm > 0
        if nm.shape != (p.height, p.width):
            nm = cv2.resize(nm.astype(np.uint8), (p.width, p.height), interpolation=cv2.INTER_NEAREST) > 0
        union = np.zeros((p.height, p.width), dtype=bool)
        for c in p.cells:
            if keep is None or c.label in keep:
                union |= cell_full_mask(c, p.height, p.width)
        n, k = int(nm.sum()), int((nm & union).sum())
        total += n
        covered += k
        if n:
            per[p.path.name] = k / n
    return CoverageResult(total, covered, covered / total if total else float("nan"), per)


def evaluate_detection(
    gt: Sequence[AnnotatedImage],
    pred: Sequence[AnnotatedImage],
    *,
    labels: Sequence[str] | None = WBC_LABELS,
    class_agnostic: bool = True,
    masks: bool = True,
    iou_threshold: float = 0.5,
    nucleus_masks: Sequence[np.ndarray | str | Path | None] | None = None,
) -> DetectionReport:
    """Box AP, mask AP (when `masks` and the GT has masks or polygons), matched P/R/F1, counting error
    and, for images with nucleus masks (`nucleus_masks` or GT `nucleus_mask_path`), nucleus coverage."""
    box = coco_ap(gt, pred, iou_type="bbox", labels=labels, class_agnostic=class_agnostic)
    mask = None
    if masks and any(c.mask is not None or c.polygon is not None for g in gt for c in g.cells):
        mask = coco_ap(gt, pred, iou_type="segm", labels=labels, class_agnostic=class_agnostic)
    prf = matched_prf(gt, pred, iou_threshold=iou_threshold, labels=labels, class_agnostic=class_agnostic)
    cnt = counting_errors(gt, pred, labels=labels, class_agnostic=class_agnostic)
    cov = None
    pairs = pair_images(gt, pred)
    if nucleus_masks is not None or any(g.nucleus_mask_path for g, _ in pairs):
        srcs = list(nucleus_masks) if nucleus_masks is not None else [g.nucleus_mask_path for g, _ in pairs]
        cov = nucleus_coverage([p for _, p in pairs], srcs, labels=labels)
    return DetectionReport(box, mask, prf, cnt, cov, n_images=len(pairs))
