"""Pascal VOC (BCCD): boxes, official split, WBC subtype CSV, nucleus masks; errors naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bloodsmear.data import load_dataset
from bloodsmear.data.voc import read_subtype_csv, read_voc
from bloodsmear.errors import InputError, UnknownLabelError
from bloodsmear.io import write_image_atomic


def _obj(name: str, box: tuple) -> str:
    x1, y1, x2, y2 = box
    return (f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


def _ann(stem: str, objs: list[str], w: int = 64, h: int = 48) -> str:
    return (f"<annotation><folder>JPEGImages</folder><filename>{stem}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{''.join(objs)}</annotation>")


def _bccd(root: Path) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "nucleus_masks").mkdir()
    anns = {
        "BloodImage_00000": [_obj("WBC", (10, 10, 30, 30)), _obj("RBC", (1, 1, 9, 9)), _obj("Platelets", (40, 40, 44, 44))],
        "BloodImage_00001": [_obj("WBC", (5, 5, 20, 20)), _obj("WBC", (30, 5, 50, 20))],
        "BloodImage_00002": [_obj("WBC", (5, 5, 20, 20)), _obj("RBC", (30, 30, 30, 30))],  # zero-size box
        "BloodImage_00003": [_obj("RBC", (2, 2, 12, 12))],
    }
    for stem, objs in anns.items():
        (root / "Annotations" / f"{stem}.xml").write_text(_ann(stem, objs))
        write_image_atomic(root / "JPEGImages" / f"{stem}.jpg", np.zeros((48, 64, 3), np.uint8))
    (root / "ImageSets" / "Main" / "train.txt").write_text("BloodImage_00000\nBloodImage_00001\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("BloodImage_00002\n")
    (root / "wbc_subtype_labels.csv").write_bytes(
        b',Image,Category\r\n,0,NEUTROPHIL\r\n,1,"NEUTROPHIL, EOSINOPHIL"\r\n,2,\r\n,3,BASOPHIL\r\n,7,MONOCYTE\r\n')
    write_image_atomic(root / "nucleus_masks" / "BloodImage_Mask_00001.png", np.zeros((48, 64, 3), np.uint8))
    return root


def test_read_bccd_like(tmp_path):
    ds = load_dataset(_bccd(tmp_path / "bccd"))
    assert ds.format == "voc" and len(ds) == 4
    assert ds.class_counts() == {"platelet": 1, "rbc": 3, "wbc": 4}
    assert ds.splits == {"test": ["BloodImage_00002"], "train": ["BloodImage_00000", "BloodImage_00001"]}
    im0, im1, im2, im3 = ds.images
    assert im0.path == tmp_path / "bccd" / "JPEGImages" / "BloodImage_00000.jpg"
    assert (im0.width, im0.height) == (64, 48)
    wbc0 = im0.cells[0]
    assert wbc0.label == "wbc" and wbc0.subclass == "neutrophil" and wbc0.attributes["wbc_type"] == "neutrophil"
    assert wbc0.box == (10.0, 10.0, 30.0, 30.0)
    assert im0.label == "neutrophil" and im0.meta["wbc_types"] == ["neutrophil"]
    # two different types cannot be tied to boxes
    assert im1.label is None and all(c.subclass is None for c in im1.cells)
    assert im1.cells[0].attributes["wbc_types"] == ["neutrophil", "eosinophil"]
    assert im1.nucleus_mask_path == tmp_path / "bccd" / "nucleus_masks" / "BloodImage_Mask_00001.png"
    assert im0.nucleus_mask_path is None
    # blank row: no type; zero-size RBC box kept and flagged
    assert im2.label is None and im2.meta["wbc_types"] == []
    assert im2.cells[1].attributes["degenerate"] is True
    # a type for an image without WBC boxes: image label only
    assert im3.label == "basophil" and im3.cells[0].subclass is None


def test_subtype_as_label_and_drop_degenerate(tmp_path):
    ds = read_voc(_bccd(tmp_path / "b"), wbc_subtype_as_label=True, degenerate_boxes="drop")
    assert ds.class_counts() == {"neutrophil": 1, "platelet": 1, "rbc": 2, "wbc": 3}
    with pytest.raises(InputError, match="BloodImage_00002.xml.*zero-size"):
        read_voc(tmp_path / "b", degenerate_boxes="error")


def test_subtype_csv(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text(',Image,Category\n,4,"EOSINOPHIL,LYMPHOCYTE"\n,5,\n\n,6,baso\n')
    assert read_subtype_csv(f) == {4: ["eosinophil", "lymphocyte"], 5: [], 6: ["basophil"]}
    f.write_text(",Image,Category\n,4,SCHISTOCYTE\n")
    with pytest.raises(UnknownLabelError, match="SCHISTOCYTE"):
        read_subtype_csv(f)


def test_voc_errors_name_the_file(tmp_path):
    root = _bccd(tmp_path / "b")
    bad = root / "Annotations" / "BloodImage_00009.xml"
    bad.write_text("<annotation><size>")
    with pytest.raises(InputError, match="BloodImage_00009.xml.*does not parse"):
        read_voc(root)
    ds = read_voc(root, strict=False)
    assert len(ds) == 4 and len(ds.skipped) == 1 and "BloodImage_00009" in ds.skipped[0]
    bad.write_text(_ann("BloodImage_00009", [_obj("WBC", (10, 10, 90, 20))]))
    with pytest.raises(InputError, match="BloodImage_00009.xml.*outside the 64x48 image"):
        read_voc(root)
    bad.write_text(_ann("BloodImage_00009", [_obj("Macrophage", (1, 1, 5, 5))]))
    with pytest.raises(UnknownLabelError, match=r"BloodImage_00009.xml.*'Macrophage'"):
        read_voc(root)
    bad.write_text(_ann("BloodImage_00009", [_obj("WBC", (20, 10, 10, 20))]))
    with pytest.raises(InputError, match="inverted box"):
        read_voc(root)


def test_single_voc_file(tmp_path):
    root = _bccd(tmp_path / "b")
    ds = load_dataset(root / "Annotations" / "BloodImage_00000.xml")
    assert ds.format == "voc" and len(ds) == 1 and ds.images[0].cells[0].subclass == "neutrophil"


@pytest.mark.realdata
def test_real_bccd(data_root):
    root = data_root / "bccd"
    if not root.is_dir():
        pytest.skip("bccd absent")
    ds = load_dataset(root)
    assert ds.format == "voc" and len(ds) == 364 and not ds.skipped
    assert ds.class_counts() == {"platelet": 361, "rbc": 4155, "wbc": 372}
    assert {k: len(v) for k, v in ds.splits.items()} == {"test": 72, "train": 205, "trainval": 292, "val": 87}
    assert all(im.path.is_file() for im in ds.images)
    assert sum(im.nucleus_mask_path is not None for im in ds.images) == 364
    typed = [c for im in ds.images for c in im.cells if c.label == "wbc" and c.subclass]
    assert len(typed) > 300 and {c.subclass for c in typed} <= {"neutrophil", "eosinophil", "lymphocyte",
                                                                "monocyte", "basophil"}
    assert sum(1 for im in ds.images for c in im.cells if c.attributes.get("degenerate")) == 2
