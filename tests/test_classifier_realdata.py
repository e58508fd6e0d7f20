"""The shipped PBC model on real data: accuracy on a fixed sample of its own test split stays near its card."""

from __future__ import annotations

import json

import pytest

from tests.conftest import need

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def shipped():
    from bloodsmear.models.folder import list_shipped, resolve_model

    if "pbc-mobilenetv2" not in list_shipped():
        pytest.skip("shipped model pbc-mobilenetv2 not present")
    return resolve_model("default")


def test_default_resolves_to_shipped_pbc_model(shipped):
    info = json.loads((shipped / "config.json").read_text())
    assert shipped.name == "pbc-mobilenetv2"
    assert info["classes"] == ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
                               "neutrophil", "platelet"]
    assert (shipped / "weights.safetensors").stat().st_size < 20e6
    split = json.loads((shipped / "split.json").read_text())
    assert len(split["splits"]["test"]) == 3418 and split["seed"] == 42 and split["scheme"] == "64-16-20"


def test_shipped_model_accuracy_on_test_sample(shipped, data_root):
    from bloodsmear.evaluation.classifier import evaluate_model

    root = need(data_root, "pbc224")
    card = json.loads((shipped / "metrics.json").read_text())["test"]
    ev = evaluate_model("default", root, limit=200, seed=0, progress=False)
    assert ev.n == 200 and ev.split.endswith(":test")
    floor = card["accuracy"] - 0.03
    assert ev.report.accuracy >= floor, f"accuracy {ev.report.accuracy:.4f} below card-derived floor {floor:.4f}"
    assert ev.report.macro_f1 >= card["macro_f1"] - 0.05


def test_shipped_model_classifies_real_files(shipped, data_root):
    from bloodsmear.inference.classify import classify_paths

    root = need(data_root, "pbc224")
    files = [sorted((root / c).glob("*.jpg"))[0] for c in ("eosinophil", "lymphocyte", "platelet")]
    res = classify_paths(files, model="default", progress=False)
    assert [p.label for p in res.predictions] == ["eosinophil", "lymphocyte", "platelet"]


def test_shipped_fine_model_answers_fine_classes_near_its_card(data_root):
    """pbc-fine (the paper's fine classes): on 200 cells of its own test split, fine accuracy near the card's,
    and its answers read at group level as PBC's folder classes."""
    from bloodsmear.classes import FINE_CLASSES, group_of
    from bloodsmear.evaluation.classifier import evaluate_model
    from bloodsmear.models.folder import list_shipped, resolve_model

    if "pbc-fine" not in list_shipped():
        pytest.skip("shipped model pbc-fine not present")
    root = need(data_root, "pbc224")
    folder = resolve_model("pbc-fine")
    classes = json.loads((folder / "config.json").read_text())["classes"]
    assert set(classes) <= set(FINE_CLASSES) and {"band_cell", "segmented_neutrophil", "myelocyte"} <= set(classes)
    assert {group_of(c) for c in classes} == {"basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
                                               "neutrophil", "platelet"}
    card = json.loads((folder / "metrics.json").read_text())["test"]
    ev = evaluate_model("pbc-fine", root, limit=200, seed=0, progress=False)
    assert ev.n == 200 and ev.report.accuracy >= card["accuracy"] - 0.05
