"""The full pipeline with a fake segmenter and classifiers: scale mapping, tiling, both stages, review."""

from __future__ import annotations

import numpy as np
import pytest
from pipeline_fakes import ColourClassifier, DiscSegmenter, make_field, make_pipeline

from bloodsmear.errors import InputError
from bloodsmear.inference import pipeline as pl
from bloodsmear.inference.pipeline import Pipeline
from bloodsmear.inference.pipeline_config import PipelineConfig, parse_scale

DISCS = [(200, 150, 40, "lymphocyte"), (600, 400, 50, "neutrophil")]


class FixedClassifier:
    def __init__(self, classes, label, score):
        self.classes, self.label, self.score = list(classes), label, score

    def predict_proba(self, crops):
        p = np.full((len(crops), len(self.classes)), (1 - self.score) / (len(self.classes) - 1))
        p[:, self.classes.index(self.label)] = self.score
        return p


def _centre(cell):
    x1, y1, x2, y2 = cell.box
    return (x1 + x2) / 2, (y1 + y2) / 2


def test_polygons_come_back_in_original_pixels_under_a_scale_factor():
    rgb = make_field(800, 600, DISCS)
    before = rgb.copy()
    pipe = make_pipeline(rbc_px=20.0)
    res = pipe.run(rgb, "f.png", scale=40.0)  # red cells 40 px here, 20 px at working scale -> factor 0.5
    assert np.array_equal(rgb, before)
    assert pipe.segmenter.seen_shapes == [(300, 400, 3)]
    assert res.scale == pytest.approx(0.5) and res.rbc_diameter_px == 40.0
    assert (res.width, res.height) == (800, 600)
    cells = sorted(res.cells, key=lambda c: c.box[0])
    assert len(cells) == 2
    for cell, (cx, cy, r, cls) in zip(cells, DISCS):
        x, y = _centre(cell)
        assert abs(x - cx) < 3 and abs(y - cy) < 3
        assert abs((cell.box[2] - cell.box[0]) - 2 * r) < 5
        assert cell.polygon.min() >= 0 and cell.polygon[:, 0].max() <= 799
        assert cell.area == pytest.approx(np.pi * r * r, rel=0.1)
        assert cell.label == cls and cell.attributes["screening_label"] == cls
        assert cell.attributes["refined_label"] is None and cell.attributes["review"] is False
        assert cell.attributes["detection_score"] == pytest.approx(0.9)
        assert cell.mask.shape == (round(cell.box[3]) - round(cell.box[1]), round(cell.box[2]) - round(cell.box[0]))


def test_auto_scale_uses_the_red_cell_estimate(monkeypatch):
    monkeypatch.setattr(pl, "estimate_rbc_diameter_px", lambda small, f: 80.0 / f)
    res = make_pipeline(rbc_px=20.0).run(make_field(800, 600, DISCS), "f.png")
    assert res.scale == pytest.approx(0.25) and res.meta["scale_source"] == "estimated"
    assert len(res.cells) == 2
    monkeypatch.setattr(pl, "estimate_rbc_diameter_px", lambda small, f: None)
    res = make_pipeline(rbc_px=20.0).run(make_field(800, 600, DISCS), "f.png")
    # no estimate, and no folder: a prior from the field's size (preprocess.scale.PRIOR_RBC_SHARE)
    assert res.rbc_diameter_px == pytest.approx(0.085 * 800) and res.meta["scale_source"] == "size-prior"
    res = make_pipeline(rbc_px=20.0).run(make_field(800, 600, DISCS), "f.png", scale="field")
    assert res.scale == 1.0 and res.meta["scale_source"] == "fallback"  # --scale field: its own, or none


def test_classifier_runs_once_per_image_on_all_crops():
    pipe = make_pipeline()
    pipe.run(make_field(800, 600, DISCS + [(400, 500, 30, "lymphocyte")]), "f", scale=20)
    assert pipe.screening.calls == [3]


def test_refine_stage_applies_only_to_the_classes_it_knows():
    refine = FixedClassifier(["neutrophil", "band_cell"], "band_cell", 0.8)
    pipe = Pipeline(DiscSegmenter(), ColourClassifier(), refine, PipelineConfig(review_threshold=0.85))
    cells = sorted(pipe.run(make_field(800, 600, DISCS), "f", scale=20).cells, key=lambda c: c.box[0])
    lym, neu = cells
    assert lym.label == "lymphocyte" and lym.attributes["refined_label"] is None and not lym.attributes["review"]
    assert neu.attributes["screening_label"] == "neutrophil" and neu.attributes["screening_score"] == pytest.approx(0.9)
    assert neu.label == "band_cell" and neu.attributes["refined_score"] == pytest.approx(0.8)
    assert neu.score == pytest.approx(0.8) and neu.attributes["review"] is True  # 0.8 < 0.85: kept, flagged
    assert "band_cell" in pipe.classes


class ProbClassifier:
    def __init__(self, classes, probs):
        self.classes, self.probs = list(classes), np.asarray(probs, float)

    def predict_proba(self, crops):
        return np.tile(self.probs, (len(crops), 1))


@pytest.mark.parametrize("mass, refined", [(None, False), (0.3, True), (0.5, False)])
def test_refine_mass_routes_unsure_cells_to_the_refine_stage(mass, refined):
    # the screening calls every cell "platelet" (0.4) but gives the refine model's "neutrophil" 0.35
    screen = ProbClassifier(["platelet", "neutrophil", "lymphocyte"], [0.4, 0.35, 0.25])
    refine = FixedClassifier(["neutrophil", "band_cell"], "band_cell", 0.8)
    pipe = Pipeline(DiscSegmenter(), screen, refine, PipelineConfig(refine_mass=mass))
    for cell in pipe.run(make_field(800, 600, DISCS), "f", scale=20).cells:
        assert cell.attributes["screening_label"] == "platelet"
        assert (cell.label == "band_cell") is refined and (cell.attributes["refined_label"] is not None) is refined
    with pytest.raises(InputError, match="refine_mass"):
        PipelineConfig(refine_mass=1.5).validate()
    assert pipe.classify_crops([]) == []


def test_refine_classes_must_be_known_to_the_refine_model():
    with pytest.raises(InputError, match="monocyte"):
        Pipeline(DiscSegmenter(), ColourClassifier(), FixedClassifier(["a", "b"], "a", 0.9),
                 PipelineConfig(refine_classes=["monocyte"]))


def test_low_confidence_cells_are_flagged_for_review_not_dropped():
    unsure = ColourClassifier(("lymphocyte", "neutrophil", "monocyte"), confidence=0.45)
    pipe = Pipeline(DiscSegmenter(), unsure, None, PipelineConfig(review_threshold=0.5))
    res = pipe.run(make_field(800, 600, DISCS), "f", scale=20)
    assert len(res.cells) == 2 and all(c.attributes["review"] for c in res.cells)
    assert {c.label for c in res.cells} == {"lymphocyte", "neutrophil"}


def test_tiles_find_every_cell_once_including_cells_on_tile_borders():
    discs = [(60, 60, 20, "lymphocyte"), (150, 150, 25, "neutrophil"), (300, 90, 20, "lymphocyte"),
             (230, 260, 22, "neutrophil"), (100, 280, 18, "lymphocyte")]
    rgb = make_field(400, 320, discs)
    pipe = make_pipeline(rbc_px=20.0, tile_size=128, tile_overlap=56)
    res = pipe.run(rgb, "f", scale=20.0)
    assert len(pipe.segmenter.seen_shapes) > 4 and all(s[0] <= 128 and s[1] <= 128 for s in pipe.segmenter.seen_shapes)
    got = sorted(_centre(c) for c in res.cells)
    want = sorted((cx, cy) for cx, cy, _, _ in discs)
    assert len(got) == len(want)
    for (x, y), (cx, cy) in zip(got, want):
        assert abs(x - cx) < 2 and abs(y - cy) < 2


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="too small"):
        make_pipeline().run(np.zeros((4, 4, 3), np.uint8), "tiny.png")
    with pytest.raises(InputError, match="RGB uint8"):
        make_pipeline().run(np.zeros((40, 40), np.uint8), "gray.png")
    assert parse_scale("auto") is None and parse_scale("12.5") == 12.5
    for bad in ("big", "-3", "0"):
        with pytest.raises(InputError):
            parse_scale(bad)


def test_config_yaml_round_trip_and_errors(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("segmenter: my-seg\nscreening: ./cls\nrefine: null\nreview_threshold: 0.7\nscale: 33\n")
    cfg = PipelineConfig.load(p)
    assert cfg.segmenter == "my-seg" and cfg.review_threshold == 0.7 and cfg.scale == 33 and cfg.name == "p"
    assert cfg.base_dir == str(tmp_path.resolve())
    p.write_text("segmenter: x\nreview_treshold: 0.7\n")
    with pytest.raises(InputError, match="review_treshold"):
        PipelineConfig.load(p)
    p.write_text("review_threshold: 7\n")
    with pytest.raises(InputError, match="review_threshold"):
        PipelineConfig.load(p)
    with pytest.raises(InputError, match="shipped"):
        PipelineConfig.load("no-such-pipeline")


def test_shipped_pipeline_configs_load():
    for name in ("default", "maskrcnn"):
        cfg = PipelineConfig.load(name)
        assert cfg.name == name and cfg.segmenter and cfg.screening
    assert PipelineConfig.load(None).name == "default"


def test_crops_are_framed_like_pbc_images_relative_to_the_red_cells():
    from bloodsmear.inference.stages import crop_cells
    from bloodsmear.types import Cell

    rgb = make_field(400, 300, [(200, 150, 20, "lymphocyte"), (20, 20, 15, "neutrophil")])
    cells = [Cell("wbc", box=(180, 130, 220, 170)), Cell("wbc", box=(5, 5, 35, 35))]
    a, b = crop_cells(rgb, cells, rbc_px=30, frame_rbc=4)
    assert a.shape == (120, 120, 3) and b.shape == (120, 120, 3)  # 4 red cells wide, both
    assert np.array_equal(a[60, 60], rgb[150, 200])  # centred on the cell
    assert tuple(b[0, 0]) == tuple(int(v) for v in np.median(rgb[::4, ::4].reshape(-1, 3), axis=0))  # filled
    wide, narrow = crop_cells(rgb, cells[:1] * 2, rbc_px=100, frame_rbc=4)[0], crop_cells(rgb, cells[:1], rbc_px=2)[0]
    assert wide.shape[0] == 160 and narrow.shape[0] == 80  # kept within 2-4 cell diameters
    tight = crop_cells(rgb, cells[:1], rbc_px=None, padding=0.25)[0]
    assert tight.shape[:2] == (60, 60)


def test_big_images_are_resized_via_the_small_copy_and_mapped_back():
    discs = [(500, 400, 150, "lymphocyte"), (1500, 1000, 200, "neutrophil")]
    pipe = make_pipeline(rbc_px=20.0, scale_max_side=500)
    res = pipe.run(make_field(2000, 1500, discs), "big.jpg", scale=100.0)  # factor 0.2 < 0.25 (small copy)
    assert pipe.segmenter.seen_shapes == [(300, 400, 3)]
    got = sorted(_centre(c) for c in res.cells)
    for (x, y), (cx, cy, r, _) in zip(got, discs):
        assert abs(x - cx) < 8 and abs(y - cy) < 8
    assert res.width == 2000 and max(c.polygon[:, 0].max() for c in res.cells) > 1650


def test_refine_stage_can_use_its_own_crops():
    class SizeClassifier(FixedClassifier):
        def predict_proba(self, crops):
            self.sizes = [c.shape[0] for c in crops]
            return super().predict_proba(crops)

    refine = SizeClassifier(["neutrophil", "band_cell"], "band_cell", 0.8)
    cfg = PipelineConfig(crop_frame_rbc=None, refine_crop={"frame_rbc": 4.0})
    res = Pipeline(DiscSegmenter(), ColourClassifier(), refine, cfg).run(make_field(800, 600, DISCS), "f", scale=20)
    assert len(refine.sizes) == 1 and 195 <= refine.sizes[0] <= 210  # the neutrophil (r=50): 2 diameters > 4 RBCs
    assert sorted(c.label for c in res.cells) == ["band_cell", "lymphocyte"]
    with pytest.raises(InputError, match="refine_crop"):
        PipelineConfig(refine_crop={"frame": 3}).validate()


def test_large_crops_of_big_photos_come_from_the_downscaled_copy(monkeypatch):
    from bloodsmear.inference import stages

    class Sizes(ColourClassifier):
        def predict_proba(self, crops):
            self.sizes = [c.shape[0] for c in crops]
            return super().predict_proba(crops)

    discs = [(500, 400, 150, "lymphocyte"), (1500, 1000, 200, "neutrophil")]
    rgb = make_field(2000, 1500, discs)
    cfg = PipelineConfig(scale_max_side=500, crop_frame_rbc=None, crop_padding=0.25)
    full = Pipeline(DiscSegmenter(), Sizes(), None, cfg)
    res_full = full.run(rgb, "big.jpg", scale=100.0)
    monkeypatch.setattr(stages, "MIN_CROP_PX", 100)
    small = Pipeline(DiscSegmenter(), Sizes(), None, cfg)
    res_small = small.run(rgb, "big.jpg", scale=100.0)
    assert [round(s / 4) for s in full.screening.sizes] == pytest.approx(small.screening.sizes, abs=2)  # 1/4 size
    assert [c.label for c in res_full.cells] == [c.label for c in res_small.cells]
    assert "crop_source" not in res_small.meta


def test_evaluate_stages_scores_the_routing_on_single_cell_images(tmp_path):
    import cv2

    from bloodsmear.evaluation.stages_eval import evaluate_stages

    for cls, colour in (("lymphocyte", (40, 40, 200)), ("neutrophil", (200, 40, 40)), ("platelet", (0, 0, 0))):
        (tmp_path / "cells" / cls).mkdir(parents=True)
        for i in range(3):
            im = np.full((40, 40, 3), 230, np.uint8)
            cv2.circle(im, (20, 20), 12, colour[::-1], -1)  # BGR on disk
            cv2.imwrite(str(tmp_path / "cells" / cls / f"{i}.png"), im)
    refine = FixedClassifier(["neutrophil", "lymphocyte"], "neutrophil", 0.8)
    pipe = Pipeline(DiscSegmenter(), ColourClassifier(), refine, PipelineConfig())
    ev = evaluate_stages(tmp_path / "cells", pipeline=pipe, progress=False)
    # platelet is not a class of the pipeline: left out; every lymphocyte/neutrophil is refined -> "neutrophil"
    assert ev.n == 6 and ev.skipped_labels == 3 and ev.n_refined == 6
    assert ev.report.accuracy == pytest.approx(0.5) and ev.to_dict()["n_refined"] == 6
    plain = evaluate_stages(tmp_path / "cells", pipeline=Pipeline(DiscSegmenter(), ColourClassifier(), None,
                                                                   PipelineConfig()), progress=False)
    assert plain.report.accuracy == pytest.approx(1.0) and plain.n_refined == 0
    with pytest.raises(InputError, match="not found"):
        evaluate_stages(tmp_path / "nothing", pipeline=pipe, progress=False)


def test_screening_classes_renormalise_and_flag_the_excluded_first_choice():
    screen = ProbClassifier(["platelet", "neutrophil", "lymphocyte"], [0.5, 0.3, 0.2])
    pipe = Pipeline(DiscSegmenter(), screen, None,
                    PipelineConfig(screening_classes=["neutrophil", "lymphocyte"], review_threshold=0.5))
    assert pipe.classes == ["neutrophil", "lymphocyte"]
    for cell in pipe.run(make_field(800, 600, DISCS), "f", scale=20).cells:
        assert cell.label == "neutrophil" and cell.score == pytest.approx(0.6)  # 0.3 / (0.3 + 0.2)
        assert cell.attributes["review"] is True and "screening_excluded_top" not in cell.attributes
    sure = Pipeline(DiscSegmenter(), ProbClassifier(["platelet", "neutrophil"], [0.1, 0.9]), None,
                    PipelineConfig(screening_classes=["neutrophil"]))
    assert all(not c.attributes["review"] for c in sure.run(make_field(800, 600, DISCS), "f", scale=20).cells)
    with pytest.raises(InputError, match="screening_classes"):
        Pipeline(DiscSegmenter(), screen, None, PipelineConfig(screening_classes=["monocyte"]))
