"""Instance post-processing (bloodsmear.models.instance_filter): merging one cell's split pieces,
keeping touching cells apart, dropping instances without a stained nucleus. Tiny synthetic images."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from bloodsmear.models.instance_filter import (
    FilterConfig,
    drop_unstained,
    merge_split_instances,
    nucleus_areas,
    purple_index,
    solidity,
    touching_saddles,
)
from bloodsmear.models.segmenter import FastSegConfig, instances_from_maps
from bloodsmear.settings import ZOO_DIR

RBC_D = 10.0  # red-cell diameter (px) of these tiny scenes: a WBC disc of radius 10 is 4 red-cell areas

BACKGROUND = (235, 230, 228)
RBC = (205, 150, 160)  # pink red cell
NUCLEUS = (95, 50, 140)  # purple (Romanowsky) nucleus
GREY = (110, 110, 110)  # dark dirt, no stain


def _cone(h, w, x, y, r):
    yy, xx = np.mgrid[:h, :w]
    d = np.hypot(xx - x, yy - y)
    return np.clip(1 - d / r, 0, 1).astype(np.float32), d <= r


def _split_disc(h=60, w=60, x=30, y=30, r=10):
    """One disc cut into a left and a right half (labels 1, 2) with its single centredness cone."""
    cen, disc = _cone(h, w, x, y, r)
    lab = np.zeros((h, w), np.int32)
    xx = np.mgrid[:h, :w][1]
    lab[disc & (xx < x)] = 1
    lab[disc & (xx >= x)] = 2
    return lab, cen


def _two_discs(h=60, w=80, r=10, gap=0):
    """Two touching discs (labels 1, 2), each with its own cone: the centredness dips to 0 between them."""
    x1, x2 = 25, 25 + 2 * r + gap
    c1, d1 = _cone(h, w, x1, 30, r)
    c2, d2 = _cone(h, w, x2, 30, r)
    lab = np.zeros((h, w), np.int32)
    lab[d1] = 1
    lab[d2 & ~d1] = 2
    return lab, np.maximum(c1, c2)


# ------------------------------------------------------------------------------------------- merge


def test_two_halves_of_one_disc_are_merged_inputs_untouched():
    lab, cen = _split_disc()
    before = (lab.copy(), cen.copy())
    out = merge_split_instances(lab, cen, RBC_D)
    assert np.array_equal(lab, before[0]) and np.array_equal(cen, before[1])
    assert out.max() == 1 and ((out > 0) == (lab > 0)).all() and out.dtype == np.int32


def test_two_touching_wbc_size_discs_stay_two():
    lab, cen = _two_discs()
    assert touching_saddles(lab, cen)  # they do touch
    out = merge_split_instances(lab, cen, RBC_D)
    assert out.max() == 2 and (out[lab == 1] == out[30, 25]).all() and out[30, 25] != out[30, 45]


def test_merge_off_by_zero_dynamics_and_capped_by_size_and_shape():
    lab, cen = _split_disc()
    assert merge_split_instances(lab, cen, RBC_D, dynamics=0.0).max() == 2
    # the union is 4 red-cell areas: a cap of 3 keeps the halves apart
    assert merge_split_instances(lab, cen, RBC_D, max_area_rbc=3.0).max() == 2
    assert merge_split_instances(lab, cen, RBC_D, max_area_rbc=5.0).max() == 1
    # two touching discs with a (fake) flat centredness: no dip, but the union is a figure 8 (solidity ~0.9)
    lab2, _ = _two_discs()
    flat = (lab2 > 0).astype(np.float32) * 0.6
    assert merge_split_instances(lab2, flat, RBC_D, min_solidity=0.95).max() == 2
    assert merge_split_instances(lab2, flat, RBC_D, min_solidity=0.5).max() == 1


def test_three_pieces_of_one_cell_merge_into_one():
    cen, disc = _cone(60, 60, 30, 30, 12)
    yy, xx = np.mgrid[:60, :60]
    ang = np.arctan2(yy - 30, xx - 30)
    lab = np.where(disc, 1 + ((ang + np.pi) // (2 * np.pi / 3)).astype(np.int32) % 3, 0).astype(np.int32)
    assert lab.max() == 3
    assert merge_split_instances(lab, cen, RBC_D).max() == 1


def test_watershed_split_of_one_cell_is_merged_by_instances_from_maps():
    """A cell whose centredness has two bumps with a shallow dip: two markers, one instance after merging."""
    h, w = 60, 80
    disc = _cone(h, w, 40, 30, 16)[1]
    bumps = np.maximum(_cone(h, w, 36, 30, 16)[0], _cone(h, w, 44, 30, 16)[0]) * disc  # dip to 0.75 between peaks 1
    fg = disc.astype(np.float32)
    assert instances_from_maps(fg, bumps, center_threshold=0.8).max() == 2
    one = instances_from_maps(fg, bumps, center_threshold=0.8, merge=FilterConfig(merge_dynamics=0.3),
                              rbc_diameter_px=RBC_D)
    assert one.max() == 1
    # two real touching cells through the same function stay two
    lab2, cen2 = _two_discs()
    kept = instances_from_maps((lab2 > 0).astype(np.float32), cen2, merge=FilterConfig(), rbc_diameter_px=RBC_D)
    assert kept.max() == 2


def test_a_tiny_blob_is_dropped_relative_to_the_red_cell_size():
    """min_area_rbc (0.35 red-cell areas in the shipped model): a platelet-size blob goes, a WBC stays."""
    cfg = FastSegConfig(min_area_rbc=0.35)
    for scale in (1, 3):
        h, w = 40 * scale, 80 * scale
        wbc_c, wbc = _cone(h, w, 20 * scale, 20 * scale, 8 * scale)  # 2.6 red-cell areas
        plt_c, plt = _cone(h, w, 60 * scale, 20 * scale, 2 * scale)  # 0.16 red-cell areas
        fg = (wbc | plt).astype(np.float32)
        min_area = cfg.min_area_rbc * np.pi / 4 * (RBC_D * scale) ** 2
        lab = instances_from_maps(fg, np.maximum(wbc_c, plt_c), min_area=min_area, merge=cfg.filter_config(),
                                  rbc_diameter_px=RBC_D * scale)
        assert lab.max() == 1 and lab[20 * scale, 20 * scale] == 1 and lab[20 * scale, 60 * scale] == 0


def test_solidity_and_saddles():
    disc = _cone(40, 40, 20, 20, 12)[1]
    assert solidity(disc) > 0.95 and solidity(np.zeros((5, 5), bool)) == 0.0
    ell = np.zeros((30, 30), bool)
    ell[:, :8] = True
    ell[-8:, :] = True
    assert solidity(ell) < 0.7
    lab = np.array([[1, 1, 2, 0, 3]], np.int32)
    cen = np.array([[0.9, 0.5, 0.7, 0.0, 0.4]], np.float32)
    assert touching_saddles(lab, cen) == {(1, 2): pytest.approx(0.5)}


# ------------------------------------------------------------------------------------------- stain


def _scene(scale: int = 1):
    """Background, two pink red cells, and four candidate instances: a WBC (purple nucleus), a grey
    blob, a red cell, a loose clump of tiny purple dots (platelets). Returns (rgb, lab)."""
    s = scale
    rgb = np.empty((60 * s, 120 * s, 3), np.uint8)
    rgb[:] = BACKGROUND
    lab = np.zeros(rgb.shape[:2], np.int32)
    for x in (100, 110):
        cv2.circle(rgb, (x * s, 50 * s), 5 * s, RBC, -1)
    cv2.circle(rgb, (15 * s, 15 * s), 10 * s, (190, 170, 215), -1)  # WBC cytoplasm
    cv2.circle(rgb, (15 * s, 15 * s), 6 * s, NUCLEUS, -1)
    cv2.circle(lab, (15 * s, 15 * s), 10 * s, 1, -1)
    cv2.circle(rgb, (45 * s, 15 * s), 7 * s, GREY, -1)
    cv2.circle(lab, (45 * s, 15 * s), 7 * s, 2, -1)
    cv2.circle(rgb, (75 * s, 15 * s), 6 * s, RBC, -1)
    cv2.circle(lab, (75 * s, 15 * s), 6 * s, 3, -1)
    for dx, dy in ((-4, -3), (3, -4), (0, 2), (-3, 4), (4, 3)):
        cv2.circle(rgb, ((15 + dx) * s, (45 + dy) * s), s, NUCLEUS, -1)
    cv2.circle(lab, (15 * s, 45 * s), 7 * s, 4, -1)
    return rgb, lab


def test_only_the_instance_with_a_stained_nucleus_is_kept_inputs_untouched():
    rgb, lab = _scene()
    before = (rgb.copy(), lab.copy())
    out = drop_unstained(lab, rgb, RBC_D)
    assert np.array_equal(rgb, before[0]) and np.array_equal(lab, before[1])
    assert out.max() == 1 and (out[lab == 1] == 1).all() and (out[lab != 1] == 0).all()
    nuc = nucleus_areas(lab, rgb)
    assert nuc[1] > 0.45 * np.pi / 4 * RBC_D ** 2  # the nucleus: ~1.4 red-cell areas
    assert nuc[2] == 0 and nuc[3] == 0 and 0 < nuc[4] < nuc[1] / 3


def test_stain_rule_is_relative_to_the_red_cell_scale():
    """The same scene at twice the magnification (red cells twice as wide) gives the same decisions."""
    rgb, lab = _scene(scale=2)
    out = drop_unstained(lab, rgb, 2 * RBC_D)
    assert out.max() == 1 and (out[lab == 1] == 1).all()
    # judged with red cells 4x too small, the platelet clump's dots add up to enough "nucleus"
    assert drop_unstained(lab, rgb, RBC_D / 2).max() == 2


def test_stain_rule_off_and_size_mismatch():
    rgb, lab = _scene()
    assert drop_unstained(lab, rgb, RBC_D, min_nucleus_rbc=0).max() == 4
    with pytest.raises(ValueError):
        drop_unstained(lab[:10], rgb, RBC_D)


def test_purple_index_is_relative_to_the_red_cells():
    rgb, lab = _scene()
    p = purple_index(rgb, lab > 0)
    assert abs(float(np.median(p[45:55, 96:114][(rgb[45:55, 96:114] == RBC).all(-1)]))) < 0.05  # red cells ~0
    assert p[15, 15] > 0.5 and abs(p[15, 45]) < 0.1  # nucleus high, grey neutral


# ------------------------------------------------------------------------------------------- config


def test_thresholds_come_from_the_model_config_with_documented_defaults():
    cfg = FastSegConfig.from_dict({"min_nucleus_rbc": 0.0, "merge_dynamics": 0.2})
    f = cfg.filter_config()
    assert f.min_nucleus_rbc == 0.0 and f.merge_dynamics == 0.2
    assert FastSegConfig().filter_config() == FilterConfig()
    shipped = json.loads((ZOO_DIR / "wbc-seg-fast" / "config.json").read_text())
    for k in ("merge_dynamics", "merge_max_area_rbc", "merge_min_solidity", "min_nucleus_rbc", "stain_threshold"):
        assert k in shipped
