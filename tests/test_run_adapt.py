"""Adaptation without labels on the run itself: the screening model's batch norm re-estimated on the run's crops."""

from __future__ import annotations

import numpy as np
import pytest

from bloodsmear.inference.classify import CellClassifier
from bloodsmear.inference.pipeline_config import PipelineConfig
from bloodsmear.inference.run_adapt import _sample, adapted_for_run, bn_adapted


def _crops(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c = np.full((90, 90, 3), (230, 200, 210), np.uint8)
        c[30:60, 25:65] = rng.integers(60, 140, 3)  # a dark "nucleus" of a random colour
        out.append(c)
    return out


@pytest.fixture(scope="module")
def clf() -> CellClassifier:
    return CellClassifier.load("pbc-screen-stain")


def test_bn_adapted_changes_statistics_only_and_leaves_the_original(clf, torch_one_thread):
    crops = _crops(40)
    before = clf.predict_proba(crops[:8])
    weights = {k: v.clone() for k, v in clf.loaded.model.state_dict().items()}
    adapted = bn_adapted(clf, crops)
    after = adapted.predict_proba(crops[:8])
    assert not np.allclose(before, after, atol=1e-4)  # the statistics moved
    np.testing.assert_allclose(clf.predict_proba(crops[:8]), before, atol=1e-6)  # the original is untouched
    sd = adapted.loaded.model.state_dict()
    changed = [k for k in weights if not np.array_equal(weights[k].numpy(), sd[k].numpy())]
    assert changed == []  # adapt_batchnorm works on a copy: the loaded model keeps its weights and statistics
    assert adapted.classes == clf.classes


class _Det:
    def __init__(self, rgb):
        from bloodsmear.inference.stages import CropSource
        from bloodsmear.types import Cell

        self.crop_source = CropSource(rgb)
        self.cells = [Cell("wbc", box=(10.0, 10.0, 40.0, 40.0))]
        self.rbc_diameter_px = None


class _Pipe:
    def __init__(self, clf, **cfg):
        self.screening, self.config, self.detected = clf, PipelineConfig(**cfg), 0

    def describe(self) -> dict:  # as Pipeline.describe: the config is what the run identity holds
        return self.config.to_dict()

    def detect(self, rgb, *, scale=None, name="", path=None):
        self.detected += 1
        return _Det(rgb)


def _fields(tmp_path, n):
    import cv2

    paths = []
    for i in range(n):
        p = tmp_path / f"f{i:02d}.png"
        img = np.full((60, 60, 3), 220, np.uint8)
        img[15:45, 15:45] = (90 + i, 60, 140)
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def test_a_tiny_run_keeps_the_shipped_statistics(clf, tmp_path):
    pipe = _Pipe(clf, adapt_bn=True, adapt_bn_min_cells=32, crop_frame_rbc=None)
    assert adapted_for_run(pipe, _fields(tmp_path, 5)) is pipe


def test_run_adaptation_samples_evenly_and_swaps_only_the_screening_model(clf, tmp_path):
    pipe = _Pipe(clf, adapt_bn=True, adapt_bn_fields=8, adapt_bn_min_cells=4, crop_frame_rbc=None)
    out = adapted_for_run(pipe, _fields(tmp_path, 20))
    assert out is not pipe and out.screening is not clf and pipe.screening is clf and pipe.detected == 8
    assert [p.name for p in _sample(sorted(_fields(tmp_path, 20)), 5)] == ["f00.png", "f05.png", "f10.png",
                                                                          "f14.png", "f19.png"]


def test_analyze_adapt_bn_is_part_of_the_run_identity(tmp_path):
    from bloodsmear.inference.run_folder import run_identity

    a = PipelineConfig.load(None)
    assert a.adapt_bn is False and a.updated(adapt_bn=True).adapt_bn is True
    pipe_a = _Pipe(None)
    pipe_b = _Pipe(None, adapt_bn=True)
    pipe_a.screening = pipe_b.screening = None
    assert run_identity(pipe_a)["pipeline"] != run_identity(pipe_b)["pipeline"]


def test_cli_adapt_bn_flag_reaches_the_pipeline_config(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bloodsmear.cli.main import app
    from bloodsmear.inference.pipeline import Pipeline

    seen = []

    def fake(cls, cfg=None):
        seen.append(cfg)
        raise SystemExit(0)  # stop before any model is loaded or anything written
    monkeypatch.setattr(Pipeline, "from_config", classmethod(fake))
    img = _fields(tmp_path, 1)[0]
    CliRunner().invoke(app, ["analyze", str(img), "--out", str(tmp_path / "o"), "--adapt-bn"])
    CliRunner().invoke(app, ["analyze", str(img), "--out", str(tmp_path / "o")])
    assert isinstance(seen[0], PipelineConfig) and seen[0].adapt_bn is True and seen[1] is None
