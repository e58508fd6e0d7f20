"""The shipped domain-adapted classifier (PBC -> LISC, DANN): loads, and scores LISC's held-out test split
at least as well as its card says, within a margin."""

from __future__ import annotations

import json

import pytest

from bloodsmear.settings import ZOO_DIR

NAME = "pbc-lisc-dann"
FOLDER = ZOO_DIR / NAME


@pytest.mark.skipif(not FOLDER.is_dir(), reason=f"{NAME} not shipped")
def test_shipped_adapted_model_loads_and_is_small():
    from bloodsmear.models.artifact import load_model

    m = load_model(NAME)
    assert m.info.classes == ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    assert m.info.training["run"]["objective"] == "dann"
    assert (FOLDER / "card.md").is_file() and (FOLDER / "split.json").is_file()
    assert set(json.loads((FOLDER / "domain_splits.json").read_text())["domains"]) == {"A", "B"}
    assert (FOLDER / m.info.weights).stat().st_size < 8_000_000


@pytest.fixture(scope="module")
def lisc_test_crops(data_root):
    """LISC's test WBCs of the model's split, cut as its training did (the pipeline's crops; built once)."""
    from conftest import need

    from bloodsmear.models.artifact import load_model
    from bloodsmear.experiments.domain_data import DomainSpec, build_domain

    need(data_root, "lisc")
    info = load_model(FOLDER).info
    spec = DomainSpec(**{**info.training["domain_specs"]["B"], "size": info.input_size})
    dom = build_domain(spec, info.classes)
    test = set(e["path"] for e in json.loads((FOLDER / "split.json").read_text())["splits"]["test"])
    idx = [i for i, g in enumerate(dom.groups) if g in test]
    assert len(idx) == len(test) > 30
    return dom.images[idx], dom.labels[idx]


@pytest.mark.realdata
@pytest.mark.skipif(not FOLDER.is_dir(), reason=f"{NAME} not shipped")
@pytest.mark.parametrize("tta", ["none", "d8"])
def test_shipped_adapted_model_on_lisc_test_split(lisc_test_crops, tta):
    from bloodsmear.metrics.classification import classification_report_arrays
    from bloodsmear.inference.classify import CellClassifier

    images, labels = lisc_test_crops
    clf = CellClassifier.load(FOLDER, tta=tta)
    pred = clf.predict_proba(list(images)).argmax(1)
    rep = classification_report_arrays(labels, pred, clf.info.classes)
    card = json.loads((FOLDER / "metrics.json").read_text())["test_by_domain"]["B"]["macro_f1"]
    assert rep.macro_f1 >= card - 0.05, (rep.macro_f1, card)
