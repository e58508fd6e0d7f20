"""COCO instances JSON: read into the canonical model, and write from it.

Writing (`to_coco_dict`, `write_coco`): image ids and annotation ids from 1, category ids from 1 in
the order of `categories`; ``bbox`` is [x, y, w, h]; ``segmentation`` is the polygon (one flat list)
or, for a cell with only a mask, an RLE; box-only cells carry no ``segmentation``; ``area`` is
`Cell.area` (polygon, else mask, else box: the figure results.json writes); ``iscrowd`` 0 unless
``cell.attributes["iscrowd"]``; ``score`` is written for cells that have one (predictions). Output
loads with ``pycocotools.coco.COCO``.

Reading (`read_coco`): image paths are ``image_root/<file_name>`` (default: the JSON's folder, or its
``images/`` sub-folder when that holds the files); category names go through `classes.canonical`
(`UnknownLabelError` names the label and file); polygons -> `Cell.polygon` (the largest part; further
parts in ``attributes["extra_polygons"]``), RLE -> `Cell.mask` (full image, `mask_full`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np
from pycocotools import mask as mask_utils

from bloodsmear import __version__
from bloodsmear.classes import canonical
from bloodsmear.errors import InputError
from bloodsmear.io import image_name, read_json, write_json_atomic
from bloodsmear.types import AnnotatedImage, Cell, Dataset, polygon_area

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- writing


def _rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def _full_mask(cell: Cell, width: int, height: int) -> np.ndarray | None:
    if cell.mask is None:
        return None
    if cell.mask_full:
        return cell.mask.astype(bool)
    full = np.zeros((height, width), bool)
    if cell.box is None:
        return None
    x1, y1 = int(round(cell.box[0])), int(round(cell.box[1]))
    m = cell.mask.astype(bool)
    h = min(m.shape[0], height - y1)
    w = min(m.shape[1], width - x1)
    if h > 0 and w > 0 and x1 >= 0 and y1 >= 0:
        full[y1:y1 + h, x1:x1 + w] = m[:h, :w]
    return full


def cell_annotation(cell: Cell, width: int, height: int) -> dict:
    """The COCO fields of one cell (no ids): bbox, area, iscrowd, segmentation, score."""
    ann: dict = {}
    seg_mask = None
    if cell.polygon is not None and len(cell.polygon) >= 3:
        ann["segmentation"] = [[round(float(v), 2) for v in cell.polygon.reshape(-1)]]
    else:
        seg_mask = _full_mask(cell, width, height)
        if seg_mask is not None:
            ann["segmentation"] = _rle(seg_mask)
    if cell.box is not None:
        x1, y1, x2, y2 = cell.box
    elif seg_mask is not None and seg_mask.any():
        ys, xs = np.nonzero(seg_mask)
        x1, y1, x2, y2 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
    else:
        raise ValueError("cell has no polygon, mask or box")
    ann["bbox"] = [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2), round(float(y2 - y1), 2)]
    ann["area"] = round(cell.area, 2)  # Cell.area: the one definition, as in results.json
    ann["iscrowd"] = int(cell.attributes.get("iscrowd", 0))
    if cell.score is not None:
        ann["score"] = float(cell.score)
    if cell.subclass:
        ann["subclass"] = str(cell.subclass)
    return ann


def to_coco_dict(
    images: Dataset | Iterable[AnnotatedImage],
    categories: Iterable[str] | None = None,
    *,
    root: str | Path | None = None,
    info: dict | None = None,
    strict_categories: bool = True,
) -> dict:
    """A COCO instances dict for the images' cells (see the module doc).

    `categories`: class names in id order (ids from 1); default: the sorted labels used. A cell whose
    label is not in `categories` raises `ValueError` (or is left out with a warning when not
    `strict_categories`). `root`: write ``file_name`` relative to it (default: the file name).
    """
    ims = list(images.images if isinstance(images, Dataset) else images)
    cats = list(categories) if categories is not None else sorted({c.label for im in ims for c in im.cells})
    cat_id = {name: i for i, name in enumerate(cats, start=1)}
    out_images, anns = [], []
    for img_id, im in enumerate(ims, start=1):
        name = image_name(im.path, root)
        out_images.append({"id": img_id, "file_name": name, "width": int(im.width), "height": int(im.height)})
        for c in im.cells:
            if c.label not in cat_id:
                if strict_categories:
                    raise ValueError(f"{im.path}: cell label {c.label!r} not among categories {cats}")
                log.warning("%s: cell label %r not among the categories; left out", im.path, c.label)
                continue
            ann = {"id": len(anns) + 1, "image_id": img_id, "category_id": cat_id[c.label]}
            ann.update(cell_annotation(c, im.width, im.height))
            anns.append(ann)
    return {
        "info": info or {"description": "bloodsmear", "version": _version()},
        "licenses": [],
        "images": out_images,
        "annotations": anns,
        "categories": [{"id": i, "name": n, "supercategory": "cell"} for n, i in cat_id.items()],
    }


def write_coco(dest: str | Path, images: Dataset | Iterable[AnnotatedImage],
               categories: Iterable[str] | None = None, **kw) -> Path:
    """Write `to_coco_dict(images, categories, **kw)` to `dest` atomically."""
    return write_json_atomic(dest, to_coco_dict(images, categories, **kw), indent=None)


def _version() -> str:
    return __version__


# ---------------------------------------------------------------------------------------------- reading


def _cell_from_ann(a: dict, label: str, w: int, h: int) -> Cell:
    seg = a.get("segmentation")
    polygon, mask, extra = None, None, []
    if isinstance(seg, list) and seg:
        parts = [np.asarray(p, float).reshape(-1, 2) for p in seg if len(p) >= 6]
        if not parts:
            raise ValueError("polygon segmentation with fewer than 3 points")
        parts.sort(key=polygon_area, reverse=True)
        polygon, extra = parts[0], parts[1:]
    elif isinstance(seg, dict):
        rle = seg
        if isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, seg["size"][0], seg["size"][1])
        mask = mask_utils.decode(rle).astype(bool)
    box = None
    if "bbox" in a:
        x, y, bw, bh = (float(v) for v in a["bbox"])
        box = (x, y, x + bw, y + bh)
    attrs = {"iscrowd": int(a.get("iscrowd", 0)), "coco_id": a.get("id")}
    if extra:
        attrs["extra_polygons"] = extra
    cell = Cell(label=label, polygon=polygon, box=box, mask=mask, mask_full=mask is not None,
                score=a.get("score"), subclass=a.get("subclass"), attributes=attrs)
    if cell.box is None and mask is not None and mask.any():
        ys, xs = np.nonzero(mask)
        cell.box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    return cell


def read_coco(path: str | Path, *, image_root: str | Path | None = None, strict: bool = True) -> Dataset:
    """Read a COCO instances JSON file (or the single .json / annotations/instances*.json of a folder)."""
    path = Path(path)
    if path.is_dir():
        cands = sorted((path / "annotations").glob("instances*.json")) if (path / "annotations").is_dir() else []
        cands = cands or sorted(path.glob("*.json"))
        if len(cands) != 1:
            raise InputError(path, f"expected one COCO .json file, found {len(cands)}")
        path = cands[0]
    d = read_json(path)
    if not isinstance(d, dict) or not isinstance(d.get("images"), list):
        raise InputError(path, "not COCO instances JSON: no 'images' list")
    base = path.parent.parent if path.parent.name == "annotations" else path.parent
    if image_root is None:
        first = d["images"][0]["file_name"] if d["images"] else ""
        image_root = base / "images" if (base / "images" / first).is_file() else base
    image_root = Path(image_root)
    cats = {}
    for c in d.get("categories", []):
        if "id" not in c or "name" not in c:
            raise InputError(path, f"category without an id or name: {c}")
        cats[c["id"]] = canonical(c["name"], path=path)
    by_image: dict[int, list[dict]] = {}
    for a in d.get("annotations", []):
        by_image.setdefault(a.get("image_id"), []).append(a)
    images, skipped = [], []
    for im in d["images"]:
        try:
            w, h = int(im["width"]), int(im["height"])
            cells = []
            for a in by_image.get(im["id"], []):
                if a.get("category_id") not in cats:
                    raise ValueError(f"annotation {a.get('id')}: unknown category_id {a.get('category_id')}")
                try:
                    cells.append(_cell_from_ann(a, cats[a["category_id"]], w, h))
                except (ValueError, TypeError, KeyError) as e:
                    raise ValueError(f"annotation {a.get('id')}: {e}") from e
            images.append(AnnotatedImage(path=image_root / im["file_name"], width=w, height=h, cells=cells,
                                         source="coco", meta={"coco_id": im["id"]}))
        except (KeyError, ValueError, TypeError) as e:
            err = InputError(path, f"image {im.get('file_name', im.get('id'))}: {e}")
            if strict:
                raise err from e
            skipped.append(str(err))
    return Dataset(name=base.resolve().name, root=image_root, images=images, format="coco", skipped=skipped)
