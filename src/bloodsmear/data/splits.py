"""Seeded, stratified, reproducible train/val/test splits, saved as manifest JSON files.

    m = make_split(ds, "64-16-20", seed=42)     # the paper's classification split
    save_manifest(m, "runs/pbc_split.json");  m = load_manifest("runs/pbc_split.json")
    train_images = m.subset(ds, "train")

Schemes: "64-16-20" (train/val/test, classification, the paper's) and "80-10-10" (segmentation).
Byte-identical files (PBC holds 17 duplicate pairs) are grouped by a hash of their bytes and the
groups are what is split, so duplicates never straddle two splits. Stratification (scikit-learn
`train_test_split(stratify=...)`) is over groups, on the image label, or for multi-cell images on the
most common WBC label (ties: the first annotated). Classes too rare to stratify are pooled.
Entries are paths relative to the dataset root (POSIX), so a manifest works on any machine.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from bloodsmear import __version__
from bloodsmear.errors import InputError
from bloodsmear.io import read_json, write_json_atomic
from bloodsmear.types import AnnotatedImage, Dataset

log = logging.getLogger(__name__)

#: scheme -> ordered (split name, fraction)
SCHEMES: dict[str, tuple[tuple[str, float], ...]] = {
    "64-16-20": (("train", 0.64), ("val", 0.16), ("test", 0.20)),
    "80-10-10": (("train", 0.80), ("val", 0.10), ("test", 0.10)),
}
MANIFEST_VERSION = 1
_NON_WBC = {"rbc", "platelet", "wbc"}


@dataclass
class SplitManifest:
    """A saved split: which image (relative path) goes to which split, with its label."""

    scheme: str
    seed: int
    root: str
    format: str
    splits: dict[str, list[dict]] = field(default_factory=dict)  # name -> [{"path", "label", ...}]
    dataset: str = ""
    created: str = ""
    bloodsmear_version: str = ""
    duplicate_groups: list[list[str]] = field(default_factory=list)
    manifest_version: int = MANIFEST_VERSION

    def paths(self, split: str) -> list[str]:
        return [e["path"] for e in self._split(split)]

    def _split(self, split: str) -> list[dict]:
        if split not in self.splits:
            raise KeyError(f"no split {split!r} in manifest (has: {', '.join(self.splits)})")
        return self.splits[split]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {label: images}}."""
        return {s: dict(sorted(Counter(str(e.get("label")) for e in es).items())) for s, es in self.splits.items()}

    def subset(self, dataset: Dataset, split: str, *, missing: str = "error") -> list[AnnotatedImage]:
        """The dataset's images in `split`, in manifest order.

        `missing`: "error" raises `InputError` when a manifest entry is not in the dataset, "skip"
        leaves it out (with a warning).
        """
        index = {_rel(im.path, dataset.root): im for im in dataset.images}
        out, lost = [], []
        for e in self._split(split):
            im = index.get(e["path"])
            if im is None:
                lost.append(e["path"])
            else:
                out.append(im)
        if lost:
            msg = f"{len(lost)} manifest entries of split {split!r} not in the dataset, e.g. {lost[0]}"
            if missing == "error":
                raise InputError(dataset.root, msg)
            log.warning("%s: %s", dataset.root, msg)
        return out

    def label_conflicts(self) -> list[list[tuple[str, str]]]:
        """Duplicate groups whose files carry different labels (PBC: one eosinophil = a BNE file)."""
        label = {e["path"]: str(e.get("label")) for es in self.splits.values() for e in es}
        out = []
        for g in self.duplicate_groups:
            if len({label.get(p) for p in g}) > 1:
                out.append([(p, label.get(p, "?")) for p in g])
        return out

    def same_split(self, other: "SplitManifest") -> bool:
        return self.splits == other.splits

    def to_dict(self) -> dict:
        return asdict(self)


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        try:
            return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            return Path(path).as_posix()


def stratify_label(im: AnnotatedImage) -> str:
    """The label a split stratifies on: the image label, else the most common WBC cell label (a "wbc"
    box counts as its subclass, or "wbc" when untyped), else the most common cell label, else "none"."""
    if im.label is not None:
        return im.label
    wbc = []
    for c in im.cells:
        if c.label not in _NON_WBC:
            wbc.append(c.label)
        elif c.label == "wbc":
            wbc.append(c.subclass or "wbc")  # BCCD: the box kind, typed from the subtype CSV
    if wbc:
        counts = Counter(wbc)
        top = max(counts.values())
        return next(lab for lab in wbc if counts[lab] == top)  # first annotated among the most common
    if im.cells:
        return Counter(c.label for c in im.cells).most_common(1)[0][0]
    return "none"


def _hash_file(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.blake2b(f.read(), digest_size=16).hexdigest()
    except OSError:
        return None


def file_hashes(paths: list[Path], *, workers: int = 8) -> list[str | None]:
    """blake2b-128 of each file's bytes (None where it cannot be read), computed in threads."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        return list(ex.map(_hash_file, paths, chunksize=64))


def duplicate_groups(dataset: Dataset, *, workers: int = 8, hashes: list[str | None] | None = None) -> list[list[int]]:
    """Groups of image indices; byte-identical files share a group, every other image is alone.

    `hashes`: the files' hashes computed earlier (e.g. stored with a crop cache, so a split made where the
    source files are absent groups them the same); None entries and absent files are grouped by path.
    """
    if hashes is None:
        hashes = file_hashes([im.path for im in dataset.images], workers=workers)
    elif len(hashes) != len(dataset.images):
        raise ValueError(f"{len(hashes)} hashes for {len(dataset.images)} images")
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, (im, h) in enumerate(zip(dataset.images, hashes)):
        by_key[h if h is not None else "path:" + str(im.path)].append(i)
    return list(by_key.values())


def _pool_rare(labels: list[str], min_count: int) -> list[str]:
    counts = Counter(labels)
    return [lab if counts[lab] >= min_count else "__rare__" for lab in labels]


def _split_two(items: list[int], labels: list[str], test_frac: float, seed: int) -> tuple[list[int], list[int]]:
    """Split `items` into (rest, part) with `test_frac` of them in part, stratified when possible."""
    n = len(items)
    if n == 0:
        return [], []
    n_part = int(round(test_frac * n))
    if n_part == 0:
        return list(items), []
    if n_part >= n:
        return [], list(items)
    for strat in (labels, _pool_rare(labels, 2), None):
        if strat is not None:
            k = len(set(strat))
            if k < 2 or n_part < k or n - n_part < k or min(Counter(strat).values()) < 2:
                continue
        try:
            rest, part = train_test_split(items, test_size=n_part, random_state=seed, shuffle=True, stratify=strat)
            return list(rest), list(part)
        except ValueError:
            continue
    raise AssertionError("unreachable: unstratified split cannot fail")


def make_split(dataset: Dataset, scheme: str = "64-16-20", seed: int = 42, *, workers: int = 8,
               hashes: list[str | None] | None = None) -> SplitManifest:
    """Split `dataset` into the scheme's parts: seeded, stratified over duplicate-groups, reproducible.

    `hashes`: the images' file hashes (in `dataset.images` order) when known; None = read the files."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown split scheme {scheme!r} (valid: {', '.join(SCHEMES)})")
    parts = SCHEMES[scheme]
    # a deterministic order independent of how the reader listed the images
    order = sorted(range(len(dataset.images)), key=lambda i: _rel(dataset.images[i].path, dataset.root))
    ordered = Dataset(dataset.name, dataset.root, [dataset.images[i] for i in order], dataset.format)
    if hashes is not None and len(hashes) != len(dataset.images):
        raise ValueError(f"{len(hashes)} hashes for {len(dataset.images)} images")
    ohashes = None if hashes is None else [hashes[i] for i in order]
    groups = sorted(duplicate_groups(ordered, workers=workers, hashes=ohashes), key=lambda g: g[0])
    glabels = [stratify_label(ordered.images[g[0]]) for g in groups]

    # peel off the parts from the last to the first: test, then val from the rest, ...
    remaining = list(range(len(groups)))
    remaining_frac = 1.0
    assigned: dict[str, list[int]] = {}
    for name, frac in reversed(parts[1:]):
        rest, part = _split_two(remaining, [glabels[g] for g in remaining], frac / remaining_frac, seed)
        assigned[name] = part
        remaining, remaining_frac = rest, remaining_frac - frac
    assigned[parts[0][0]] = remaining

    splits: dict[str, list[dict]] = {}
    for name, _frac in parts:
        entries = []
        for g in sorted(assigned[name]):
            for i in groups[g]:
                im = ordered.images[i]
                e = {"path": _rel(im.path, dataset.root), "label": stratify_label(im)}
                if im.subclass:
                    e["subclass"] = im.subclass
                entries.append(e)
        splits[name] = entries
    dups = [[_rel(ordered.images[i].path, dataset.root) for i in g] for g in groups if len(g) > 1]
    manifest = SplitManifest(
        scheme=scheme, seed=int(seed), root=str(Path(dataset.root).resolve()), format=dataset.format,
        splits=splits, dataset=dataset.name, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        bloodsmear_version=__version__, duplicate_groups=dups,
    )
    for g in manifest.label_conflicts():
        log.warning("byte-identical files with different labels (kept in one split): %s",
                    ", ".join(f"{p} ({lab})" for p, lab in g))
    return manifest


def seeded_sample(items: list, limit: int | None, seed: int = 0, *, rng: np.random.Generator | None = None) -> list:
    """`limit` of `items` drawn without replacement by `seed` (or from `rng`, which then advances), in
    their original order (all, drawing nothing, when `limit` is None or not smaller)."""
    if limit is None or limit >= len(items):
        return list(items)
    if rng is None:
        rng = np.random.default_rng(seed)
    return [items[i] for i in sorted(rng.choice(len(items), size=limit, replace=False))]


#: How `per_class_sample` draws: "shared" one numpy generator for the classes in turn (`seeded_sample`),
#: "permutation" one numpy generator permuting every class (the adapt experiments'), "per-label" Python's
#: `random.Random(f"{seed}:{label}")` per class (the grid's). Each keeps the samples its results were made with.
SAMPLE_STREAMS = ("shared", "permutation", "per-label")


def per_class_sample(labels: Sequence[str], limit: int | None, seed: int, *, fraction: float = 1.0,
                     stream: str = "shared") -> list[int]:
    """Sorted indices of a seeded sample of each class of `labels` (classes in sorted order): `fraction`
    of the class (rounded, at least 1), at most `limit` (None: no cap); every index when neither cuts."""
    if stream not in SAMPLE_STREAMS:
        raise ValueError(f"unknown sample stream {stream!r} (valid: {', '.join(SAMPLE_STREAMS)})")
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for c in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == c]
        n = len(idx)
        if fraction < 1.0:
            n = max(1, int(round(n * fraction)))
        if limit is not None:
            n = min(n, limit)
        if stream == "shared":
            keep += seeded_sample(idx, n, rng=rng)
        elif stream == "permutation":
            keep += rng.permutation(idx)[:n].tolist()
        else:
            keep += idx if n >= len(idx) else random.Random(f"{seed}:{c}").sample(idx, n)
    return sorted(keep)


def save_manifest(manifest: SplitManifest, dest: str | Path) -> Path:
    """Write the manifest JSON atomically."""
    return write_json_atomic(dest, manifest.to_dict(), indent=1)


def load_manifest(path: str | Path) -> SplitManifest:
    path = Path(path)
    d = read_json(path)
    missing = [k for k in ("scheme", "seed", "splits") if k not in d]
    if missing:
        raise InputError(path, f"split manifest lacks {', '.join(missing)}")
    known = {f for f in SplitManifest.__dataclass_fields__}
    return SplitManifest(**{k: v for k, v in d.items() if k in known})


def resolve_root(manifest: SplitManifest, root: str | Path | None = None) -> Path:
    """The dataset root for a manifest: `root` if given, else the recorded one (if it exists)."""
    if root is not None:
        return Path(root)
    p = Path(manifest.root)
    if not p.exists():
        raise InputError(p, "the manifest's dataset root does not exist here; pass the root explicitly")
    return p


__all__ = ["SCHEMES", "SplitManifest", "make_split", "save_manifest", "load_manifest", "stratify_label",
           "duplicate_groups", "file_hashes", "resolve_root", "seeded_sample", "per_class_sample", "SAMPLE_STREAMS"]
