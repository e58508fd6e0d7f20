"""The defects a new user hit with `analyze` (issue 11), each with a test that fails on the old code:
results.json in the paper's envelope, a lone field's scale, resume across runs, input checks, log lines
printed once, one cell area, RGBA / 16-bit images, the --workers help. Fakes where possible; the real
fields (BCCD) are marked `realdata` and skip where ../shared/data is absent."""

from __future__ import annotations

import json
import logging
import sys
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
from conftest import need
from pipeline_fakes import ONE, TWO, make_field, make_pipeline, write_field
from typer.testing import CliRunner

from bloodsmear.cli.common import TqdmHandler, setup_logging
from bloodsmear.cli.main import app
from bloodsmear.errors import BloodsmearError, InputError
from bloodsmear.experiments.bench_analyze import synthetic_photo
from bloodsmear.inference import batch
from bloodsmear.inference import pipeline as pl
from bloodsmear.inference.batch import analyze
from bloodsmear.inference.pipeline import Pipeline
from bloodsmear.inference.run_folder import RunMismatchError
from bloodsmear.io import read_image
from bloodsmear.outputs import paper_json
from bloodsmear.outputs.coco import to_coco_results
from bloodsmear.outputs.counts import count_table
from bloodsmear.preprocess.scale import PRIOR_RBC_SHARE, ScaleChoice, lone_field_choice, part_windows
from bloodsmear.types import Cell, polygon_area

@pytest.fixture
def smears(tmp_path):
    root = tmp_path / "in"
    write_field(root / "a.png", 400, 300, ONE)
    write_field(root / "sub" / "b.png", 400, 300, TWO)
    write_field(root / "c.png", 400, 300, [])
    return root


def _one_line(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, output
    return lines[0]


# ------------------------------------------------------------------ 1. results.json: the paper's envelope


def test_results_json_is_the_papers_envelope_with_the_run_beside_it(smears, tmp_path):
    out = tmp_path / "out"
    analyze([smears], out, make_pipeline(), scale=20, progress=False)
    doc = json.loads((out / "results.json").read_text())
    assert set(doc) == {"data", "run"}
    assert list(doc["data"]) == ["0", "1", "2"]
    assert [doc["data"][k]["filename"] for k in doc["data"]] == ["a.png", "c.png", "sub/b.png"]
    image = doc["data"]["2"]
    assert {"filename", "height", "width", "masks"} <= set(image) and (image["width"], image["height"]) == (400, 300)
    assert len(image["masks"]) == 2 and "cells" not in image
    mask = image["masks"][0]
    assert {"class_name", "score", "bounding_box", "vertices"} <= set(mask)
    assert set(mask["bounding_box"]) == {"x1", "x2", "y1", "y2"}
    assert np.asarray(mask["vertices"]).shape[1] == 2
    run = doc["run"]
    assert run["format"] == "bloodsmear-results" and run["version"] == paper_json.VERSION
    assert run["pipeline"]["segmenter_kind"] == "fake-discs" and run["identity"]["scale"] == 20.0
    paper_json.validate(doc)
    rec = json.loads(batch.record_path(out, "sub/b.png").read_text())  # the resume state: the same record
    assert rec == image


#: A results file in the structure the paper's tool publishes: "data" keyed "0", "1", ..., each image with
#: filename, height, width and masks of class_name, score, bounding_box (x1, x2, y1, y2) and vertices.
PAPER_FILE = {
    "data": {
        "0": {
            "filename": "IMG_0001.jpg", "height": 3024, "width": 4032,
            "masks": [
                {"class_name": "neutrophil", "score": 0.97,
                 "bounding_box": {"x1": 1000, "x2": 1400, "y1": 800, "y2": 1180},
                 "vertices": [[1000, 800], [1400, 800], [1400, 1180], [1000, 1180]]},
                {"class_name": "lymphocyte", "score": 0.88,
                 "bounding_box": {"x1": 2000.5, "x2": 2300.0, "y1": 500.0, "y2": 790.25},
                 "vertices": [[2000.5, 500.0], [2300.0, 500.0], [2300.0, 790.25]]},
            ],
        },
        "1": {"filename": "IMG_0002.jpg", "height": 3024, "width": 4032, "masks": []},
    }
}


def test_a_file_in_the_papers_published_structure_reads_through_our_reader(tmp_path):
    path = tmp_path / "paper.json"
    path.write_text(json.dumps(PAPER_FILE))
    paper_json.validate(PAPER_FILE)
    results = paper_json.read_results_json(path)
    assert [(r.name, r.width, r.height, len(r.cells)) for r in results] == [
        ("IMG_0001.jpg", 4032, 3024, 2), ("IMG_0002.jpg", 4032, 3024, 0)]
    neu, lym = results[0].cells
    assert (neu.label, neu.score, neu.box) == ("neutrophil", 0.97, (1000.0, 800.0, 1400.0, 1180.0))
    assert lym.polygon.shape == (3, 2) and lym.box == (2000.5, 500.0, 2300.0, 790.25)
    assert neu.attributes["screening_label"] == "neutrophil" and neu.attributes["refined_label"] is None
    assert neu.area == pytest.approx(400 * 380)
    # and our writers take what the reader gives
    header, rows = count_table(results)
    assert header[:3] == ["image", "lymphocyte", "neutrophil"] and rows[0][1:3] == [1, 1]
    assert len(to_coco_results(results)["annotations"]) == 2
    # the keys give the order, and a bloodsmear file must carry its own fields
    shuffled = {"data": {"1": PAPER_FILE["data"]["1"], "0": PAPER_FILE["data"]["0"]}}
    assert [r["filename"] for r in paper_json.document_records(shuffled)] == ["IMG_0001.jpg", "IMG_0002.jpg"]
    with pytest.raises(InputError, match="screening_label"):
        paper_json.validate({**PAPER_FILE, "run": {"format": "bloodsmear-results", "version": paper_json.VERSION}})


def test_the_old_document_shape_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": "bloodsmear-results", "version": 1, "images": []}))
    with pytest.raises(InputError, match="data"):
        paper_json.read_results_json(path)


# ------------------------------------------------------------------ 2. a field alone: a checked scale


def test_a_lone_fields_implausible_estimate_falls_back_to_its_parts_or_a_size_prior():
    # plausible for a 640 px field and its parts agree: its own
    assert lone_field_choice(86.0, [84.0] * 9, 640) == ScaleChoice(86.0, "estimated")
    # implausible for its size (135 px red cells: fewer than 5 across 640 px): its parts' median
    assert lone_field_choice(135.0, [88.0, 90.0, 86.0, 300.0, None], 640) == ScaleChoice(89.0, "field-parts")
    # plausible for its size but twice its parts' (clumps seen as cells): its parts'
    assert lone_field_choice(626.0, [320.0] * 5 + [600.0] * 4, 4032) == ScaleChoice(320.0, "field-parts")
    # neither plausible, or no estimate at all: a prior from its size
    assert lone_field_choice(135.0, [130.0] * 9, 640) == ScaleChoice(PRIOR_RBC_SHARE * 640, "size-prior")
    assert lone_field_choice(None, [None] * 9, 4032) == ScaleChoice(PRIOR_RBC_SHARE * 4032, "size-prior")
    wins = part_windows(np.zeros((480, 640, 3), np.uint8))
    assert len(wins) == 9 and {w.shape for w in wins} == {(240, 320, 3)}


def test_a_lone_field_with_an_implausible_estimate_is_named_in_a_warning(tmp_path, monkeypatch, caplog):
    # the field's own estimate: 300 px red cells in a 400x300 field; its parts: 20 px
    monkeypatch.setattr(pl, "estimate_rbc_diameter_px",
                        lambda small, f: 300.0 if small.shape[:2] == (300, 400) else 20.0)
    path = write_field(tmp_path / "in" / "alone.png", 400, 300, ONE)
    with caplog.at_level(logging.WARNING, logger="bloodsmear"):
        analyze([path], tmp_path / "out", make_pipeline(rbc_px=20.0), overlays=False, progress=False)
    rec = json.loads(batch.record_path(tmp_path / "out", "alone.png").read_text())
    assert (rec["rbc_diameter_px"], rec["scale_source"]) == (20.0, "field-parts") and len(rec["masks"]) == 1
    msgs = [r.getMessage() for r in caplog.records if "alone.png" in r.getMessage()]
    assert len(msgs) == 1 and "300 px implausible" in msgs[0] and "field-parts" in msgs[0]
    # --scale field keeps the field's own estimate, as documented
    res = make_pipeline(rbc_px=20.0).detect(make_field(400, 300, ONE), scale="field")
    assert (res.rbc_diameter_px, res.scale_source) == (300.0, "estimated")


@pytest.fixture(scope="module")
def default_pipeline():
    try:
        return Pipeline.from_config(None)
    except (BloodsmearError, ImportError) as e:
        pytest.skip(f"shipped pipeline not loadable: {e}")


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.realdata
def test_bccd_00002_alone_gives_its_wbc(default_pipeline, data_root, tmp_path, caplog):
    bccd = need(data_root, "bccd")
    field = need(bccd, "JPEGImages", "BloodImage_00002.jpg")
    gt = [tuple(float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
          for o in ET.parse(bccd / "Annotations" / "BloodImage_00002.xml").getroot().iter("object")
          if o.find("name").text == "WBC"]
    with caplog.at_level(logging.WARNING, logger="bloodsmear"):
        s = analyze([field], tmp_path / "out", default_pipeline, overlays=False, progress=False)
    assert s.n_analysed == 1
    rec = json.loads(batch.record_path(tmp_path / "out", field.name).read_text())
    assert rec["scale_source"] in ("field-parts", "size-prior") and 40 < rec["rbc_diameter_px"] < 120
    assert any("BloodImage_00002.jpg" in r.getMessage() and "implausible" in r.getMessage() for r in caplog.records)
    boxes = [tuple(m["bounding_box"][k] for k in ("x1", "y1", "x2", "y2")) for m in rec["masks"]]
    assert len(gt) == 1 and len(boxes) == 1 and _iou(gt[0], boxes[0]) >= 0.5


@pytest.mark.realdata
def test_the_synthetic_4032x3024_photo_finds_its_cells(default_pipeline, data_root, tmp_path):
    """`bench analyze --photo`: BloodImage_00000 enlarged 3.5x and tiled 2x2, one JPEG analysed alone."""
    src = need(data_root, "bccd", "JPEGImages", "BloodImage_00000.jpg")
    photo = tmp_path / "in" / "photo_4032x3024.jpg"
    photo.parent.mkdir()
    cv2.imwrite(str(photo), cv2.cvtColor(synthetic_photo(read_image(src)), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 90])
    s = analyze([photo], tmp_path / "out", default_pipeline, overlays=False, progress=False)
    rec = json.loads(batch.record_path(tmp_path / "out", photo.name).read_text())
    assert s.n_cells >= 3, rec["rbc_diameter_px"]  # the field's WBC in each of the (partly cut) copies
    assert 200 < rec["rbc_diameter_px"] < 450  # its red cells are ~305 px (87 px x 3.5)


# ------------------------------------------------------------------ 3. resume: one run per --out


def test_resuming_with_another_pipeline_or_scale_is_refused_unless_fresh(smears, tmp_path):
    out = tmp_path / "out"
    analyze([smears], out, make_pipeline(), scale=20, progress=False)
    assert (out / batch.RUN_FILE).is_file()
    with pytest.raises(RunMismatchError, match=r"review_threshold.*--fresh") as e:
        analyze([smears], out, make_pipeline(review_threshold=0.95), scale=20, progress=False)
    assert "\n" not in str(e.value)
    with pytest.raises(RunMismatchError, match="differs in scale"):
        analyze([smears], out, make_pipeline(), scale=25, progress=False)
    # the same run resumes
    assert analyze([smears], out, make_pipeline(), scale=20, progress=False).n_resumed == 3
    # --fresh: starts over, nothing of the old run left
    (out / "notes.txt").write_text("mine")
    s = analyze([smears / "a.png"], out, make_pipeline(review_threshold=0.95), scale=20, progress=False, fresh=True)
    assert (s.n_resumed, s.n_analysed) == (0, 1)
    doc = json.loads((out / "results.json").read_text())
    assert [im["filename"] for im in doc["data"].values()] == ["a.png"]
    assert doc["data"]["0"]["masks"][0]["review"] is True  # 0.9 < 0.95: the new pipeline's threshold
    assert doc["run"]["identity"]["pipeline"]["review_threshold"] == 0.95
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "_per_image/a.png.json", "_run.json", "annotations.xml", "coco.json", "counts.csv", "notes.txt",
        "overlays/a.png.png", "results.json"]


def test_records_without_a_run_identity_are_not_mixed_in(smears, tmp_path):
    out = tmp_path / "out"
    analyze([smears], out, make_pipeline(), scale=20, progress=False)
    (out / batch.RUN_FILE).unlink()  # an output folder of an older bloodsmear
    with pytest.raises(RunMismatchError, match="unknown run"):
        analyze([smears], out, make_pipeline(), scale=20, progress=False)


def test_the_identity_holds_the_model_checksums():
    ident = batch.run_identity(make_pipeline(), None)
    assert ident["scale"] == "auto" and "name" not in ident["pipeline"]
    seg = ident["models"]["segmenter"]  # the config names the shipped wbc-seg-fast
    assert seg is None or len(seg["weights"]) == len(seg["config"]) == 64


def test_the_identity_resolves_each_stage_as_its_loader_and_never_drops_a_bad_reference(tmp_path):
    from types import SimpleNamespace

    from bloodsmear.inference.pipeline_config import PipelineConfig
    from bloodsmear.inference.run_folder import run_identity

    def models(**stages):
        return run_identity(SimpleNamespace(config=PipelineConfig(**stages)))["models"]

    shipped = models(segmenter="wbc-seg-fast", screening="pbc-mobilenetv2")
    assert models(segmenter="default", screening="default") == shipped  # "default": the stage's own default
    assert shipped["screening"] is not None and models(screening="none")["screening"] is None  # no model there
    with pytest.raises(InputError, match="no-such-model"):  # was: None, silently part of the identity
        models(refine="no-such-model")
    with pytest.raises(InputError, match="segmenter"):  # a classifier named as the segmenter
        models(segmenter="pbc-mobilenetv2")


def test_cli_resume_mismatch_is_one_line_and_fresh_starts_over(smears, tmp_path, monkeypatch):
    monkeypatch.setattr(Pipeline, "from_config", classmethod(
        lambda cls, cfg=None: make_pipeline(review_threshold=0.95 if cfg == "strict" else 0.5)))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["analyze", str(smears), "--out", str(out), "--scale", "20", "--no-overlays"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["analyze", str(smears), "--out", str(out), "--scale", "20", "-p", "strict"])
    assert r.exit_code == 2
    line = _one_line(r.output)
    assert "another run" in line and "--fresh" in line
    r = CliRunner().invoke(app, ["analyze", str(smears), "--out", str(out), "--scale", "20", "-p", "strict",
                                 "--fresh", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert d["n_analysed"] == 3 and d["n_resumed"] == 0


# ------------------------------------------------------------------ 4. inputs and --out checked first


def test_cli_out_naming_a_file_is_one_line(smears, tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("x")
    r = CliRunner().invoke(app, ["analyze", str(smears), "--out", str(f)])
    assert r.exit_code == 2 and "not a folder" in _one_line(r.output)
    assert f.read_text() == "x"


def test_cli_empty_input_folder_says_no_images_were_found(tmp_path, monkeypatch):
    monkeypatch.setattr(Pipeline, "from_config", classmethod(lambda cls, cfg=None: pytest.fail("no model load")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    r = CliRunner().invoke(app, ["analyze", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "no images found" in _one_line(r.output)
    assert not (tmp_path / "out").exists()


def test_cli_missing_input_leaves_no_out_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(Pipeline, "from_config", classmethod(lambda cls, cfg=None: pytest.fail("no model load")))
    r = CliRunner().invoke(app, ["analyze", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "no such file" in _one_line(r.output)
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="no such file"):  # the library checks before it writes, too
        analyze([tmp_path / "nope"], tmp_path / "out2", make_pipeline(), progress=False)
    assert not (tmp_path / "out2").exists()


def test_an_out_folder_inside_the_input_folder_is_not_analysed(smears, tmp_path):
    out = smears / "results"
    analyze([smears], out, make_pipeline(), scale=20, progress=False)
    s = analyze([smears], out, make_pipeline(), scale=20, progress=False)  # its overlays are no inputs
    assert s.n_images == 3 and s.n_resumed == 3


# ------------------------------------------------------------------ 5. every log line once


@pytest.fixture
def cli_logging():
    root = logging.getLogger()
    before = root.handlers[:], root.level
    setup_logging()
    yield
    root.handlers, root.level = before[0], before[1]


def test_a_log_record_is_printed_once_while_the_progress_bar_runs(smears, tmp_path, capsys, cli_logging):
    (smears / "bad.png").write_bytes(b"not an image")
    ours = [type(h) for h in logging.getLogger().handlers if "pytest" not in type(h).__module__]
    assert ours == [TqdmHandler]
    analyze([smears], tmp_path / "out", make_pipeline(), scale=20, progress=True, workers=1)
    err = capsys.readouterr().err
    assert err.count("not a decodable image") == 1, err
    assert err.count("1 image(s) skipped") == 1
    assert [type(h) for h in logging.getLogger().handlers if "pytest" not in type(h).__module__] == ours


def test_cli_prints_each_warning_once(smears, tmp_path, monkeypatch):
    (smears / "bad.png").write_bytes(b"not an image")
    monkeypatch.setattr(Pipeline, "from_config", classmethod(lambda cls, cfg=None: make_pipeline()))
    root = logging.getLogger()
    before = root.handlers[:], root.level
    try:
        r = CliRunner().invoke(app, ["analyze", str(smears), "--out", str(tmp_path / "out"), "--scale", "20"])
    finally:
        root.handlers, root.level = before[0], before[1]
    assert r.exit_code == 0, r.output
    assert r.output.count("not a decodable image") == 1, r.output


def test_a_plain_console_handler_is_redirected_above_the_bar_not_doubled(smears, tmp_path, capsys):
    (smears / "bad.png").write_bytes(b"not an image")
    root = logging.getLogger()
    before = root.handlers[:], root.level
    root.handlers, root.level = [logging.StreamHandler(sys.stderr)], logging.INFO
    try:
        analyze([smears], tmp_path / "out", make_pipeline(), scale=20, progress=True, workers=1)
    finally:
        root.handlers, root.level = before[0], before[1]
    assert capsys.readouterr().err.count("not a decodable image") == 1


# ------------------------------------------------------------------ 6. one area per cell


def test_a_cells_area_is_the_same_in_results_json_and_coco_json(smears, tmp_path):
    out = tmp_path / "out"
    analyze([smears], out, make_pipeline(), scale=20, progress=False)
    masks = [m for im in json.loads((out / "results.json").read_text())["data"].values() for m in im["masks"]]
    coco = json.loads((out / "coco.json").read_text())["annotations"]
    assert len(masks) == len(coco) == 3
    for m, a in zip(masks, coco):
        assert m["area"] == a["area"] == pytest.approx(polygon_area(np.asarray(m["vertices"])), abs=0.5)
    # a cell whose mask holds more pixels than its outline encloses: the outline's area, everywhere
    poly = np.array([[0, 0], [9, 0], [9, 9], [0, 9]], float)
    cell = Cell(label="wbc", polygon=poly, mask=np.ones((10, 10), bool))
    assert cell.area == 81.0 and Cell(label="wbc", mask=np.ones((10, 10), bool)).area == 100.0


# ------------------------------------------------------------------ 7. RGBA and 16-bit images


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)
    return path


def test_rgba_and_16_bit_images_are_converted_and_grayscale_refused(tmp_path):
    rgb = make_field(120, 90, [(60, 45, 20, "lymphocyte")])
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    opaque = np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])
    assert np.array_equal(read_image(_png(tmp_path / "rgba.png", opaque)), rgb)
    assert np.array_equal(read_image(_png(tmp_path / "16bit.png", bgr.astype(np.uint16) * 257)), rgb)
    opaque16 = np.dstack([bgr.astype(np.uint16) * 257, np.full(bgr.shape[:2], 65535, np.uint16)])
    assert np.array_equal(read_image(_png(tmp_path / "rgba16.png", opaque16)), rgb)
    # a see-through alpha: composited on white (transparent -> white, half -> half way)
    alpha = np.full(bgr.shape[:2], 255, np.uint8)
    alpha[:, :10] = 0
    alpha[:, 10:20] = 128
    got = read_image(_png(tmp_path / "holes.png", np.dstack([bgr, alpha])))
    assert np.array_equal(got[:, 20:], rgb[:, 20:]) and (got[:, :10] == 255).all()
    half = rgb[:, 10:20].astype(float) * 128 / 255 + 255 * 127 / 255
    assert np.abs(got[:, 10:20] - half).max() <= 1
    for name, gray in (("gray.png", rgb[:, :, 1]), ("gray16.png", rgb[:, :, 1].astype(np.uint16) * 257)):
        with pytest.raises(InputError, match="grayscale"):
            read_image(_png(tmp_path / name, gray))
    with pytest.raises(InputError, match="float32"):
        read_image(_png(tmp_path / "float.tiff", bgr.astype(np.float32)))


def test_analyze_takes_rgba_and_16_bit_pngs(tmp_path):
    bgr = cv2.cvtColor(make_field(400, 300, TWO), cv2.COLOR_RGB2BGR)
    _png(tmp_path / "in" / "rgba.png", np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)]))
    _png(tmp_path / "in" / "deep.png", bgr.astype(np.uint16) * 257)
    _png(tmp_path / "in" / "gray.png", bgr[:, :, 1])
    s = analyze([tmp_path / "in"], tmp_path / "out", make_pipeline(), scale=20, progress=False)
    assert (s.n_analysed, s.n_cells) == (2, 4)
    reason = "grayscale image: a stained smear needs a colour (RGB) image"
    assert s.skipped == [(str(tmp_path / "in" / "gray.png"), reason)]


# ------------------------------------------------------------------ 8. --workers help; bench analyze empty


def test_workers_help_and_code_agree(monkeypatch):
    monkeypatch.setattr(batch.os, "cpu_count", lambda: 16)
    assert batch.default_workers() == batch.MAX_DEFAULT_WORKERS == 3
    monkeypatch.setattr(batch.os, "cpu_count", lambda: 1)
    assert batch.default_workers() == 2
    for cmd in (["analyze", "--help"], ["bench", "analyze", "--help"]):
        r = CliRunner().invoke(app, cmd, env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
        text = " ".join(r.output.split())
        assert "at most 3" in text and "max 2" not in text, text


def test_bench_analyze_on_an_empty_folder_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(app, ["bench", "analyze", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "no images found" in _one_line(r.output)
