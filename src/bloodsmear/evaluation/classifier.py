"""Score a classifier model folder on a labelled dataset (`bloodsmear eval-classifier`).

    ev = evaluate_model("default", "pbc224", limit=200)   # the model's own test split
    ev.to_dict()                                          # headline figures and the full report

A model of fine classes (trained with `data.label: fine`) is scored at its own level (`report`) and, in
`levels`, at group level (ig, neutrophil; with the images known only by their group, PBC's IG_* and
NEUTROPHIL_*) and on the paper's 8 common classes (its Tables 5/6 set, `classes.to_common`; a
prediction outside them counts as "other"), see `level_reports`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bloodsmear.classes import COMMON_CLASSES, is_known, label_at, level_of, to_common
from bloodsmear.config import resolve_dataset_path
from bloodsmear.data import load_dataset
from bloodsmear.data.splits import load_manifest, seeded_sample
from bloodsmear.errors import InputError
from bloodsmear.inference.classify import CellClassifier, Framer, predict_images
from bloodsmear.io import read_image
from bloodsmear.metrics.classification import classification_report_arrays
from bloodsmear.training.loaders import load_arrays
from bloodsmear.training.prepare import example_label

__all__ = ["ModelEvaluation", "evaluate_model", "level_reports"]

OTHER = "other"  # a prediction outside the paper's 8 common classes


@dataclass
class ModelEvaluation:
    model: str
    dataset: str
    split: str
    n: int
    report: object  # ClassificationReport
    skipped_labels: int = 0
    tta: str = "none"
    levels: dict = None  # type: ignore[assignment]  # "group", "common" -> ClassificationReport (fine models)
    framing: str = "centre"  # or the framer's name (`evaluate_model(framer=...)`)
    no_cell: int = 0  # images left out of the scores: the framer found no cell

    def to_dict(self) -> dict:
        d = {"model": self.model, "dataset": self.dataset, "split": self.split, "n": self.n,
             "skipped_labels": self.skipped_labels, "tta": self.tta}
        if self.framing != "centre":
            d.update(framing=self.framing, no_cell=self.no_cell)
        d.update(self.report.headline())
        d["report"] = self.report.to_dict()
        if self.levels:
            d["levels"] = {k: {"n": r.n, **r.headline(), "report": r.to_dict()} for k, r in self.levels.items()}
        return d


def _is_fine_model(classes: list[str]) -> bool:
    return any(is_known(c) and level_of(c) == "fine" for c in classes)


def level_reports(classes: list[str], truth: list[str], pred: list[str]) -> dict:
    """A fine model's answers scored at the other levels: {"group": report over the groups of `classes`,
    "common": report over the paper's 8 common classes} (class names; `truth` may hold group-only
    labels, scored at group level only). "common" only where the model answers all 8 (a grouped model
    has no myelocyte); truths outside them are left out, predictions outside them count as "other"."""
    out = {}
    def group(label: str) -> str:
        return label_at(label, "group")

    groups = sorted({group(c) for c in classes})
    pairs = [(group(t), group(p)) for t, p in zip(truth, pred) if group(t) in groups]
    if pairs:
        out["group"] = classification_report_arrays([t for t, _ in pairs], [p for _, p in pairs], groups)
    if set(COMMON_CLASSES) <= {to_common(c) for c in classes if is_known(c)}:
        common = list(COMMON_CLASSES)
        def common_of(label: str) -> str | None:
            return to_common(label) if is_known(label) else None

        pairs = [(common_of(t), common_of(p) or OTHER) for t, p in zip(truth, pred) if common_of(t)]
        if pairs:
            out["common"] = _macro_over(classification_report_arrays(
                [t for t, _ in pairs], [p for _, p in pairs], [*common, OTHER]), common)
    return out


def _macro_over(rep, classes: list[str]):
    """`rep` with its macro averages over `classes` only (those with support or predictions): "other" is
    a column of the confusion matrix, no class of the paper's average."""
    cols = [rep.classes.index(c) for c in classes]
    present = [c for c, k in zip(classes, cols)
               if rep.per_class[c].support > 0 or sum(row[k] for row in rep.confusion) > 0]
    if not present:
        return rep
    return replace(rep, **{f"macro_{m}": float(np.mean([getattr(rep.per_class[c], m) for c in present]))
                           for m in ("precision", "recall", "f1")})


def evaluate_model(model: str | Path = "default", dataset: str | Path | None = None, *,
                   split_manifest: str | Path | None = None, split: str = "test", format: str | None = None,  # noqa: A002
                   limit: int | None = None, seed: int = 0, batch_size: int = 256,
                   progress: bool = True, tta: str = "none", framer: Framer | None = None) -> ModelEvaluation:
    """Score a model folder on a labelled dataset: the `split` part of a manifest (default: the model's own
    split.json), or every image when the model has none and no manifest is given.

    Images whose label is not one of the model's classes are left out (counted in `skipped_labels`).
    `limit` scores a seeded sample of that many images. `tta`: test-time augmentation of a model given
    by name/folder (none | flip | d8, see `inference.tta`). `framer` (`inference.single_cell.CellFramer`):
    each image is framed by it first (default: as trained, the model's centre square); images where it
    finds no cell are left out of the scores and counted (`no_cell`).
    """
    clf = model if isinstance(model, CellClassifier) else CellClassifier.load(model, tta=tta)
    info = clf.info
    tdata = (info.training or {}).get("data", {})
    ds_ref = dataset if dataset is not None else tdata.get("dataset")
    if ds_ref is None:
        raise InputError(None, "no dataset given and the model does not record one")
    root = resolve_dataset_path(ds_ref)
    if not root.exists():
        raise InputError(root, "dataset folder not found")
    ds = load_dataset(root, format or tdata.get("format") or "auto")
    mfile = Path(split_manifest) if split_manifest else clf.loaded.path / "split.json"
    if split_manifest or mfile.is_file():
        m = load_manifest(mfile)
        images = m.subset(ds, split)
        where = f"{mfile}:{split}"
    else:
        images, where = list(ds.images), "all"
    index = {c: i for i, c in enumerate(clf.classes)}
    cmap = tdata.get("class_map") or {}
    fine = _is_fine_model(list(clf.classes))
    level = tdata.get("label", "image")
    keep, group_only = [], []  # (path, truth name); group_only: scored at group level only (fine models)
    for im in images:
        lab = example_label(im, level)
        lab = None if lab is None else cmap.get(lab, lab)
        if lab in index:
            keep.append((im.path, lab))
        elif fine and lab is None and im.label is not None and is_known(im.label):
            group_only.append((im.path, im.label))
    skipped = len(images) - len(keep)
    n_keep = len(keep)
    keep = seeded_sample(keep, limit, seed)
    if limit is not None:  # the group-only images sampled at the same rate
        group_only = seeded_sample(group_only, round(len(group_only) * len(keep) / max(1, n_keep)), seed)
    if not keep:
        raise InputError(root, f"no images of the model's classes in {where}")
    todo = keep + group_only
    no_cell = 0
    if framer is None:
        arr = load_arrays([p for p, _ in todo], int(info.input_size), float(info.crop_fraction), progress=progress)
        probs = np.concatenate([clf.predict_fitted(arr[b:b + batch_size]) for b in range(0, len(arr), batch_size)])
    else:  # framed one image at a time (each is segmented); no cell found: left out, counted
        framed = [predict_images(clf, [read_image(p)], framer)[0] for p, _ in todo]
        no_cell = sum(p is None for p in framed)
        n_keep = len(keep)
        keep = [t for t, p in zip(keep, framed[:n_keep]) if p is not None]
        group_only = [t for t, p in zip(group_only, framed[n_keep:]) if p is not None]
        todo, framed = keep + group_only, [p for p in framed if p is not None]
        if not keep:
            raise InputError(root, f"no cell found in any of the {no_cell} images")
        probs = np.stack(framed)
    pred = probs.argmax(1)
    rep = classification_report_arrays(np.array([index[lab] for _, lab in keep]), pred[:len(keep)], clf.classes)
    levels = None
    if fine:
        names = [clf.classes[int(k)] for k in pred]
        levels = level_reports(list(clf.classes), [lab for _, lab in todo], names)
    return ModelEvaluation(model=str(clf.loaded.path), dataset=str(root), split=where, n=len(keep), report=rep,
                           skipped_labels=skipped, tta=clf.tta, levels=levels, no_cell=no_cell,
                           framing="centre" if framer is None else str(getattr(framer, "name", "cell")))
