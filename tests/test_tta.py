"""Test-time augmentation: the views, their averaging, classifiers and pipelines that use it, and the
rescoring of a domains experiment's saved models (a tiny two-domain experiment, trained end to end)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch


def test_tta_views_are_the_symmetries_and_leave_the_input_alone(rng):
    from bloodsmear.inference.tta import TTA_MODES, tta_views

    batch = rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    before = batch.copy()
    for mode, n in TTA_MODES.items():
        views = tta_views(batch, mode)
        assert len(views) == n and all(v.shape == batch.shape and v.flags.c_contiguous for v in views)
        assert np.array_equal(views[0], batch) and views[0] is not batch
        assert len({v.tobytes() for v in views}) == n  # every view differs on a random image
    assert np.array_equal(batch, before)
    flip = tta_views(batch, "flip")[1]
    assert np.array_equal(flip[:, :, 0], batch[:, :, -1])  # left-right mirror
    d8 = tta_views(batch, "d8")
    assert any(np.array_equal(v, np.rot90(batch, 1, axes=(1, 2))) for v in d8)
    assert any(np.array_equal(v, batch[:, ::-1]) for v in d8)  # up-down mirror = a turn + a mirror


def test_tta_errors_name_the_valid_modes(rng):
    from bloodsmear.inference.tta import check_tta, tta_views

    assert check_tta(None) == "none" and check_tta(" D8 ") == "d8"
    with pytest.raises(ValueError, match="valid: none, flip, d8"):
        check_tta("rot")
    with pytest.raises(ValueError, match="square"):
        tta_views(np.zeros((1, 4, 6, 3), np.uint8), "d8")
    assert len(tta_views(np.zeros((1, 4, 6, 3), np.uint8), "flip")) == 2


def test_predict_tta_averages_and_makes_predictions_mirror_invariant(rng):
    from bloodsmear.inference.tta import predict_tta

    def lopsided(b):  # "probabilities" that depend on which half is brighter
        w = b.shape[2] // 2
        left, right = b[:, :, :w].mean((1, 2, 3)), b[:, :, w:].mean((1, 2, 3))
        p = np.stack([left, right], 1) + 1.0
        return p / p.sum(1, keepdims=True)

    batch = rng.integers(0, 255, (4, 6, 6, 3), dtype=np.uint8)
    assert np.allclose(predict_tta(lopsided, batch, "none"), lopsided(batch))
    p = predict_tta(lopsided, batch, "flip")
    assert np.allclose(p, (lopsided(batch) + lopsided(batch[:, :, ::-1])) / 2)
    assert np.allclose(p[:, 0], p[:, 1])  # the mirror-average no longer sees the left/right difference
    assert predict_tta(lopsided, batch[:0], "d8").shape[0] == 0


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from bloodsmear.models.artifact import ModelInfo, save_model
    from bloodsmear.models.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier("tiny_cnn", 3, pretrained=False)
    spec = model.backbone.spec
    folder = tmp_path_factory.mktemp("tta") / "m"
    save_model(model, folder, ModelInfo(backbone="tiny_cnn", classes=["a", "b", "c"], input_size=32,
                                        mean=list(spec.mean), std=list(spec.std)))
    return folder


def test_classifier_with_d8_is_the_mean_of_its_views_and_rotation_invariant(tiny_folder, rng):
    from bloodsmear.inference.classify import CellClassifier
    from bloodsmear.inference.tta import tta_views

    plain, d8 = CellClassifier.load(tiny_folder), CellClassifier.load(tiny_folder, tta="d8")
    assert plain.tta == "none" and d8.tta == "d8"
    crops = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    fitted = plain.fit_batch(crops)
    want = np.mean([plain.predict_fitted(v) for v in tta_views(fitted, "d8")], 0)
    assert np.allclose(d8.predict_fitted(fitted), want, atol=1e-5)
    assert np.allclose(d8.predict_proba(crops), want, atol=1e-5)  # the chunked path too
    turned = [np.ascontiguousarray(np.rot90(c)) for c in crops]
    assert np.allclose(d8.predict_proba(turned), d8.predict_proba(crops), atol=1e-5)
    assert not np.allclose(plain.predict_proba(turned), plain.predict_proba(crops), atol=1e-5)
    with pytest.raises(ValueError, match="valid"):
        CellClassifier.load(tiny_folder, tta="x")


def test_pipeline_config_tta_settings(tmp_path, tiny_folder):
    from bloodsmear.errors import InputError
    from bloodsmear.inference.pipeline_config import PipelineConfig
    from bloodsmear.inference.stages import load_classifier

    bad = tmp_path / "bad.yaml"
    bad.write_text("refine_tta: rot90\n")
    with pytest.raises(InputError, match="refine_tta.*valid: none, flip, d8"):
        PipelineConfig.load(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("screening_tta: flip\nrefine_tta: d8\n")
    cfg = PipelineConfig.load(ok)
    assert (cfg.screening_tta, cfg.refine_tta) == ("flip", "d8") and cfg.to_dict()["refine_tta"] == "d8"
    assert load_classifier(tiny_folder, tta="flip").tta == "flip"
    assert PipelineConfig.load(None).refine_tta in ("none", "flip", "d8")  # the shipped config is valid


# ------------------------------------------------------------------ rescoring a domains experiment
def _domain_folder(root: Path, shift: int, rng) -> Path:
    import cv2

    for ci, c in enumerate(("lymphocyte", "neutrophil")):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(12):
            im = rng.integers(0, 60, (36, 36, 3)).astype(np.int16)
            im[8:28, 8:28 - 10 * ci, ci] += 150  # class = colour and shape of the "cell"
            im[..., 2] += shift  # the other domain: a colour cast
            cv2.imwrite(str(root / c / f"{c[:2]}_{i}.png"), np.clip(im, 0, 255).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    from bloodsmear.experiments.domains import run_domains
    from bloodsmear.experiments.domains_config import DomainsConfig

    rng = np.random.default_rng(0)
    tmp = tmp_path_factory.mktemp("domains")
    cfg = DomainsConfig(
        name="tiny", domains={"A": {"name": "folder", "root": str(_domain_folder(tmp / "a", 0, rng))},
                              "B": {"name": "folder", "root": str(_domain_folder(tmp / "b", 60, rng))}},
        classes=["lymphocyte", "neutrophil"], image_size=32, runs=["src_A", "stain_dann_A_B"], seeds=[0, 1],
        maps={"backbone": "tiny_cnn", "train_from": 0, "views": 2},
        train={"epochs": 2, "batch_size": 4, "pretrained": False}, tsne_max_per_domain=20, eval_tta=["flip"],
        out_dir=str(tmp / "out"), cache_dir=str(tmp / "cache"))
    return cfg, run_domains(cfg, progress=False)


def test_domains_experiment_writes_tables_and_models(tiny_experiment):
    cfg, res = tiny_experiment
    out = Path(cfg.out_dir)
    assert {"table5.csv", "table5.md", "stain.csv", "results.json", "splits.json"} <= {p.name for p in out.iterdir()}
    means = [r for r in res.rows if str(r["seed"]).startswith("mean")]
    assert {(r["run"], r["tested_on"], r["seed"]) for r in means} == {
        (a, b, "mean of 2") for a in ("src_A", "stain_dann_A_B") for b in ("folder_A", "folder_B")}
    for seed in (0, 1):
        for rid in ("src_A", "stain_dann_A_B"):
            assert (out / "runs" / f"seed{seed}" / rid / "model" / "weights.safetensors").is_file()
    assert (out / "tta_flip" / "table5.md").is_file() and str(out / "tta_flip" / "stain.csv") in res.files


def test_domains_config_rejects_an_unknown_eval_tta(tmp_path):
    from bloodsmear.errors import InputError
    from bloodsmear.experiments.domains_config import load_domains_config

    p = tmp_path / "d.yaml"
    p.write_text("kind: domains\neval_tta: [d4]\n")
    with pytest.raises(InputError, match="eval_tta.*valid: none, flip, d8"):
        load_domains_config(p)
    p.write_text("kind: domains\neval_tta: [d8]\n")
    assert load_domains_config(p).eval_tta == ["d8"]


def test_rescore_without_tta_reproduces_the_recorded_figures(tiny_experiment):
    from bloodsmear.experiments.rescore import rescore_domains

    cfg, res = tiny_experiment
    again = rescore_domains(cfg, "none")
    key = lambda r: (r["run"], r["tested_on"], str(r["seed"]), r["n"])  # noqa: E731
    rec = {key(r): r["macro_f1"] for r in res.rows}
    new = {key(r): r["macro_f1"] for r in again.rows}
    assert new.keys() == rec.keys()
    # fp16 weights in the folder vs the fp32 model that was scored after training: equal to within a crop
    assert all(abs(new[k] - rec[k]) <= 100 / max(1, k[3]) + 1e-6 for k in rec), (new, rec)
    assert (again.out_dir / "table5.md").is_file() and again.out_dir.name == "tta_none"


def test_rescore_with_d8_leaves_out_missing_weights(tiny_experiment, tmp_path):
    import shutil

    from bloodsmear.errors import InputError
    from bloodsmear.experiments.rescore import rescore_domains

    cfg, _ = tiny_experiment
    copy = tmp_path / "copy"
    shutil.copytree(cfg.out_dir, copy)
    (copy / "runs" / "seed1" / "src_A" / "model" / "weights.safetensors").unlink()

    res = rescore_domains(cfg.model_copy(update={"out_dir": str(copy)}), "d8")
    saved = json.loads((copy / "tta_d8" / "results.json").read_text())
    assert saved["tta"] == "d8" and saved["missing"] == ["src_A (seed 1)"]
    seeds = {r["run"]: r["seed"] for r in res.rows if str(r["seed"]).startswith("mean")}
    assert seeds == {"src_A": "mean of 1", "stain_dann_A_B": "mean of 2"}
    assert {r["tested_on"] for r in res.rows} == {"folder_A", "folder_B"}
    with pytest.raises(InputError, match="splits.json"):
        rescore_domains(cfg.model_copy(update={"out_dir": str(tmp_path / "empty")}), "d8")
