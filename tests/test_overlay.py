"""Overlays: label placement (never two labels overlapping, never outside the image), the label text, the
class colours (one home, distinct) and the legend panel beside the field."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bloodsmear.classes import ALL_CLASSES
from bloodsmear.outputs.labels import place_labels
from bloodsmear.outputs.overlay import (
    CLASS_COLOURS,
    LEGEND_BG,
    REVIEW_COLOUR,
    class_colour,
    class_colour_hex,
    label_lines,
    legend_rows,
    render_overlay,
)
from bloodsmear.types import Cell, SlideResult


def _overlaps(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def _crowd(seed: int, n: int, iw: int, ih: int):
    rng = np.random.default_rng(seed)
    r = rng.uniform(8, 40, n)
    cx, cy = rng.uniform(0, iw, n), rng.uniform(0, ih, n)  # some cells cut by the image border
    boxes = [(float(x - s), float(y - s), float(x + s), float(y + s)) for x, y, s in zip(cx, cy, r)]
    sizes = [(float(rng.uniform(20, 140)), float(rng.uniform(10, 34))) for _ in range(n)]
    return boxes, sizes


@pytest.mark.parametrize("seed,n", [(0, 50), (1, 150), (2, 400)])
def test_crowded_labels_never_overlap_and_stay_inside_the_image(seed, n):
    iw, ih = 640, 480
    boxes, sizes = _crowd(seed, n, iw, ih)
    before = (list(boxes), list(sizes))
    places = place_labels(boxes, sizes, (iw, ih))
    assert (boxes, sizes) == before  # inputs untouched
    assert places == place_labels(boxes, sizes, (iw, ih))  # deterministic
    rects = [(x, y, x + np.ceil(w), y + np.ceil(h)) for p, (w, h) in zip(places, sizes) if p is not None
             for x, y in [p]]
    assert len(rects) >= min(n, 40)  # crowded, but most labels still find a place
    for x1, y1, x2, y2 in rects:
        assert 0 <= x1 and 0 <= y1 and x2 <= iw and y2 <= ih
    for a, b in itertools.combinations(rects, 2):
        assert not _overlaps(a, b), (a, b)


def test_a_lone_label_sits_just_above_its_cell_and_avoids_a_neighbour():
    assert place_labels([(100, 100, 160, 160)], [(50, 12)], (640, 480), gap=2) == [(100, 86)]
    # A cell right above: the label goes below instead of covering it.
    got = place_labels([(100, 100, 160, 160), (100, 60, 160, 98)], [(50, 12), (1, 1)], (640, 480),
                       priority=[1, 0], gap=2)
    assert got[0] == (100, 162)


def test_labels_respect_taken_rectangles_priority_and_drop_when_nothing_is_free():
    # Two cells compete for the only free place of a tiny image: the higher priority gets it.
    boxes, sizes = [(0, 0, 10, 10), (0, 0, 10, 10)], [(30, 20), (30, 20)]
    assert place_labels(boxes, sizes, (30, 20), priority=[0, 1]) == [None, (0, 0)]
    assert place_labels(boxes[:1], sizes[:1], (30, 20), taken=[(20, 10, 25, 15)]) == [None]
    assert place_labels([(0, 0, 5, 5)], [(50, 5)], (40, 40)) == [None]  # wider than the image
    with pytest.raises(ValueError):
        place_labels(boxes, sizes[:1], (30, 20))


def _cell(label, x, y, r=20, score=0.9, screen=None, review=False) -> Cell:
    t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    return Cell(label, polygon=np.c_[x + r * np.cos(t), y + r * np.sin(t)], score=score,
                attributes={"screening_label": screen or label, "screening_score": score, "review": review})


def test_label_shows_the_screening_class_only_when_it_differs_and_a_question_mark_when_flagged():
    assert label_lines(_cell("neutrophil", 50, 50, score=0.82, screen="ig")) == ["neutrophil 0.82",
                                                                                 "(screen: ig)"]
    assert label_lines(_cell("band_cell", 50, 50, score=0.4, review=True)) == ["band cell 0.40 ?"]


def test_every_class_has_its_own_stable_colour():
    assert set(ALL_CLASSES) <= set(CLASS_COLOURS)
    colours = list(CLASS_COLOURS.values())
    assert len(set(colours)) == len(colours) and REVIEW_COLOUR not in colours
    assert class_colour_hex("neutrophil") == "#%02x%02x%02x" % CLASS_COLOURS["neutrophil"]
    assert class_colour("a_lab_class") == class_colour("a_lab_class")  # unknown names: stable too


def test_legend_names_counts_the_flag_and_the_threshold():
    res = SlideResult("f.jpg", 300, 200, [_cell("neutrophil", 50, 50, review=True), _cell("neutrophil", 150, 50),
                                          _cell("lymphocyte", 100, 150)], meta={"review_threshold": 0.6})
    rows = legend_rows(res, [(3, "lymphocyte 0.90", True)], res.meta["review_threshold"])
    swatches = [(c, t) for k, c, t in rows if k == "swatch"]
    assert swatches == [(class_colour("neutrophil"), "neutrophil  2"), (class_colour("lymphocyte"), "lymphocyte  1")]
    text = "\n".join(t for _, _, t in rows)
    assert "? flagged for review (1)" in text and "below 0.60" in text and "(screen: X)" in text
    assert "#3 lymphocyte 0.90" in text
    assert "below the review threshold" in "\n".join(t for _, _, t in legend_rows(res))


def test_overlay_outlines_by_class_rings_flagged_cells_and_keeps_the_legend_off_the_field():
    rgb = np.full((200, 300, 3), 230, np.uint8)
    cells = [_cell("neutrophil", 60, 60, review=True), _cell("lymphocyte", 200, 120)]
    res = SlideResult("f.jpg", 300, 200, cells, meta={"review_threshold": 0.6})
    img = render_overlay(rgb, res)
    field, panel = img[:, :300], img[:, 300:]
    assert img.shape[0] == 200 and panel.shape[1] > 100
    on_lympho = field[118:123, 218:223].reshape(-1, 3)  # the lymphocyte outline at its right edge
    assert (on_lympho == class_colour("lymphocyte")).all(axis=1).any()
    ring = field[55:66, 35:45].reshape(-1, 3)  # just outside the flagged neutrophil's left edge
    assert (ring == REVIEW_COLOUR).all(axis=1).any()
    assert not (field[40:80, 260:300] == REVIEW_COLOUR).all(axis=2).any()  # nothing flagged over there
    for colour in (class_colour("neutrophil"), class_colour("lymphocyte"), REVIEW_COLOUR):  # swatches
        assert (panel == colour).all(axis=2).any()
    assert (panel == LEGEND_BG).all(axis=2).mean() > 0.6


def test_crowded_overlay_numbers_the_cells_whose_label_does_not_fit():
    rgb = np.full((120, 160, 3), 230, np.uint8)
    cells = [_cell("neutrophil", 12 + 22 * (i % 7), 12 + 22 * (i // 7), r=9) for i in range(35)]
    res = SlideResult("crowd.jpg", 160, 120, cells)
    img = render_overlay(rgb, res)
    assert img.shape[0] == 120 and img.shape[1] > 160  # renders; the legend grew columns for the list
    assert img.shape[1] > render_overlay(rgb, SlideResult("c.jpg", 160, 120, cells[:1])).shape[1]
