"""Pascal VOC XML (BCCD): boxes, the official split, BCCD's WBC subtype CSV and nucleus masks.

Layout: ``ROOT/Annotations/*.xml``, ``ROOT/JPEGImages/``, ``ROOT/ImageSets/Main/{train,val,test,trainval}.txt``
(-> `Dataset.splits`, lists of image stems), optional ``ROOT/wbc_subtype_labels.csv`` and
``ROOT/nucleus_masks/BloodImage_Mask_XXXXX.png`` (-> `AnnotatedImage.nucleus_mask_path`).

Labels - a decision kept everywhere: `Cell.label` is the object KIND the box was drawn for ("wbc",
"rbc", "platelet"). The WBC type from the subtype CSV goes on the WBC cells as `Cell.subclass` (canonical
class, e.g. "neutrophil") and ``Cell.attributes["wbc_type"]`` when the image's row names exactly one
type (or the same type for every WBC, "NEUTROPHIL, NEUTROPHIL"); rows naming several different types
cannot be tied to boxes, so those cells get no subclass and ``attributes["wbc_types"]`` lists them.
``AnnotatedImage.label`` is the single type when there is one, and ``meta["wbc_types"]`` always holds
the row's list (empty for blank rows and images without a row). With ``wbc_subtype_as_label=True``
WBC cells with a single known type take it as `label` instead ("wbc" stays where it is unknown).

Box coordinates are kept as written (VOC pixel indices), clipped to the image; a box more than
`tolerance` px outside, or inverted, is an error naming the file. Zero-size boxes (BCCD has two RBC
"boxes" that are single points) are kept by default, flagged ``attributes["degenerate"] = True``,
so the counts match the published ones; ``degenerate_boxes="drop"`` leaves them out.
"""

from __future__ import annotations

import csv
import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from bloodsmear.classes import canonical
from bloodsmear.errors import BloodsmearError, InputError
from bloodsmear.io import image_size
from bloodsmear.types import AnnotatedImage, Cell, Dataset

log = logging.getLogger(__name__)

SUBTYPE_CSV = "wbc_subtype_labels.csv"
MASK_DIR = "nucleus_masks"


def read_subtype_csv(path: str | Path) -> dict[int, list[str]]:
    """BCCD ``wbc_subtype_labels.csv`` -> {image number: [canonical WBC classes]} (blank rows -> []).

    Columns: an unnamed index, ``Image`` (the number in BloodImage_XXXXX), ``Category``
    ("NEUTROPHIL", "NEUTROPHIL, EOSINOPHIL", or blank).
    """
    path = Path(path)
    out: dict[int, list[str]] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise InputError(path, f"not a readable CSV ({e})") from e
    for i, row in enumerate(rows, start=2):
        num = (row.get("Image") or "").strip()
        if not num:
            continue
        try:
            n = int(float(num))
        except ValueError as e:
            raise InputError(path, f"line {i}: Image {num!r} is not a number") from e
        cats = [c.strip() for c in (row.get("Category") or "").split(",") if c.strip()]
        out[n] = [canonical(c, path=f"{path} line {i}") for c in cats]
    return out


def _image_number(stem: str) -> int | None:
    m = re.search(r"(\d+)$", stem)
    return int(m.group(1)) if m else None


def _text(el: ET.Element | None, tag: str) -> str | None:
    if el is None:
        return None
    c = el.find(tag)
    return c.text.strip() if c is not None and c.text else None


def parse_voc_xml(path: Path, image_dir: Path, *, tolerance: float = 1.0, degenerate_boxes: str = "keep"
                  ) -> AnnotatedImage:
    """One VOC annotation file -> AnnotatedImage (path ``image_dir/<filename>``).

    `degenerate_boxes`: what to do with zero-width/height boxes (BCCD has 2): "keep" (flagged
    ``attributes["degenerate"]``, with a warning), "drop", or "error".
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise InputError(path, f"XML does not parse: {e}") from e
    if root.tag != "annotation":
        raise InputError(path, f"not Pascal VOC XML: root element is <{root.tag}>, expected <annotation>")
    filename = _text(root, "filename") or (path.stem + ".jpg")
    img_path = image_dir / filename
    if not img_path.suffix:
        img_path = img_path.with_suffix(".jpg")
    size = root.find("size")
    try:
        w, h = int(float(_text(size, "width") or 0)), int(float(_text(size, "height") or 0))
    except ValueError as e:
        raise InputError(path, f"bad <size>: {e}") from e
    if (w <= 0 or h <= 0) and img_path.is_file():
        w, h = image_size(img_path)
    cells = []
    for k, obj in enumerate(root.findall("object"), start=1):
        name = _text(obj, "name") or ""
        label = canonical(name, path=path)
        bb = obj.find("bndbox")
        try:
            x1, y1, x2, y2 = (float(_text(bb, t) or "nan") for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as e:
            raise InputError(path, f"object {k} ({name}): bad <bndbox>: {e}") from e
        if any(v != v for v in (x1, y1, x2, y2)):
            raise InputError(path, f"object {k} ({name}): <bndbox> lacks a coordinate")
        if x2 < x1 or y2 < y1:
            raise InputError(path, f"object {k} ({name}): inverted box ({x1:g}, {y1:g}, {x2:g}, {y2:g})")
        degenerate = x2 == x1 or y2 == y1
        if degenerate:
            msg = f"{path}: object {k} ({name}): zero-size box ({x1:g}, {y1:g}, {x2:g}, {y2:g})"
            if degenerate_boxes == "error":
                raise InputError(path, msg.split(": ", 1)[1])
            log.warning("%s (%s)", msg, "kept, flagged degenerate" if degenerate_boxes == "keep" else "left out")
            if degenerate_boxes == "drop":
                continue
        if w > 0 and h > 0:
            if x1 < -tolerance or y1 < -tolerance or x2 > w + tolerance or y2 > h + tolerance:
                raise InputError(path, f"object {k} ({name}): box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) "
                                       f"outside the {w}x{h} image")
            x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
        attrs: dict = {t: int(_text(obj, t) or 0) for t in ("truncated", "difficult") if _text(obj, t) is not None}
        if degenerate:
            attrs["degenerate"] = True
        cells.append(Cell(label=label, box=(x1, y1, x2, y2), attributes=attrs))
    return AnnotatedImage(path=img_path, width=w, height=h, cells=cells, source="voc", meta={"xml": str(path)})


def read_image_sets(root: Path) -> dict[str, list[str]]:
    """``ImageSets/Main/*.txt`` -> {split name: [image stems]} (the official split)."""
    d = root / "ImageSets" / "Main"
    if not d.is_dir():
        return {}
    out = {}
    for f in sorted(d.glob("*.txt")):
        stems = [ln.split()[0] for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
        out[f.stem] = stems
    return out


def _attach_subtypes(im: AnnotatedImage, types: list[str], as_label: bool) -> None:
    im.meta["wbc_types"] = list(types)
    distinct = sorted(set(types))
    single = distinct[0] if len(distinct) == 1 else None
    im.label = single
    for c in im.cells:
        if c.label != "wbc":
            continue
        if single:
            c.subclass = single
            c.attributes["wbc_type"] = single
            if as_label:
                c.label = single
        elif types:
            c.attributes["wbc_types"] = list(types)


def read_voc(
    root: str | Path,
    *,
    subtypes: str | Path | bool = True,
    wbc_subtype_as_label: bool = False,
    tolerance: float = 1.0,
    degenerate_boxes: str = "keep",
    strict: bool = True,
) -> Dataset:
    """Read a VOC dataset folder (or one VOC .xml file). See the module doc for labels and subtypes.

    `subtypes`: True reads ``ROOT/wbc_subtype_labels.csv`` when present, a path reads that CSV,
    False ignores subtypes. `strict=False` lists bad annotation files in `Dataset.skipped` and goes on.
    """
    root = Path(root)
    if root.is_file():
        xmls, base = [root], root.parent.parent if root.parent.name == "Annotations" else root.parent
    else:
        if not (root / "Annotations").is_dir():
            raise InputError(root, "no Annotations/ folder (not a Pascal VOC dataset)")
        xmls, base = sorted((root / "Annotations").glob("*.xml")), root
    image_dir = base / "JPEGImages" if (base / "JPEGImages").is_dir() else base
    skipped: list[str] = []
    images: list[AnnotatedImage] = []
    for x in xmls:
        try:
            images.append(parse_voc_xml(x, image_dir, tolerance=tolerance, degenerate_boxes=degenerate_boxes))
        except BloodsmearError as e:
            if strict:
                raise
            skipped.append(str(e))
    csv_path = None
    if subtypes is True and (base / SUBTYPE_CSV).is_file():
        csv_path = base / SUBTYPE_CSV
    elif subtypes not in (True, False, None):
        csv_path = Path(subtypes)  # type: ignore[arg-type]
    table = read_subtype_csv(csv_path) if csv_path else None
    for im in images:
        num = _image_number(im.path.stem)
        if table is not None:
            _attach_subtypes(im, table.get(num, []) if num is not None else [], wbc_subtype_as_label)
        if num is not None:
            mask = base / MASK_DIR / f"BloodImage_Mask_{num:05d}.png"
            if mask.is_file():
                im.nucleus_mask_path = mask
        im.source = "bccd" if csv_path or "bccd" in base.name.lower() else "voc"
    for s in skipped:
        log.warning("skipped %s", s)
    return Dataset(name=base.resolve().name, root=base, images=images, format="voc",
                   splits=read_image_sets(base), skipped=skipped)
