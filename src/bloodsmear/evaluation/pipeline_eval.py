"""`bloodsmear evaluate`: a pipeline (or a segmenter alone) against an annotated dataset.

Figures (flat, in `report["figures"]`):
- where the dataset has WBC boxes/polygons (BCCD, CVAT, COCO): `wbc_box_ap`, `wbc_box_ap50`,
  `wbc_box_ap75`, `wbc_mask_ap*` (only where the ground truth has masks or polygons, else None),
  `wbc_precision`/`wbc_recall`/`wbc_f1` of WBCs matched at box IoU >= 0.5, `count_mae`,
  `count_exact_fraction`, `nucleus_coverage` (BCCD nucleus masks);
- where the dataset is one WBC per field with a class per folder (LISC): `one_wbc_found_rate` (at least
  one WBC predicted), `no_extra_wbc_rate` (at most one), `exactly_one_rate`;
- class figures where ground-truth classes exist: per-class precision / recall / F1 of matched cells
  (BCCD: the subtype of each matched box; LISC: the folder class against the top-scoring cell's final
  class), `class_macro_f1`, `class_accuracy`. Labels are compared on the paper's common classes
  (band_cell counts as neutrophil).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from bloodsmear.classes import canonical, is_known, to_common
from bloodsmear.data import load_dataset
from bloodsmear.errors import InputError, UnknownLabelError
from bloodsmear.evaluation.errors import write_errors
from bloodsmear.inference.pipeline import Pipeline, WbcOnly
from bloodsmear.inference.run_adapt import adapted_for_run
from bloodsmear.inference.scale_plan import plan_for
from bloodsmear.io import read_image, read_json
from bloodsmear.metrics.detection import WBC_LABELS, evaluate_detection, match_cells
from bloodsmear.preprocess.resize import resize_by, resize_by_to
from bloodsmear.types import AnnotatedImage, Cell, Dataset

log = logging.getLogger(__name__)


def select_split(ds: Dataset, split: str | None, manifest: str | Path | None = None) -> tuple[list[AnnotatedImage], str]:
    """The images of `split` (default: "test" where the dataset has an official split, else all).

    With `manifest` (a split manifest JSON, e.g. a model folder's split.json), the split comes from it
    (default: its "test" part), matched on paths relative to the dataset root, so a model is scored on
    images it never saw."""
    if manifest is not None:
        try:
            parts = read_json(manifest)["splits"]
        except (OSError, ValueError, KeyError) as e:
            raise InputError(manifest, f"not a readable split manifest ({e})") from None
        name = split or "test"
        if name not in parts:
            raise InputError(manifest, f"manifest has no split {name!r} (splits: {', '.join(sorted(parts))})")
        rels = {(e["path"] if isinstance(e, dict) else str(e)) for e in parts[name]}
        sel = [im for im in ds.images if Path(im.path).relative_to(ds.root).as_posix() in rels]
        if len(sel) < len(rels):
            log.warning("%d of the manifest's %d %s images are not in %s", len(rels) - len(sel), len(rels), name,
                        ds.root)
        return sel, f"{name} of {Path(manifest).name}"
    if split is None:
        split = "test" if "test" in ds.splits else "all"
    if split == "all":
        return list(ds.images), split
    if split not in ds.splits:
        raise InputError(ds.root, f"dataset has no split {split!r} (splits: {', '.join(sorted(ds.splits)) or 'none'})")
    stems = set(ds.splits[split])
    return [im for im in ds.images if im.path.stem in stems or im.path.name in stems], split


def _rescale_image(im: AnnotatedImage, f: float) -> AnnotatedImage:
    cells = [Cell(label=c.label, subclass=c.subclass, score=c.score,
                  polygon=None if c.polygon is None else c.polygon * f,
                  box=None if c.box is None else tuple(v * f for v in c.box)) for c in im.cells]
    return AnnotatedImage(path=im.path, width=max(1, round(im.width * f)), height=max(1, round(im.height * f)),
                          cells=cells, source=im.source, label=im.label, subclass=im.subclass,
                          nucleus_mask_path=im.nucleus_mask_path)


def _norm(label: str | None) -> str | None:
    if label is None or not is_known(label):
        return label
    try:
        return to_common(label) or canonical(label)
    except UnknownLabelError:
        return label


def _gt_class(cell: Cell) -> str | None:
    """A GT WBC's class: its label when it names a type, else its subclass (BCCD subtype), else None."""
    for lab in (cell.label, cell.subclass):
        if lab and lab != "wbc" and is_known(lab):
            return _norm(lab)
    return None


def _class_prf(pairs: list[tuple[str, str]]) -> dict:
    if not pairs:
        return {"per_class": {}, "class_macro_f1": None, "class_accuracy": None, "n_classified": 0}
    y_true, y_pred = zip(*pairs)
    labels = sorted(set(y_true))
    p, r, f, n = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per = {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(n[i])}
           for i, lab in enumerate(labels)}
    return {"per_class": per, "class_macro_f1": float(np.mean(f)),
            "class_accuracy": float(np.mean([a == b for a, b in pairs])), "n_classified": len(pairs)}


def _load_pipeline(pipeline, segmenter):
    if segmenter is not None:
        return Pipeline.segmenter_only(segmenter)
    if pipeline is None or isinstance(pipeline, (str, Path)):
        return Pipeline.from_config(pipeline)
    return pipeline


def evaluate_pipeline(dataset: str | Path | Dataset, *, pipeline=None, segmenter: str | None = None,
                      split: str | None = None, fmt: str = "auto", scale: str | float = "auto",
                      rescale: float = 1.0, limit: int | None = None, manifest: str | Path | None = None,
                      errors_dir: str | Path | None = None) -> dict:
    """Run the pipeline over the dataset's split and score it (see the module doc). With `errors_dir`,
    every detection error is written there for review (`bloodsmear.evaluation.errors`)."""
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, fmt)
    images, split = select_split(ds, split, manifest)
    if limit:
        images = images[:limit]
    if not images:
        raise InputError(ds.root, f"no images in split {split!r}")
    if rescale <= 0:
        raise InputError(None, f"--rescale must be > 0, not {rescale}")
    pipe = _load_pipeline(pipeline, segmenter)
    gts, preds, skipped = [], [], []
    t0 = time.perf_counter()
    plan = _plan_scales(pipe, images, scale, rescale)
    if getattr(getattr(pipe, "config", None), "adapt_bn", False) and rescale == 1.0:  # as `analyze --adapt-bn`
        pipe = adapted_for_run(pipe, [im.path for im in images], plan, scale)
    for im in images:
        try:
            rgb = read_image(im.path)
        except InputError as e:
            log.warning("skipped %s: %s", im.path, e.problem)
            skipped.append(str(im.path))
            continue
        gt = im
        if rgb.shape[:2] != (im.height, im.width) and im.width and im.height:
            log.debug("%s: annotated size %sx%s differs from the image", im.path, im.width, im.height)
        if rescale != 1.0:
            gt = _rescale_image(im, rescale)
            rgb = resize_by_to(rgb, rescale, (gt.width, gt.height))  # the plan's rule (resize_by), at the GT's size
        else:
            gt = AnnotatedImage(path=im.path, width=rgb.shape[1], height=rgb.shape[0], cells=im.cells,
                                source=im.source, label=im.label, subclass=im.subclass,
                                nucleus_mask_path=im.nucleus_mask_path)
        res = pipe.run(rgb, im.path.name, scale=plan.get(im.path, scale), path=im.path)
        gts.append(gt)
        preds.append(res)
    seconds = time.perf_counter() - t0
    pred_imgs = [AnnotatedImage(path=g.path, width=g.width, height=g.height, cells=[
        Cell(label="wbc", polygon=c.polygon, box=c.box, score=c.attributes.get("detection_score", c.score),
             attributes={"class": c.label}) for c in r.cells]) for g, r in zip(gts, preds)]
    figures: dict = {}
    report: dict = {"dataset": ds.name, "format": ds.format, "split": split, "n_images": len(gts),
                    "skipped": skipped, "rescale": rescale, "pipeline": pipe.describe(), "figures": figures}
    has_boxes = any(c.label in WBC_LABELS for g in gts for c in g.cells)
    class_pairs: list[tuple[str, str]] = []
    review: list = []  # (annotated image, GT cells, predicted cells, matches, one_per_field) for --errors
    if has_boxes:
        gt_wbc = [AnnotatedImage(path=g.path, width=g.width, height=g.height, nucleus_mask_path=g.nucleus_mask_path,
                                 cells=[Cell(label="wbc", polygon=c.polygon, box=c.box, mask=c.mask,
                                             mask_full=c.mask_full, subclass=_gt_class(c))
                                        for c in g.cells if c.label in WBC_LABELS])
                  for g in gts]
        det = evaluate_detection(gt_wbc, pred_imgs, labels=("wbc",), class_agnostic=True)
        figures.update({"wbc_box_ap": det.box.ap, "wbc_box_ap50": det.box.ap50, "wbc_box_ap75": det.box.ap75,
                        "wbc_mask_ap": det.mask.ap if det.mask else None,
                        "wbc_mask_ap50": det.mask.ap50 if det.mask else None})
        wbc = det.per_class.get("wbc")
        if wbc is not None:
            figures.update({"wbc_precision": wbc.precision, "wbc_recall": wbc.recall, "wbc_f1": wbc.f1})
        figures.update({"count_mae": det.counting.mean_abs_error, "count_max_error": det.counting.max_abs_error,
                        "count_exact_fraction": det.counting.exact_fraction,
                        "n_gt_wbc": det.box.n_gt, "n_pred_wbc": det.box.n_pred})
        if det.coverage is not None:
            figures["nucleus_coverage"] = det.coverage.fraction
        for g, p in zip(gt_wbc, pred_imgs):
            matches = match_cells(g.cells, p.cells)
            review.append((g, g.cells, p.cells, matches, False))
            for gi, pj, _ in matches:
                gcls = g.cells[gi].subclass
                if gcls is not None:
                    class_pairs.append((gcls, _norm(p.cells[pj].attributes["class"])))
    elif any(g.label for g in gts):  # one WBC per field, class per folder (LISC)
        n = np.array([len(r.cells) for r in preds])
        figures.update({"one_wbc_found_rate": float(np.mean(n >= 1)), "no_extra_wbc_rate": float(np.mean(n <= 1)),
                        "exactly_one_rate": float(np.mean(n == 1)), "mean_wbc_per_field": float(n.mean())})
        review = [(g, [], p.cells, [], True) for g, p in zip(gts, pred_imgs)]
        for g, r in zip(gts, preds):
            if r.cells and g.label:
                top = max(r.cells, key=lambda c: c.attributes.get("detection_score") or 0.0)
                class_pairs.append((_norm(g.label), _norm(top.label)))
    if not isinstance(pipe.screening, _wbc_only_type()):
        cls = _class_prf(class_pairs)
        report["per_class"] = cls.pop("per_class")
        figures.update(cls)
    figures["fields_per_s"] = len(gts) / seconds if seconds > 0 else None
    if errors_dir is not None and review:
        errs = write_errors(errors_dir, Path(ds.root), review)
        report["errors"] = {"dir": str(errors_dir), "n_images": len({e.image for e in errs}),
                            "by_kind": dict(Counter(e.kind for e in errs))}
        log.info("%d error(s) in %d image(s): %s/errors.csv and overlays/", len(errs),
                 report["errors"]["n_images"], errors_dir)
    return report


def _plan_scales(pipe, images: list[AnnotatedImage], scale, rescale: float) -> dict:
    """The fields' scales pooled per folder (`inference.scale_plan`) for the modes that pool, else {}."""
    resize = partial(resize_by, factor=rescale, tol=0.0)  # always resized, as the evaluated fields are
    return plan_for(pipe, [im.path for im in images], scale, transform=None if rescale == 1.0 else resize)


def _wbc_only_type():
    return WbcOnly
