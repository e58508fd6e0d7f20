"""`analyze` over folders (bad images skipped, resume after a kill) and `evaluate`, with fakes."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from pipeline_fakes import ONE, TWO, make_field, make_pipeline, write_field
from typer.testing import CliRunner

from bloodsmear.inference import batch
from bloodsmear.inference.batch import analyze, collect_images
from bloodsmear.outputs import paper_json
from bloodsmear.types import AnnotatedImage, Cell, Dataset

@pytest.fixture
def smears(tmp_path):
    root = tmp_path / "in"
    write_field(root / "a.png", 400, 300, ONE)
    write_field(root / "sub" / "b.jpg", 400, 300, TWO)
    write_field(root / "sub" / "deeper" / "c.tif", 400, 300, TWO)
    write_field(root / "d.bmp", 400, 300, [])
    return root


def _add_bad_images(root):
    (root / "bad").mkdir()
    (root / "bad" / "notes.jpg").write_text("not an image")
    full = (root / "sub" / "b.jpg").read_bytes()
    (root / "bad" / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "bad" / "empty.png").write_bytes(b"")


def test_analyze_writes_every_output_named_by_relative_path(smears, tmp_path):
    out = tmp_path / "out"
    pipe = make_pipeline()
    s = analyze([smears], out, pipe, scale=20, progress=False, workers=1)
    assert pipe.screening.calls == [5]  # the cells of all 4 images classified in one batch
    assert (s.n_images, s.n_analysed, s.n_skipped, s.n_cells) == (4, 4, 0, 5)
    assert s.counts == {"lymphocyte": 3, "neutrophil": 2}
    doc = json.loads((out / "results.json").read_text())
    paper_json.validate(doc)
    assert [im["filename"] for im in paper_json.document_records(doc)] == ["a.png", "d.bmp", "sub/b.jpg",
                                                                           "sub/deeper/c.tif"]
    for f in ("coco.json", "annotations.xml", "counts.csv", "overlays/sub/deeper/c.tif.png"):
        assert (out / f).is_file(), f
    assert not (out / "skipped.csv").exists()
    assert not list(out.rglob(".*.part*"))


def test_bad_images_are_reported_and_skipped(smears, tmp_path, caplog):
    _add_bad_images(smears)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="bloodsmear"):
        s = analyze([smears], out, make_pipeline(), scale=20, progress=False)
    assert s.n_analysed == 4 and s.n_skipped == 3
    msgs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]
    assert len(msgs) == 3
    assert any("truncated.jpg" in m and "truncated JPEG" in m for m in msgs)
    assert any("notes.jpg" in m and "not a decodable image" in m for m in msgs)
    assert any("empty.png" in m and "empty file" in m for m in msgs)
    assert any("3 image(s) skipped" in r.getMessage() for r in caplog.records)
    assert len(json.loads((out / "results.json").read_text())["data"]) == 4
    assert (out / "skipped.csv").read_text().count("\n") == 4


@pytest.mark.parametrize("stage", ["segmenter", "screening"])
def test_a_bug_in_a_stage_stops_the_run_but_a_bad_image_is_skipped(smears, tmp_path, stage):
    """A TypeError from a broken segmenter (or classifier) is a bug: raised, not every image turned into
    a 'skipped' row; an input error (or OpenCV's) on one image skips that image alone."""
    import cv2

    from bloodsmear.errors import InputError

    pipe = make_pipeline()
    broken = pipe.segmenter if stage == "segmenter" else pipe.screening
    name = "predict" if stage == "segmenter" else "predict_proba"
    setattr(broken, name, lambda *a, **k: (_ for _ in ()).throw(TypeError("unsupported operand")))
    with pytest.raises(TypeError, match="unsupported operand"):
        analyze([smears], tmp_path / "out", pipe, scale=20, progress=False, workers=1)

    pipe = make_pipeline()
    predict = pipe.segmenter.predict
    calls = iter([InputError(None, "odd pixels"), cv2.error("odd")])

    def flaky(rgb):
        err = next(calls, None)
        if err is not None:
            raise err
        return predict(rgb)

    pipe.segmenter.predict = flaky
    s = analyze([smears], tmp_path / "out2", pipe, scale=20, progress=False, workers=1)
    assert (s.n_analysed, s.n_skipped) == (2, 2)


def test_resume_after_a_kill_finishes_only_the_missing_images(smears, tmp_path, monkeypatch):
    out = tmp_path / "out"
    pipe = make_pipeline()
    real_detect, calls = pipe.detect, []

    def dying_detect(rgb, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the kill, mid-run
        calls.append(kw["name"])
        return real_detect(rgb, **kw)

    monkeypatch.setattr(pipe, "detect", dying_detect)
    with pytest.raises(KeyboardInterrupt):
        analyze([smears], out, pipe, scale=20, progress=False, workers=1, batch_images=2)
    assert not (out / "results.json").exists()
    done = sorted(p.relative_to(out / "_per_image").as_posix() for p in (out / "_per_image").rglob("*.json"))
    assert done == ["a.png.json", "d.bmp.json"]
    # a record half-written when the kill came, left behind as a temp file
    tmp_file = out / "_per_image" / "sub" / ".b.jpg.json.abc123.part.json"
    tmp_file.parent.mkdir(parents=True, exist_ok=True)
    tmp_file.write_text('{"filename": "sub/b.j')
    seen = []
    pipe2 = make_pipeline()
    real2 = pipe2.detect
    monkeypatch.setattr(pipe2, "detect", lambda rgb, **kw: seen.append(kw["name"]) or real2(rgb, **kw))
    s = analyze([smears], out, pipe2, scale=20, progress=False)
    assert sorted(seen) == ["sub/b.jpg", "sub/deeper/c.tif"]
    assert (s.n_resumed, s.n_analysed, s.n_cells) == (2, 2, 5)
    assert not tmp_file.exists()
    assert len(json.loads((out / "results.json").read_text())["data"]) == 4
    # an aggregate deleted after a finished run is rebuilt without analysing anything again
    (out / "coco.json").unlink()
    seen.clear()
    s = analyze([smears], out, pipe2, scale=20, progress=False)
    assert seen == [] and s.n_resumed == 4 and (out / "coco.json").is_file()


def test_names_are_unique_across_inputs(tmp_path):
    write_field(tmp_path / "x" / "f.png", 64, 64, [])
    write_field(tmp_path / "y" / "f.png", 64, 64, [])
    write_field(tmp_path / "y" / "g.png", 64, 64, [])
    names = [j.name for j in collect_images([tmp_path / "x", tmp_path / "y", tmp_path / "y" / "g.png"])]
    assert len(set(names)) == len(names) == 4
    assert names[:2] == ["x/f.png", "y/f.png"]


def test_cli_analyze(smears, tmp_path, monkeypatch):
    from bloodsmear.cli.main import app
    from bloodsmear.inference.pipeline import Pipeline

    monkeypatch.setattr(Pipeline, "from_config", classmethod(lambda cls, cfg=None: make_pipeline()))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["analyze", str(smears), "--out", str(out), "--scale", "20", "--no-overlays", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert d["n_analysed"] == 4 and d["counts"] == {"lymphocyte": 3, "neutrophil": 2}
    assert not (out / "overlays").exists()
    r = CliRunner().invoke(app, ["analyze", str(tmp_path / "nope"), "--out", str(out)])
    assert r.exit_code == 2 and "nope" in r.output and "no such file" in r.output
    r = CliRunner().invoke(app, ["analyze", str(smears), "--out", str(out), "--scale", "huge"])
    assert r.exit_code == 2 and "scale" in r.output


def _box(cx, cy, r):
    return (cx - r, cy - r, cx + r, cy + r)


def test_evaluate_scores_detection_and_classes(tmp_path):
    from bloodsmear.evaluation.pipeline_eval import evaluate_pipeline

    ims = []
    for i, discs in enumerate([TWO, ONE, TWO]):
        p = write_field(tmp_path / f"f{i}.png", 400, 300, discs)
        cells = [Cell(label="wbc", box=_box(cx, cy, r), subclass=cls) for cx, cy, r, cls in discs]
        cells.append(Cell(label="rbc", box=(0, 0, 10, 10)))
        ims.append(AnnotatedImage(path=p, width=400, height=300, cells=cells))
    ims[2].cells[0].subclass = "monocyte"  # one wrong GT class: classification is scored
    ds = Dataset("toy", tmp_path, ims, format="voc", splits={"test": ["f0", "f2"], "train": ["f1"]})
    rep = evaluate_pipeline(ds, pipeline=make_pipeline(), scale=20)
    f = rep["figures"]
    assert rep["split"] == "test" and rep["n_images"] == 2
    assert f["wbc_box_ap50"] == pytest.approx(1.0) and f["wbc_recall"] == 1.0 and f["count_mae"] == 0
    assert f["wbc_mask_ap"] is None  # GT has boxes only
    assert f["n_classified"] == 4 and f["class_accuracy"] == pytest.approx(0.75)
    assert rep["per_class"]["monocyte"]["recall"] == 0.0
    half = evaluate_pipeline(ds, pipeline=make_pipeline(), scale=10, rescale=0.5, split="all")
    assert half["n_images"] == 3 and half["figures"]["wbc_box_ap50"] == pytest.approx(1.0)


def test_evaluate_one_wbc_per_field(tmp_path):
    from bloodsmear.evaluation.pipeline_eval import evaluate_pipeline

    ims = []
    fields = [(ONE, "lymphocyte"), (TWO, "neutrophil"), ([], "lymphocyte"), (ONE, "lymphocyte")]
    for i, (discs, lab) in enumerate(fields):
        p = write_field(tmp_path / lab / f"{i}.png", 400, 300, discs)
        ims.append(AnnotatedImage(path=p, width=400, height=300, label=lab))
    rep = evaluate_pipeline(Dataset("lisc-toy", tmp_path, ims, format="lisc"), pipeline=make_pipeline(), scale=20)
    f = rep["figures"]
    assert f["one_wbc_found_rate"] == 0.75 and f["no_extra_wbc_rate"] == 0.75 and f["exactly_one_rate"] == 0.5
    assert f["n_classified"] == 3


def test_per_image_record_is_the_paper_record(smears, tmp_path):
    out = tmp_path / "out"
    analyze([smears / "sub" / "b.jpg"], out, make_pipeline(), scale=20, progress=False)
    rec = json.loads(batch.record_path(out, "b.jpg").read_text())
    assert rec["filename"] == "b.jpg" and len(rec["masks"]) == 2
    assert np.allclose(sorted(c["area"] for c in rec["masks"]), sorted([np.pi * 30 ** 2, np.pi * 40 ** 2]), rtol=0.1)


def test_bench_analyze_reports_both_pipelines(smears, monkeypatch):
    from bloodsmear.experiments import bench_analyze as bench
    from bloodsmear.inference.pipeline import Pipeline

    monkeypatch.setattr(Pipeline, "from_config", classmethod(lambda cls, cfg=None: make_pipeline(scale=20)))
    d = bench.bench_analyze(smears, limit=3, compare="maskrcnn")
    assert d["n_fields"] == 3 and d["maskrcnn_n_fields"] == 3 and d["n_cells"] == d["maskrcnn_n_cells"] == 3
    for k in ("fields_per_s", "maskrcnn_fields_per_s", "ratio", "peak_rss_mb", "ms_per_field", "cpu_ms_per_field"):
        assert d[k] > 0, k
    assert set(d["stage_ms"]) >= {"segment", "classify"} and d["backend"] == "torch"
    seen = []  # --backend goes over the timed pipeline's config
    monkeypatch.setattr(Pipeline, "from_config",
                        classmethod(lambda cls, cfg=None: seen.append(cfg) or make_pipeline(scale=20)))
    assert bench.bench_analyze(smears, limit=2, compare=None, backend="onnx")["backend"] == "onnx"
    assert seen[0].backend == "onnx"
    photo = bench.synthetic_photo(make_field(640, 480, ONE))
    assert photo.shape == (3024, 4032, 3) and photo.dtype == np.uint8
    assert bench.synthetic_photo().shape == (3024, 4032, 3)


def test_evaluate_a_segmenter_folder_alone(tmp_path):
    from pipeline_fakes import DiscSegmenter

    from bloodsmear.evaluation.pipeline_eval import evaluate_pipeline
    from bloodsmear.models.segmenter_base import register_segmenter

    register_segmenter("fake-discs")(lambda folder: DiscSegmenter(20.0))
    folder = tmp_path / "seg"
    folder.mkdir()
    (folder / "config.json").write_text('{"kind": "fake-discs"}')
    p = write_field(tmp_path / "f.png", 400, 300, TWO)
    gt = AnnotatedImage(path=p, width=400, height=300,
                        cells=[Cell(label="wbc", box=_box(cx, cy, r)) for cx, cy, r, _ in TWO])
    rep = evaluate_pipeline(Dataset("toy", tmp_path, [gt]), segmenter=str(folder), scale=20)
    assert rep["pipeline"]["segmenter_kind"] == "fake-discs" and rep["split"] == "all"
    assert rep["figures"]["wbc_box_ap50"] == pytest.approx(1.0) and "class_macro_f1" not in rep["figures"]


def test_batches_of_large_images_are_split_by_pixels(smears, tmp_path, monkeypatch):
    monkeypatch.setattr(batch, "GROUP_PIXELS", 2 * 400 * 300)
    pipe = make_pipeline()
    s = analyze([smears], tmp_path / "out", pipe, scale=20, progress=False, workers=1)
    assert s.n_analysed == 4 and pipe.screening.calls == [1, 4]  # (a, d): 1 cell, then (b, c): 4 cells


def test_evaluate_writes_every_detection_error_for_review(tmp_path):
    import csv

    from bloodsmear.evaluation.pipeline_eval import evaluate_pipeline

    root = tmp_path / "d"
    # f0: both WBCs annotated (no error); f1: one WBC not annotated (unmatched prediction) and one
    # annotated WBC where the field is empty (missed)
    p0 = write_field(root / "f0.png", 400, 300, TWO)
    p1 = write_field(root / "sub" / "f1.png", 400, 300, ONE)
    ims = [AnnotatedImage(path=p0, width=400, height=300,
                          cells=[Cell(label="wbc", box=_box(cx, cy, r)) for cx, cy, r, _ in TWO]),
           AnnotatedImage(path=p1, width=400, height=300,
                          cells=[Cell(label="wbc", box=(250.0, 150.0, 330.0, 230.0), subclass="monocyte")])]
    before = (root / "sub" / "f1.png").read_bytes()
    rep = evaluate_pipeline(Dataset("toy", root, ims, format="voc"), pipeline=make_pipeline(), scale=20,
                            split="all", errors_dir=tmp_path / "err")
    assert rep["errors"]["by_kind"] == {"unmatched_prediction": 1, "missed_wbc": 1}
    assert rep["errors"]["n_images"] == 1
    rows = list(csv.DictReader((tmp_path / "err" / "errors.csv").open()))
    assert [(r["image"], r["kind"]) for r in rows] == [("sub/f1.png", "missed_wbc"), ("sub/f1.png", "unmatched_prediction")]
    assert rows[0]["annotated_class"] == "monocyte" and float(rows[1]["x1"]) == pytest.approx(70, abs=3)
    assert rows[1]["predicted_class"] == "lymphocyte" and float(rows[1]["score"]) == pytest.approx(0.9)
    overlays = sorted(p.relative_to(tmp_path / "err").as_posix() for p in (tmp_path / "err").rglob("*.png"))
    assert overlays == ["overlays/sub/f1.png"]
    assert (root / "sub" / "f1.png").read_bytes() == before


def test_errors_of_one_wbc_fields_and_the_overlay_colours(tmp_path):
    from bloodsmear.evaluation.errors import RED, YELLOW, detection_errors, draw_errors
    from bloodsmear.evaluation.pipeline_eval import evaluate_pipeline

    ims = []
    for i, discs in enumerate([ONE, TWO, []]):
        p = write_field(tmp_path / "lymphocyte" / f"{i}.png", 400, 300, discs)
        ims.append(AnnotatedImage(path=p, width=400, height=300, label="lymphocyte"))
    rep = evaluate_pipeline(Dataset("lisc-toy", tmp_path, ims, format="lisc"), pipeline=make_pipeline(), scale=20,
                            errors_dir=tmp_path / "err")
    assert rep["errors"]["by_kind"] == {"extra_wbc": 1, "no_wbc_found": 1}
    # drawing returns a new image with the colours of the legend
    rgb = make_field(400, 300, ONE)
    before = rgb.copy()
    gt = [Cell(label="wbc", box=(250.0, 150.0, 330.0, 230.0))]
    pred = [Cell(label="wbc", box=(70.0, 70.0, 130.0, 130.0), score=0.8)]
    out = draw_errors(rgb, gt, pred, [])
    assert np.array_equal(rgb, before) and out is not rgb
    assert tuple(out[150, 290]) == YELLOW and tuple(out[100, 70]) == RED
    errs = detection_errors("x.png", gt, pred, [])
    assert {e.kind for e in errs} == {"missed_wbc", "unmatched_prediction"}
    assert detection_errors("x.png", gt, pred, [(0, 0, 0.9)]) == []
