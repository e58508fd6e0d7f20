"""Class-per-folder datasets: PBC (8 classes + file-name subclasses), LISC (5 classes), generic folders.

Layout: ``ROOT/<class>/<file>.jpg``. Each image becomes one `AnnotatedImage` with `label` (canonical
class) and, for PBC, `subclass` (file-name prefix: ig -> IG/MY/MMY/PMY, neutrophil -> BNE/SNE/NEUTROPHIL)
and ``meta["fine_label"]`` (the RV-PBS-level class, e.g. ig/MY -> myelocyte). `cells` stays empty:
these are single-cell (PBC) or one-WBC-per-field (LISC) images whose class is the image's class.

Image sizes are NOT decoded on load (17k files): `width`/`height` are 0 meaning "unknown";
`fill_sizes()` reads them from the file headers when needed (the summary does).
Hidden files (PBC's original release holds ``neutrophil/.DS_169665.jpg``, not an image), non-image
files inside class folders and unknown class folders (non-strict) are listed in `Dataset.skipped`.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bloodsmear.classes import LISC_CLASSES, PBC_CLASSES, canonical, pbc_fine_label, pbc_subclass
from bloodsmear.errors import InputError, UnknownLabelError
from bloodsmear.io import IMAGE_SUFFIXES, image_size
from bloodsmear.types import AnnotatedImage, Dataset

log = logging.getLogger(__name__)

#: Folder-level files that are not class folders and are ignored silently.
_IGNORED_TOP = {"LICENSE", "README", "README.md", "LICENSE.txt"}


def class_folders(root: Path) -> list[Path]:
    """Visible sub-folders of `root`, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "not a folder")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_classes(root: Path) -> dict[str, str]:
    """{folder name: canonical class} for the sub-folders whose names are known class labels."""
    out = {}
    for d in class_folders(root):
        try:
            out[d.name] = canonical(d.name)
        except UnknownLabelError:
            continue
    return out


def _scan_class_folder(folder: Path, root: Path, skipped: list[str]) -> list[Path]:
    """Image files below `folder` (os.scandir: fast for 17k files); hidden, non-image and empty files
    are noted in `skipped` instead."""
    files: list[str] = []
    stack = [str(folder)]
    cut = len(str(folder).rstrip(os.sep)) + 1
    prefix = folder.relative_to(root).as_posix() + "/"
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            rel = prefix + e.path[cut:].replace(os.sep, "/")
            hidden = e.name.startswith(".")
            if e.is_dir():
                if hidden:
                    skipped.append(f"{rel}/: hidden folder, left out")
                else:
                    stack.append(e.path)
                continue
            if not e.is_file():
                continue
            suffix = os.path.splitext(e.name)[1]
            if hidden:
                skipped.append(f"{rel}: hidden file, left out")
            elif suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(f"{rel}: not an image file ({suffix or 'no suffix'}), left out")
            elif e.stat().st_size == 0:
                skipped.append(f"{rel}: empty file, left out")
            else:
                files.append(e.path)
    return [Path(f) for f in sorted(files)]


def read_folders(
    root: str | Path,
    *,
    source: str = "folders",
    allowed: tuple[str, ...] | None = None,
    canonical_labels: bool = True,
    strict: bool = True,
    read_sizes: bool = False,
) -> Dataset:
    """Read a generic class-per-folder dataset.

    `canonical_labels`: map folder names through `classes.canonical` (an unknown name raises
    `UnknownLabelError` naming the folder when `strict`, else the folder is skipped); False keeps the
    folder names as labels. `allowed`: canonical classes this format may contain.
    `read_sizes`: read width/height from the file headers (slower; default 0 = unknown).
    """
    root = Path(root)
    skipped: list[str] = []
    images: list[AnnotatedImage] = []
    for d in class_folders(root):
        if canonical_labels:
            try:
                label = canonical(d.name, path=d)
            except UnknownLabelError:
                if strict:
                    raise
                skipped.append(f"{d.name}/: unknown class folder, left out")
                continue
        else:
            label = d.name
        if allowed is not None and label not in allowed:
            err = UnknownLabelError(d.name, list(allowed), d)
            if strict:
                raise err
            skipped.append(f"{d.name}/: class {label!r} is not a {source} class, left out")
            continue
        for p in _scan_class_folder(d, root, skipped):
            im = AnnotatedImage(path=p, width=0, height=0, source=source, label=label)
            if source == "pbc":
                im.subclass = pbc_subclass(label, p.name)
                im.meta["fine_label"] = pbc_fine_label(label, im.subclass)
            images.append(im)
    for s in skipped:
        log.debug("skipped %s", s)
    ds = Dataset(name=root.resolve().name, root=root, images=images, format=source, skipped=skipped)
    if read_sizes:
        fill_sizes(ds)
    return ds


def read_pbc(root: str | Path, **kw) -> Dataset:
    """PBC (Acevedo et al. 2020): 8 class folders, subclass from the file-name prefix."""
    kw.setdefault("allowed", PBC_CLASSES)
    return read_folders(root, source="pbc", **kw)


def read_lisc(root: str | Path, **kw) -> Dataset:
    """LISC (Rezatofighi & Soltanian-Zadeh 2011): 5 class folders, one WBC per field."""
    kw.setdefault("allowed", LISC_CLASSES)
    return read_folders(root, source="lisc", **kw)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def header_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from a JPEG's SOF or a PNG's IHDR header (a few reads, no decoding); other
    formats and odd files fall back to PIL (`bloodsmear.io.image_size`, `InputError` when unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
            if head[:2] == b"\xff\xd8":
                f.seek(2)
                while True:
                    m = f.read(4)
                    if len(m) < 4 or m[0] != 0xFF:
                        break
                    if m[1] in _SOF:
                        sof = f.read(5)
                        h, w = int.from_bytes(sof[1:3], "big"), int.from_bytes(sof[3:5], "big")
                        if w > 0 and h > 0:
                            return w, h
                        break
                    f.seek(int.from_bytes(m[2:4], "big") - 2, 1)
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror})") from e
    return image_size(path)


def fill_sizes(dataset: Dataset, *, workers: int = 8) -> list[str]:
    """Set width/height of images whose size is unknown (0) from their file headers (no decoding).

    Files whose header cannot be read are recorded in `dataset.skipped` (and returned) but kept.
    """
    todo = [im for im in dataset.images if (im.width <= 0 or im.height <= 0) and im.path.is_file()]

    def _one(im: AnnotatedImage) -> str | None:
        try:
            im.width, im.height = header_size(im.path)
        except InputError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        errors = [e for e in ex.map(_one, todo) if e]
    dataset.skipped.extend(errors)
    return errors
