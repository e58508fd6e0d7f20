"""`bloodsmear learn`: fine-tuning a base classifier on a few labelled cells (tiny synthetic data, seconds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

#: disc colours of the tiny labelled set (RGB); the base knows lymphocyte and neutrophil, not eosinophil
DISCS = {"lymphocyte": (60, 40, 150), "neutrophil": (150, 40, 60), "eosinophil": (200, 120, 30)}


def _crop_folder(root: Path, n: int = 8, classes=tuple(DISCS), seed: int = 0) -> Path:
    import cv2

    from bloodsmear.io import write_image_atomic

    rng = np.random.default_rng(seed)
    for c in classes:
        for i in range(n):
            img = np.full((40, 40, 3), (235, 215, 220), float)
            cv2.circle(img, (20 + int(rng.integers(-3, 4)), 20 + int(rng.integers(-3, 4))), int(rng.integers(9, 14)),
                       DISCS[c], -1)
            img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
            write_image_atomic(root / c / f"{c}_{i}.png", img)
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """An untrained tiny classifier folder of 2 classes (the 'base model')."""
    import torch

    from bloodsmear.models.artifact import ModelInfo, save_model
    from bloodsmear.models.classifier import build_classifier

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("learn") / "base"
    info = ModelInfo(backbone="tiny_cnn", classes=["lymphocyte", "neutrophil"], input_size=32, mean=[0.5] * 3,
                     std=[0.25] * 3, name="tiny-base")
    save_model(build_classifier("tiny_cnn", 2), folder, info)
    return folder


def test_learn_raises_accuracy_grows_the_head_and_writes_a_loadable_folder(base, tmp_path, torch_one_thread):
    from bloodsmear.experiments.learn import learn
    from bloodsmear.models.artifact import load_model

    crops = _crop_folder(tmp_path / "crops")
    res = learn([crops], tmp_path / "lab", base=base, epochs=25, seed=0, lr=3e-3)
    assert res.classes == ["lymphocyte", "neutrophil", "eosinophil"] and res.new_classes == ["eosinophil"]
    assert res.counts["val"] == {"eosinophil": 2, "lymphocyte": 2, "neutrophil": 2}  # 20 % of 8 per class
    assert res.train_after.accuracy > res.train_before.accuracy + 0.2
    assert res.train_after.accuracy >= 0.9 and res.val_after is not None
    loaded = load_model(tmp_path / "lab")
    assert loaded.info.classes == res.classes and loaded.info.seed == 0
    t = loaded.info.training
    assert t["kind"] == "learn" and t["base_model"] == str(base) and t["counts"]["train"]["lymphocyte"] == 6
    assert t["sources"] == [{"path": str(crops), "format": "folders", "cells": 24}]
    card = (tmp_path / "lab" / "card.md").read_text()
    assert str(base) in card and "eosinophil" in card and "Validation" in card
    cells = json.loads((tmp_path / "lab" / "labelled_cells.json").read_text())["cells"]
    assert len(cells) == 24 and sum(c["part"] == "val" for c in cells) == 6


def test_few_cells_train_on_all_and_the_card_says_so(base, tmp_path, torch_one_thread):
    from bloodsmear.experiments.learn import learn

    res = learn([_crop_folder(tmp_path / "crops", n=3)], tmp_path / "lab", base=base, epochs=2)
    assert res.val_after is None and res.counts["val"] == {}
    assert "No validation part" in (tmp_path / "lab" / "card.md").read_text()


def test_grown_head_starts_new_fine_classes_from_their_group():
    import torch

    from bloodsmear.experiments.learn import grown_model, output_classes
    from bloodsmear.models.artifact import ModelInfo
    from bloodsmear.models.classifier import build_classifier

    base = build_classifier("tiny_cnn", 2)
    info = ModelInfo(backbone="tiny_cnn", classes=["ig", "lymphocyte"], input_size=32, mean=[0.5] * 3, std=[0.25] * 3)
    classes, new = output_classes(info.classes, ["myelocyte", "lymphocyte", "basophil"])
    assert classes == ["ig", "lymphocyte", "basophil", "myelocyte"] and new == ["basophil", "myelocyte"]
    m = grown_model(base, info, classes)
    w, w0 = m.classifier[3].weight, base.classifier[3].weight
    assert torch.equal(w[:2], w0) and torch.equal(w[3], w0[0])  # myelocyte from ig
    assert torch.equal(m.classifier[0].weight, base.classifier[0].weight)


def _slide(tmp_path: Path):
    """A field with a lymphocyte and a neutrophil disc, written as an image, and its SlideResult."""
    from pipeline_fakes import TWO, write_field

    from bloodsmear.types import Cell, SlideResult

    write_field(tmp_path / "fields" / "f1.png", 400, 300, TWO)
    cells = []
    for cx, cy, r, cls in TWO:
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        cells.append(Cell(label=cls, polygon=np.c_[cx + r * np.cos(t), cy + r * np.sin(t)], score=0.9))
    cells.append(Cell(label="rbc", box=(10, 10, 30, 30)))
    return SlideResult(name="f1.png", width=400, height=300, cells=cells)


def test_each_input_format_parses(tmp_path):
    from pipeline_fakes import TWO, make_pipeline, write_field

    from bloodsmear.experiments.learn_data import detect_labelled_format, read_labelled
    from bloodsmear.inference.batch import analyze
    from bloodsmear.outputs.coco import write_coco_results
    from bloodsmear.outputs.cvat import write_cvat_xml

    slide = _slide(tmp_path)
    fields = tmp_path / "fields"
    write_cvat_xml(fields / "annotations.xml", [slide])
    coco = tmp_path / "coco"
    shutil.copytree(fields, coco, ignore=shutil.ignore_patterns("*.xml"))
    write_coco_results(coco / "instances.json", [slide])
    crops = _crop_folder(tmp_path / "crops", n=3)
    out = tmp_path / "analyzed"
    analyze([fields], out, make_pipeline(), overlays=False, progress=False, workers=1)
    for path, fmt in ((fields / "annotations.xml", "cvat"), (coco / "instances.json", "coco"), (crops, "folders"),
                      (out, "analyze")):
        assert detect_labelled_format(path) == fmt
    for path in (fields / "annotations.xml", coco / "instances.json"):
        cells = read_labelled([path])
        assert cells.counts() == {"lymphocyte": 1, "neutrophil": 1}, path
        assert all(c.ndim == 3 and c.shape[0] == c.shape[1] > 60 for c in cells.crops)  # framed, not the bare box
        assert any("'rbc' is not a WBC class" in s for s in cells.skipped)
    # the analyze folder: names relative to the folder analysed, found with --images
    cells = read_labelled([out], images=fields)
    assert cells.counts() == {"lymphocyte": 1, "neutrophil": 1} and cells.inputs[0]["format"] == "analyze"
    assert read_labelled([crops]).counts() == {"eosinophil": 3, "lymphocyte": 3, "neutrophil": 3}
    assert read_labelled([crops], level="group").counts() == {"eosinophil": 3, "lymphocyte": 3, "neutrophil": 3}


def test_analyze_folder_uses_the_reviewed_class_names(tmp_path):
    """A reviewer's correction is the mask's class_name in results.json: learn reads that label."""
    from pipeline_fakes import TWO, make_pipeline, write_field

    from bloodsmear.experiments.learn_data import read_labelled
    from bloodsmear.inference.batch import analyze

    write_field(tmp_path / "fields" / "f1.png", 400, 300, TWO)
    out = tmp_path / "analyzed"
    analyze([tmp_path / "fields"], out, make_pipeline(), overlays=False, progress=False, workers=1)
    doc = json.loads((out / "results.json").read_text())
    doc["data"]["0"]["masks"][0]["class_name"] = "monocyte"
    (out / "results.json").write_text(json.dumps(doc))
    assert "monocyte" in read_labelled([out], images=tmp_path / "fields").counts()


def test_bad_inputs_are_one_clear_error_naming_the_file(base, tmp_path):
    from bloodsmear.errors import InputError
    from bloodsmear.experiments.learn import learn
    from bloodsmear.experiments.learn_data import read_labelled

    bad = _crop_folder(tmp_path / "bad", n=3)
    (bad / "blobcyte").mkdir()
    (bad / "zzz").mkdir()
    with pytest.raises(InputError, match=r"bad: unknown label\(s\) 'blobcyte', 'zzz'") as e:
        read_labelled([bad])
    assert "\n" not in str(e.value)
    few = _crop_folder(tmp_path / "few", n=2, classes=("lymphocyte",))
    _crop_folder(few, n=4, classes=("neutrophil",))
    with pytest.raises(InputError, match=r"few: too few labelled cells: lymphocyte 2 \(at least 3 per class"):
        learn([few], tmp_path / "o", base=base)
    ok = _crop_folder(tmp_path / "ok", n=3, classes=("lymphocyte", "neutrophil"))
    with pytest.raises(InputError, match="--classes have no labelled cells: monocyte"):
        learn([ok], tmp_path / "o", base=base, classes=["lymphocyte", "monocyte"])
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(InputError, match="notes.txt: is none of the labelled-cell formats"):
        read_labelled([txt])
    with pytest.raises(InputError, match="nope: no such file"):
        read_labelled([tmp_path / "nope"])
    xml = tmp_path / "fields" / "annotations.xml"
    from bloodsmear.outputs.cvat import write_cvat_xml

    slide = _slide(tmp_path)
    write_cvat_xml(xml, [slide])
    (tmp_path / "fields" / "f1.png").unlink()
    with pytest.raises(InputError, match="f1.png: image file not found"):
        read_labelled([xml])


def test_learn_command_end_to_end(base, tmp_path, torch_one_thread):
    from typer.testing import CliRunner

    from bloodsmear.cli.main import app
    from bloodsmear.models.artifact import load_model

    crops = _crop_folder(tmp_path / "crops", n=4)
    r = CliRunner().invoke(app, ["learn", str(crops), "--base", str(base), "--out", str(tmp_path / "lab"),
                                 "--epochs", "2", "--seed", "3", "--classes", "lymphocyte,eosinophil", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert d["new_classes"] == ["eosinophil"] and d["counts"]["train"] == {"eosinophil": 4, "lymphocyte": 4}
    assert load_model(tmp_path / "lab").info.training["seed"] == 3
    r = CliRunner().invoke(app, ["learn", str(tmp_path / "nope"), "--base", str(base), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "no such file or folder" in r.output


@pytest.mark.realdata
def test_learn_on_ten_pbc_cells_per_class(data_root, tmp_path):
    """~10 PBC cells of each of 5 classes onto the shipped screening model, in well under a minute."""
    import time

    from conftest import need

    from bloodsmear.experiments.learn import learn

    src = need(data_root, "pbc224")
    sub = tmp_path / "pbc10"
    for c in ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"):
        (sub / c).mkdir(parents=True)
        for f in sorted((src / c).glob("*.jpg"))[:10]:
            shutil.copy(f, sub / c / f.name)
    t0 = time.perf_counter()
    res = learn([sub], tmp_path / "lab", epochs=8, seed=0)
    assert time.perf_counter() - t0 < 60
    assert res.new_classes == [] and len(res.classes) == 8 and res.val_after is not None
    assert res.train_after.accuracy >= res.train_before.accuracy and res.train_after.accuracy >= 0.9
