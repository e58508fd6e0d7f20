"""Cell crops (`crop_cell`, `crop_dataset_cells`) and the `bloodsmear crop pbc|cells` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from bloodsmear.errors import InputError
from bloodsmear.io import read_image, write_image_atomic
from bloodsmear.preprocess.cells import cell_class, crop_cell, crop_dataset_cells
from bloodsmear.types import AnnotatedImage, Cell, Dataset

runner = CliRunner()


def gradient(h=100, w=120) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.stack([xx * 2, yy * 2, (xx + yy) % 256], -1).astype(np.uint8)


def test_box_crop_is_padded_square_centred_on_the_cell():
    img = gradient()
    before = img.copy()
    out = crop_cell(img, Cell("lymphocyte", box=(40, 30, 60, 50)), pad=0.25)
    assert np.array_equal(img, before)
    assert out.shape == (30, 30, 3)  # 20 + 2 * 0.25 * 20
    assert np.array_equal(out, img[25:55, 35:65])
    out[:] = 0
    assert np.array_equal(img, before)


def test_polygon_crop_non_square_and_resized():
    img = gradient()
    poly = np.array([[50, 20], [70, 40], [50, 60], [30, 40]], float)  # box 30..70 x 20..60
    out = crop_cell(img, Cell("monocyte", polygon=poly), pad=0.0, square=False)
    assert out.shape == (40, 40, 3) and np.array_equal(out, img[20:60, 30:70])
    wide = crop_cell(img, Cell("monocyte", box=(10, 40, 50, 50)), pad=0.0, square=False, out_size=20)
    assert wide.shape == (5, 20, 3)
    sq = crop_cell(img, Cell("monocyte", box=(10, 40, 50, 50)), pad=0.1, out_size=32)
    assert sq.shape == (32, 32, 3)


@pytest.mark.parametrize("box", [(0, 0, 20, 20), (100, 80, 120, 100), (-5, 40, 10, 60)])
def test_crop_at_image_borders_is_filled_with_background(box):
    img = gradient()
    out = crop_cell(img, Cell("eosinophil", box=box), pad=0.5, background=(1, 2, 3))
    side = round(max(box[2] - box[0], box[3] - box[1]) * 2)
    assert out.shape == (side, side, 3)
    assert (out.reshape(-1, 3) == (1, 2, 3)).all(axis=1).any()  # some fill outside the image
    # the part inside the image is the image's own pixels
    x1, y1 = round((box[0] + box[2]) / 2 - side / 2), round((box[1] + box[3]) / 2 - side / 2)
    ix0, iy0 = max(0, x1), max(0, y1)
    ix1, iy1 = min(img.shape[1], x1 + side), min(img.shape[0], y1 + side)
    assert np.array_equal(out[iy0 - y1 : iy1 - y1, ix0 - x1 : ix1 - x1], img[iy0:iy1, ix0:ix1])


def test_mask_background_outside_polygon():
    img = gradient()
    before = img.copy()
    poly = np.array([[40, 30], [80, 30], [80, 70], [40, 70]], float) + [[0, 0], [0, 0], [0, 0], [20, 0]]
    out = crop_cell(img, Cell("basophil", polygon=poly), pad=0.2, mask_background=True, background=0)
    assert np.array_equal(img, before)
    h, w = out.shape[:2]
    assert (out[0, 0] == 0).all() and (out[h // 2, w // 2] != 0).any()  # corner masked, centre kept
    # the lower-left triangle cut off by the slanted edge is masked
    assert (out[h - 1 - int(0.2 * 40), int(0.2 * 40) + 2] == 0).all()
    # a box-only cell cannot be masked: crop unchanged
    a = crop_cell(img, Cell("basophil", box=(40, 30, 80, 70)), mask_background=True, background=0)
    b = crop_cell(img, Cell("basophil", box=(40, 30, 80, 70)), background=0)
    assert np.array_equal(a, b)


def test_mask_background_with_box_relative_mask():
    img = gradient()
    m = np.zeros((20, 20), bool)
    m[5:15, 5:15] = True
    out = crop_cell(img, Cell("basophil", box=(50, 40, 70, 60), mask=m), pad=0.0, mask_background=True,
                    background=0)
    assert out.shape == (20, 20, 3)
    assert (out[:5] == 0).all() and np.array_equal(out[5:15, 5:15], img[45:55, 55:65])


def test_bad_cells_and_images():
    with pytest.raises(InputError, match="neither a box nor a polygon"):
        crop_cell(gradient(), Cell("lymphocyte"))
    with pytest.raises(InputError, match="RGB"):
        crop_cell(np.zeros((10, 10), np.uint8), Cell("lymphocyte", box=(1, 1, 5, 5)))


def test_cell_class():
    assert cell_class(Cell("wbc", box=(0, 0, 1, 1), subclass="neutrophil")) == "neutrophil"
    assert cell_class(Cell("wbc", box=(0, 0, 1, 1), attributes={"wbc_type": "EOSINOPHIL"})) == "eosinophil"
    assert cell_class(Cell("wbc", box=(0, 0, 1, 1))) is None
    assert cell_class(Cell("rbc", box=(0, 0, 1, 1))) is None
    assert cell_class(Cell("band cell", box=(0, 0, 1, 1))) == "band_cell"


def test_crop_dataset_cells_classes_missing_images_and_resume(tmp_path):
    img_path = tmp_path / "src" / "field1.png"
    write_image_atomic(img_path, gradient())
    cells = [Cell("wbc", box=(10, 10, 40, 40), subclass="neutrophil"), Cell("wbc", box=(60, 50, 90, 80)),
             Cell("rbc", box=(0, 0, 10, 10)), Cell("lymphocyte", polygon=[[70, 10], [90, 10], [80, 30]])]
    ds = Dataset("t", tmp_path, images=[
        AnnotatedImage(img_path, 120, 100, cells),
        AnnotatedImage(tmp_path / "src" / "gone.jpg", 120, 100, [Cell("monocyte", box=(1, 1, 20, 20))]),
    ])
    out = tmp_path / "out"
    s = crop_dataset_cells(ds, out, size=24, progress=False)
    assert s.written == 2 and s.no_class == 1 and s.other_kinds == 1
    assert s.per_class == {"neutrophil": 1, "lymphocyte": 1}
    assert len(s.failed_images) == 1 and "gone.jpg" in s.failed_images[0] and "missing" in s.failed_images[0]
    assert read_image(out / "neutrophil" / "field1_0.jpg").shape == (24, 24, 3)
    assert (out / "lymphocyte" / "field1_3.jpg").is_file()
    again = crop_dataset_cells(ds, out, size=24, progress=False)
    assert again.written == 0 and again.existing == 2


# ---------------------------------------------------------------------------------------------- CLI


def _pbc_like(root):
    from test_crop import field

    for cls, offsets in (("lymphocyte", (0, 10)), ("platelet", (5,))):
        for k in offsets:
            write_image_atomic(root / cls / f"{cls[:2].upper()}_{k}.jpg", field(discs=[((100 + k, 100), 30)]))
    (root / "lymphocyte" / "notes.jpg").write_bytes(b"this is not a jpeg")
    good = (root / "platelet" / "PL_5.jpg").read_bytes()
    (root / "platelet" / "PL_cut.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG


def test_cli_crop_pbc_reports_bad_files_and_resumes(tmp_path):
    from bloodsmear.cli.main import app

    src, dst = tmp_path / "pbc", tmp_path / "cpbc"
    _pbc_like(src)
    r = runner.invoke(app, ["crop", "pbc", str(src), str(dst), "--size", "64", "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert d["total"] == 5 and d["written"] == 3 and d["skipped"] == 2
    assert any("notes.jpg" in m for m in d["failed"]) and any("truncated" in m for m in d["failed"])
    assert "skipped" in r.output
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.jpg")) == [
        "lymphocyte/LY_0.jpg", "lymphocyte/LY_10.jpg", "platelet/PL_5.jpg"]
    assert read_image(dst / "lymphocyte" / "LY_0.jpg").shape == (64, 64, 3)
    r2 = runner.invoke(app, ["crop", "pbc", str(src), str(dst), "--method", "paper", "--no-progress", "--json"])
    d2 = json.loads(r2.output.strip().splitlines()[-1])
    assert d2["written"] == 0 and d2["existing"] == 3 and d2["skipped"] == 2


def test_cli_crop_pbc_unknown_method_and_missing_folder(tmp_path):
    from bloodsmear.cli.main import app

    (tmp_path / "a").mkdir()
    assert runner.invoke(app, ["crop", "pbc", str(tmp_path / "a"), str(tmp_path / "b"), "-m", "x"]).exit_code == 2
    assert runner.invoke(app, ["crop", "pbc", str(tmp_path / "nope"), str(tmp_path / "b")]).exit_code == 2


def test_cli_crop_cells_cvat_without_images_says_so(tmp_path):
    from bloodsmear.cli.main import app

    xml = """<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version>
<image id="0" name="IMG_1.jpg" width="400" height="300">
  <polygon label="neutrophil" occluded="0" points="10,10;60,10;60,60;10,60"></polygon>
  <polygon label="band cell" occluded="0" points="100,100;150,100;150,150"></polygon>
</image>
<image id="1" name="IMG_2.jpg" width="400" height="300">
  <polygon label="monocyte" occluded="0" points="10,10;60,10;60,60"></polygon>
</image>
</annotations>"""
    (tmp_path / "NEUTROPHIL").mkdir()
    (tmp_path / "NEUTROPHIL" / "annotations.xml").write_text(xml)
    r = runner.invoke(app, ["crop", "cells", str(tmp_path / "NEUTROPHIL"), str(tmp_path / "out"),
                            "--format", "cvat", "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert d["written"] == 0 and len(d["failed_images"]) == 2
    assert all("image file missing" in m for m in d["failed_images"])
    assert "IMG_1.jpg" in r.output and "IMG_2.jpg" in r.output


def test_cli_crop_cells_voc_uses_wbc_subtype(tmp_path):
    from bloodsmear.cli.main import app

    root = tmp_path / "bccd"
    write_image_atomic(root / "JPEGImages" / "BloodImage_00001.jpg", gradient(120, 160))
    (root / "Annotations").mkdir(parents=True)
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in (("WBC", (20, 20, 70, 70)), ("RBC", (80, 10, 110, 40))))
    (root / "Annotations" / "BloodImage_00001.xml").write_text(
        "<annotation><filename>BloodImage_00001.jpg</filename><size><width>160</width><height>120</height>"
        f"<depth>3</depth></size>{objs}</annotation>")
    (root / "wbc_subtype_labels.csv").write_text("Image,Category\n1,EOSINOPHIL\n")
    r = runner.invoke(app, ["crop", "cells", str(root), str(tmp_path / "out"), "--size", "48", "--no-progress",
                            "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert d["per_class"] == {"eosinophil": 1} and d["other_kinds"] == 1
    assert read_image(tmp_path / "out" / "eosinophil" / "BloodImage_00001_0.jpg").shape == (48, 48, 3)
