"""The shipped fast segmenter's instance filters on real LISC fields (skipped without data): platelet
clumps, red cells and grey dirt are no longer reported, a split eosinophil is one cell, and fields
that really hold several WBCs keep them all."""

from __future__ import annotations

import pytest

from bloodsmear.settings import ZOO_DIR
from tests.conftest import need

MODEL = ZOO_DIR / "wbc-seg-fast"

pytestmark = [pytest.mark.usefixtures("torch_one_thread"),
              pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason="wbc-seg-fast not shipped")]

# field -> WBCs it holds (checked by eye); the filters-off segmenter reported 2-18 on each one-WBC field
FIELDS = {
    "basophil/11.jpg": 1,  # + a platelet clump
    "eosinophil/16.jpg": 1,  # + two platelet clumps
    "eosinophil/18.jpg": 1,  # one eosinophil cut into three pieces
    "monocyte/35.jpg": 1,  # one monocyte cut into two pieces
    "monocyte/47.jpg": 2,  # + 16 red cells; a second WBC cut by the border
    "neutrophil/13.jpg": 1,  # + two grey smudges at the bottom edge
    "neutrophil/31.jpg": 3,  # three neutrophils
}


@pytest.fixture(scope="module")
def pipeline():
    from bloodsmear.inference.pipeline import Pipeline

    return Pipeline.segmenter_only(MODEL)


@pytest.mark.parametrize("field,n_wbc", sorted(FIELDS.items()))
def test_lisc_field_wbc_count(data_root, pipeline, field, n_wbc):
    from bloodsmear.io import read_image

    p = need(data_root, "lisc", *field.split("/"))
    res = pipeline.detect(read_image(p))
    assert len(res.cells) == n_wbc, [(round(c.score, 2), c.box) for c in res.cells]
