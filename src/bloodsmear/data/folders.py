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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bloodsmear.classes import LISC_CLASSES, PBC_CLASSES, canonical, pbc_fine_label, pbc_subclass
from bloodsmear.errors import InputError, UnknownLabelError
from bloodsmear.io import image_size, is_image_file
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
    files = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if any(part.startswith(".") for part in p.relative_to(folder).parts):
            skipped.append(f"{rel}: hidden file, left out")
        elif not is_image_file(p):
            skipped.append(f"{rel}: not an image file ({p.suffix or 'no suffix'}), left out")
        elif p.stat().st_size == 0:
            skipped.append(f"{rel}: empty file, left out")
        else:
            files.append(p)
    return files


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


def fill_sizes(dataset: Dataset, *, workers: int = 8) -> list[str]:
    """Set width/height of images whose size is unknown (0) from their file headers (no decoding).

    Files whose header cannot be read are recorded in `dataset.skipped` (and returned) but kept.
    """
    todo = [im for im in dataset.images if (im.width <= 0 or im.height <= 0) and im.path.is_file()]

    def _one(im: AnnotatedImage) -> str | None:
        try:
            im.width, im.height = image_size(im.path)
        except InputError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        errors = [e for e in ex.map(_one, todo) if e]
    dataset.skipped.extend(errors)
    return errors
