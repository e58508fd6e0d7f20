"""Framing a cell by its own outline (docs/framing.md): crops that do not depend on magnification or
framing, `classify`'s cell framing (no cell found is reported), `--framing centre` as before."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from pipeline_fakes import DiscSegmenter
from typer.testing import CliRunner

from bloodsmear.experiments.bench_framing import condition_image
from bloodsmear.inference.classify import NO_CELL, CellClassifier, classify_paths, write_predictions
from bloodsmear.inference.pipeline import Pipeline
from bloodsmear.inference.pipeline_config import PipelineConfig
from bloodsmear.inference.single_cell import CellFramer, central_cell
from bloodsmear.inference.stages import crop_cells
from bloodsmear.preprocess.cells import FRAME_CELL_K, frame_cell, frame_side, outline_diameter
from bloodsmear.preprocess.resize import resize_square
from bloodsmear.preprocess.transforms import fit_image
from bloodsmear.types import Cell

BG = (235, 215, 220)


def render_cell(side: int, r: float, *, centre: tuple[float, float] | None = None) -> np.ndarray:
    """A pale field of `side` px with one 'WBC' of radius `r`: a purple disc with an off-centre dark
    nucleus (so a wrong framing or a mirror shows)."""
    img = np.empty((side, side, 3), np.uint8)
    img[:] = BG
    cx, cy = centre or (side / 2, side / 2)
    sh = 4  # sub-pixel drawing: discs of any radius stay round
    c = (int(round(cx * 2 ** sh)), int(round(cy * 2 ** sh)))
    cv2.circle(img, c, int(round(r * 2 ** sh)), (150, 110, 190), -1, cv2.LINE_AA, sh)
    n = (int(round((cx + 0.35 * r) * 2 ** sh)), int(round((cy - 0.2 * r) * 2 ** sh)))
    cv2.circle(img, n, int(round(0.45 * r * 2 ** sh)), (60, 30, 110), -1, cv2.LINE_AA, sh)
    return img


def fake_framer(**kw) -> CellFramer:
    """The framer with a thresholding segmenter (tests/pipeline_fakes.DiscSegmenter), outline framing."""
    return CellFramer(Pipeline(DiscSegmenter(20.0), ColourFree(), None, PipelineConfig(scale=20.0)),
                      use_rbc=False, **kw)


class ColourFree:
    classes = ("wbc",)

    def predict_proba(self, crops):
        return np.ones((len(crops), 1))


def _views(base: int = 120, r: float = 20.0):
    """The same cell at scales 0.5-2x and with the field padded / cut by 30 %."""
    out = {f"{s}x": render_cell(round(base * s), r * s) for s in (0.5, 0.75, 1.0, 1.5, 2.0)}
    out["pad +30%"] = render_cell(round(base * 1.3), r)
    out["cut -30%"] = render_cell(round(base * 0.7), r)
    return out


def test_outline_framing_is_invariant_to_scale_and_padding():
    framer = fake_framer()
    views = _views(160, 26.0)
    crops = {k: resize_square(framer(v), 64).astype(float) for k, v in views.items()}
    diff = {k: np.abs(c - crops["1.0x"]).mean() for k, c in crops.items()}  # grey levels, of 255
    assert max(diff.values()) < 3.5, diff  # equal up to resampling (the outline is whole pixels)
    assert diff["pad +30%"] < 0.5 and diff["cut -30%"] < 0.5
    # the old framing (the model's centre square of the image) is not: the cell's share of the input moves
    old = {k: np.abs(fit_image(v, 64, 0.8).astype(float) - fit_image(views["1.0x"], 64, 0.8)).mean()
           for k, v in views.items()}
    assert old["pad +30%"] > 4.0 and old["cut -30%"] > 3 * max(diff.values()), old


def test_frame_side_rules():
    cell = Cell("wbc", polygon=np.array([[0, 0], [40, 0], [40, 40], [0, 40]], float))
    d = outline_diameter(cell)
    assert d == pytest.approx(np.sqrt(4 * 1600 / np.pi))
    assert frame_side(cell) == pytest.approx(FRAME_CELL_K * d)
    assert frame_side(cell, k=2.0) == pytest.approx(2 * d)
    assert frame_side(cell, rbc_px=20.0, frame_rbc=5.0) == pytest.approx(100.0)  # reliable red cells: PBC framing
    assert frame_side(cell, rbc_px=100.0, frame_rbc=5.0) == pytest.approx(160.0)  # kept within 4 box sides
    rgb = np.full((100, 100, 3), 200, np.uint8)
    before = rgb.copy()
    crop = frame_cell(rgb, cell, k=2.0)
    assert crop.shape[:2] == (round(2 * d), round(2 * d)) and np.array_equal(rgb, before)


def test_crop_cells_frame_cell_option_and_default_unchanged():
    rgb = render_cell(200, 20)
    cell = DiscSegmenter().predict(rgb)[0]
    framed, = crop_cells(rgb, [cell], rbc_px=None, frame_cell=3.0)
    assert framed.shape[0] == round(3.0 * outline_diameter(cell))
    boxed, = crop_cells(rgb, [cell], rbc_px=None)  # without frame_cell: box + 15 % as before
    x1, y1, x2, y2 = cell.box
    assert boxed.shape[0] == round(max(x2 - x1, y2 - y1) * 1.3)
    by_rbc, = crop_cells(rgb, [cell], rbc_px=12.0, frame_rbc=5.0, frame_cell=3.0)  # red cells take precedence
    assert by_rbc.shape[0] == 60


def test_central_cell_prefers_the_cell_at_the_centre():
    big = Cell("wbc", box=(0, 0, 40, 40), polygon=np.array([[0, 0], [40, 0], [40, 40], [0, 40]], float))
    mid = Cell("wbc", box=(45, 45, 55, 55), polygon=np.array([[45, 45], [55, 45], [55, 55], [45, 55]], float))
    assert central_cell([big, mid], 100, 100) is mid
    assert central_cell([big], 100, 100) is big
    assert central_cell([], 100, 100) is None


def _write(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def test_classify_reports_an_image_without_a_cell(tmp_path):
    _write(tmp_path / "cells" / "a.png", render_cell(120, 20))
    _write(tmp_path / "cells" / "empty.png", np.full((120, 120, 3), BG, np.uint8))
    res = classify_paths([tmp_path / "cells"], model="default", progress=False, framer=fake_framer())
    by = {p.path.rsplit("/", 1)[-1]: p for p in res.predictions}
    assert by["empty.png"].status == NO_CELL and by["empty.png"].label == "" and not by["empty.png"].probs
    assert by["a.png"].status == "ok" and by["a.png"].label in res.classes
    assert res.no_cell == [by["empty.png"].path] and res.framing == "cell"
    rows = list(csv.reader(write_predictions(res, tmp_path / "p.csv").open()))
    assert rows[0][-1] == "status" and {r[-1] for r in rows[1:]} == {"ok", NO_CELL}
    js = json.loads(write_predictions(res, tmp_path / "p.json").read_text())
    assert js["no_cell"] == 1 and js["framing"] == "cell"


def test_framing_centre_reproduces_the_old_output(tmp_path):
    from bloodsmear.cli.main import app

    folder = tmp_path / "cells"
    imgs = [render_cell(96 + 8 * i, 16 + 3 * i) for i in range(3)]
    for i, im in enumerate(imgs):
        _write(folder / f"c{i}.png", im)
    out = tmp_path / "centre.csv"
    r = CliRunner().invoke(app, ["classify", str(folder), "--framing", "centre", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    clf = CellClassifier.load("default")
    probs = clf.predict_proba(imgs)  # the old path: each image as it is, the model's centre square
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["path", "label", "confidence", *[f"p_{c}" for c in clf.classes]]  # no status column
    for row, p in zip(rows[1:], probs):
        assert row[1] == clf.classes[int(p.argmax())]
        assert [float(v) for v in row[3:]] == pytest.approx(p.tolist(), abs=2e-6)
    old = classify_paths([folder], model="default", progress=False)  # the library's default: centre framing
    assert write_predictions(old, tmp_path / "old.csv").read_text() == out.read_text()
    js = old.to_dict()
    assert "framing" not in js and "status" not in js["predictions"][0]


def test_bench_conditions_pad_in_border_colour_and_cut():
    rgb = render_cell(100, 20)
    padded, cut = condition_image(rgb, "frame", 1.3), condition_image(rgb, "frame", 0.7)
    assert padded.shape[:2] == (130, 130) and tuple(padded[0, 0]) == BG
    assert cut.shape[:2] == (70, 70) and condition_image(rgb, "scale", 0.5).shape[:2] == (50, 50)


@pytest.mark.realdata
def test_pbc_cells_found_and_framed_alike_at_1x_and_2x(data_root):
    from conftest import need

    from bloodsmear.experiments.bench_framing import pbc_sample

    need(data_root, "pbc224")
    clf = CellClassifier.load("default")
    sample = pbc_sample(data_root / "pbc224", clf.loaded.path / "split.json", "test", 12, seed=1)
    framer = CellFramer.from_pipeline("default")
    from bloodsmear.io import read_image

    imgs = [read_image(p) for p, _ in sample]
    one = [framer(im) for im in imgs]
    two = [framer(condition_image(im, "scale", 2.0)) for im in imgs]
    assert all(c is not None for c in one + two)
    for a, b in zip(one, two):  # a PBC image's WBC framed to about the image itself (k = the median framing)
        assert 1.7 < b.shape[0] / a.shape[0] < 2.3
    la = clf.predict_proba(one).argmax(1)
    lb = clf.predict_proba(two).argmax(1)
    assert (la == lb).mean() >= 10 / 12
    truth = [clf.classes.index(lab) for _, lab in sample]
    assert (la == np.array(truth)).mean() >= 0.75
