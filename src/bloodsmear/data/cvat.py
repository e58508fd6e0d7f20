"""CVAT-for-images XML (the RV-PBS annotation format): read and write.

Reading: ``<image name width height>`` elements holding ``<polygon label points="x,y;x,y;...">`` and
``<box label xtl ytl xbr ybr>`` shapes (other shapes - polyline, points, mask - are noted in
`Dataset.skipped`). `read_cvat` takes one XML file, XML text, or a folder: its ``annotations.xml``
and those of its sub-folders (RV-PBS: one sub-folder per class). Images need not exist: an image's
path is ``<folder of the annotations.xml>/<name>``.

Checks (errors name the file and the image): XML that does not parse, a polygon with fewer than 3
points, a shape outside the image (up to `tolerance` px outside is clipped), an unknown label
(`UnknownLabelError`). With ``strict=False`` a bad file or image is listed in `Dataset.skipped` and
reading goes on.

Labels are read as RV-PBS means them (`classes.canonical_fine`): "neutrophil" is RV-PBS's segmented
neutrophil, the fine class ``segmented_neutrophil``, unless the shape says it is a group-level answer
(a ``level`` attribute "group", as bloodsmear's own exports write for ig and neutrophil, or that
attribute's default in the task's ``<meta>``), or the reader is told so for the whole file
(``neutrophil="group"``: annotations made with the grouped classes, e.g. 5 WBC types).

Writing: `write_cvat(images, dest)` / `to_cvat_xml(images)` produce CVAT 1.1 XML that this reader and
CVAT's "CVAT for images 1.1" import read: labels are written with spaces ("band cell", as RV-PBS),
a cell's `score` and `subclass` become ``<attribute>`` children declared in ``<meta>``; a group-only
label (ig, neutrophil) gets ``level=group`` (declared as its default, so shapes a person adds in CVAT
under that label carry it too).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable

import numpy as np

from bloodsmear.classes import canonical, canonical_fine, is_known, level_of
from bloodsmear.errors import BloodsmearError, InputError
from bloodsmear.geometry import mask_to_polygon
from bloodsmear.io import image_name, write_text_atomic
from bloodsmear.types import AnnotatedImage, Cell, Dataset

log = logging.getLogger(__name__)

_SKIPPED_SHAPES = ("polyline", "points", "mask", "cuboid", "ellipse", "skeleton", "tag")


def _floats(el: ET.Element, names: tuple[str, ...], where: str) -> list[float]:
    try:
        return [float(el.attrib[n]) for n in names]
    except (KeyError, ValueError) as e:
        raise ValueError(f"{where}: <{el.tag}> lacks a numeric {e}") from e


def parse_points(text: str, where: str = "") -> np.ndarray:
    """``"x,y;x,y;..."`` -> (N, 2) float array."""
    pts = []
    for pair in text.strip().split(";"):
        if not pair.strip():
            continue
        xy = pair.split(",")
        if len(xy) != 2:
            raise ValueError(f"{where}: bad point {pair!r} in points")
        pts.append((float(xy[0]), float(xy[1])))
    return np.asarray(pts, dtype=float).reshape(-1, 2)


def _check_inside(xy: np.ndarray, w: int, h: int, tol: float, where: str) -> np.ndarray:
    """Clip coordinates at most `tol` outside [0, w] x [0, h]; raise if further outside."""
    if w > 0 and h > 0:
        lo = xy.min(axis=0)
        hi = xy.max(axis=0)
        if lo[0] < -tol or lo[1] < -tol or hi[0] > w + tol or hi[1] > h + tol:
            raise ValueError(f"{where}: outside the {w}x{h} image (x {lo[0]:.1f}..{hi[0]:.1f}, "
                             f"y {lo[1]:.1f}..{hi[1]:.1f})")
        xy = np.column_stack([np.clip(xy[:, 0], 0, w), np.clip(xy[:, 1], 0, h)])
    return xy


def _shape_attributes(el: ET.Element) -> dict:
    attrs: dict = {k: el.attrib[k] for k in ("occluded", "source", "z_order", "group_id") if k in el.attrib}
    for a in el.findall("attribute"):
        name = a.attrib.get("name")
        if name:
            attrs[name] = (a.text or "").strip()
    return attrs


def _label(text: str, level: str | None, where: str) -> str:
    """A shape's canonical class: the RV-PBS reading (`canonical_fine`) unless `level` is "group"."""
    return canonical(text, path=where) if level == "group" else canonical_fine(text, path=where)


def _meta_levels(root: ET.Element) -> dict[str, str]:
    """{label name: default of its ``level`` attribute} from the task's ``<meta>`` (bloodsmear's exports)."""
    out = {}
    for lab in root.iterfind("./meta/task/labels/label"):
        for a in lab.iterfind("./attributes/attribute"):
            if (a.findtext("name") or "").strip() == "level":
                out[(lab.findtext("name") or "").strip()] = (a.findtext("default_value") or "").strip()
    return out


def _parse_image(el: ET.Element, folder: Path, src: str, tol: float, skipped: list[str],
                 levels: dict[str, str] | None = None, neutrophil: str = "segmented") -> AnnotatedImage:
    name = el.attrib.get("name")
    if not name:
        raise ValueError("<image> without a name")
    w, h = (int(round(v)) for v in _floats(el, ("width", "height"), f"image {name}"))
    cells: list[Cell] = []
    for i, sh in enumerate(el):
        where = f"image {name}, <{sh.tag}> {i + 1}"
        if sh.tag in _SKIPPED_SHAPES:
            skipped.append(f"{src}: {where}: {sh.tag} shapes are not read, left out")
            continue
        if sh.tag not in ("polygon", "box"):
            continue
        attrs = _shape_attributes(sh)
        text = sh.attrib.get("label", "")
        level = attrs.pop("level", None) or (levels or {}).get(text.strip())
        label = _label(text, "group" if neutrophil == "group" else level, f"{src} ({where})")
        score = attrs.pop("score", None)
        subclass = attrs.pop("subclass", None) or None
        if sh.tag == "polygon":
            pts = parse_points(sh.attrib.get("points", ""), where)
            if len(pts) < 3:
                raise ValueError(f"{where}: polygon with {len(pts)} point(s) (needs at least 3)")
            pts = _check_inside(pts, w, h, tol, f"{where}: polygon")
            cell = Cell(label=label, polygon=pts, subclass=subclass, attributes=attrs)
        else:
            x1, y1, x2, y2 = _floats(sh, ("xtl", "ytl", "xbr", "ybr"), where)
            if x2 <= x1 or y2 <= y1:
                raise ValueError(f"{where}: empty box ({x1}, {y1}, {x2}, {y2})")
            b = _check_inside(np.array([[x1, y1], [x2, y2]]), w, h, tol, f"{where}: box")
            cell = Cell(label=label, box=tuple(b.ravel()), subclass=subclass, attributes=attrs)
        if score not in (None, ""):
            cell.score = float(score)
        cells.append(cell)
    meta = {"cvat_id": el.attrib["id"]} if "id" in el.attrib else {}
    return AnnotatedImage(path=folder / name, width=w, height=h, cells=cells, source="cvat", meta=meta)


def parse_cvat_xml(text_or_bytes: str | bytes, *, folder: str | Path = ".", src: str = "<string>",
                   tolerance: float = 1.0, strict: bool = True, skipped: list[str] | None = None,
                   neutrophil: str = "segmented") -> list[AnnotatedImage]:
    """Parse CVAT-for-images XML text into images (paths ``folder/<name>``); see the module doc.
    `neutrophil`: what an unmarked "neutrophil" label means, "segmented" (RV-PBS) or "group"."""
    if neutrophil not in ("segmented", "group"):
        raise ValueError(f"neutrophil must be 'segmented' or 'group', got {neutrophil!r}")
    skipped = [] if skipped is None else skipped
    try:
        root = ET.fromstring(text_or_bytes)
    except ET.ParseError as e:
        raise InputError(src, f"XML does not parse: {e}") from e
    if root.tag != "annotations":
        raise InputError(src, f"not CVAT XML: root element is <{root.tag}>, expected <annotations>")
    if root.find("track") is not None:
        raise InputError(src, "CVAT-for-video <track> annotations are not supported; export 'CVAT for images'")
    images = []
    levels = _meta_levels(root)
    for el in root.iter("image"):
        try:
            images.append(_parse_image(el, Path(folder), src, tolerance, skipped, levels, neutrophil))
        except ValueError as e:
            err = InputError(src, str(e))
            if strict:
                raise err from e
            skipped.append(str(err))
        except BloodsmearError as e:  # unknown label
            if strict:
                raise
            skipped.append(f"{e}; image {el.attrib.get('name')} left out")
    return images


def cvat_files(root: Path, *, any_xml: bool = True) -> list[Path]:
    """The annotations.xml files of a folder: its own and those one level below (RV-PBS layout);
    failing those (and with `any_xml`), every *.xml in it."""
    files = [root / "annotations.xml"] if (root / "annotations.xml").is_file() else []
    files += sorted(p / "annotations.xml" for p in root.iterdir()
                    if p.is_dir() and not p.name.startswith(".") and (p / "annotations.xml").is_file())
    return files or (sorted(root.glob("*.xml")) if any_xml else [])


def read_cvat(source: str | Path, *, tolerance: float = 1.0, strict: bool = True, name: str | None = None,
              image_root: str | Path | None = None, neutrophil: str = "segmented") -> Dataset:
    """Read CVAT XML from a file, a folder of annotations.xml files, or XML text (see the module doc).

    `image_root`: where the images are (paths ``image_root/<name>``); default: each XML file's folder.
    `neutrophil`: what a "neutrophil" label without a ``level`` mark means: "segmented" (RV-PBS, the
    fine class segmented_neutrophil) or "group" (annotations made with grouped classes).
    """
    skipped: list[str] = []
    if isinstance(source, bytes) or (isinstance(source, str) and source.lstrip().startswith("<")):
        base = Path(image_root) if image_root is not None else Path(".")
        images = parse_cvat_xml(source, folder=base, tolerance=tolerance, strict=strict, skipped=skipped,
                                neutrophil=neutrophil)
        return Dataset(name=name or "cvat", root=base, images=images, format="cvat", skipped=skipped)
    path = Path(source)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    files = [path] if path.is_file() else cvat_files(path)
    if not files:
        raise InputError(path, "no annotations.xml (or other .xml) files found")
    images: list[AnnotatedImage] = []
    for f in files:
        try:
            data = f.read_bytes()
            folder = Path(image_root) if image_root is not None else f.parent
            images += parse_cvat_xml(data, folder=folder, src=str(f), tolerance=tolerance, strict=strict,
                                     skipped=skipped, neutrophil=neutrophil)
        except InputError as e:
            if strict:
                raise
            skipped.append(str(e))
    root = path if path.is_dir() else path.parent
    for im in images:
        im.source = "rv-pbs" if "rv-pbs" in str(root).lower() else "cvat"
    for s in skipped:
        log.warning("skipped %s", s)
    return Dataset(name=name or root.resolve().name, root=root, images=images, format="cvat", skipped=skipped)


# ---------------------------------------------------------------------------------------------- writing


def display_label(label: str) -> str:
    """``band_cell`` -> ``band cell`` (RV-PBS spelling; `canonical` maps it back)."""
    return label.replace("_", " ")


def _mask_polygon(cell: Cell) -> np.ndarray | None:
    """The largest outer contour of a cell's mask, in image coordinates."""
    if cell.mask is None or not np.any(cell.mask):
        return None
    c = mask_to_polygon(cell.mask, chain="simple")
    if not cell.mask_full and cell.box is not None:
        c += (int(round(cell.box[0])), int(round(cell.box[1])))
    return c if len(c) >= 3 else None


def _group_only(label: str) -> bool:
    return is_known(label) and level_of(label) == "group"


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def to_cvat_xml(images: Dataset | Iterable[AnnotatedImage], *, root: str | Path | None = None,
                labels: Iterable[str] | None = None) -> str:
    """CVAT-for-images 1.1 XML for the images' cells (polygons; boxes for box-only cells).

    Image names are paths relative to `root` when given (else file names). `labels`: the task's label
    list (default: the labels used).
    """
    ims = list(images.images if isinstance(images, Dataset) else images)
    used = sorted({c.label for im in ims for c in im.cells})
    label_list = list(labels) if labels is not None else used
    top = ET.Element("annotations")
    ET.SubElement(top, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(top, "meta"), "task")
    ET.SubElement(task, "size").text = str(len(ims))
    ET.SubElement(task, "mode").text = "annotation"
    lab_el = ET.SubElement(task, "labels")
    for lab in label_list:
        le = ET.SubElement(lab_el, "label")
        ET.SubElement(le, "name").text = display_label(lab)
        ET.SubElement(le, "type").text = "any"
        attrs = ET.SubElement(le, "attributes")
        for aname in ("score", "subclass"):
            a = ET.SubElement(attrs, "attribute")
            ET.SubElement(a, "name").text = aname
            ET.SubElement(a, "mutable").text = "False"
            ET.SubElement(a, "input_type").text = "text"
            ET.SubElement(a, "default_value").text = ""
            ET.SubElement(a, "values").text = ""
        if _group_only(lab):  # "neutrophil" here is the group, not RV-PBS's segmented neutrophil
            a = ET.SubElement(attrs, "attribute")
            for k, v in (("name", "level"), ("mutable", "False"), ("input_type", "select"),
                         ("default_value", "group"), ("values", "group")):
                ET.SubElement(a, k).text = v
    for i, im in enumerate(ims):
        name = image_name(im.path, root)
        iel = ET.SubElement(top, "image", id=str(i), name=name, width=str(int(im.width)), height=str(int(im.height)))
        for z, c in enumerate(im.cells):
            poly = c.polygon if c.polygon is not None and len(c.polygon) >= 3 else _mask_polygon(c)
            common = {"label": display_label(c.label), "source": "auto" if c.score is not None else "manual",
                      "occluded": str(c.attributes.get("occluded", 0)), "z_order": "0"}
            if poly is not None:
                pts = ";".join(f"{_fmt(x)},{_fmt(y)}" for x, y in poly)
                sel = ET.SubElement(iel, "polygon", points=pts, **common)
            elif c.box is not None:
                x1, y1, x2, y2 = c.box
                sel = ET.SubElement(iel, "box", xtl=_fmt(x1), ytl=_fmt(y1), xbr=_fmt(x2), ybr=_fmt(y2), **common)
            else:
                log.warning("%s: cell %d has no polygon, mask or box; not written", im.path, z)
                continue
            if c.score is not None:
                ET.SubElement(sel, "attribute", name="score").text = f"{float(c.score):.4f}"
            if c.subclass:
                ET.SubElement(sel, "attribute", name="subclass").text = str(c.subclass)
            if _group_only(c.label):
                ET.SubElement(sel, "attribute", name="level").text = "group"
    ET.indent(top, space="  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(top, encoding="unicode") + "\n"


def write_cvat(dataset_or_images: Dataset | Iterable[AnnotatedImage], dest: str | Path, **kw) -> Path:
    """Write CVAT-for-images 1.1 XML to `dest` atomically (see `to_cvat_xml` for options)."""
    return write_text_atomic(dest, to_cvat_xml(dataset_or_images, **kw))
