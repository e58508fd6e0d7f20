"""Segmentation training fields: real smear images with whole-cell WBC instance masks.

`build_field_dataset(data_root, split)` returns `SegField`s (image + instance label map, stored at a
common scale where red cells are `store_rbc_px` wide) from three real sources (docs/training-masks.md):

- ``bccd``: BCCD fields (official VOC split), one GrabCut whole-cell mask per annotated WBC box;
- ``lisc``: LISC fields (seeded 80-10-10 split), the one WBC segmented classically;
- ``composite``: PBC cells (pbc-original-sample, seeded 80-10-10 split, platelets left out), each cut
  out with its classical mask and pasted at random positions onto BCCD/LISC fields of the same split
  (whose own WBCs stay labelled), resized so that the PBC red-cell size matches the field's.

Every source is rescaled by ONE factor per dataset (its median red-cell diameter, measured by
`bloodsmear.preprocess.scale`), so the stored scale is consistent. Results are cached as .npz per
source and split (the cache key includes the parameters).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from bloodsmear.data import load_dataset
from bloodsmear.data.splits import make_split
from bloodsmear.io import atomic_path, read_image
from bloodsmear.preprocess.resize import resize_by
from bloodsmear.preprocess.scale import estimate_rbc_diameter
from bloodsmear.settings import cache_dir
from bloodsmear.training.seg_masks import central_wbc, whole_cell_mask

log = logging.getLogger(__name__)

SOURCES = ("bccd", "lisc", "composite")
_CACHE_VERSION = 1
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@dataclass
class SegField:
    """One training field at the stored scale: RGB uint8 and int32 instance labels (0 = background)."""

    image: np.ndarray
    labels: np.ndarray
    source: str
    name: str


@dataclass
class FieldDataConfig:
    store_rbc_px: float = 40.0
    sources: tuple[str, ...] = SOURCES
    composites_per_field: int = 1  # composite fields made per background field
    cells_per_composite: tuple[int, int] = (1, 4)
    seed: int = 0
    limit: int | None = None  # per source (tests)
    cache_dir: str | None = None  # None: $BLOODSMEAR_CACHE or ~/.cache/bloodsmear/seg_fields

    def key(self, source: str, split: str) -> str:
        """Cache key of one source's fields: only the parameters that source depends on."""
        d = {"store_rbc_px": self.store_rbc_px, "limit": self.limit, "source": source, "split": split,
             "v": _CACHE_VERSION}
        if source == "composite":
            d.update(per=self.composites_per_field, cells=list(self.cells_per_composite), seed=self.seed)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class SourceStats:
    """What went into one source's fields, for the model card."""

    source: str
    split: str
    fields: int = 0
    instances: int = 0
    skipped: list[str] = field(default_factory=list)
    rbc_diameter_px: float | None = None


def cache_root(cfg: FieldDataConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else cache_dir("seg_fields")


# ------------------------------------------------------------------ splits


def bccd_images(data_root: Path, split: str):
    ds = load_dataset(data_root / "bccd", "voc")
    stems = set(ds.splits[split])
    return [im for im in ds.images if im.path.stem in stems]


def manifest_images(data_root: Path, name: str, fmt: str, split: str, seed: int = 42):
    """Images of a class-per-folder dataset in a seeded 80-10-10 split (bloodsmear.data.splits)."""
    ds = load_dataset(data_root / name, fmt)
    m = make_split(ds, "80-10-10", seed=seed)
    return m.subset(ds, split), m


def dataset_rbc_diameter(paths: list[Path], n: int = 40) -> float:
    """Median red-cell diameter over (up to n evenly spread) images of one dataset."""
    step = max(1, len(paths) // n)
    ds = [estimate_rbc_diameter(read_image(p)).diameter_px for p in paths[::step]]
    ds = [d for d in ds if np.isfinite(d)]
    return float(np.median(ds))


# ------------------------------------------------------------------ sources


def bccd_fields(data_root: Path, split: str, cfg: FieldDataConfig, stats: SourceStats) -> list[SegField]:
    ims = bccd_images(data_root, split)[: cfg.limit]
    rbc = dataset_rbc_diameter([im.path for im in bccd_images(data_root, "train")])
    stats.rbc_diameter_px = rbc
    f = cfg.store_rbc_px / rbc
    out = []
    for im in ims:
        try:
            rgb = read_image(im.path)
        except Exception as e:  # noqa: BLE001
            stats.skipped.append(f"{im.path}: {e}")
            continue
        lab = np.zeros(rgb.shape[:2], np.int32)
        k = 0
        for c in im.cells:
            if c.label != "wbc" or c.box is None:
                continue
            m = whole_cell_mask(rgb, c.box)
            if not m.any():
                stats.skipped.append(f"{im.path.name}: no nucleus found in WBC box {c.box}")
                continue
            k += 1
            lab[m & (lab == 0)] = k
        out.append(SegField(resize_by(rgb, f, tol=0), resize_by(lab, f, nearest=True, tol=0), "bccd", im.path.stem))
        stats.instances += k
    stats.fields = len(out)
    return out


def lisc_fields(data_root: Path, split: str, cfg: FieldDataConfig, stats: SourceStats) -> list[SegField]:
    ims, _ = manifest_images(data_root, "lisc", "lisc", split)
    ims = ims[: cfg.limit]
    all_ims, _ = manifest_images(data_root, "lisc", "lisc", "train")
    rbc = dataset_rbc_diameter([im.path for im in all_ims])
    stats.rbc_diameter_px = rbc
    f = cfg.store_rbc_px / rbc
    out = []
    for im in ims:
        rgb = read_image(im.path)
        m = central_wbc(rgb, rbc)
        if not m.any():
            stats.skipped.append(f"{im.path}: no WBC found")
            continue
        name = f"{im.path.parent.name}/{im.path.stem}"
        lab = resize_by(m.astype(np.int32), f, nearest=True, tol=0)
        out.append(SegField(resize_by(rgb, f, tol=0), lab, "lisc", name))
        stats.instances += 1
    stats.fields = len(out)
    return out


def pbc_cells(data_root: Path, split: str, store_rbc_px: float, limit: int | None = None):
    """(rgb crop, bool mask, class) cut-outs of PBC cells at the stored scale (platelets left out)."""
    root = data_root / "pbc-original-sample"
    ims, _ = manifest_images(data_root, "pbc-original-sample", "pbc", split)
    ims = [im for im in ims if im.label != "platelet"][:limit]
    all_ims, _ = manifest_images(data_root, "pbc-original-sample", "pbc", "train")
    rbc = dataset_rbc_diameter([im.path for im in all_ims])
    f = store_rbc_px / rbc
    cells = []
    for im in ims:
        rgb = read_image(im.path)
        m = central_wbc(rgb, rbc)
        if not m.any():
            continue
        ys, xs = np.nonzero(m)
        y1, y2, x1, x2 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop, mk = rgb[y1:y2, x1:x2], m[y1:y2, x1:x2]
        cells.append((resize_by(crop, f, tol=0), resize_by(mk.astype(np.uint8), f, nearest=True, tol=0) > 0, im.label))
    log.info("PBC %s: %d cells cut out of %s (RBC %.1f px)", split, len(cells), root, rbc)
    return cells, rbc


def paste_cells(bg: SegField, cells: list, n: int, rng: np.random.Generator, name: str) -> SegField:
    """Paste `n` random cells onto a copy of `bg` at free positions (no overlap with its WBCs)."""
    img = bg.image.copy()
    lab = bg.labels.copy()
    H, W = lab.shape
    k = int(lab.max())
    for _ in range(n):
        crop, mk, _cls = cells[int(rng.integers(len(cells)))]
        if rng.random() < 0.5:
            crop, mk = crop[:, ::-1], mk[:, ::-1]
        r = int(rng.integers(4))
        crop, mk = np.rot90(crop, r), np.rot90(mk, r)
        h, w = mk.shape
        if h >= H or w >= W:
            continue
        for _try in range(20):
            y = int(rng.integers(-h // 3, H - 2 * h // 3))
            x = int(rng.integers(-w // 3, W - 2 * w // 3))
            ya, xa, yb, xb = max(0, y), max(0, x), min(H, y + h), min(W, x + w)
            sub = mk[ya - y:yb - y, xa - x:xb - x]
            if not (lab[ya:yb, xa:xb][sub] > 0).any():
                break
        else:
            continue
        # soft edge: blend over a 1-2 px rim so no hard seam is learnt
        alpha = cv2.GaussianBlur(sub.astype(np.float32), (0, 0), 1.0)[..., None]
        alpha = np.maximum(alpha, sub[..., None].astype(np.float32) * 0.9)
        region = img[ya:yb, xa:xb].astype(np.float32)
        src = np.ascontiguousarray(crop[ya - y:yb - y, xa - x:xb - x]).astype(np.float32)
        img[ya:yb, xa:xb] = np.clip(alpha * src + (1 - alpha) * region, 0, 255).astype(np.uint8)
        k += 1
        lab[ya:yb, xa:xb][sub] = k
    return SegField(img, lab, "composite", name)


def composite_fields(backgrounds: list[SegField], cells: list, cfg: FieldDataConfig, split: str,
                     stats: SourceStats) -> list[SegField]:
    rng = np.random.default_rng([cfg.seed, SOURCES.index("composite"), _SPLIT_IDS.get(split, 9)])
    out = []
    lo, hi = cfg.cells_per_composite
    for rep in range(cfg.composites_per_field):
        for bg in backgrounds:
            n = int(rng.integers(lo, hi + 1))
            fld = paste_cells(bg, cells, n, rng, f"{bg.source}:{bg.name}+pbc{rep}")
            stats.instances += int(fld.labels.max())
            out.append(fld)
    stats.fields = len(out)
    return out


# ------------------------------------------------------------------ public entry point


def _save(path: Path, fields: list[SegField], stats: SourceStats) -> None:
    arrays = {}
    for i, f in enumerate(fields):
        arrays[f"img{i}"] = f.image
        arrays[f"lab{i}"] = f.labels.astype(np.uint16)
    meta = json.dumps({"names": [f.name for f in fields], "sources": [f.source for f in fields],
                       "stats": asdict(stats)})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, meta=np.array(meta), **arrays)


def _load(path: Path) -> tuple[list[SegField], SourceStats]:
    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    fields = [SegField(z[f"img{i}"], z[f"lab{i}"].astype(np.int32), s, n)
              for i, (n, s) in enumerate(zip(meta["names"], meta["sources"]))]
    return fields, SourceStats(**meta["stats"])


def build_field_dataset(data_root: str | Path, split: str, cfg: FieldDataConfig | None = None,
                        *, use_cache: bool = True) -> tuple[list[SegField], list[SourceStats]]:
    """Training fields of one split ("train", "val" or "test") from the configured sources."""
    cfg = cfg or FieldDataConfig()
    data_root = Path(data_root)
    fields: list[SegField] = []
    all_stats: list[SourceStats] = []
    bases: dict[str, list[SegField]] = {}
    for source in ("bccd", "lisc", "composite"):
        if source not in cfg.sources and not (source != "composite" and "composite" in cfg.sources):
            continue
        path = cache_root(cfg) / f"{source}_{split}_{cfg.key(source, split)}.npz"
        if use_cache and path.is_file():
            got, st = _load(path)
        else:
            st = SourceStats(source, split)
            if source == "bccd":
                got = bccd_fields(data_root, split, cfg, st)
            elif source == "lisc":
                got = lisc_fields(data_root, split, cfg, st)
            else:
                cells, _ = pbc_cells(data_root, split, cfg.store_rbc_px, cfg.limit)
                got = composite_fields(bases.get("bccd", []) + bases.get("lisc", []), cells, cfg, split, st)
            if use_cache:
                _save(path, got, st)
        log.info("%s %s: %d fields, %d WBC instances, %d skipped", source, split, st.fields, st.instances,
                 len(st.skipped))
        bases[source] = got
        if source in cfg.sources:
            fields.extend(got)
            all_stats.append(st)
    return fields, all_stats




@dataclass
class MaskCheck:
    """Classical whole-cell masks against BCCD's nucleus masks (255 = nucleus), pooled over fields."""

    split: str
    fields: int
    boxes: int
    empty_masks: int  # WBC boxes where no nucleus was found (no training mask)
    nucleus_inside_fraction: float  # nucleus-mask pixels inside the union of whole-cell masks
    median_field_fraction: float
    mean_iou: float  # IoU of the union of whole-cell masks with the BCCD mask, per field


def check_bccd_masks(data_root, split: str = "train", limit: int | None = None) -> MaskCheck:
    """How much of BCCD's annotated nucleus area the classical whole-cell masks cover."""
    inside = total = boxes = empty = 0
    fracs, ious = [], []
    ims = [im for im in bccd_images(Path(data_root), split) if im.nucleus_mask_path and Path(im.nucleus_mask_path).is_file()]
    for im in ims[:limit]:
        rgb = read_image(im.path)
        nm = cv2.imread(str(im.nucleus_mask_path), cv2.IMREAD_GRAYSCALE) > 127
        if nm.shape != rgb.shape[:2] or not nm.any():
            continue
        union = np.zeros(nm.shape, bool)
        for c in im.cells:
            if c.label == "wbc" and c.box is not None:
                boxes += 1
                m = whole_cell_mask(rgb, c.box)
                empty += int(not m.any())
                union |= m
        a = int((nm & union).sum())
        inside, total = inside + a, total + int(nm.sum())
        fracs.append(a / nm.sum())
        ious.append(a / max(1, int((nm | union).sum())))
    return MaskCheck(split, len(fracs), boxes, empty, inside / max(total, 1), float(np.median(fracs)) if fracs else 0.0,
                     float(np.mean(ious)) if ious else 0.0)
