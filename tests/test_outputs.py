"""Every output writer validated: paper JSON (schema), COCO (pycocotools), CVAT (round trip through
the reader), counts CSV (sums), overlays."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json

import cv2
import numpy as np
import pytest
from pipeline_fakes import make_field, make_pipeline

from bloodsmear.errors import InputError
from bloodsmear.outputs import paper_json
from bloodsmear.outputs.coco import to_coco_results, write_coco_results
from bloodsmear.outputs.counts import PERCENT_ROW, TOTAL_ROW, write_counts_csv
from bloodsmear.outputs.cvat import write_cvat_xml
from bloodsmear.outputs.overlay import render_overlay, write_overlay


@pytest.fixture(scope="module")
def results():
    pipe = make_pipeline(review_threshold=0.95)  # confidence 0.9 -> every cell flagged for review
    a = pipe.run(make_field(640, 480, [(100, 100, 30, "lymphocyte"), (400, 300, 40, "neutrophil")]),
                 "sub/a.jpg", scale=20)
    b = pipe.run(make_field(320, 240, [(160, 120, 35, "neutrophil")]), "b.png", scale=20)
    c = pipe.run(make_field(300, 200, []), "empty.png", scale=20)
    return [a, b, c]


def test_paper_json_follows_the_schema_and_reads_back(results, tmp_path):
    dest = paper_json.write_results_json(tmp_path / "results.json", [paper_json.image_record(r) for r in results],
                                         {"name": "test"})
    doc = json.loads(dest.read_text())
    assert set(doc) == {"data", "run"} and doc["run"]["format"] == "bloodsmear-results"
    assert doc["run"]["pipeline"] == {"name": "test"}
    assert list(doc["data"]) == ["0", "1", "2"]
    assert [doc["data"][k]["filename"] for k in ("0", "1", "2")] == ["sub/a.jpg", "b.png", "empty.png"]
    cell = doc["data"]["0"]["masks"][0]
    assert set(cell) >= {"class_name", "score", "bounding_box", "vertices", "screening_label", "screening_score",
                         "refined_label", "refined_score", "area", "review"}
    assert set(cell["bounding_box"]) == {"x1", "x2", "y1", "y2"} and cell["review"] is True
    back = paper_json.read_results_json(dest)
    assert [len(r.cells) for r in back] == [2, 1, 0]
    np.testing.assert_allclose(back[0].cells[0].polygon, results[0].cells[0].polygon, atol=0.01)
    assert back[0].cells[0].attributes["screening_label"] == results[0].cells[0].attributes["screening_label"]


@pytest.mark.parametrize("breakage", ["no_vertices", "score_above_1", "bad_box", "height_str"])
def test_schema_rejects_broken_documents(results, breakage):
    doc = paper_json.results_document([paper_json.image_record(r) for r in results])
    paper_json.validate(doc)
    bad = copy.deepcopy(doc)
    cell = bad["data"]["0"]["masks"][0]
    if breakage == "no_vertices":
        del cell["vertices"]
    elif breakage == "score_above_1":
        cell["score"] = 1.5
    elif breakage == "bad_box":
        cell["bounding_box"] = {"x1": 0, "y1": 0}
    else:
        bad["data"]["0"]["height"] = "480"
    with pytest.raises(InputError, match="data/0"):
        paper_json.validate(bad, path="results.json")


def test_coco_loads_in_pycocotools_and_scores_itself_perfectly(results, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path = write_coco_results(tmp_path / "coco.json", results, ["lymphocyte", "neutrophil", "monocyte"])
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
    assert len(gt.getImgIds()) == 3 and len(gt.getAnnIds()) == 3
    assert {c["name"] for c in gt.loadCats(gt.getCatIds())} == {"lymphocyte", "neutrophil", "monocyte"}
    assert gt.imgs[1]["file_name"] == "sub/a.jpg"
    ann = gt.loadAnns(gt.getAnnIds(imgIds=[2]))[0]
    assert ann["score"] == pytest.approx(0.9 * 0.9) and gt.annToMask(ann).sum() > 0.8 * np.pi * 35 ** 2
    dets = to_coco_results(results, ["monocyte"])["annotations"]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), "segm")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[1] == pytest.approx(1.0)


def test_cvat_round_trip_through_the_reader(results, tmp_path):
    from bloodsmear.data.cvat import read_cvat

    path = write_cvat_xml(tmp_path / "annotations.xml", results, ["monocyte"])
    ds = read_cvat(path)
    assert [im.path.relative_to(tmp_path).as_posix() for im in ds.images] == ["sub/a.jpg", "b.png", "empty.png"]
    assert [(im.width, im.height) for im in ds.images] == [(640, 480), (320, 240), (300, 200)]
    for im, r in zip(ds.images, results):
        assert len(im.cells) == len(r.cells)
        for got, want in zip(im.cells, r.cells):
            assert got.label == want.label
            assert got.score == pytest.approx(want.score, abs=1e-4)
            np.testing.assert_allclose(got.polygon, want.polygon, atol=0.01)
    assert "<name>monocyte</name>" in path.read_text()


def test_counts_csv_sums(results, tmp_path):
    path = write_counts_csv(tmp_path / "counts.csv", results, ["monocyte"])
    rows = list(csv.reader(path.open()))
    assert rows[0][0] == "level" and [r[0] for r in rows[1:]] == ["group"] * 5 + ["fine"] * 5
    assert [r[2:] for r in rows[1:6]] == [r[2:] for r in rows[6:]]  # a grouped model's levels agree
    header, body = rows[0][1:], [r[1:] for r in rows[1:6]]
    assert header == ["image", "lymphocyte", "monocyte", "neutrophil", "total", "review"]
    per_image = {r[0]: [float(v) for v in r[1:]] for r in body}
    assert per_image["sub/a.jpg"] == [1, 0, 1, 2, 2] and per_image["empty.png"] == [0, 0, 0, 0, 0]
    images = [v for k, v in per_image.items() if k not in (TOTAL_ROW, PERCENT_ROW)]
    assert per_image[TOTAL_ROW] == list(np.sum(images, axis=0)) == [1, 0, 2, 3, 3]
    pct = per_image[PERCENT_ROW]
    assert pct[:3] == pytest.approx([33.33, 0.0, 66.67]) and sum(pct[:3]) == pytest.approx(100, abs=0.02)


def test_overlay_draws_labels_adds_a_legend_and_downscales_big_photos(results, tmp_path):
    rgb = make_field(640, 480, [(100, 100, 30, "lymphocyte"), (400, 300, 40, "neutrophil")])
    before = rgb.copy()
    img = render_overlay(rgb, results[0])
    assert np.array_equal(rgb, before) and img.shape[0] == 480 and img.shape[1] > 640  # legend to the right
    assert np.array_equal(img[:, :640], render_overlay(rgb, results[0], legend=False))
    diff = np.any(img[:, :640] != rgb, axis=2)
    assert diff[100 - 30 - 4:100 - 30 + 4, 90:110].any()  # the outline at the top of the first disc
    assert diff[:100 - 32, 60:140].sum() > 50  # a label above it
    big = cv2.resize(rgb, (3200, 2400))
    big_res = make_pipeline().run(big, "big.jpg", scale=100)
    small = render_overlay(big, big_res, max_side=800, legend=False)
    assert small.shape == (600, 800, 3)
    out = write_overlay(tmp_path / "o" / "x.png", rgb, results[0], review_threshold=0.95)
    written = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(written, render_overlay(rgb, results[0], review_threshold=0.95))
    assert not list((tmp_path / "o").glob(".*"))  # no temp file left
