"""One entry point for every dataset format, with auto-detection (timm-style registry).

    load(path, "auto")   # voc | cvat | coco | pbc | lisc | folders

Detection rules (`detect_format`):
- a ``.json`` file -> coco
- a ``.xml`` file: root ``<annotations>`` -> cvat, root ``<annotation>`` -> voc
- a folder with ``Annotations/`` and ``JPEGImages/`` -> voc
- a folder holding ``annotations.xml`` (itself or one level of sub-folders) -> cvat
- every sub-folder a known class: exactly the 5 LISC classes -> lisc; only PBC classes, including
  one of ig/erythroblast/platelet -> pbc; otherwise -> folders
- a folder holding ``annotations/instances*.json`` or exactly one ``*.json`` -> coco
- any other folder with sub-folders -> folders (generic class-per-folder)
"""

from __future__ import annotations

import importlib
import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

from bloodsmear.classes import LISC_CLASSES, PBC_CLASSES
from bloodsmear.data.cvat import cvat_files
from bloodsmear.data.folders import folder_classes
from bloodsmear.errors import BloodsmearError, InputError
from bloodsmear.types import Dataset

log = logging.getLogger(__name__)

#: Formats `load` accepts (besides "auto").
FORMATS: tuple[str, ...] = ("pbc", "lisc", "folders", "voc", "cvat", "coco")


class UnknownFormatError(BloodsmearError, ValueError):
    """A dataset format name that is not registered."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"unknown dataset format {name!r} (valid: auto, {', '.join(FORMATS)})")


#: format -> (module, reader function); readers are imported on first use.
_READERS: dict[str, tuple[str, str]] = {
    "pbc": ("bloodsmear.data.folders", "read_pbc"),
    "lisc": ("bloodsmear.data.folders", "read_lisc"),
    "folders": ("bloodsmear.data.folders", "read_folders"),
    "voc": ("bloodsmear.data.voc", "read_voc"),
    "cvat": ("bloodsmear.data.cvat", "read_cvat"),
    "coco": ("bloodsmear.data.coco", "read_coco"),
}


def _reader(fmt: str) -> Callable[..., Dataset]:
    if fmt not in _READERS:
        raise UnknownFormatError(fmt)
    mod, fn = _READERS[fmt]
    return getattr(importlib.import_module(mod), fn)


def _xml_root_tag(path: Path) -> str:
    try:
        for _event, elem in ET.iterparse(str(path), events=("start",)):
            return elem.tag
    except ET.ParseError as e:
        raise InputError(path, f"XML does not parse: {e}") from e
    return ""


def detect_format(path: str | Path) -> str:
    """The format of a dataset file or folder (see the module doc); `InputError` if it cannot tell."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_file():
        suf = path.suffix.lower()
        if suf == ".json":
            return "coco"
        if suf == ".xml":
            tag = _xml_root_tag(path)
            if tag == "annotations":
                return "cvat"
            if tag == "annotation":
                return "voc"
            raise InputError(path, f"XML root <{tag}> is neither CVAT <annotations> nor VOC <annotation>")
        raise InputError(path, f"cannot tell the dataset format of a {suf or 'suffix-less'} file")
    if (path / "Annotations").is_dir() and (path / "JPEGImages").is_dir():
        return "voc"

    if cvat_files(path, any_xml=False):
        return "cvat"

    named = folder_classes(path)
    subdirs = [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if subdirs and len(named) == len(subdirs):  # every sub-folder is a known class
        classes = set(named.values())
        if classes == set(LISC_CLASSES):
            return "lisc"
        if classes <= set(PBC_CLASSES) and classes & {"ig", "erythroblast", "platelet"}:
            return "pbc"
        return "folders"
    ann_dir = path / "annotations"
    if (ann_dir.is_dir() and list(ann_dir.glob("instances*.json"))) or len(list(path.glob("*.json"))) == 1:
        return "coco"
    if subdirs:
        return "folders"
    raise InputError(path, "cannot tell the dataset format: no class folders, annotations.xml, "
                           "Annotations/+JPEGImages/ or COCO .json found")


def load(path: str | Path, format: str = "auto", **kwargs) -> Dataset:  # noqa: A002
    """Read a dataset into the canonical model. `format`: auto or one of `FORMATS`."""
    path = Path(path)
    fmt = (format or "auto").lower()
    if fmt != "auto" and fmt not in FORMATS:
        raise UnknownFormatError(format)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if fmt == "auto":
        fmt = detect_format(path)
        log.debug("%s: detected format %s", path, fmt)
    ds = _reader(fmt)(path, **kwargs)
    ds.format = fmt
    return ds
