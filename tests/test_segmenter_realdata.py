"""The shipped fast segmenter on real BCCD test fields and a real LISC field (skipped without data)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bloodsmear.settings import ZOO_DIR
from tests.conftest import need

MODEL = ZOO_DIR / "wbc-seg-fast"

pytestmark = [pytest.mark.usefixtures("torch_one_thread"),
              pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason="wbc-seg-fast not shipped")]


def test_shipped_model_finds_bccd_test_wbcs(data_root):
    need(data_root, "bccd", "ImageSets", "Main", "test.txt")
    from bloodsmear.evaluation.pipeline_eval import evaluate_pipeline

    floor = json.loads((MODEL / "config.json").read_text())["metrics"]["test_recall_floor"]
    r = evaluate_pipeline(data_root / "bccd", segmenter=str(MODEL), split="test", fmt="voc", limit=8)
    f = r["figures"]
    assert r["n_images"] == 8
    assert f["wbc_recall"] >= floor and f["wbc_precision"] >= floor, f


def test_shipped_model_on_a_lisc_field_in_original_pixels(data_root):
    p = need(data_root, "lisc", "neutrophil", "1.jpg")
    from bloodsmear.inference.pipeline import Pipeline
    from bloodsmear.io import read_image

    rgb = read_image(p)
    before = rgb.copy()
    res = Pipeline.segmenter_only(MODEL).detect(rgb)
    assert np.array_equal(rgb, before)
    assert 1 <= len(res.cells) <= 2  # LISC: the WBC (a few fields hold a second real WBC)
    top = max(res.cells, key=lambda c: c.score)
    x1, y1, x2, y2 = top.box
    assert 0 <= x1 < x2 <= rgb.shape[1] and 0 <= y1 < y2 <= rgb.shape[0]
    assert 30 < x2 - x1 < 200 and 30 < y2 - y1 < 200  # a LISC WBC is ~60-90 px wide
