"""COCO instances JSON: write (validated with pycocotools) and read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from bloodsmear.data import load_dataset
from bloodsmear.data.coco import read_coco, to_coco_dict, write_coco
from bloodsmear.errors import InputError, UnknownLabelError
from bloodsmear.types import AnnotatedImage, Cell


def _images(tmp_path):
    mask = np.zeros((60, 80), bool)
    mask[10:20, 30:45] = True
    return [
        AnnotatedImage(tmp_path / "a.jpg", 80, 60, cells=[
            Cell("lymphocyte", polygon=[[10, 10], [30, 10], [30, 30], [10, 30]], score=0.9),
            Cell("neutrophil", box=(40, 5, 60, 25)),
        ]),
        AnnotatedImage(tmp_path / "sub" / "b.jpg", 80, 60, cells=[
            Cell("neutrophil", mask=mask, mask_full=True, box=(30, 10, 45, 20), score=0.5),
        ]),
        AnnotatedImage(tmp_path / "c.jpg", 80, 60),  # no cells
    ]


def test_to_coco_dict_fields(tmp_path):
    d = to_coco_dict(_images(tmp_path), ["lymphocyte", "neutrophil"], root=tmp_path)
    assert [im["id"] for im in d["images"]] == [1, 2, 3]
    assert d["images"][1]["file_name"] == "sub/b.jpg"
    assert [c["id"] for c in d["categories"]] == [1, 2]
    a1, a2, a3 = d["annotations"]
    assert [a["id"] for a in d["annotations"]] == [1, 2, 3]
    assert a1["bbox"] == [10.0, 10.0, 20.0, 20.0] and a1["area"] == 400.0 and a1["score"] == 0.9
    assert a1["segmentation"] == [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]] and a1["iscrowd"] == 0
    assert a2["category_id"] == 2 and "segmentation" not in a2 and "score" not in a2 and a2["area"] == 400.0
    assert a3["image_id"] == 2 and a3["area"] == 150.0 and isinstance(a3["segmentation"]["counts"], str)
    with pytest.raises(ValueError, match="not among categories"):
        to_coco_dict(_images(tmp_path), ["lymphocyte"])


def test_coco_area_is_the_cells_area_for_every_kind_of_cell(tmp_path):
    """One definition (Cell.area): polygon over mask, a mask (even one running past the image edge), a box."""
    cells = [
        Cell("lymphocyte", polygon=[[0, 0], [9, 0], [9, 9], [0, 9]], mask=np.ones((10, 10), bool)),
        Cell("lymphocyte", mask=np.ones((10, 10), bool), box=(75, 55, 85, 65)),  # 5 x 5 inside an 80 x 60 image
        Cell("lymphocyte", box=(1, 2, 11, 7)),
    ]
    d = to_coco_dict([AnnotatedImage(tmp_path / "a.jpg", 80, 60, cells=cells)])
    assert [a["area"] for a in d["annotations"]] == [c.area for c in cells] == [81.0, 100.0, 50.0]


def test_write_coco_loads_with_pycocotools(tmp_path):
    dest = write_coco(tmp_path / "out" / "coco.json", _images(tmp_path))
    assert not list((tmp_path / "out").glob(".*part*"))  # atomic write leaves no temp file
    c = COCO(str(dest))
    assert len(c.getImgIds()) == 3 and len(c.getAnnIds()) == 3
    assert [x["name"] for x in c.loadCats(c.getCatIds())] == ["lymphocyte", "neutrophil"]
    m = c.annToMask(c.loadAnns([3])[0])
    assert m.sum() == 150
    m1 = c.annToMask(c.loadAnns([1])[0])
    assert 350 <= m1.sum() <= 450


def test_read_coco_round_trip(tmp_path):
    ims = _images(tmp_path)
    write_coco(tmp_path / "coco.json", ims, root=tmp_path)
    ds = load_dataset(tmp_path / "coco.json")
    assert ds.format == "coco" and len(ds) == 3
    assert ds.images[1].path == tmp_path / "sub" / "b.jpg"
    a, b, _ = ds.images
    np.testing.assert_allclose(a.cells[0].polygon, ims[0].cells[0].polygon)
    assert a.cells[0].score == pytest.approx(0.9) and a.cells[1].box == (40.0, 5.0, 60.0, 25.0)
    assert b.cells[0].mask_full and b.cells[0].mask.sum() == 150
    assert ds.class_counts() == {"lymphocyte": 1, "neutrophil": 2}


def test_read_coco_errors(tmp_path):
    f = tmp_path / "x.json"
    f.write_text("{not json")
    with pytest.raises(InputError, match="x.json.*not valid JSON"):
        read_coco(f)
    f.write_text(json.dumps({"images": [], "categories": [{"id": 1, "name": "Schistocyte"}]}))
    with pytest.raises(UnknownLabelError, match=r"x.json.*'Schistocyte'"):
        read_coco(f)
    f.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 9, "height": 9}],
                             "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1]}],
                             "categories": [{"id": 1, "name": "monocyte"}]}))
    with pytest.raises(InputError, match="unknown category_id 7"):
        read_coco(f)
    assert read_coco(f, strict=False).skipped


@pytest.mark.realdata
def test_real_bccd_to_coco(data_root, tmp_path):
    root = data_root / "bccd"
    if not root.is_dir():
        pytest.skip("bccd absent")
    ds = load_dataset(root)
    dest = write_coco(tmp_path / "bccd.json", ds, root=ds.root)
    c = COCO(str(dest))
    assert len(c.getImgIds()) == 364 and len(c.getAnnIds()) == 372 + 4155 + 361
    assert len(c.getAnnIds(catIds=c.getCatIds(catNms=["wbc"]))) == 372


def test_coco_folder_layout_detected(tmp_path):
    from bloodsmear.io import write_image_atomic

    ims = _images(tmp_path / "images")
    for im in ims:
        write_image_atomic(im.path, np.zeros((60, 80, 3), np.uint8))
    write_coco(tmp_path / "instances.json", ims, root=tmp_path / "images")
    ds = load_dataset(tmp_path)  # images/ + one .json: COCO, not class folders
    assert ds.format == "coco" and ds.images[1].path == tmp_path / "images" / "sub" / "b.jpg"
    assert all(im.path.is_file() for im in ds.images)
