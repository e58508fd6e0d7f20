"""Training masks (classical whole-cell segmentation), composite fields and the field cache."""

from __future__ import annotations

import numpy as np

from bloodsmear.training.seg_data import FieldDataConfig, SegField, _load, _save, SourceStats, paste_cells
from bloodsmear.training.seg_masks import central_wbc, nucleus_in_region, whole_cell_mask
from bloodsmear.training.synthetic_fields import synthetic_field
from tests.conftest import need


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def test_whole_cell_mask_in_a_box_covers_the_wbc():
    f = synthetic_field(200, 260, 24.0, wbc=[(130, 100, 48)], seed=1)
    before = f.image.copy()
    m = whole_cell_mask(f.image, (100, 70, 160, 130))
    assert np.array_equal(f.image, before)
    assert _iou(m, f.labels == 1) > 0.8
    nuc = nucleus_in_region(f.image, (100, 70, 160, 130))
    assert nuc.sum() < 0.6 * (f.labels == 1).sum() and (nuc & (f.labels == 1)).sum() == nuc.sum()


def test_whole_cell_mask_empty_without_nucleus():
    f = synthetic_field(200, 260, 24.0, wbc=[(200, 150, 40)], n_rbc=0, seed=2)
    assert not whole_cell_mask(f.image, (10, 10, 60, 60)).any()  # a box of bare background
    assert not whole_cell_mask(f.image, (10, 10, 12, 60)).any()  # a degenerate box


def test_central_wbc_finds_the_off_centre_wbc():
    f = synthetic_field(240, 320, 20.0, wbc=[(70, 60, 38)], seed=4)  # far from the centre
    m = central_wbc(f.image, 20.0)
    assert _iou(m, f.labels == 1) > 0.8


def test_paste_cells_labels_new_instances_without_overlap():
    bg = synthetic_field(200, 260, 24.0, wbc=[(60, 60, 44)], seed=3)
    cell = synthetic_field(60, 60, 24.0, wbc=[(30, 30, 44)], n_rbc=0, seed=5)
    ys, xs = np.nonzero(cell.labels)
    crop = cell.image[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    mk = cell.labels[ys.min():ys.max() + 1, xs.min():xs.max() + 1] > 0
    fld = SegField(bg.image, bg.labels, "bccd", "bg")
    out = paste_cells(fld, [(crop, mk, "neutrophil")], 3, np.random.default_rng(0), "c")
    assert out.labels.max() >= 2 and out.source == "composite"
    assert np.array_equal(out.labels == 1, bg.labels == 1)  # the field's own WBC is untouched
    assert np.array_equal(fld.image, bg.image)  # the background field is not modified
    for k in range(2, out.labels.max() + 1):
        assert (out.labels == k).sum() > 0.4 * mk.sum()


def test_cache_round_trip(tmp_path):
    f = synthetic_field(50, 60, 20.0, seed=0)
    st = SourceStats("bccd", "train", fields=1, instances=1)
    _save(tmp_path / "x.npz", [SegField(f.image, f.labels, "bccd", "a")], st)
    got, st2 = _load(tmp_path / "x.npz")
    assert np.array_equal(got[0].image, f.image) and np.array_equal(got[0].labels, f.labels)
    assert st2.instances == 1 and got[0].name == "a"
    a, b = FieldDataConfig(), FieldDataConfig(composites_per_field=5)
    assert a.key("bccd", "train") == b.key("bccd", "train") and a.key("composite", "train") != b.key("composite", "train")
    assert a.key("bccd", "train") != a.key("bccd", "val")


def test_bccd_classical_masks_cover_the_nucleus_masks(data_root):
    need(data_root, "bccd", "nucleus_masks")
    from bloodsmear.training.seg_data import check_bccd_masks

    r = check_bccd_masks(data_root, "test", limit=6)
    assert r.fields >= 4 and r.empty_masks == 0
    assert r.nucleus_inside_fraction > 0.75 and r.mean_iou > 0.7
