"""Class-per-folder readers (PBC, LISC, generic) and format auto-detection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bloodsmear.data import load_dataset
from bloodsmear.data.folders import fill_sizes, read_folders, read_lisc, read_pbc
from bloodsmear.data.registry import UnknownFormatError, detect_format, load
from bloodsmear.errors import InputError, UnknownLabelError
from bloodsmear.io import write_image_atomic


def need(root: Path, *parts: str) -> Path:
    p = root.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data {p} not present")
    return p


def _img(path: Path, w: int = 8, h: int = 6, value: int = 0) -> Path:
    rgb = np.full((h, w, 3), value, np.uint8)
    rgb[0, 0] = (value * 7) % 256
    return write_image_atomic(path, rgb)


def _pbc_tree(root: Path) -> Path:
    _img(root / "ig" / "MMY_1.jpg", value=1)
    _img(root / "ig" / "PMY_2.jpg", value=2)
    _img(root / "neutrophil" / "BNE_3.jpg", value=3)
    _img(root / "neutrophil" / "SNE_4.jpg", value=4)
    _img(root / "platelet" / "PLATELET_5.jpg", value=5)
    (root / "neutrophil" / ".DS_169665.jpg").write_bytes(b"\x00\x05\x16\x07")
    (root / "LICENSE-CC-BY-4.0.md").write_text("licence")
    return root


def test_pbc_reader_subclasses_and_hidden_files(tmp_path):
    ds = read_pbc(_pbc_tree(tmp_path / "pbc"))
    assert len(ds) == 5
    by_name = {im.name: im for im in ds.images}
    assert by_name["MMY_1.jpg"].label == "ig" and by_name["MMY_1.jpg"].subclass == "MMY"
    assert by_name["MMY_1.jpg"].meta["fine_label"] == "metamyelocyte"
    assert by_name["BNE_3.jpg"].meta["fine_label"] == "band_cell"
    assert by_name["PLATELET_5.jpg"].subclass is None
    assert ".DS_169665.jpg" not in by_name
    assert len(ds.skipped) == 1 and ".DS_169665.jpg" in ds.skipped[0]
    assert ds.class_counts() == {"ig": 2, "neutrophil": 2, "platelet": 1}
    assert all(im.width == 0 for im in ds.images)  # sizes are not decoded on load
    fill_sizes(ds)
    assert {(im.width, im.height) for im in ds.images} == {(8, 6)}


def test_autodetect_pbc_lisc_folders(tmp_path):
    assert detect_format(_pbc_tree(tmp_path / "pbc")) == "pbc"
    for c in ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"):
        _img(tmp_path / "lisc" / c / "1.jpg")
    assert detect_format(tmp_path / "lisc") == "lisc"
    assert load_dataset(tmp_path / "lisc").format == "lisc"
    _img(tmp_path / "gen" / "Lymphocytes" / "a.png")
    _img(tmp_path / "gen" / "band cell" / "b.png")
    (tmp_path / "gen" / "split.json").write_text("{}")  # a stray JSON does not make it COCO
    ds = load(tmp_path / "gen")
    assert ds.format == "folders"
    assert ds.class_counts() == {"band_cell": 1, "lymphocyte": 1}


def test_unknown_folder_label_and_format(tmp_path):
    _img(tmp_path / "gen" / "lymphocyte" / "a.png")
    _img(tmp_path / "gen" / "target_cells" / "b.png")
    with pytest.raises(UnknownLabelError, match="target_cells"):
        read_folders(tmp_path / "gen")
    ds = read_folders(tmp_path / "gen", strict=False)
    assert len(ds) == 1 and "target_cells" in ds.skipped[0]
    raw = read_folders(tmp_path / "gen", canonical_labels=False)
    assert raw.class_counts() == {"lymphocyte": 1, "target_cells": 1}
    with pytest.raises(UnknownFormatError, match="valid: auto, pbc, lisc"):
        load(tmp_path / "gen", "yolo")
    with pytest.raises(InputError, match="no such"):
        load(tmp_path / "absent")


def test_lisc_rejects_non_lisc_class(tmp_path):
    _img(tmp_path / "l" / "platelet" / "1.jpg")
    with pytest.raises(UnknownLabelError, match="platelet"):
        read_lisc(tmp_path / "l")


def test_non_image_file_in_class_folder_is_skipped(tmp_path):
    _img(tmp_path / "g" / "monocyte" / "a.jpg")
    (tmp_path / "g" / "monocyte" / "notes.txt").write_text("x")
    (tmp_path / "g" / "monocyte" / "empty.jpg").write_bytes(b"")
    ds = read_folders(tmp_path / "g")
    assert len(ds) == 1 and len(ds.skipped) == 2


PBC_COUNTS = {"basophil": 1218, "eosinophil": 3117, "erythroblast": 1551, "ig": 2895, "lymphocyte": 1214,
              "monocyte": 1420, "neutrophil": 3329, "platelet": 2348}
PBC_SUBS = {("ig", "IG"): 151, ("ig", "MY"): 1137, ("ig", "MMY"): 1015, ("ig", "PMY"): 592,
            ("neutrophil", "BNE"): 1633, ("neutrophil", "SNE"): 1646, ("neutrophil", "NEUTROPHIL"): 50}


@pytest.mark.realdata
def test_real_pbc224(data_root):
    ds = load_dataset(need(data_root, "pbc224"), "auto")
    assert ds.format == "pbc"
    assert len(ds) == 17092
    assert ds.class_counts() == PBC_COUNTS
    subs = Counter((im.label, im.subclass) for im in ds.images if im.subclass)
    assert dict(subs) == PBC_SUBS


@pytest.mark.realdata
def test_real_pbc_original_sample(data_root):
    ds = load_dataset(need(data_root, "pbc-original-sample"))
    assert ds.format == "pbc" and len(ds) == 800
    assert set(ds.class_counts().values()) == {100}


@pytest.mark.realdata
def test_real_lisc(data_root):
    ds = load_dataset(need(data_root, "lisc"))
    assert ds.format == "lisc" and len(ds) == 242
    assert ds.class_counts() == {"basophil": 53, "eosinophil": 39, "lymphocyte": 52, "monocyte": 48,
                                 "neutrophil": 50}
