"""Seeded stratified split manifests: proportions, reproducibility, duplicates kept together."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bloodsmear.data.folders import read_folders
from bloodsmear.data.splits import load_manifest, make_split, save_manifest, stratify_label
from bloodsmear.errors import InputError
from bloodsmear.types import AnnotatedImage, Cell, Dataset


def need(root: Path, *parts: str) -> Path:
    p = root.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data {p} not present")
    return p


def _tree(root: Path, per_class: dict[str, int], dup: int = 0) -> Path:
    """Tiny PNG files (unique bytes each); `dup` lymphocyte files get a byte-identical twin."""
    root.mkdir(parents=True)
    k = 0
    for c, n in per_class.items():
        (root / c).mkdir()
        for i in range(n):
            data = b"\x89PNG\r\n\x1a\n" + k.to_bytes(4, "big")
            (root / c / f"{c}_{i:03d}.png").write_bytes(data)
            if c == "lymphocyte" and i < dup:
                (root / c / f"twin_{i:03d}.png").write_bytes(data)
            k += 1
    return root


def test_stratified_proportions(tmp_path):
    ds = read_folders(_tree(tmp_path / "d", {"lymphocyte": 100, "monocyte": 50, "basophil": 25}))
    m = make_split(ds, "64-16-20", seed=42)
    sizes = {s: len(v) for s, v in m.splits.items()}
    assert sum(sizes.values()) == 175
    assert sizes == {"train": 112, "val": 28, "test": 35}
    counts = m.counts()
    for c, n in (("lymphocyte", 100), ("monocyte", 50), ("basophil", 25)):
        assert abs(counts["test"][c] - 0.20 * n) <= 1
        assert abs(counts["val"][c] - 0.16 * n) <= 1
    # every image exactly once
    allp = [p for s in m.splits for p in m.paths(s)]
    assert len(allp) == len(set(allp)) == 175
    m2 = make_split(ds, "80-10-10", seed=42)
    assert {s: len(v) for s, v in m2.splits.items()} == {"train": 140, "val": 17, "test": 18}


def test_same_seed_same_manifest_different_seed_differs(tmp_path):
    ds = read_folders(_tree(tmp_path / "d", {"lymphocyte": 40, "monocyte": 40}))
    a, b, c = make_split(ds, seed=42), make_split(ds, seed=42), make_split(ds, seed=7)
    assert a.same_split(b)
    assert not a.same_split(c)
    # order of the reader's listing does not matter
    shuffled = Dataset(ds.name, ds.root, list(reversed(ds.images)), ds.format)
    assert make_split(shuffled, seed=42).same_split(a)


def test_duplicates_never_straddle(tmp_path):
    ds = read_folders(_tree(tmp_path / "d", {"lymphocyte": 30, "monocyte": 30}, dup=10))
    assert len(ds) == 70
    for seed in range(5):
        m = make_split(ds, seed=seed)
        where = {p: s for s in m.splits for p in m.paths(s)}
        assert len(m.duplicate_groups) == 10
        for i in range(10):
            assert where[f"lymphocyte/lymphocyte_{i:03d}.png"] == where[f"lymphocyte/twin_{i:03d}.png"]
        assert m.label_conflicts() == []


def test_manifest_roundtrip_and_subset(tmp_path):
    ds = read_folders(_tree(tmp_path / "d", {"lymphocyte": 10, "monocyte": 10}))
    m = make_split(ds, "80-10-10", seed=1)
    dest = save_manifest(m, tmp_path / "out" / "split.json")
    m2 = load_manifest(dest)
    assert m2.same_split(m) and m2.scheme == "80-10-10" and m2.seed == 1
    assert m2.bloodsmear_version and m2.created and m2.format == "folders"
    train = m2.subset(ds, "train")
    assert [im.path.relative_to(ds.root).as_posix() for im in train] == m2.paths("train")
    assert all(im.label == e["label"] for im, e in zip(train, m2.splits["train"]))
    with pytest.raises(KeyError, match="no split"):
        m2.subset(ds, "holdout")
    smaller = Dataset(ds.name, ds.root, ds.images[:5], ds.format)
    with pytest.raises(InputError, match="not in the dataset"):
        m2.subset(smaller, "train")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="bad.json"):
        load_manifest(tmp_path / "bad.json")


def test_tiny_and_rare_classes_still_split(tmp_path):
    ds = read_folders(_tree(tmp_path / "d", {"lymphocyte": 6, "basophil": 1, "monocyte": 2}))
    m = make_split(ds, "64-16-20", seed=42)
    assert sum(len(v) for v in m.splits.values()) == 9
    with pytest.raises(ValueError, match="valid: 64-16-20, 80-10-10"):
        make_split(ds, "50-50")


def test_stratify_label_multicell():
    im = AnnotatedImage("f.jpg", 10, 10, cells=[Cell("rbc", box=(0, 0, 1, 1)), Cell("monocyte", box=(0, 0, 1, 1)),
                                                Cell("lymphocyte", box=(0, 0, 1, 1)),
                                                Cell("lymphocyte", box=(0, 0, 1, 1))])
    assert stratify_label(im) == "lymphocyte"
    im2 = AnnotatedImage("g.jpg", 10, 10, cells=[Cell("wbc", box=(0, 0, 1, 1), subclass="eosinophil")])
    assert stratify_label(im2) == "eosinophil"
    im3 = AnnotatedImage("g.jpg", 10, 10, cells=[Cell("rbc", box=(0, 0, 1, 1)), Cell("rbc", box=(0, 0, 1, 1)),
                                                 Cell("wbc", box=(0, 0, 1, 1))])
    assert stratify_label(im3) == "wbc"
    assert stratify_label(AnnotatedImage("r.jpg", 9, 9, cells=[Cell("rbc", box=(0, 0, 1, 1))])) == "rbc"
    assert stratify_label(AnnotatedImage("h.jpg", 1, 1)) == "none"


@pytest.mark.realdata
def test_real_pbc_split_keeps_17_duplicate_pairs_together(data_root):
    from bloodsmear.data import load_dataset

    ds = load_dataset(need(data_root, "pbc224"), "pbc")
    m = make_split(ds, "64-16-20", 42)
    assert len(m.duplicate_groups) == 17
    where = {p: s for s in m.splits for p in m.paths(s)}
    assert len(where) == 17092
    for g in m.duplicate_groups:
        assert len({where[p] for p in g}) == 1
    # one pair of identical files is filed under two classes in PBC itself
    assert m.label_conflicts() == [[("eosinophil/EO_225902.jpg", "eosinophil"),
                                    ("neutrophil/BNE_191112.jpg", "neutrophil")]]
    n = {s: len(v) for s, v in m.splits.items()}
    assert abs(n["test"] - 0.2 * 17092) < 10 and abs(n["val"] - 0.16 * 17092) < 10
    test_counts = Counter(e["label"] for e in m.splits["test"])
    assert abs(test_counts["basophil"] - 0.2 * 1218) <= 2
    assert np.isclose(sum(test_counts.values()), n["test"])


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["bccd", "rv-pbs-annotations", "lisc"])
def test_real_multicell_and_small_sets_split(data_root, name):
    from bloodsmear.data import load_dataset

    ds = load_dataset(need(data_root, name))
    m = make_split(ds, "80-10-10", 42)
    paths = [p for s in m.splits for p in m.paths(s)]
    assert len(paths) == len(set(paths)) == len(ds)
    assert all(len(m.subset(ds, s)) == len(m.splits[s]) for s in m.splits)
    assert abs(len(m.splits["test"]) - 0.1 * len(ds)) <= 1


def test_seeded_sample_is_reproducible_ordered_and_bounded():
    from bloodsmear.data.splits import seeded_sample

    items = list(range(100))
    a, b = seeded_sample(items, 10, seed=3), seeded_sample(items, 10, seed=3)
    assert a == b and len(a) == 10 and a == sorted(a) and a != seeded_sample(items, 10, seed=4)
    assert seeded_sample(items, None) == items and seeded_sample(items, 500) == items


def test_per_class_sample_streams_keep_the_former_samples():
    """The three streams reproduce the samplers they replaced (prepare/domain_data, adapt, grid)."""
    import random

    from bloodsmear.data.splits import per_class_sample

    labels = list("abacbcaabbccaaab")
    rng = np.random.default_rng(5)
    want = []  # the former training/prepare._subsample at fraction 0.5, cap 2
    for c in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == c]
        n = min(max(1, int(round(len(idx) * 0.5))), 2)
        want += sorted(rng.choice(idx, size=n, replace=False).tolist()) if n < len(idx) else idx
    assert per_class_sample(labels, 2, 5, fraction=0.5) == sorted(want)
    rng = np.random.default_rng(5)  # the former experiments/adapt._subsample_idx, cap 2
    lab = np.array(labels)
    want = np.sort(np.concatenate([rng.permutation(np.flatnonzero(lab == c))[:2] for c in np.unique(lab)]))
    assert per_class_sample(labels, 2, 5, stream="permutation") == want.tolist()
    want = sorted(i for c in "abc"  # the former experiments/grid.select_subset, cap 2
                  for i in random.Random(f"5:{c}").sample([i for i, x in enumerate(labels) if x == c], 2))
    assert per_class_sample(labels, 2, 5, stream="per-label") == want
    assert per_class_sample(labels, None, 5) == list(range(len(labels)))
    with pytest.raises(ValueError, match="valid: shared, permutation, per-label"):
        per_class_sample(labels, 2, 5, stream="x")
