"""`bloodsmear complexity` and `bloodsmear insight actmax|gradcam|tsne` on a tiny saved model."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from bloodsmear.cli.main import app

runner = CliRunner()
CLASSES = ["lymphocyte", "monocyte", "neutrophil"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import torch

    from bloodsmear.models.artifact import ModelInfo, save_model
    from bloodsmear.models.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier("tiny_cnn", len(CLASSES), mode="finetune")
    spec = model.backbone.spec
    info = ModelInfo(backbone="tiny_cnn", classes=CLASSES, input_size=32, mean=list(spec.mean), std=list(spec.std))
    return save_model(model, tmp_path_factory.mktemp("m") / "model", info)


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("cells")
    for c in CLASSES:
        (root / c).mkdir()
        for k in range(5):
            img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            cv2.imwrite(str(root / c / f"{c}_{k}.png"), img)
    (root / "lymphocyte" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_complexity_command(tmp_path):
    r = runner.invoke(app, ["complexity", "tiny_cnn", "--input-size", "32", "--batch-size", "2", "--repeats", "1",
                            "--no-timing", "--out", str(tmp_path / "cx"), "--json"])
    assert r.exit_code == 0, r.output
    d = _last_json(r.output)
    m = d["models"][0]
    assert m["layers"] == {"conv": 3, "dense": 2}
    assert m["params"]["frozen"]["trainable"] < m["params"]["finetune"]["trainable"] == m["params"]["finetune"]["total"]
    assert (tmp_path / "cx.csv").is_file() and "| tiny_cnn |" in (tmp_path / "cx.md").read_text()


def test_complexity_unknown_name_lists_valid():
    r = runner.invoke(app, ["complexity", "resnet9000", "--no-timing"])
    assert r.exit_code == 2 and "mobilenet_v2" in r.output


def test_actmax_command(tiny_model, tmp_path):
    out = tmp_path / "am.png"
    r = runner.invoke(app, ["insight", "actmax", str(tiny_model), "--layer", "backbone.body.2.0", "--filter", "1",
                            "--filter", "3", "--steps", "5", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    d = _last_json(r.output)
    assert [f["filter"] for f in d["filters"]] == [1, 3]
    img = cv2.imread(str(out))
    assert img is not None and img.shape[1] > 2 * 32
    r = runner.invoke(app, ["insight", "actmax", str(tiny_model), "--layer", "nope", "--out", str(out)])
    assert r.exit_code == 2 and "backbone.body.0.0" in r.output


def test_gradcam_command(tiny_model, cells, tmp_path):
    r = runner.invoke(app, ["insight", "gradcam", str(tiny_model), str(cells / "monocyte"),
                            str(cells / "lymphocyte"), "--out", str(tmp_path / "gc"), "--json"])
    assert r.exit_code == 0, r.output
    d = _last_json(r.output)
    assert d["n_images"] == 10 and d["n_skipped"] == 1 and "broken.jpg" in d["skipped"][0]
    png = cv2.imread(d["images"][0]["out"])
    assert png.shape[:2] == (224, 448)  # cell | heat map, at the display size
    assert all(r["class"] in CLASSES for r in d["images"])


def test_gradcam_and_actmax_on_a_layer_without_a_spatial_map_are_one_line(tiny_model, cells, tmp_path):
    """Naming a dense layer used to end in a ValueError traceback."""
    for args in (["gradcam", str(tiny_model), str(cells / "monocyte"), "--out", str(tmp_path / "gc")],
                 ["actmax", str(tiny_model), "--steps", "1", "--out", str(tmp_path / "am.png")]):
        r = runner.invoke(app, ["insight", *args, "--layer", "classifier.0"])
        assert r.exit_code == 2, r.output
        assert "layer 'classifier.0' has no spatial map" in r.output and "Traceback" not in r.output
        assert isinstance(r.exception, SystemExit)  # the error boundary's exit, not a ValueError


def test_tsne_command(tiny_model, cells, tmp_path):
    out = tmp_path / "t.png"
    r = runner.invoke(app, ["insight", "tsne", str(tiny_model), str(cells), "--n", "12", "--format", "folders",
                            "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    d = _last_json(r.output)
    assert d["feature_dim"] == 128 and d["n_images"] + d["n_skipped"] == 12 and d["n_skipped"] <= 1
    assert out.read_bytes()[:4] == b"\x89PNG"
