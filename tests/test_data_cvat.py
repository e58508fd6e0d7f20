"""CVAT-for-images XML: reading (string, file, folder), errors naming the file, writing round trip."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bloodsmear.data import load_dataset
from bloodsmear.data.cvat import read_cvat, to_cvat_xml, write_cvat
from bloodsmear.errors import InputError, UnknownLabelError
from bloodsmear.types import AnnotatedImage, Cell

XML = """<?xml version="1.0" ?>
<annotations>
  <version>1.1</version>
  <image id="0" name="IMG_1.jpg" width="100" height="80">
    <polygon label="band cell" occluded="0" points="10,10;30,10;30,30;10,30" source="manual" z_order="0">
    </polygon>
    <polygon label="BASOPHILS" points="50,50;60,50;55,60.5"/>
  </image>
  <image id="1" name="IMG_2.jpg" width="100" height="80">
    <box label="NEUTROPHIL" xtl="1" ytl="2" xbr="40" ybr="41"><attribute name="note">x</attribute></box>
    <polyline label="lymphocyte" points="1,1;2,2"/>
  </image>
</annotations>
"""


def _xml_with(shape: str) -> str:
    return f'<annotations><image id="0" name="a.jpg" width="100" height="80">{shape}</image></annotations>'


def test_read_from_string():
    ds = read_cvat(XML)
    assert [im.name for im in ds.images] == ["IMG_1.jpg", "IMG_2.jpg"]
    a, b = ds.images
    assert (a.width, a.height) == (100, 80)
    assert [c.label for c in a.cells] == ["band_cell", "basophil"]
    np.testing.assert_allclose(a.cells[0].polygon, [[10, 10], [30, 10], [30, 30], [10, 30]])
    assert a.cells[0].box == (10.0, 10.0, 30.0, 30.0)
    assert a.cells[0].area == pytest.approx(400.0)
    assert a.cells[1].polygon[2, 1] == pytest.approx(60.5)
    assert b.cells[0].label == "segmented_neutrophil" and b.cells[0].box == (1.0, 2.0, 40.0, 41.0)  # RV-PBS's
    assert b.cells[0].attributes["note"] == "x"
    assert len(ds.skipped) == 1 and "polyline" in ds.skipped[0]  # not a shape we read
    assert ds.class_counts() == {"band_cell": 1, "basophil": 1, "segmented_neutrophil": 1}


def test_read_folder_of_class_subfolders(tmp_path):
    for cls in ("BAND CELLS", "BASOPHILS"):
        (tmp_path / "rv" / cls).mkdir(parents=True)
        (tmp_path / "rv" / cls / "annotations.xml").write_text(XML.replace("IMG_", cls[:4] + "_"))
    ds = load_dataset(tmp_path / "rv")
    assert ds.format == "cvat" and len(ds) == 4
    assert ds.images[0].path == tmp_path / "rv" / "BAND CELLS" / "BAND_1.jpg"  # images need not exist
    one = load_dataset(tmp_path / "rv" / "BASOPHILS" / "annotations.xml")
    assert one.format == "cvat" and len(one) == 2
    elsewhere = load_dataset(tmp_path / "rv", "cvat", image_root=tmp_path / "photos")
    assert elsewhere.images[0].path == tmp_path / "photos" / "BAND_1.jpg"


def test_unparsable_xml_names_file(tmp_path):
    f = tmp_path / "annotations.xml"
    f.write_text("<annotations><image name='a.jpg'")
    with pytest.raises(InputError, match="annotations.xml.*does not parse"):
        read_cvat(f)
    ds = read_cvat(tmp_path, strict=False)
    assert len(ds) == 0 and "does not parse" in ds.skipped[0]


def test_polygon_with_two_points_is_an_error(tmp_path):
    f = tmp_path / "annotations.xml"
    f.write_text(_xml_with('<polygon label="monocyte" points="1,1;5,5"/>'))
    with pytest.raises(InputError, match=r"annotations.xml.*a.jpg.*2 point"):
        read_cvat(f)


def test_polygon_outside_image(tmp_path):
    with pytest.raises(InputError, match="outside the 100x80 image"):
        read_cvat(_xml_with('<polygon label="monocyte" points="10,10;150,10;20,30"/>'))
    # within the 1 px tolerance: clipped
    ds = read_cvat(_xml_with('<polygon label="monocyte" points="-0.5,10;100.7,10;20,80.9"/>'))
    p = ds.images[0].cells[0].polygon
    assert p[:, 0].min() == 0 and p[:, 0].max() == 100 and p[:, 1].max() == 80


def test_unknown_label_names_label_and_file(tmp_path):
    f = tmp_path / "annotations.xml"
    f.write_text(_xml_with('<polygon label="target cell" points="1,1;5,5;1,5"/>'))
    with pytest.raises(UnknownLabelError, match=r"annotations.xml.*'target cell'"):
        read_cvat(f)
    ds = read_cvat(f, strict=False)
    assert len(ds) == 0 and "target cell" in ds.skipped[0]


def test_not_cvat_root_and_tracks():
    with pytest.raises(InputError, match="expected <annotations>"):
        read_cvat("<annotation><object/></annotation>")
    with pytest.raises(InputError, match="track"):
        read_cvat('<annotations><track id="0" label="monocyte"/></annotations>')


def test_write_read_round_trip(tmp_path):
    mask = np.zeros((20, 20), bool)
    mask[5:15, 4:12] = True
    im = AnnotatedImage(tmp_path / "slide.jpg", 200, 100, cells=[
        Cell("band_cell", polygon=[[10, 10], [40, 12.5], [25, 40]], score=0.875, subclass="BNE"),
        Cell("lymphocyte", box=(100, 20, 140, 60)),
        Cell("monocyte", box=(150, 50, 170, 70), mask=mask),  # mask only: written as its contour
    ])
    dest = write_cvat([im], tmp_path / "out" / "annotations.xml")
    text = dest.read_text()
    assert 'label="band cell"' in text and "<version>1.1</version>" in text
    back = read_cvat(dest).images[0]
    assert back.name == "slide.jpg" and (back.width, back.height) == (200, 100)
    assert [c.label for c in back.cells] == ["band_cell", "lymphocyte", "monocyte"]
    np.testing.assert_allclose(back.cells[0].polygon, im.cells[0].polygon, atol=0.01)
    assert back.cells[0].score == pytest.approx(0.875) and back.cells[0].subclass == "BNE"
    assert back.cells[1].box == (100.0, 20.0, 140.0, 60.0) and back.cells[1].polygon is None
    x1, y1, x2, y2 = back.cells[2].box
    assert (x1, y1) == (154.0, 55.0) and (x2, y2) == (161.0, 64.0)  # contour pixels of mask[5:15, 4:12]
    assert read_cvat(to_cvat_xml([im])).class_counts() == {"band_cell": 1, "lymphocyte": 1, "monocyte": 1}


@pytest.mark.realdata
def test_real_rv_pbs_all_polygons(data_root):
    root = data_root / "rv-pbs-annotations"
    if not root.is_dir():
        pytest.skip("rv-pbs-annotations absent")
    files = sorted(root.glob("*/annotations.xml"))
    assert len(files) == 10
    n_polygons = sum(len(re.findall(r"<polygon\b", f.read_text())) for f in files)
    n_images = sum(len(re.findall(r"<image\b", f.read_text())) for f in files)
    ds = load_dataset(root)
    assert ds.format == "cvat" and not ds.skipped
    assert len(ds) == n_images == 58
    assert sum(len(im.cells) for im in ds.images) == n_polygons == 63
    assert all(c.polygon is not None and len(c.polygon) >= 3 for im in ds.images for c in im.cells)
    assert set(ds.class_counts()) == {"band_cell", "basophil", "blast_cell", "eosinophil", "lymphocyte",
                                      "metamyelocyte", "monocyte", "myelocyte", "promyelocyte",
                                      "segmented_neutrophil"}
    # every file's polygons carry its folder's class
    for f in files:
        one = load_dataset(f)
        from bloodsmear.classes import canonical_fine
        assert {c.label for im in one.images for c in im.cells} == {canonical_fine(f.parent.name)}
