"""Per-folder pooling of red-cell scale estimates: `choose_diameters`, `plan_scales`, and their use by
`Pipeline.detect`, `analyze` and `evaluate` (fakes; the real-data check is at the end)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pipeline_fakes import make_field, make_pipeline, write_field

from bloodsmear.errors import InputError
from bloodsmear.inference import pipeline as pl
from bloodsmear.inference.batch import analyze, record_path
from bloodsmear.inference.pipeline_config import parse_scale, scale_mode
from bloodsmear.inference.scale_plan import plan_scales
from bloodsmear.preprocess.scale import ScaleChoice, choose_diameters

DISCS = [(100, 100, 30, "lymphocyte")]


def test_auto_replaces_only_the_fields_far_off_their_folders_median():
    est = [80.0, 84.0, 88.0, 180.0, None, 40.0, 41.0]
    groups = ["a"] * 5 + ["b"] * 2
    got = choose_diameters(est, groups, "auto")
    assert [c.source for c in got] == ["estimated"] * 3 + ["folder-median"] * 2 + ["estimated"] * 2
    assert got[3].diameter_px == pytest.approx(86.0) and got[4].diameter_px == pytest.approx(86.0)
    assert [c.diameter_px for c in got[:3]] == [80.0, 84.0, 88.0]
    # group b has 2 estimates (< 3): no median, each field keeps its own
    assert [c.diameter_px for c in got[5:]] == [40.0, 41.0]


def test_folder_gives_every_field_the_median_and_field_keeps_its_own():
    est = [80.0, 84.0, 88.0, 180.0, float("nan")]
    folder = choose_diameters(est, ["a"] * 5, "folder")
    assert {c.diameter_px for c in folder} == {86.0} and {c.source for c in folder} == {"folder-median"}
    field = choose_diameters(est, ["a"] * 5, "field")
    assert [c.diameter_px for c in field] == [80.0, 84.0, 88.0, 180.0, None]
    assert field[-1].source == "fallback"


def test_tolerance_and_min_fields_are_parameters():
    est = [80.0, 80.0, 100.0]
    assert choose_diameters(est, [0, 0, 0], "auto")[2].source == "estimated"  # 100 / 80 < 1.33
    assert choose_diameters(est, [0, 0, 0], "auto", tolerance=1.2)[2] == ScaleChoice(80.0, "folder-median")
    assert choose_diameters(est, [0, 0, 0], "folder", min_fields=4)[2] == ScaleChoice(100.0, "estimated")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="auto, field, folder"):
        choose_diameters([1.0], [0], "median")
    with pytest.raises(ValueError, match="1 estimates but 2 groups"):
        choose_diameters([1.0], [0, 1], "auto")
    with pytest.raises(InputError, match="auto, field, folder"):
        parse_scale("median")
    assert parse_scale("Folder") is None and scale_mode("FIELD") == "field" and scale_mode(None) == "auto"
    assert scale_mode(40.0) is None and parse_scale("40") == 40.0


def _marked_field(path, mark: int, width: int = 200, height: int = 150):
    """A field whose top-left pixel carries `mark`: the fake estimators look their answer up by it."""
    import cv2

    rgb = make_field(width, height, DISCS)
    rgb[0, 0] = mark
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


ESTIMATES = {1: 80.0, 2: 82.0, 3: 84.0, 4: 300.0, 5: None}


def _by_mark(rgb):
    return ESTIMATES[int(rgb[0, 0, 0])]


def test_plan_groups_by_folder_and_pixel_size_and_skips_unreadable(tmp_path):
    x, y = tmp_path / "x", tmp_path / "y"
    for mark in (1, 2, 3, 4, 5):
        _marked_field(x / f"{mark}.png", mark)
    _marked_field(x / "big.png", 4, width=400)  # another pixel size: a group of its own
    _marked_field(y / "4.png", 4)  # another folder: a group of its own
    (x / "broken.png").write_bytes(b"not a png")
    paths = sorted(tmp_path.rglob("*.png"))
    plan = plan_scales(paths, _by_mark, "auto")
    assert x / "broken.png" not in plan and len(plan) == 5
    assert plan[x / "4.png"] == ScaleChoice(83.0, "folder-median")  # 300 is far off the median of 80, 82, 84, 300
    assert plan[x / "5.png"] == ScaleChoice(83.0, "folder-median")  # no estimate of its own
    assert plan[x / "1.png"] == ScaleChoice(80.0, "estimated")
    # groups of one field have no consensus: left to the pipeline's check of a lone field
    assert x / "big.png" not in plan and y / "4.png" not in plan
    assert {c.diameter_px for p, c in plan_scales(paths, _by_mark, "folder").items() if p.parent == x
            and p.name != "big.png"} == {83.0}
    seen = []  # `transform` is applied before measuring (evaluate --rescale)
    plan_scales([x / "1.png"], lambda rgb: seen.append(rgb.shape), "auto", transform=lambda rgb: rgb[::2, ::2])
    assert seen == [(75, 100, 3)]


def test_detect_uses_a_scale_choice_as_given(monkeypatch):
    monkeypatch.setattr(pl, "estimate_rbc_diameter_px", lambda small, f: pytest.fail("must not estimate"))
    pipe = make_pipeline(rbc_px=20.0)
    res = pipe.detect(make_field(400, 300, DISCS), scale=ScaleChoice(40.0, "folder-median"))
    assert res.scale == pytest.approx(0.5) and res.rbc_diameter_px == 40.0
    assert res.scale_source == "folder-median" and len(res.cells) == 1
    res = pipe.detect(make_field(400, 300, DISCS), scale=ScaleChoice(None, "fallback"))
    assert res.scale == 1.0 and res.scale_source == "fallback"


@pytest.mark.parametrize("mode, expected", [("auto", (83.0, "folder-median")), ("field", (300.0, "estimated")),
                                            ("folder", (83.0, "folder-median")), ("20", (20.0, "given"))])
def test_analyze_pools_a_folders_fields(tmp_path, monkeypatch, mode, expected):
    for mark in (1, 2, 3, 4):  # three fields at ~80 px red cells and one whose estimate fails (300 px)
        _marked_field(tmp_path / "in" / f"f{mark}.png", mark, 400, 300)
    monkeypatch.setattr(pl, "estimate_rbc_diameter_px", lambda small, f: _by_mark(small))
    analyze([tmp_path / "in"], tmp_path / "out", make_pipeline(rbc_px=20.0), scale=mode, overlays=False,
            progress=False)
    rec = json.loads(record_path(tmp_path / "out", "f4.png").read_text())
    assert (rec["rbc_diameter_px"], rec["scale_source"]) == expected
    assert len(rec["masks"]) == 1
    first = json.loads(record_path(tmp_path / "out", "f1.png").read_text())
    assert first["scale_source"] in {"estimated", "folder-median", "given"}


def test_evaluate_pools_the_scale_of_the_evaluated_fields(tmp_path, monkeypatch):
    from bloodsmear.evaluation.pipeline_eval import evaluate_pipeline
    from bloodsmear.types import AnnotatedImage, Cell, Dataset

    images = []
    for mark in (1, 2, 3, 4):
        p = _marked_field(tmp_path / "d" / f"f{mark}.png", mark, 400, 300)
        images.append(AnnotatedImage(path=p, width=400, height=300, cells=[
            Cell(label="wbc", box=(70.0, 70.0, 130.0, 130.0))]))
    ds = Dataset(name="fake", root=tmp_path / "d", images=images, format="fake")
    monkeypatch.setattr(pl, "estimate_rbc_diameter_px", lambda small, f: _by_mark(small))
    seen = []
    pipe = make_pipeline(rbc_px=20.0)
    detect = pipe.detect
    monkeypatch.setattr(pipe, "detect", lambda rgb, **kw: seen.append(kw["scale"]) or detect(rgb, **kw))
    evaluate_pipeline(ds, pipeline=pipe, split="all")
    assert seen[3] == ScaleChoice(83.0, "folder-median") and seen[0] == ScaleChoice(80.0, "estimated")
    seen.clear()
    evaluate_pipeline(ds, pipeline=pipe, split="all", scale="field")
    assert seen == ["field"] * 4


def test_cli_segment_scale_shows_the_pooled_diameter(tmp_path):
    """Three synthetic fields with 24 px red cells and one 'dense' field whose real estimate is far off
    (its red cells drawn 3x larger): `segment scale` shows it at the folder's median."""
    import cv2
    from typer.testing import CliRunner

    from bloodsmear.cli.main import app
    from bloodsmear.training.synthetic_fields import synthetic_field

    for i, d in enumerate([24.0, 24.0, 24.0, 72.0]):
        f = synthetic_field(480, 640, d, seed=i)
        cv2.imwrite(str(tmp_path / f"f{i}.png"), cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
    r = CliRunner().invoke(app, ["segment", "scale", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    rows = {Path(x["path"]).name: x for x in json.loads(r.output.strip().splitlines()[-1])["images"]}
    assert rows["f3.png"]["diameter_px"] > 50 and rows["f3.png"]["source"] == "folder-median"
    assert abs(rows["f3.png"]["used_px"] / 24.0 - 1) < 0.1
    assert rows["f0.png"]["source"] == "estimated" and rows["f0.png"]["used_px"] == rows["f0.png"]["diameter_px"]
    r = CliRunner().invoke(app, ["segment", "scale", str(tmp_path), "--mode", "median"])
    assert r.exit_code == 2 and "auto, field, folder" in r.output


@pytest.mark.parametrize("mode", ["auto", "folder", "field"])
def test_cli_segment_scale_uses_what_analyze_uses_on_a_lone_field(tmp_path, monkeypatch, mode):
    """A folder of one field whose own estimate (300 px) is implausible for its 400x300 pixels, while its
    parts show 30 px red cells: `segment scale` shows the diameter `analyze` records (the lone-field
    check; not the field's own estimate)."""
    from typer.testing import CliRunner

    from bloodsmear.cli.main import app
    from bloodsmear.inference import stages
    from bloodsmear.preprocess.scale import ScaleEstimate

    write_field(tmp_path / "in" / "f.png", 400, 300, DISCS)
    monkeypatch.setattr(stages, "estimate_rbc_diameter",
                        lambda rgb: ScaleEstimate(300.0 if rgb.shape[1] >= 400 else 30.0, 0.5))
    analyze([tmp_path / "in"], tmp_path / "out", make_pipeline(rbc_px=20.0), scale=mode, overlays=False,
            progress=False)
    rec = json.loads(record_path(tmp_path / "out", "f.png").read_text())
    r = CliRunner().invoke(app, ["segment", "scale", str(tmp_path / "in"), "--mode", mode, "--json"])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.output.strip().splitlines()[-1])["images"]
    assert row["diameter_px"] == 300.0 and row["confidence"] == 0.5
    assert (row["used_px"], row["source"]) == (rec["rbc_diameter_px"], rec["scale_source"])
    assert (row["used_px"], row["source"]) == ((300.0, "estimated") if mode == "field" else (30.0, "field-parts"))


def test_detect_returns_a_typed_detection_that_hands_its_crop_source_over():
    pipe = make_pipeline(rbc_px=20.0)
    det = pipe.detect(make_field(400, 300, DISCS), scale=ScaleChoice(40.0, "folder-median"))
    assert isinstance(det, pl.Detection)
    assert det.crop_source.full.shape == (300, 400, 3) and det.scale == pytest.approx(0.5)
    res = det.to_result()
    assert res.meta == {"scale_source": "folder-median"}  # nothing smuggled through meta
    assert res.cells is det.cells and res.rbc_diameter_px == 40.0
