"""The one model-folder contract (`bloodsmear.models.folder`): kinds, the resolver, the card, strict configs,
save -> load round trips for a classifier and a fast-unet segmenter folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bloodsmear.errors import InputError
from bloodsmear.models.artifact import ModelInfo, load_model, read_info, save_model
from bloodsmear.models.classifier import build_classifier
from bloodsmear.models.folder import backbone_facts, list_shipped, read_card, resolve_model
from bloodsmear.models.segmenter_base import load_segmenter

CLASSES = ["lymphocyte", "monocyte", "neutrophil"]


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_classifier("tiny_cnn", len(CLASSES), mode="finetune")
    spec = model.backbone.spec
    info = ModelInfo(backbone="tiny_cnn", classes=CLASSES, input_size=32, mean=list(spec.mean), std=list(spec.std),
                     name="tiny", thresholds={"min_confidence": 0.3})
    return save_model(model, tmp_path_factory.mktemp("clf") / "model", info, metrics={"test": {"macro_f1": 0.5}})


@pytest.fixture(scope="module")
def fast_folder(tmp_path_factory) -> Path:
    from bloodsmear.models.segmenter import FastSegConfig, FastSegmenter, UNet

    torch.manual_seed(0)
    cfg = FastSegConfig(base_channels=4, levels=2, rbc_diameter_px=10.0)
    return FastSegmenter(UNet(base=4, levels=2), cfg).save(tmp_path_factory.mktemp("seg") / "fast")


def test_every_shipped_folder_has_a_card_with_kind_and_checksum():
    names = list_shipped()
    assert {"pbc-mobilenetv2", "pbc-screen-stain", "pbc-lisc-dann", "wbc-seg-fast", "wbc-maskrcnn"} <= set(names)
    assert set(list_shipped("classifier")) == {"pbc-mobilenetv2", "pbc-screen-stain", "pbc-lisc-dann", "pbc-fine"}
    cards = {n: read_card(n) for n in names}
    assert cards["wbc-seg-fast"].kind == "fast-unet" and cards["wbc-maskrcnn"].kind == "maskrcnn"
    assert cards["pbc-mobilenetv2"].kind == "classifier" and len(cards["pbc-mobilenetv2"].classes) == 8
    assert cards["pbc-mobilenetv2"].headline[0] == "macro_f1" and cards["wbc-seg-fast"].headline[0] == "wbc_box_ap50"
    assert all(c.checksum and len(c.checksum) == 64 for c in cards.values())
    assert cards["wbc-seg-fast"].split == ["split_lisc.json", "split_pbc-original-sample.json"]
    assert cards["pbc-screen-stain"].normalisation["color_normalization"]["method"] == "reinhard"
    for n in list_shipped("classifier"):  # the shipped config.json files load strictly (no unknown key)
        assert read_info(n).kind == "classifier"


def test_backbone_facts_come_from_timm_for_timm_backbones():
    f = backbone_facts("inception_v3")
    assert f.source == "timm" and f.input_size == 299 and f.mean == (0.5, 0.5, 0.5)
    assert backbone_facts("xception").input_size == 299  # timm's legacy_xception
    assert backbone_facts("mobilenet_v2").source == "torchvision"


def test_resolve_model_names_paths_and_base_dir(tmp_path, classifier_folder, monkeypatch):
    assert resolve_model("default").name == "pbc-mobilenetv2"
    assert resolve_model("default", kind=("fast-unet", "maskrcnn")).name == "wbc-seg-fast"
    assert resolve_model(classifier_folder / "config.json") == classifier_folder.resolve()
    cfg_dir = classifier_folder.parent / "pipelines"
    cfg_dir.mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("../model", base_dir=cfg_dir) == classifier_folder.resolve()
    with pytest.raises(InputError, match="no such model folder.*shipped"):
        resolve_model("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        resolve_model(tmp_path / "empty")


def test_wrong_kind_is_one_input_error_naming_folder_and_kinds(classifier_folder, fast_folder):
    with pytest.raises(InputError) as e:
        load_segmenter(classifier_folder)
    msg = str(e.value)
    assert str(classifier_folder.resolve()) in msg and "'classifier'" in msg and "segmenter" in msg
    with pytest.raises(InputError, match="kind 'fast-unet' \\(config.json\\), but a classifier is expected"):
        load_model(fast_folder)


def test_pipeline_naming_a_classifier_as_segmenter_is_one_clear_error(tmp_path):
    from bloodsmear.inference.pipeline import Pipeline

    cfg = tmp_path / "p.yaml"
    cfg.write_text("segmenter: pbc-screen-stain\nscreening: pbc-mobilenetv2\nrefine: null\n")
    with pytest.raises(InputError, match=r"pbc-screen-stain: is a model folder of kind 'classifier' \(config.json\), "
                                         "but a segmenter"):
        Pipeline.from_config(str(cfg))
    cfg.write_text("segmenter: wbc-seg-fast\nscreening: wbc-maskrcnn\nrefine: null\n")
    with pytest.raises(InputError, match=r"wbc-maskrcnn: is a model folder of kind 'maskrcnn' \(config.json\), "
                                         "but a classifier"):
        Pipeline.from_config(str(cfg))


def test_unknown_key_in_a_classifier_config_is_an_error(tmp_path, classifier_folder):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(classifier_folder, bad)
    d = json.loads((bad / "config.json").read_text())
    d["colour_normalisation"] = None  # misspelt
    (bad / "config.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match="colour_normalisation"):
        load_model(bad)


def test_folder_without_kind_but_legacy_format_reads_as_classifier(tmp_path, classifier_folder):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(classifier_folder, old)
    d = json.loads((old / "config.json").read_text())
    del d["kind"]
    (old / "config.json").write_text(json.dumps(d))
    assert read_card(old).kind == "classifier" and load_model(old).info.classes == CLASSES


def test_classifier_folder_round_trip(tmp_path, classifier_folder):
    loaded = load_model(classifier_folder)
    card = read_card(classifier_folder)
    assert card.kind == "classifier" and card.classes == CLASSES and card.thresholds == {"min_confidence": 0.3}
    assert card.checksum == hashlib.sha256((classifier_folder / "weights.safetensors").read_bytes()).hexdigest()
    again = save_model(loaded.model, tmp_path / "again", loaded.info)
    assert read_info(again) == loaded.info
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), load_model(again).model(x), atol=1e-6)


def test_fast_unet_folder_round_trip(tmp_path, fast_folder):
    from bloodsmear.models.segmenter import FastSegConfig, FastSegmenter, UNet

    torch.manual_seed(0)  # the fixture's network again: the weights the folder holds (in fp16)
    original = FastSegmenter(UNet(base=4, levels=2), FastSegConfig(base_channels=4, levels=2, rbc_diameter_px=10.0))
    seg = load_segmenter(fast_folder)
    assert isinstance(seg, FastSegmenter) and seg.rbc_diameter_px == 10.0
    card = read_card(fast_folder)
    assert card.kind == "fast-unet" and card.rbc_diameter_px == 10.0 and card.checksum
    cfg = json.loads((fast_folder / "config.json").read_text())
    assert cfg["kind"] == "fast-unet" and cfg["base_channels"] == 4
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    fg, center = seg.maps(rgb)
    fg0, center0 = original.maps(rgb)
    assert fg.shape == (24, 32) and np.allclose(fg, fg0, atol=2e-2) and np.allclose(center, center0, atol=2e-2)


def test_card_pieces_are_shared_by_the_classifier_card(classifier_folder):
    from bloodsmear.models.card import render_card, split_table

    counts = {"train": {"lymphocyte": 3, "monocyte": 1}, "val": {"lymphocyte": 1}, "test": {"neutrophil": 2}}
    table = split_table(counts, CLASSES)
    assert table[0] == "| class | train | val | test |" and "| total | 4 | 1 | 2 |" in table
    info = read_info(classifier_folder)
    rep = {"classes": CLASSES, "per_class": {c: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
                                             for c in CLASSES},
           "macro_precision": 1.0, "macro_recall": 1.0, "macro_f1": 1.0, "accuracy": 1.0, "n": 3,
           "weighted_precision": 1.0, "weighted_recall": 1.0, "weighted_f1": 1.0,
           "confusion": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}
    card = render_card(info, {"test": rep}, [], counts=counts, command="bloodsmear train x.yaml")
    assert card.startswith("# tiny\n") and "| total | 4 | 1 | 2 |" in card
    assert "- Command: `bloodsmear train x.yaml`" in card and "**macro F1 1.0000**" in card
