"""Tiles, the merge of per-tile instances and the mapping back to original pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bloodsmear.models.segmenter import cells_from_labels
from bloodsmear.preprocess.tiling import (Tile, cell_to_original, iter_tiles, merge_tile_cells, predict_tiled,
                                          shift_cell)
from bloodsmear.types import Cell


def _disc_image(h, w, discs):
    img = np.zeros((h, w), np.uint8)
    for x, y, r in discs:
        cv2.circle(img, (x, y), r, 255, -1)
    return img


def _threshold_predict(img):
    """A stand-in segmenter: one cell per connected bright component."""
    gray = img if img.ndim == 2 else img[..., 0]
    _, lab = cv2.connectedComponents((gray > 127).astype(np.uint8))
    return cells_from_labels(lab.astype(np.int32), (gray > 127).astype(np.float32))


def test_tiles_cover_the_image_with_overlap():
    tiles = list(iter_tiles(500, 700, 256, 64))
    cover = np.zeros((500, 700), int)
    for t in tiles:
        assert t.y1 - t.y0 <= 256 and t.x1 - t.x0 <= 256
        cover[t.slices] += 1
    assert cover.min() >= 1
    xs = sorted({t.x0 for t in tiles})
    assert all(b - a <= 256 - 64 for a, b in zip(xs, xs[1:]))
    assert list(iter_tiles(100, 120, 256, 64)) == [Tile(0, 100, 0, 120)]
    with pytest.raises(ValueError):
        list(iter_tiles(100, 100, 64, 64))


def test_cells_across_tile_borders_are_counted_once():
    discs = [(250, 250, 20), (120, 240, 18), (240, 130, 22), (400, 420, 15), (30, 30, 12), (470, 300, 20),
             (190, 190, 20), (330, 210, 20)]
    img = _disc_image(500, 520, discs)
    before = img.copy()
    whole = _threshold_predict(img)
    tiled = predict_tiled(_threshold_predict, img, size=200, overlap=60)
    assert np.array_equal(img, before)
    assert len(whole) == len(discs)
    assert len(tiled) == len(discs)
    # each kept instance is the complete disc, not a cut piece
    for c in tiled:
        x1, y1, x2, y2 = c.box
        assert any(abs((x1 + x2) / 2 - (x + 0.5)) < 1.5 and abs((x2 - x1) - (2 * r + 1)) <= 1 for x, y, r in discs)


def test_merge_prefers_whole_over_cut():
    m = np.ones((10, 10), bool)
    whole = Cell("wbc", box=(10, 10, 20, 20), mask=m, score=0.5)
    cut = Cell("wbc", box=(10, 10, 16, 20), mask=np.ones((10, 6), bool), score=0.9)
    t = Tile(0, 100, 0, 100)
    kept = merge_tile_cells([(cut, t, True), (whole, t, False)])
    assert len(kept) == 1 and kept[0] is whole


def test_shift_and_map_back_to_original():
    lab = np.zeros((60, 80), np.int32)
    cv2.circle(lab, (40, 30), 10, 1, -1)
    c = cells_from_labels(lab, (lab > 0).astype(np.float32))[0]
    assert c.box == (30.0, 20.0, 51.0, 41.0) and c.mask.shape == (21, 21)
    s = shift_cell(c, 5, 7)
    assert s.box == (35.0, 27.0, 56.0, 48.0) and np.allclose(s.polygon, c.polygon + [5, 7])
    # working scale = 0.25 x original (320 x 240 original)
    o = cell_to_original(c, 0.25, 0.25, 320, 240)
    assert o.box == (120.0, 80.0, 204.0, 164.0)
    assert o.mask.shape == (84, 84)
    cx, cy = o.polygon.mean(0)
    assert abs(cx - 162) < 2 and abs(cy - 122) < 2  # disc centre 40.5 * 4, 30.5 * 4 in pixel-edge terms
    full = np.zeros((240, 320), bool)
    full[80:164, 120:204] = o.mask
    ref = np.zeros((240, 320), np.uint8)
    cv2.circle(ref, (162, 122), 42, 1, -1)
    inter = (full & (ref > 0)).sum()
    assert inter / (full | (ref > 0)).sum() > 0.9
