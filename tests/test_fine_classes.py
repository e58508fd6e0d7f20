"""The paper's fine classes and their groups: the vocabulary, every cell at both levels (pipeline,
results.json, counts.csv, COCO, CVAT), fine-label training and scoring at both levels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from bloodsmear.classes import (
    FINE_CLASSES, GROUP_CLASSES, GROUPS, canonical, canonical_fine, cell_levels, fine_classes_of, group_of,
    label_at, level_of, pbc_fine_label, to_common,
)
from bloodsmear.data.coco import read_coco
from bloodsmear.data.cvat import read_cvat
from bloodsmear.errors import BloodsmearError, UnknownLabelError
from bloodsmear.evaluation.classifier import level_reports
from bloodsmear.io import write_image_atomic
from bloodsmear.outputs import paper_json
from bloodsmear.outputs.coco import to_coco_results, write_coco_results
from bloodsmear.outputs.counts import write_counts_csv
from bloodsmear.outputs.cvat import write_cvat_xml
from bloodsmear.training.prepare import example_label, split_examples
from bloodsmear.types import AnnotatedImage, Cell, SlideResult

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- vocabulary


def test_fine_and_group_vocabularies():
    assert len(FINE_CLASSES) == 12 and "blast_cell" in FINE_CLASSES and "segmented_neutrophil" in FINE_CLASSES
    assert "neutrophil" not in FINE_CLASSES and "ig" not in FINE_CLASSES
    assert set(GROUP_CLASSES) == {"basophil", "blast_cell", "eosinophil", "erythroblast", "ig", "lymphocyte",
                                  "monocyte", "neutrophil", "platelet"}
    assert all(canonical(c) == c for c in (*FINE_CLASSES, *GROUP_CLASSES))


def test_fine_to_group_and_back():
    assert group_of("myelocyte") == group_of("MMY") == group_of("promyelocyte") == "ig"
    assert group_of("band cell") == group_of("segmented_neutrophil") == "neutrophil"
    assert group_of("neutrophil") == "neutrophil" and group_of("ig") == "ig" and group_of("BASOPHILS") == "basophil"
    assert fine_classes_of("ig") == ("metamyelocyte", "myelocyte", "promyelocyte")
    assert fine_classes_of("NEUTROPHILS") == ("band_cell", "segmented_neutrophil")
    assert fine_classes_of("eosinophil") == ("eosinophil",)
    for fine in FINE_CLASSES:  # both ways: every fine class is among its group's fine classes
        assert fine in fine_classes_of(group_of(fine))
    for group in GROUP_CLASSES:
        assert {group_of(f) for f in fine_classes_of(group)} == {group}
    with pytest.raises(BloodsmearError, match="fine class, not a group .* 'ig'"):
        fine_classes_of("myelocyte")
    with pytest.raises(UnknownLabelError):
        group_of("schistocyte")


@pytest.mark.parametrize("label, level", [
    ("band_cell", "fine"), ("segmented neutrophil", "fine"), ("MY", "fine"), ("PMY", "fine"),
    ("ig", "group"), ("neutrophil", "group"), ("NEUTROPHILS", "group"),
    ("basophil", "both"), ("blast cell", "both"), ("platelet", "both"), ("erythroblast", "both"),
])
def test_level_of(label, level):
    assert level_of(label) == level


@pytest.mark.parametrize("alias", ["SNE", "seg", "segs", "segmented", "Segmented Neutrophil",
                                   "segmented-neutrophils", "neutrophil_segmented"])
def test_segmented_neutrophil_aliases(alias):
    assert canonical(alias) == "segmented_neutrophil"


def test_rvpbs_neutrophil_is_the_fine_class_a_grouped_neutrophil_the_group():
    # RV-PBS's "neutrophil" (its segmented form) and PBC's SNE prefix: the fine class
    assert canonical_fine("neutrophil") == canonical_fine("NEUTROPHILS") == "segmented_neutrophil"
    assert canonical_fine("band cell") == "band_cell" and canonical_fine("ig") == "ig"
    assert pbc_fine_label("neutrophil", "SNE") == "segmented_neutrophil"
    assert pbc_fine_label("neutrophil", "NEUTROPHIL") == "neutrophil"  # no subclass: the group only
    # a grouped model's (PBC folder class, LISC, BCCD) "neutrophil": a group-level answer
    assert canonical("neutrophil") == "neutrophil"
    assert cell_levels("neutrophil") == {"fine_label": None, "group_label": "neutrophil"}
    assert cell_levels("segmented_neutrophil") == {"fine_label": "segmented_neutrophil", "group_label": "neutrophil"}
    assert cell_levels("basophil") == {"fine_label": "basophil", "group_label": "basophil"}
    assert cell_levels("schistocyte") == {"fine_label": None, "group_label": "schistocyte"}
    # both name the paper's common "neutrophil"
    assert to_common("segmented_neutrophil") == to_common("neutrophil") == to_common("band_cell") == "neutrophil"
    assert label_at("myelocyte", "group") == "ig" and label_at("neutrophil", "fine") == "neutrophil"
    with pytest.raises(BloodsmearError, match="unknown class level"):
        label_at("ig", "coarse")


# ------------------------------------------------------------------------------------- cells and outputs

LABELS = ["band_cell", "segmented_neutrophil", "myelocyte", "neutrophil", "basophil", "ig"]


def _cell(label: str, x: float) -> Cell:
    poly = np.array([[x, 10], [x + 20, 10], [x + 20, 30], [x, 30]], float)
    return Cell(label=label, polygon=poly, score=0.9,
                attributes={"detection_score": 0.95, "screening_label": label, "screening_score": 0.9,
                            "refined_label": None, "refined_score": None, "review": False, **cell_levels(label)})


@pytest.fixture
def results() -> list[SlideResult]:
    return [SlideResult(name="a.png", width=200, height=60,
                        cells=[_cell(lab, 5 + 30 * i) for i, lab in enumerate(LABELS)]),
            SlideResult(name="b.png", width=200, height=60, cells=[_cell("myelocyte", 5)])]


def test_counts_at_both_levels(results, tmp_path):
    rows = list(csv.DictReader(write_counts_csv(tmp_path / "counts.csv", results).open()))
    by = {(r["level"], r["image"]): r for r in rows}
    assert [r["level"] for r in rows] == ["group"] * 4 + ["fine"] * 4
    g, f = by["group", "a.png"], by["fine", "a.png"]
    assert (g["neutrophil"], g["ig"], g["basophil"], g["band_cell"], g["myelocyte"]) == ("3", "2", "1", "", "")
    assert (f["band_cell"], f["segmented_neutrophil"], f["myelocyte"], f["basophil"]) == ("1", "1", "1", "1")
    assert (f["neutrophil"], f["ig"]) == ("1", "1")  # group-only answers keep their group's name at fine level
    assert by["group", "TOTAL"]["ig"] == "3" and by["fine", "TOTAL"]["myelocyte"] == "2"
    assert by["group", "TOTAL"]["total"] == by["fine", "TOTAL"]["total"] == "7"
    for lv in ("group", "fine"):
        pct = [float(v) for k, v in by[lv, "PERCENT"].items() if k not in ("level", "image", "total", "review") and v]
        assert sum(pct) == pytest.approx(100, abs=0.05)


@pytest.mark.parametrize("level", ["fine", "group"])
def test_coco_at_either_level_round_trips(results, tmp_path, level):
    path = write_coco_results(tmp_path / "coco.json", results, level=level)
    d = json.loads(path.read_text())
    cats = {c["name"]: c["level"] for c in d["categories"]}
    if level == "group":
        assert set(cats) == {"basophil", "ig", "neutrophil"}
    else:
        assert set(cats) == {"band_cell", "basophil", "ig", "myelocyte", "neutrophil", "segmented_neutrophil"}
        assert cats["neutrophil"] == cats["ig"] == "group" and cats["myelocyte"] == "fine"  # marked
    assert d["info"]["level"] == level
    ann = d["annotations"][0]  # band_cell
    assert (ann["fine_class"], ann["group"]) == ("band_cell", "neutrophil")
    back = read_coco(path)
    assert [c.label for c in back.images[0].cells] == [label_at(lab, level) for lab in LABELS]


@pytest.mark.parametrize("level", ["fine", "group"])
def test_cvat_at_either_level_round_trips(results, tmp_path, level):
    path = write_cvat_xml(tmp_path / "annotations.xml", results, level=level)
    text = path.read_text()
    assert '<attribute name="level">group</attribute>' in text  # the grouped "neutrophil" is marked
    back = read_cvat(path)
    assert [c.label for c in back.images[0].cells] == [label_at(lab, level) for lab in LABELS]
    assert "level" not in back.images[0].cells[3].attributes


def test_cvat_reader_rvpbs_neutrophil_vs_marked_or_grouped_files():
    shapes = ('<polygon label="neutrophil" points="1,1;9,1;9,9"/>'
              '<polygon label="neutrophil" points="1,1;9,1;9,9"><attribute name="level">group</attribute></polygon>')
    xml = f'<annotations><image id="0" name="a.jpg" width="10" height="10">{shapes}</image></annotations>'
    assert [c.label for c in read_cvat(xml).images[0].cells] == ["segmented_neutrophil", "neutrophil"]
    assert [c.label for c in read_cvat(xml, neutrophil="group").images[0].cells] == ["neutrophil", "neutrophil"]
    # a shape a person adds in CVAT under a label whose declared default level is group
    meta = ('<meta><task><labels><label><name>neutrophil</name><attributes><attribute><name>level</name>'
            '<default_value>group</default_value></attribute></attributes></label></labels></task></meta>')
    xml = f'<annotations>{meta}<image id="0" name="a.jpg" width="10" height="10">{shapes}</image></annotations>'
    assert [c.label for c in read_cvat(xml).images[0].cells] == ["neutrophil", "neutrophil"]
    with pytest.raises(ValueError, match="neutrophil must be"):
        read_cvat(xml, neutrophil="seg")


def test_results_json_carries_both_levels(results, tmp_path):
    path = paper_json.write_results_json(tmp_path / "results.json", [paper_json.image_record(r) for r in results])
    masks = json.loads(path.read_text())["data"]["0"]["masks"]
    assert [(m["class_name"], m["fine_class"], m["group"]) for m in masks] == [
        ("band_cell", "band_cell", "neutrophil"), ("segmented_neutrophil", "segmented_neutrophil", "neutrophil"),
        ("myelocyte", "myelocyte", "ig"), ("neutrophil", None, "neutrophil"), ("basophil", "basophil", "basophil"),
        ("ig", None, "ig")]
    back = paper_json.read_results_json(path)[0].cells
    assert [(c.attributes["fine_label"], c.attributes["group_label"]) for c in back] == [
        (cell_levels(lab)["fine_label"], group_of(lab)) for lab in LABELS]
    # a file without the fields (the paper's own tool, older bloodsmear) gets them from class_name
    rec = paper_json.image_record(results[1])
    for m in rec["masks"]:
        del m["fine_class"], m["group"]
    cell = paper_json.record_to_result(rec).cells[0]
    assert (cell.attributes["fine_label"], cell.attributes["group_label"]) == ("myelocyte", "ig")
    with pytest.raises(Exception, match="fine_class"):
        bad = paper_json.image_record(results[1])
        bad["masks"][0]["fine_class"] = 3
        paper_json.validate(paper_json.results_document([bad], {}))


def test_pipeline_cells_carry_fine_and_group_labels():
    from pipeline_fakes import ColourClassifier, DiscSegmenter, make_field

    from bloodsmear.inference.pipeline import Pipeline
    from bloodsmear.inference.pipeline_config import PipelineConfig

    discs = [(200, 200, 30, "lymphocyte"), (500, 300, 35, "neutrophil")]
    pipe = Pipeline(DiscSegmenter(), ColourClassifier(), None, PipelineConfig())
    cells = sorted(pipe.run(make_field(800, 600, discs), "f", scale=20).cells, key=lambda c: c.box[0])
    assert [(c.label, c.attributes["fine_label"], c.attributes["group_label"]) for c in cells] == [
        ("lymphocyte", "lymphocyte", "lymphocyte"), ("neutrophil", None, "neutrophil")]  # a grouped model
    class Fine:  # a fine model: every cell a band cell
        classes = ["band_cell", "myelocyte"]

        def predict_proba(self, crops):
            return np.tile([0.8, 0.2], (len(crops), 1))

    cells = Pipeline(DiscSegmenter(), Fine(), None, PipelineConfig()).run(make_field(800, 600, discs), "f",
                                                                          scale=20).cells
    assert [(c.label, c.attributes["fine_label"], c.attributes["group_label"]) for c in cells] == [
        ("band_cell", "band_cell", "neutrophil")] * 2
    assert all(c.attributes["group_label"] == group_of(c.label) for c in cells)


def test_level_reports_group_and_common():
    classes = ["band_cell", "basophil", "eosinophil", "lymphocyte", "metamyelocyte", "monocyte", "myelocyte",
               "platelet", "promyelocyte", "segmented_neutrophil"]
    truth = ["band_cell", "segmented_neutrophil", "myelocyte", "ig", "basophil", "platelet"]
    pred = ["segmented_neutrophil", "segmented_neutrophil", "promyelocyte", "myelocyte", "platelet", "platelet"]
    rep = level_reports(classes, truth, pred)
    assert rep["group"].n == 6 and rep["group"].accuracy == pytest.approx(5 / 6)  # only basophil wrong
    common = rep["common"]  # band/seg -> neutrophil; ig (no subclass) and platelet are no common class
    assert common.n == 4 and common.accuracy == pytest.approx(2 / 4)
    assert "other" in common.classes and common.per_class["other"].support == 0
    # a grouped model has no common report (no myelocyte to answer)
    assert set(level_reports(["ig", "neutrophil", "basophil"], ["ig"], ["ig"])) == {"group"}


# -------------------------------------------------------------------------------------- fine training


def test_example_label_levels():
    im = AnnotatedImage(path=Path("ig/MY_1.png"), width=0, height=0, label="ig", meta={"fine_label": "myelocyte"})
    assert example_label(im) == "ig" and example_label(im, "fine") == "myelocyte"
    im = AnnotatedImage(path=Path("ig/IG_1.png"), width=0, height=0, label="ig", meta={"fine_label": "ig"})
    assert example_label(im, "fine") is None  # known only by its group
    im = AnnotatedImage(path=Path("band_cell/1.png"), width=0, height=0, label="band_cell")
    assert example_label(im, "fine") == "band_cell"  # a folder named by a fine class


def test_fine_config_loads():
    from bloodsmear.experiments.runner import load_config_file

    kind, cfg = load_config_file(ROOT / "configs" / "classifier" / "pbc_fine.yaml", None, None)
    assert cfg.data.label == "fine" and cfg.data.format == "pbc" and cfg.name == "pbc-fine"
    mobilenet = load_config_file(ROOT / "configs" / "classifier" / "pbc_mobilenetv2.yaml", None, None)[1]
    assert cfg.data.model_copy(update={"label": "image"}) == mobilenet.data  # the same recipe, other labels
    assert cfg.model == mobilenet.model and cfg.optim == mobilenet.optim and cfg.epochs == mobilenet.epochs


def _pbc_like(root: Path, n: int = 10) -> Path:
    rng = np.random.default_rng(0)
    layout = {"ig": ["MY", "MMY", "IG"], "neutrophil": ["BNE", "SNE", "NEUTROPHIL"], "basophil": ["BA"]}
    for k, (folder, prefixes) in enumerate(layout.items()):
        for j, prefix in enumerate(prefixes):
            for i in range(n):
                img = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
                img[..., (k + j) % 3] += 150
                write_image_atomic(root / folder / f"{prefix}_{i}.png", img)
    return root


def test_tiny_training_on_fine_labels(tmp_path):
    from bloodsmear.config import TrainConfig
    from bloodsmear.training.trainer import train

    root = _pbc_like(tmp_path / "pbc")
    cfg = TrainConfig.from_dict({
        "name": "tiny-fine", "data": {"dataset": str(root), "format": "pbc", "label": "fine", "image_size": 32,
                                      "scheme": "64-16-20", "cache_dir": str(tmp_path / "cache")},
        "model": {"backbone": "tiny_cnn", "pretrained": False}, "optim": {"lr": 0.01}, "epochs": 1,
        "batch_size": 8, "out_dir": str(tmp_path / "run"), "early_stopping_patience": None})
    classes, _root, _m, per_split = split_examples(cfg)
    assert classes == ["band_cell", "basophil", "metamyelocyte", "myelocyte", "segmented_neutrophil"]
    assert not any("IG_" in p.name or "NEUTROPHIL_" in p.name for ps, _ in per_split.values() for p in ps)
    res = train(cfg, progress=False, write_card=False)
    model_cfg = json.loads((Path(res.model_dir) / "config.json").read_text())
    assert model_cfg["classes"] == classes and model_cfg["training"]["data"]["label"] == "fine"


def test_analyze_level_sets_coco_and_cvat_categories_counts_hold_both(tmp_path):
    from pipeline_fakes import ONE, DiscSegmenter, write_field

    from bloodsmear.inference.batch import analyze
    from bloodsmear.inference.pipeline import Pipeline
    from bloodsmear.inference.pipeline_config import PipelineConfig

    class Fine:  # a fine model: every cell a myelocyte
        classes = ["myelocyte", "promyelocyte"]

        def predict_proba(self, crops):
            return np.tile([0.9, 0.1], (len(crops), 1))

    write_field(tmp_path / "in" / "a.png", 400, 300, ONE)
    pipe = Pipeline(DiscSegmenter(), Fine(), None, PipelineConfig())
    for level, want in (("group", {"ig"}), ("fine", {"myelocyte", "promyelocyte"})):
        out = tmp_path / level
        analyze([tmp_path / "in"], out, pipe, scale=20, progress=False, workers=1, level=level)
        assert {c["name"] for c in json.loads((out / "coco.json").read_text())["categories"]} == want
        assert {c.label for im in read_cvat(out / "annotations.xml").images for c in im.cells} <= want
        rows = list(csv.DictReader((out / "counts.csv").open()))
        assert {(r["level"], r["image"]): r for r in rows}["group", "TOTAL"]["ig"] == str(len(ONE))
        assert {(r["level"], r["image"]): r for r in rows}["fine", "TOTAL"]["myelocyte"] == str(len(ONE))
        mask = json.loads((out / "results.json").read_text())["data"]["0"]["masks"][0]
        assert (mask["class_name"], mask["fine_class"], mask["group"]) == ("myelocyte", "myelocyte", "ig")
