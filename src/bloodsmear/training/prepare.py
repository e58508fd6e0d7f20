"""Config -> split arrays for classifier training: dataset, split manifest, classes, decoded images.

The dataset is read with `bloodsmear.data.load_dataset`; the split is the config's manifest or a
seeded `make_split(ds, scheme, seed)`; images are decoded once into cached uint8 arrays.

Labels (`data.label`): "image", the image's class as read (PBC: its folder, ig and neutrophil grouped),
or "fine", its fine class (`example_label`: PBC's file prefix, BNE/SNE/MY/MMY/PMY; a class-per-folder
set whose folders are fine classes as they are). The split is made on the images' own classes either
way, so a fine model's test split is the grouped models' one, less the images known only by their
group (PBC's IG_* and NEUTROPHIL_* files: no fine class to learn or score, left out and counted).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bloodsmear.classes import canonical, is_known, level_of
from bloodsmear.config import TrainConfig, resolve_dataset_path
from bloodsmear.data import load_dataset
from bloodsmear.data.splits import load_manifest, make_split, per_class_sample
from bloodsmear.errors import InputError
from bloodsmear.training.loaders import load_arrays
from bloodsmear.types import AnnotatedImage

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    classes: list[str]
    root: Path
    manifest: dict  # the split manifest as a dict, root made portable
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    paths: dict[str, list[str]] = field(default_factory=dict)  # split -> relative paths used

    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for s, y in (("train", self.train_y), ("val", self.val_y), ("test", self.test_y)):
            out[s] = {c: int((y == i).sum()) for i, c in enumerate(self.classes)}
        return out


def example_label(im: AnnotatedImage, label: str = "image") -> str | None:
    """The training label of one image: "image" -> its class; "fine" -> its fine class (PBC's
    ``meta["fine_label"]`` from the file prefix, else its class when that is a fine class), None when it is
    known only at group level (ig, neutrophil without a subclass)."""
    if im.label is None:
        return None
    if label == "image":
        return im.label
    if label != "fine":
        raise ValueError(f"label must be 'image' or 'fine', got {label!r}")
    lab = im.meta.get("fine_label") or im.label
    if not is_known(lab):
        return lab
    lab = canonical(lab)
    return None if level_of(lab) == "group" else lab


def split_examples(cfg: TrainConfig) -> tuple[list[str], Path, object, dict[str, tuple[list[Path], list[str]]]]:
    """(classes, root, manifest, {split: (absolute paths, labels)}) without decoding any image."""
    d = cfg.data
    root = resolve_dataset_path(d.dataset)
    if not root.exists():
        raise InputError(root, "dataset folder not found (relative names resolve under BLOODSMEAR_DATA)")
    ds = load_dataset(root, d.format)
    if d.split:
        manifest = load_manifest(d.split)
    else:
        manifest = make_split(ds, d.scheme, d.split_seed)
    cmap = {canonical(k): canonical(v) for k, v in (d.class_map or {}).items()}
    per_split: dict[str, tuple[list[Path], list[str]]] = {}
    all_labels: set[str] = set()
    group_only = 0
    for s in ("train", "val", "test"):
        ims = manifest.subset(ds, s) if s in manifest.splits else []
        paths, labels = [], []
        for im in ims:
            lab = example_label(im, d.label)
            if lab is None:
                group_only += im.label is not None
                continue
            lab = cmap.get(lab, lab)
            paths.append(Path(im.path))
            labels.append(lab)
        per_split[s] = (paths, labels)
        all_labels.update(labels)
    if group_only:
        log.info("label: fine: %d image(s) known only by their group (e.g. PBC's IG_*, NEUTROPHIL_*) left out",
                 group_only)
    classes = [canonical(c) for c in d.classes] if d.classes else sorted(all_labels)
    known = set(classes)
    for s, (paths, labels) in list(per_split.items()):
        keep = [i for i, lab in enumerate(labels) if lab in known]
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
        if d.subset_fraction < 1.0 or d.max_per_class is not None:
            keep = per_class_sample(labels, d.max_per_class if s == "train" else None, cfg.seed,
                                    fraction=d.subset_fraction)
            paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
        per_split[s] = (paths, labels)
    if not per_split["train"][0]:
        raise InputError(root, f"no training images for classes {classes}")
    return classes, root, manifest, per_split


def prepare_data(cfg: TrainConfig, *, progress: bool = True) -> PreparedData:
    classes, root, manifest, per_split = split_examples(cfg)
    index = {c: i for i, c in enumerate(classes)}
    arrays = {}
    for s, (paths, labels) in per_split.items():
        x = load_arrays(paths, cfg.data.image_size, cfg.data.crop_fraction, cache_dir=cfg.data.cache_dir,
                        progress=progress) if paths else np.zeros((0, cfg.data.image_size, cfg.data.image_size, 3),
                                                                  np.uint8)
        arrays[s] = (x, np.array([index[lab] for lab in labels], dtype=np.int64))
    mdict = manifest.to_dict()
    mdict["root"] = cfg.data.dataset  # portable: relative to the data root, as in the config
    rel = {s: [p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p) for p in ps]
           for s, (ps, _l) in per_split.items()}
    log.info("data %s: %s", root, {s: len(v[1]) for s, v in arrays.items()})
    return PreparedData(classes=classes, root=root, manifest=mdict, train_x=arrays["train"][0],
                        train_y=arrays["train"][1], val_x=arrays["val"][0], val_y=arrays["val"][1],
                        test_x=arrays["test"][0], test_y=arrays["test"][1], paths=rel)


__all__ = ["PreparedData", "example_label", "prepare_data", "split_examples"]
