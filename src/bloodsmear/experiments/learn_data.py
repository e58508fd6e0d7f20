"""Labelled cells for `bloodsmear learn`: CVAT XML, COCO JSON, class-per-folder crops or an analyze folder.

    cells = read_labelled(["review/annotations.xml", "my_crops/"], images="fields/")
    cells.crops, cells.labels, cells.sources, cells.counts()

`detect_labelled_format` tells the four apart ("cvat", "coco", "folders", "analyze": a folder holding
results.json, whose masks' `class_name` are the labels - what a reviewer corrected). Every label is
checked against the class vocabulary first, so one error names all unknown labels of a file. Cells of
fields are cut as the pipeline's classify stage cuts them (`crops_like_pipeline`: framed by the field's
red-cell size - results.json's own, else estimated as `analyze` does); crops are used as they are.
Red cells and WBCs without a type are left out (listed in `skipped`); a missing image is an error.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from bloodsmear.classes import ALL_CLASSES, canonical, is_known, label_at
from bloodsmear.data.coco import read_coco
from bloodsmear.data.cvat import cvat_files, read_cvat
from bloodsmear.data.folders import class_folders, read_folders
from bloodsmear.data.registry import detect_format
from bloodsmear.errors import InputError
from bloodsmear.inference.pipeline import own_choice, screening_crops, small_copy
from bloodsmear.inference.pipeline_config import PipelineConfig
from bloodsmear.inference.stages import CropSource, estimate_rbc_diameter_px
from bloodsmear.io import read_image, read_json
from bloodsmear.outputs.paper_json import read_results_json
from bloodsmear.preprocess.cells import cell_class
from bloodsmear.types import Cell

FORMATS = ("cvat", "coco", "folders", "analyze")
_FOLDER_FORMATS = ("folders", "pbc", "lisc")


@dataclass
class LabelledCells:
    """Labelled cells as RGB uint8 crops (any size), canonical labels and where each came from."""

    crops: list[np.ndarray]
    labels: list[str]
    sources: list[str]  # "<file>" or "<image>#<cell index>"
    inputs: list[dict] = field(default_factory=list)  # [{"path", "format", "cells"}]
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def from_arrays(cls, crops: Sequence[np.ndarray], labels: Sequence[str], *, name: str = "arrays") -> "LabelledCells":
        """Cells given in memory (a benchmark's k cells per class of a domain)."""
        labs = [canonical(lab) for lab in labels]
        return cls(list(crops), labs, [f"{name}#{i}" for i in range(len(labs))], [{"path": name, "format": "arrays",
                                                                                   "cells": len(labs)}])

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.labels).items()))


def detect_labelled_format(path: str | Path) -> str:
    """"analyze" (a folder with results.json, or a results document), "cvat", "coco" or "folders"; an
    `InputError` naming the path for anything else."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir() and (path / "results.json").is_file():
        return "analyze"
    if path.is_file() and path.suffix.lower() == ".json":
        d = read_json(path)
        if isinstance(d, dict) and isinstance(d.get("data"), dict) and "images" not in d:
            return "analyze"
    try:
        fmt = detect_format(path)
    except InputError:
        fmt = None
    if fmt in _FOLDER_FORMATS:
        return "folders"
    if fmt in ("cvat", "coco"):
        return fmt
    raise InputError(path, "is none of the labelled-cell formats: CVAT XML, COCO JSON, a class-per-folder of "
                           "cell crops, or an analyze output folder (results.json)")


def _raw_labels(path: Path, fmt: str) -> list[str]:
    """Every label an input uses, read without the vocabulary (to name all unknown ones at once)."""
    if fmt == "folders":
        return [d.name for d in class_folders(path)]
    if fmt == "cvat":
        out = []
        for f in ([path] if path.is_file() else cvat_files(path)):
            try:
                out += [el.get("label", "") for el in ET.parse(f).getroot().iter() if el.tag in ("polygon", "box")]
            except ET.ParseError:
                continue  # the reader names the file
        return out
    if path.is_dir():  # analyze: its results.json; COCO: the file read_coco reads
        cands = [path / "results.json"] if fmt == "analyze" else \
            sorted((path / "annotations").glob("instances*.json")) or sorted(path.glob("*.json"))
        if len(cands) != 1:
            return []  # the reader names the problem
        path = cands[0]
    d = read_json(path)
    if fmt == "coco":
        return [str(c.get("name", "")) for c in d.get("categories", [])] if isinstance(d, dict) else []
    data = d.get("data") if isinstance(d, dict) else None
    return [str(m.get("class_name", "")) for r in (data or {}).values() for m in r.get("masks", [])]


def _check_labels(path: Path, fmt: str) -> None:
    unknown = sorted({lab for lab in _raw_labels(path, fmt) if not is_known(lab)})
    if unknown:
        raise InputError(path, f"unknown label(s) {', '.join(repr(u) for u in unknown)}: not in the class "
                               f"vocabulary (known: {', '.join(ALL_CLASSES)})")


def _image_file(path: Path, name: str, images: Path | None, where: Path) -> Path:
    """`path` (where the annotations put the image), else `images/name`; an `InputError` naming it."""
    for p in [path] + ([images / name] if images is not None else []):
        if p.is_file():
            return p
    raise InputError(path, f"image file not found (labelled in {where}); pass --images DIR, the folder of the fields")


def crops_like_pipeline(rgb: np.ndarray, cells: Sequence[Cell], *, rbc_px: float | None = None,
                        config: PipelineConfig | None = None, name: object = "image") -> list[np.ndarray]:
    """The crops the pipeline's classify stage (`inference.pipeline.screening_crops`) cuts for `cells` of the field
    `rgb` (neither is modified), framed by `rbc_px` (original px; None: estimated as `analyze` does)."""
    cfg = config or PipelineConfig.load(None)
    small, f = small_copy(rgb, cfg.scale_max_side)
    if rbc_px is None:
        rbc_px = own_choice(small, f, "auto", estimate_rbc_diameter_px(small, f), name=name).diameter_px
    return screening_crops([(CropSource(rgb, small if f < 1.0 else None, f), list(cells), rbc_px)], cfg)


def _field_label(cell: Cell) -> str | None:
    """A field cell's WBC class (a "wbc" box: its subtype), None for red cells and untyped WBCs."""
    if canonical(cell.label) == "platelet":
        return "platelet"
    return cell_class(cell)


def read_labelled(inputs: Sequence[str | Path], *, images: str | Path | None = None,
                  pipeline: str | Path | PipelineConfig | None = None, level: str | None = None) -> LabelledCells:
    """Every labelled cell of `inputs` (see the module doc). `images`: where field images are when not
    beside their annotations (an analyze folder's fields: the folder analyze was run on). `level`:
    "fine" / "group" moves each label to that level (`classes.label_at`); None keeps it as labelled."""
    cfg = pipeline if isinstance(pipeline, PipelineConfig) else PipelineConfig.load(pipeline)
    img_root = Path(images) if images is not None else None
    out = LabelledCells([], [], [])
    for inp in inputs:
        path = Path(inp)
        fmt = detect_labelled_format(path)
        _check_labels(path, fmt)
        n0 = len(out.labels)
        if fmt == "folders":
            ds = read_folders(path)
            for im in ds.images:
                try:
                    out.crops.append(read_image(im.path))
                except InputError as e:
                    out.skipped.append(str(e))
                    continue
                out.labels.append(im.label)
                out.sources.append(str(im.path))
            out.skipped += ds.skipped
        else:
            fields = []  # (image file, name, cells, rbc_px)
            if fmt == "analyze":
                rfile = path / "results.json" if path.is_dir() else path
                for r in read_results_json(rfile):  # names are relative to the folder analyze was run on
                    fields.append((_image_file(Path(r.name), r.name, img_root, rfile), r.name, r.cells,
                                   r.rbc_diameter_px))
            else:
                ds = read_cvat(path) if fmt == "cvat" else read_coco(path)
                out.skipped += ds.skipped
                fields += [(_image_file(im.path, im.name, img_root, path), im.name, im.cells, None)
                           for im in ds.images]
            for file, name, cells, rbc in fields:
                keep = [(k, c, lab) for k, c in enumerate(cells) if (lab := _field_label(c)) is not None]
                out.skipped += [f"{file} cell {k}: label {c.label!r} is not a WBC class, left out"
                                for k, c in enumerate(cells) if _field_label(c) is None]
                if not keep:
                    continue
                crops = crops_like_pipeline(read_image(file), [c for _, c, _ in keep], rbc_px=rbc, config=cfg,
                                            name=file)
                out.crops += crops
                out.labels += [lab for _, _, lab in keep]
                out.sources += [f"{file}#{k}" for k, _, _ in keep]
        out.inputs.append({"path": str(path), "format": fmt, "cells": len(out.labels) - n0})
    if level is not None:
        out.labels = [label_at(lab, level) for lab in out.labels]
    return out


__all__ = ["LabelledCells", "read_labelled", "detect_labelled_format", "crops_like_pipeline", "FORMATS"]
