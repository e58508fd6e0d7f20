"""Real-data checks of the shipped default pipeline on a few BCCD and LISC fields (skipped without the
data or before the shipped models exist)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import need

from bloodsmear.settings import ZOO_DIR

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def default_pipeline():
    from bloodsmear.errors import InputError
    from bloodsmear.inference.pipeline import Pipeline
    from bloodsmear.inference.pipeline_config import PipelineConfig

    cfg = PipelineConfig.load(os.environ.get("BLOODSMEAR_TEST_PIPELINE", "default"))  # env: try a candidate
    if not Path(cfg.segmenter).is_absolute() and not (ZOO_DIR / cfg.segmenter / "config.json").is_file():
        pytest.skip(f"shipped segmenter {cfg.segmenter} not there yet")
    try:
        return Pipeline.from_config(cfg)
    except (InputError, ImportError) as e:
        pytest.skip(f"shipped pipeline not loadable yet: {e}")


def test_bccd_fields_end_to_end(default_pipeline, data_root, tmp_path):
    from bloodsmear.data import load_dataset
    from bloodsmear.geometry import box_iou
    from bloodsmear.inference.batch import analyze
    from bloodsmear.outputs.paper_json import validate

    root = need(data_root, "bccd")
    ds = load_dataset(root, "voc")
    test = set(ds.splits["test"])
    fields = [im for im in ds.images if im.path.stem in test][:6]
    s = analyze([im.path for im in fields], tmp_path / "out", default_pipeline, progress=False)
    assert s.n_analysed == len(fields) and s.n_skipped == 0
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    validate(doc)
    by_name = {im["filename"]: im for im in doc["data"].values()}
    found = total = 0
    for im in fields:
        pred = by_name[im.path.name]
        assert (pred["width"], pred["height"]) == (im.width, im.height)
        assert 40 < pred["rbc_diameter_px"] < 160  # BCCD red cells are ~90 px
        boxes = [(c["bounding_box"]["x1"], c["bounding_box"]["y1"], c["bounding_box"]["x2"], c["bounding_box"]["y2"])
                 for c in pred["masks"]]
        for g in (c for c in im.cells if c.label == "wbc"):
            total += 1
            found += any(box_iou(g.box, b) >= 0.5 for b in boxes)
    assert total and found / total >= 0.8


def test_lisc_fields_find_their_one_wbc(default_pipeline, data_root):
    from bloodsmear.io import read_image

    root = need(data_root, "lisc")
    files = [sorted((root / c).glob("*.jpg"))[0] for c in ("basophil", "lymphocyte", "neutrophil")]
    for f in files:
        res = default_pipeline.run(read_image(f), f.name)
        assert len(res.cells) >= 1, f
        assert all(c.attributes["screening_label"] for c in res.cells)
