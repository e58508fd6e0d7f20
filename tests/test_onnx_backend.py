"""ONNX Runtime backend (inference/onnx_backend.py) and segmenter batching across fields (Pipeline.detect_many).

ONNX outputs of the shipped models agree with torch within 1e-4 (synthetic inputs; realdata: BCCD fields);
without onnxruntime the onnx backend is one clear error naming the extra. Batched segmentation gives
the cells of one field at a time."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from bloodsmear.errors import BloodsmearError
from bloodsmear.inference import onnx_backend
from bloodsmear.inference.classify import CellClassifier
from bloodsmear.inference.pipeline import Pipeline, screening_crops
from bloodsmear.inference.pipeline_config import PipelineConfig
from bloodsmear.inference.run_folder import run_identity
from bloodsmear.models.segmenter_base import load_segmenter
from bloodsmear.types import Cell
from pipeline_fakes import ONE, TWO, ColourClassifier, make_field, write_field

TOL = 1e-4
CLASSIFIERS = ("pbc-screen-stain", "pbc-lisc-dann", "pbc-mobilenetv2")


@pytest.fixture
def onnx_cache(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    monkeypatch.setenv("BLOODSMEAR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / onnx_backend.CACHE_SUB


@pytest.fixture
def no_onnxruntime(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError


def _fields(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = make_field(200 + 24 * i, 150 + 8 * i, ONE if i % 2 else TWO)
        out.append(np.clip(img.astype(int) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8))
    return out


# ------------------------------------------------------------------ without onnxruntime


def test_without_onnxruntime_the_onnx_backend_is_one_error_naming_the_extra(no_onnxruntime):
    with pytest.raises(BloodsmearError, match=r"pip install bloodsmear\[onnx\]"):
        onnx_backend.require_onnxruntime()
    cfg = PipelineConfig(screening="none", backend="onnx")
    with pytest.raises(BloodsmearError, match=r"pip install bloodsmear\[onnx\]"):
        Pipeline(load_segmenter("wbc-seg-fast"), ColourClassifier(), None, cfg)


def test_cli_backend_onnx_without_onnxruntime_is_one_error_line(no_onnxruntime, tmp_path):
    from bloodsmear.cli.main import app

    write_field(tmp_path / "in" / "f.png", 200, 150, ONE)
    r = CliRunner().invoke(app, ["analyze", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--backend", "onnx"])
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.exit_code == 2 and len(errors) == 1 and "pip install bloodsmear[onnx]" in errors[0], r.output
    assert not (tmp_path / "out").exists()
    r = CliRunner().invoke(app, ["analyze", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--backend", "tf"])
    assert r.exit_code == 2 and "backend must be one of torch, onnx" in r.stderr


def test_backend_and_segment_batch_are_no_part_of_the_run_identity():
    base = Pipeline(load_segmenter("wbc-seg-fast"), ColourClassifier(), None, PipelineConfig())
    other = Pipeline(load_segmenter("wbc-seg-fast"), ColourClassifier(), None, PipelineConfig(segment_batch=8))
    assert "backend" not in base.config.to_dict() and "segment_batch" not in base.config.to_dict()
    assert run_identity(base) == run_identity(other)
    assert PipelineConfig().updated(backend="onnx").backend == "onnx"  # carried over like base_dir
    with pytest.raises(BloodsmearError, match="backend"):
        PipelineConfig().updated(backend="tensorflow")


# ------------------------------------------------------------------ ONNX vs torch (shipped models)


def test_segmenter_maps_agree_with_torch(onnx_cache):
    torch_seg, onnx_seg = load_segmenter("wbc-seg-fast"), load_segmenter("wbc-seg-fast")
    onnx_seg.forward = onnx_backend.onnx_net(onnx_seg.net, (3, 64, 64), name="seg", dynamic_hw=True)
    for img in _fields(3):  # sizes not multiples of the U-Net's stride: padded as in torch
        for a, b in zip(torch_seg.maps(img), onnx_seg.maps(img)):
            assert a.shape == b.shape and np.abs(a - b).max() < TOL
    two = _fields(1) * 2
    for (fa, ca), (fb, cb) in zip(torch_seg.maps_many(two), onnx_seg.maps_many(two)):  # a batch of 2
        assert np.abs(fa - fb).max() < TOL and np.abs(ca - cb).max() < TOL


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_probabilities_agree_with_torch(onnx_cache, name):
    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, (s, s + 7, 3), dtype=np.uint8) for s in (40, 96, 150, 200, 64)]
    clf = CellClassifier.load(name)
    want = clf.predict_proba(crops)
    clf.backend = "onnx"
    got = clf.predict_proba(crops)
    assert got.shape == want.shape and np.abs(got - want).max() < TOL
    assert len(list(onnx_cache.glob("clf-*.onnx"))) == 1


def test_export_is_cached_by_the_weights_checksum(onnx_cache):
    a, b = load_segmenter("wbc-seg-fast"), load_segmenter("wbc-seg-fast")
    na = onnx_backend.onnx_net(a.net, (3, 64, 64), name="seg", dynamic_hw=True)
    mtime = na.path.stat().st_mtime_ns
    nb = onnx_backend.onnx_net(b.net, (3, 64, 64), name="seg", dynamic_hw=True)  # same weights: same file
    assert nb.path == na.path and na.path.stat().st_mtime_ns == mtime
    with __import__("torch").no_grad():
        next(b.net.parameters()).mul_(1.01)
    nc = onnx_backend.onnx_net(load_segmenter("wbc-seg-fast").net, (3, 64, 64), name="seg", dynamic_hw=True)
    assert nc.path == na.path
    nd = onnx_backend.onnx_net(b.net, (3, 64, 64), name="seg", dynamic_hw=True)  # remembered per module object
    assert nd is nb
    c = load_segmenter("wbc-seg-fast")
    with __import__("torch").no_grad():
        next(c.net.parameters()).mul_(1.01)
    assert onnx_backend.onnx_net(c.net, (3, 64, 64), name="seg", dynamic_hw=True).path != na.path  # new weights


def test_a_classifier_copy_with_another_net_gets_its_own_export(onnx_cache):
    import copy

    from bloodsmear.inference.classify import optimize_for_inference

    clf = CellClassifier.load("pbc-mobilenetv2")
    clf.backend = "onnx"
    crops = [np.full((90, 90, 3), 120, np.uint8), np.full((90, 90, 3), 200, np.uint8)]
    before = clf.predict_proba(crops)
    other = copy.copy(clf)  # as run_adapt's batch-norm adaptation does
    model = copy.deepcopy(clf.loaded.model)
    with __import__("torch").no_grad():
        for p in model.parameters():
            p.mul_(0.9)
    other.net = optimize_for_inference(model)
    got = other.predict_proba(crops)
    other.backend = "torch"
    assert np.abs(got - other.predict_proba(crops)).max() < TOL and np.abs(got - before).max() > TOL


def test_onnx_pipeline_finds_the_same_cells(onnx_cache):
    fields = _fields(4)
    base = Pipeline.from_config(PipelineConfig.load("default"))
    fast = Pipeline.from_config(PipelineConfig.load("default").updated(backend="onnx"))
    assert fast.segmenter.forward is not None and fast.screening.backend == fast.refine.backend == "onnx"
    for a, b in zip(base.run_many([(f, "f", None) for f in fields], scale=20.0),
                    fast.run_many([(f, "f", None) for f in fields], scale=20.0)):
        assert [c.box for c in a.cells] == [c.box for c in b.cells]
        for ca, cb in zip(a.cells, b.cells):
            assert abs(ca.score - cb.score) < TOL


# ------------------------------------------------------------------ segmenter batching across fields


def _same_cells(a: list[Cell], b: list[Cell], score_tol: float = 0.0) -> None:
    assert len(a) == len(b)
    for ca, cb in zip(a, b):
        assert ca.box == cb.box and abs(ca.score - cb.score) <= score_tol
        assert set(ca.attributes) == set(cb.attributes)
        assert np.array_equal(ca.polygon, cb.polygon) and np.array_equal(ca.mask, cb.mask)


def test_fast_segmenter_predict_many_equals_one_at_a_time():
    seg = load_segmenter("wbc-seg-fast")
    imgs = [make_field(160, 120, [(50 + 20 * i, 60, 18, "lymphocyte")]) for i in range(3)]
    for one, many in zip([seg.predict(im) for im in imgs], seg.predict_many(imgs)):
        _same_cells(one, many)
    with pytest.raises(ValueError, match="one size"):
        seg.maps_many([imgs[0], make_field(100, 100, ONE)])


def test_detect_many_batches_fields_of_one_working_size_with_the_same_cells():
    fields = [make_field(400, 300, TWO), make_field(400, 300, ONE), make_field(320, 300, TWO),
              np.zeros((8, 8, 3), np.uint8), make_field(400, 300, TWO)]
    items = [(f, 40.0, f"f{i}", None) for i, f in enumerate(fields)]
    one = Pipeline(load_segmenter("wbc-seg-fast"), ColourClassifier(), None, PipelineConfig())
    many = Pipeline(load_segmenter("wbc-seg-fast"), ColourClassifier(), None, PipelineConfig(segment_batch=2))
    batches: list[int] = []
    real = many.segmenter.predict_many
    many.segmenter.predict_many = lambda rgbs: batches.append(len(rgbs)) or real(rgbs)
    a, b = one.detect_many(items), many.detect_many(items)
    assert sorted(batches) == [2]  # the three 400x300 fields: a batch of 2, then one alone; 320x300 alone
    assert isinstance(a[3], BloodsmearError) and isinstance(b[3], BloodsmearError)  # the bad one alone
    for da, db in zip(a, b):
        if not isinstance(da, BaseException):
            _same_cells(da.cells, db.cells)
            assert (da.scale, da.width, da.height) == (db.scale, db.width, db.height)
            assert set(db.timings) == {"scale", "resize", "segment"}


def test_analyze_with_segment_batch_writes_the_same_records(tmp_path):
    import json

    from bloodsmear.inference.batch import analyze

    for i, (w, d) in enumerate([(400, TWO), (400, ONE), (360, TWO), (400, TWO)]):
        write_field(tmp_path / "in" / f"f{i}.png", w, 300, d)
    recs = []
    for n in (1, 4):
        pipe = Pipeline(load_segmenter("wbc-seg-fast"), ColourClassifier(), None, PipelineConfig(segment_batch=n))
        analyze([tmp_path / "in"], tmp_path / f"out{n}", pipe, scale=40.0, progress=False, overlays=False)
        recs.append([{k: v for k, v in json.loads(p.read_text()).items() if k != "timings_s"}
                     for p in sorted((tmp_path / f"out{n}" / "_per_image").glob("*.json"))])
    assert len(recs[0]) == 4 and recs[0] == recs[1]


# ------------------------------------------------------------------ real data


@pytest.mark.realdata
def test_onnx_and_batching_on_bccd_fields(data_root, onnx_cache):
    from conftest import need

    from bloodsmear.io import read_image

    files = sorted(need(data_root, "bccd", "JPEGImages").glob("*.jpg"))[:6]
    items = [(read_image(f), 85.0, f.name, f) for f in files]  # BCCD's red cells: ~85 px
    base = Pipeline.from_config(PipelineConfig.load("default"))
    batched = Pipeline.from_config(PipelineConfig.load("default").updated(segment_batch=3))
    fast = Pipeline.from_config(PipelineConfig.load("default").updated(backend="onnx", segment_batch=3))
    dets = base.detect_many(items)
    for da, db in zip(dets, batched.detect_many(items)):  # torch, batched: the same cells (a batch's
        _same_cells(da.cells, db.cells, score_tol=1e-6)  # convolutions may round the last float bit apart)
    small = [rgb[::4, ::4].copy() for rgb, *_ in items[:3]]  # about the working scale
    for (fa, ca), (fb, cb) in zip(base.segmenter.maps_many(small[:1]) + base.segmenter.maps_many(small[1:2]),
                                  fast.segmenter.maps_many(small[:1]) + fast.segmenter.maps_many(small[1:2])):
        assert np.abs(fa - fb).max() < TOL and np.abs(ca - cb).max() < TOL
    crops = screening_crops([(d.crop_source, d.cells, d.rbc_diameter_px) for d in dets], base.config)
    assert crops
    for clf_t, clf_o in ((base.screening, fast.screening), (base.refine, fast.refine)):
        assert np.abs(clf_t.predict_proba(crops) - clf_o.predict_proba(crops)).max() < TOL
    for da, db in zip(dets, fast.detect_many(items)):  # onnx, batched: the same boxes
        assert [c.box for c in da.cells] == [c.box for c in db.cells]
