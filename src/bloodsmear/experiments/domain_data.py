"""Single-WBC crops of each domain (PBC, LISC, BCCD), restricted to shared classes, cached as arrays.

    dom = build_domain(DomainSpec(name="lisc", root=root, size=80), classes=["basophil", ...], cache_dir=...)
    dom.images  # (N, size, size, 3) uint8;  dom.labels  # class indices;  dom.paths  # relative ids

- PBC (single-cell images, the WBC at the centre): the whole image, resized.
- LISC (720x576 fields, one WBC among red cells, a different stain): the WBC is found with
  `locate_wbc` (stain-contrast map (R+B)/2 - G, which is high on the WBC's nucleus and cytoplasm and low
  on red cells in this stain; largest blob), then a fixed-side square around it (`crop_side`, the
  field-of-view a PBC image covers at LISC's magnification: about 4 red-cell diameters).
- BCCD (640x480 fields, VOC boxes): each WBC box of an image with exactly one WBC and one subtype
  label, a square of `box_scale` x the box side around the box centre.

Squares that reach past a field's border are moved inside it. The cache is one .npz per
(domain, size, crop settings); splits are H1's seeded manifests over the *source images*
(`bloodsmear.data.splits.make_split`), so a crop is in exactly one split.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np

from bloodsmear.config import StrictConfig
from bloodsmear.data import load_dataset
from bloodsmear.data.splits import file_hashes, make_split, per_class_sample
from bloodsmear.errors import InputError
from bloodsmear.inference.export import field_crops, segmenting_pipeline
from bloodsmear.io import atomic_path, read_image
from bloodsmear.preprocess.resize import resize_square_bicubic
from bloodsmear.settings import data_root
from bloodsmear.types import AnnotatedImage, Dataset

log = logging.getLogger(__name__)

CACHE_VERSION = 2
DomainName = Literal["pbc", "lisc", "bccd", "folder"]
DOMAINS: tuple[str, ...] = get_args(DomainName)


class DomainSpec(StrictConfig):
    """Where one domain's crops come from and how they are cut: an entry of a domains config's `domains:`
    or a DANN config's `source:` / `target:` (those configs keep the entry as written, so their run
    identities hold only the keys given; `check_domain` validates it against this model)."""

    name: DomainName  # folder: a class-per-folder of crops
    root: str = ""  # dataset folder; relative names resolve against the data root
    size: int = 80  # output crop side (px)
    crop_side: int = 160  # LISC (crops: locate): square side around the located WBC (px, original field)
    crops: Literal["locate", "pipeline"] = "locate"  # LISC: "locate" (stain-contrast blob + crop_side
    #   square) or "pipeline" (the pipeline's segmenter + crop stage, the largest cell of each field: what
    #   `analyze` sees)
    pipeline: str | None = None  # crops: pipeline -> that pipeline config (None: the shipped default)
    box_scale: float = 1.6  # BCCD: square side = box_scale * max(box w, h)
    max_per_class: int | None = None  # subsample (seeded) before splitting; None = all
    seed: int = 0

    def key(self, classes: list[str]) -> str:
        """The crop cache's key: a hash of every setting (field order and values as the dataclass this
        model replaced wrote them, so existing caches keep their names) with the classes."""
        d = self.model_dump()
        for k, default in (("crops", "locate"), ("pipeline", None)):  # older caches keep their keys
            if d.get(k) == default:
                d.pop(k)
        d["classes"] = list(classes)
        d["v"] = CACHE_VERSION
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class DomainCrops:
    """Crops of one domain: images (N, S, S, 3) uint8, labels (N,) class indices into `classes`."""

    name: str
    classes: list[str]
    images: np.ndarray
    labels: np.ndarray
    paths: list[str]  # source image (relative to the dataset root), plus "#k" for the k-th cell of a field
    groups: list[str] = field(default_factory=list)  # source image per crop (what splits group on)
    root: str = ""  # dataset root the paths are relative to
    hashes: list[str] | None = None  # per crop: its source file's hash (byte-identical files split together)

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}


# --------------------------------------------------------------------------------------------------
# locating and cutting


def stain_contrast(rgb: np.ndarray) -> np.ndarray:
    """(R+B)/2 - G as float32: high on stained WBC nucleus/cytoplasm, low on red cells and background."""
    a = rgb.astype(np.float32)
    return 0.5 * (a[..., 0] + a[..., 2]) - a[..., 1]


def locate_wbc(rgb: np.ndarray, *, min_area_frac: float = 0.0005) -> tuple[float, float, float] | None:
    """(cx, cy, r) of the largest strongly stained blob of a field (r: equivalent-circle radius), or None.

    The threshold is halfway between the map's median (red cells/background) and its 99.9th percentile
    (the WBC), at least 25 grey levels above the median.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(None, f"expected an RGB image, got shape {rgb.shape}")
    s = cv2.GaussianBlur(stain_contrast(rgb), (0, 0), 2.0)
    med, hi = np.percentile(s, [50, 99.9])
    thr = max(med + 25.0, 0.5 * (med + hi))
    mask = (s > thr).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    n, lab, stats, cent = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    k = int(np.argmax(areas)) + 1
    if areas[k - 1] < min_area_frac * mask.size:
        return None
    cx, cy = cent[k]
    return float(cx), float(cy), float(np.sqrt(areas[k - 1] / np.pi))


def crop_square(rgb: np.ndarray, cx: float, cy: float, side: int, *, keep_inside: bool = True) -> np.ndarray:
    """A side x side square around (cx, cy).

    `keep_inside`: where the square would cross the border it is moved inside the image (the cell
    then sits off-centre) rather than padded; parts that still fall outside (a side larger than the
    image) are filled by reflection.
    """
    h, w = rgb.shape[:2]
    x1, y1 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    if keep_inside:
        x1 = min(max(x1, 0), max(w - side, 0))
        y1 = min(max(y1, 0), max(h - side, 0))
    x2, y2 = x1 + side, y1 + side
    pad = max(0, -x1, -y1, x2 - w, y2 - h)
    if pad:
        rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
        x1, y1, x2, y2 = x1 + pad, y1 + pad, x2 + pad, y2 + pad
    return np.ascontiguousarray(rgb[y1:y2, x1:x2])


# --------------------------------------------------------------------------------------------------
# readers per domain


def _root(spec: DomainSpec) -> Path:
    default = {"pbc": "pbc224", "lisc": "lisc", "bccd": "bccd"}.get(spec.name, "")
    p = Path(spec.root or default)
    return p if p.is_absolute() else data_root() / p


def _class_images(spec: DomainSpec, classes: list[str]):
    """(relative path, label, rgb-reader) of a class-per-folder dataset, restricted to `classes`."""
    root = _root(spec)
    fmt = {"pbc": "pbc", "lisc": "lisc"}.get(spec.name, "folders")
    ds = load_dataset(root, fmt, strict=False) if fmt == "folders" else load_dataset(root, fmt)
    ims = [im for im in ds.images if im.label in classes]
    keep = per_class_sample([im.label for im in ims], spec.max_per_class or None, spec.seed)
    return root, [ims[i] for i in keep]


def _read_class_domain(spec: DomainSpec, classes: list[str]) -> tuple[list[np.ndarray], list[str], list[str], list[str]]:
    root, ims = _class_images(spec, classes)
    crops, labels, paths, skipped = [], [], [], []
    pipe = None
    if spec.name == "lisc" and spec.crops == "pipeline":
        pipe = segmenting_pipeline(spec.pipeline)
    for im in ims:
        rel = im.path.relative_to(root).as_posix()
        try:
            rgb = read_image(im.path)
        except InputError as e:
            skipped.append(str(e))
            continue
        if pipe is not None:
            _, _, cut, _ = field_crops(pipe, rgb, one_per_image=True, name=rel, path=im.path)
            if not cut:
                skipped.append(f"{rel}: no WBC found")
                continue
            rgb = cut[0]
        elif spec.name == "lisc":
            loc = locate_wbc(rgb)
            if loc is None:
                skipped.append(f"{rel}: no WBC found")
                continue
            rgb = crop_square(rgb, loc[0], loc[1], spec.crop_side)
        else:  # single-cell images: centre square
            h, w = rgb.shape[:2]
            rgb = crop_square(rgb, w / 2, h / 2, min(h, w))
        crops.append(resize_square_bicubic(rgb, spec.size))
        labels.append(im.label)
        paths.append(rel)
    return crops, labels, paths, skipped


def _read_bccd(spec: DomainSpec, classes: list[str]) -> tuple[list[np.ndarray], list[str], list[str], list[str]]:
    """BCCD WBC crops: images with exactly one WBC box and one subtype label in `classes`."""
    root = _root(spec)
    ds = load_dataset(root, "voc")
    cand = []
    for im in ds.images:
        wbcs = [c for c in im.cells if c.label not in ("rbc", "platelet")]
        if len(wbcs) != 1 or wbcs[0].box is None:
            continue
        c = wbcs[0]
        lab = c.subclass if c.label == "wbc" else c.label
        if lab is None or lab not in classes:
            lab = im.label if im.label in classes else None
        if lab is None:
            continue
        cand.append((im, c, lab))
    keep = per_class_sample([x[2] for x in cand], spec.max_per_class or None, spec.seed)
    crops, labels, paths, skipped = [], [], [], []
    for i in keep:
        im, c, lab = cand[i]
        try:
            rgb = read_image(im.path)
        except InputError as e:
            skipped.append(str(e))
            continue
        x1, y1, x2, y2 = c.box
        side = int(round(spec.box_scale * max(x2 - x1, y2 - y1)))
        crops.append(resize_square_bicubic(crop_square(rgb, (x1 + x2) / 2, (y1 + y2) / 2, max(side, 8)), spec.size))
        labels.append(lab)
        paths.append(Path(im.path).relative_to(root).as_posix())
    return crops, labels, paths, skipped


def build_domain(spec: DomainSpec, classes: list[str], *, cache_dir: str | Path | None = None) -> DomainCrops:
    """Crops of one domain restricted to `classes` (in that order), read from the cache when present."""
    classes = list(classes)
    cache = Path(cache_dir) / f"{spec.name}_{spec.size}_{spec.key(classes)}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        paths = [str(p) for p in z["paths"]]
        log.info("%s: %d crops from cache %s", spec.name, len(paths), cache)
        hashes = [str(h) or None for h in z["hashes"]] if "hashes" in z.files else None  # older caches: none
        return DomainCrops(spec.name, classes, z["images"], z["labels"].astype(np.int64), paths,
                           [p.split("#")[0] for p in paths], str(_root(spec)), hashes)
    if spec.name == "bccd":
        crops, labels, paths, skipped = _read_bccd(spec, classes)
    else:  # pbc, lisc, folder (DomainSpec validates the name)
        crops, labels, paths, skipped = _read_class_domain(spec, classes)
    for s in skipped:
        log.warning("%s: skipped %s", spec.name, s)
    if not crops:
        raise InputError(_root(spec), f"no {spec.name} crops of classes {classes}")

    images = np.stack(crops)
    y = np.array([classes.index(lab) for lab in labels], dtype=np.int64)
    groups = [p.split("#")[0] for p in paths]
    hashes = [h or "" for h in file_hashes([_root(spec) / g for g in groups])]
    if cache is not None:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, images=images, labels=y, paths=np.array(paths), hashes=np.array(hashes))
    log.info("%s: %d crops (%d skipped)", spec.name, len(crops), len(skipped))
    return DomainCrops(spec.name, classes, images, y, paths, groups, str(_root(spec)), [h or None for h in hashes])


def split_domain(dom: DomainCrops, *, scheme: str = "64-16-20", seed: int = 42):
    """Seeded stratified split of a domain's crops by source image.

    Returns ({"train", "val", "test"} -> crop indices, the `SplitManifest`). Uses
    `bloodsmear.data.splits.make_split` on the crops' source images (one labelled image per group;
    byte-identical files stay on one side), so the split follows the project's manifest rules.
    """
    root = Path(dom.root or "/nonexistent-" + dom.name)
    groups = list(dict.fromkeys(dom.groups))
    first = {g: i for i, g in reversed(list(enumerate(dom.groups)))}
    hashes = None if dom.hashes is None else [dom.hashes[first[g]] for g in groups]
    ds = Dataset(name=dom.name, root=root, format=dom.name,
                 images=[AnnotatedImage(path=root / g, width=0, height=0, source=dom.name,
                                        label=dom.classes[int(dom.labels[first[g]])]) for g in groups])
    m = make_split(ds, scheme, seed=seed, hashes=hashes)
    out = {}
    for name in m.splits:
        members = set(m.paths(name))
        out[name] = np.array([i for i, g in enumerate(dom.groups) if g in members], dtype=int)
    return out, m
