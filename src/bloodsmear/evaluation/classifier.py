"""Score a classifier model folder on a labelled dataset (`bloodsmear eval-classifier`).

    ev = evaluate_model("default", "pbc224", limit=200)   # the model's own test split
    ev.to_dict()                                          # headline figures and the full report
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bloodsmear.config import resolve_dataset_path
from bloodsmear.data import load_dataset
from bloodsmear.data.splits import load_manifest, seeded_sample
from bloodsmear.errors import InputError
from bloodsmear.inference.classify import CellClassifier
from bloodsmear.metrics.classification import classification_report_arrays
from bloodsmear.training.loaders import load_arrays

__all__ = ["ModelEvaluation", "evaluate_model"]


@dataclass
class ModelEvaluation:
    model: str
    dataset: str
    split: str
    n: int
    report: object  # ClassificationReport
    skipped_labels: int = 0
    tta: str = "none"

    def to_dict(self) -> dict:
        d = {"model": self.model, "dataset": self.dataset, "split": self.split, "n": self.n,
             "skipped_labels": self.skipped_labels, "tta": self.tta}
        d.update(self.report.headline())
        d["report"] = self.report.to_dict()
        return d


def evaluate_model(model: str | Path = "default", dataset: str | Path | None = None, *,
                   split_manifest: str | Path | None = None, split: str = "test", format: str | None = None,  # noqa: A002
                   limit: int | None = None, seed: int = 0, batch_size: int = 256,
                   progress: bool = True, tta: str = "none") -> ModelEvaluation:
    """Score a model folder on a labelled dataset: the `split` part of a manifest (default: the model's own
    split.json), or every image when the model has none and no manifest is given.

    Images whose label is not one of the model's classes are left out (counted in `skipped_labels`).
    `limit` scores a seeded sample of that many images. `tta`: test-time augmentation of a model given
    by name/folder (none | flip | d8, see `inference.tta`).
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
    keep = [(im.path, index[cmap.get(im.label, im.label)]) for im in images
            if im.label is not None and cmap.get(im.label, im.label) in index]
    skipped = len(images) - len(keep)
    keep = seeded_sample(keep, limit, seed)
    if not keep:
        raise InputError(root, f"no images of the model's classes in {where}")
    arr = load_arrays([p for p, _ in keep], int(info.input_size), float(info.crop_fraction), progress=progress)
    probs = np.concatenate([clf.predict_fitted(arr[b:b + batch_size]) for b in range(0, len(arr), batch_size)])
    y = np.array([lab for _, lab in keep])
    rep = classification_report_arrays(y, probs.argmax(1), clf.classes)
    return ModelEvaluation(model=str(clf.loaded.path), dataset=str(root), split=where, n=len(keep), report=rep,
                           skipped_labels=skipped, tta=clf.tta)
