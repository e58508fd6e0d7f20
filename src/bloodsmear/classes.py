"""The one class vocabulary: RV-PBS's 10 WBC classes, PBC's 8 classes and subclasses, LISC's 5,
aliases for the spellings the datasets use, and the explicit maps between them.

Canonical names are lower-case with underscores ("band_cell"). `canonical()` accepts any alias
("BASOPHILS", "band cell", "NEUTROPHIL", "baso", ...) and raises `UnknownLabelError` naming the label.
"""

from __future__ import annotations

import re

from bloodsmear.errors import UnknownLabelError

#: The seed paper's RV-PBS classes (10).
RVPBS_CLASSES: tuple[str, ...] = (
    "band_cell", "basophil", "blast_cell", "eosinophil", "lymphocyte",
    "metamyelocyte", "monocyte", "myelocyte", "neutrophil", "promyelocyte",
)
#: PBC (Acevedo et al. 2020) folder classes (8).
PBC_CLASSES: tuple[str, ...] = (
    "basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet",
)
#: PBC subclasses, from the file-name prefix, per folder class.
PBC_SUBCLASSES: dict[str, tuple[str, ...]] = {
    "ig": ("IG", "MY", "MMY", "PMY"),
    "neutrophil": ("BNE", "SNE", "NEUTROPHIL"),
}
#: LISC classes (5).
LISC_CLASSES: tuple[str, ...] = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
#: The paper's 8 classes common to RV-PBS and PBC.
COMMON_CLASSES: tuple[str, ...] = (
    "basophil", "eosinophil", "lymphocyte", "monocyte", "myelocyte", "metamyelocyte", "promyelocyte", "neutrophil",
)
#: Non-WBC object kinds that appear in field annotations (BCCD).
OTHER_KINDS: tuple[str, ...] = ("wbc", "rbc", "platelet")

#: Every canonical name.
ALL_CLASSES: tuple[str, ...] = tuple(sorted(set(RVPBS_CLASSES) | set(PBC_CLASSES) | set(OTHER_KINDS)))

_ALIASES: dict[str, str] = {
    # plural / upper-case folder names of RV-PBS and BCCD
    "band": "band_cell", "bands": "band_cell", "band_cells": "band_cell", "band_neutrophil": "band_cell",
    "bne": "band_cell", "stab": "band_cell",
    "baso": "basophil", "basophils": "basophil", "bas": "basophil",
    "blast": "blast_cell", "blasts": "blast_cell", "blast_cells": "blast_cell", "myeloblast": "blast_cell",
    "eos": "eosinophil", "eosinophils": "eosinophil", "eo": "eosinophil",
    "lymph": "lymphocyte", "lymphocytes": "lymphocyte", "lym": "lymphocyte", "lympho": "lymphocyte",
    "meta": "metamyelocyte", "metamyelocytes": "metamyelocyte", "mmy": "metamyelocyte",
    "mono": "monocyte", "monocytes": "monocyte", "mon": "monocyte",
    "myelocytes": "myelocyte", "my": "myelocyte",
    "neut": "neutrophil", "neutrophils": "neutrophil", "neu": "neutrophil", "seg": "neutrophil",
    "segmented_neutrophil": "neutrophil", "sne": "neutrophil",
    "pro": "promyelocyte", "promyelocytes": "promyelocyte", "pmy": "promyelocyte",
    "erythroblasts": "erythroblast", "ery": "erythroblast", "nrbc": "erythroblast",
    "immature_granulocyte": "ig", "immature_granulocytes": "ig",
    "platelets": "platelet", "plt": "platelet", "thrombocyte": "platelet",
    "white_blood_cell": "wbc", "leukocyte": "wbc", "leucocyte": "wbc",
    "red_blood_cell": "rbc", "erythrocyte": "rbc",
}


def _key(label: str) -> str:
    return re.sub(r"[\s\-]+", "_", label.strip().lower())


def canonical(label: str, *, path: object = None) -> str:
    """The canonical class name for any known spelling; `UnknownLabelError` otherwise."""
    if not isinstance(label, str) or not label.strip():
        raise UnknownLabelError(str(label), list(ALL_CLASSES), path)
    k = _key(label)
    if k in ALL_CLASSES:
        return k
    if k in _ALIASES:
        return _ALIASES[k]
    raise UnknownLabelError(label, list(ALL_CLASSES), path)


def is_known(label: str) -> bool:
    try:
        canonical(label)
    except UnknownLabelError:
        return False
    return True


#: PBC (folder class, subclass) -> the finer RV-PBS-level class.
_PBC_FINE = {
    ("ig", "MY"): "myelocyte",
    ("ig", "MMY"): "metamyelocyte",
    ("ig", "PMY"): "promyelocyte",
    ("ig", "IG"): "ig",
    ("neutrophil", "BNE"): "band_cell",
    ("neutrophil", "SNE"): "neutrophil",
    ("neutrophil", "NEUTROPHIL"): "neutrophil",
}


def pbc_subclass(folder_class: str, filename: str) -> str | None:
    """Subclass from a PBC file name prefix (`MMY_123.jpg` -> "MMY"); None for classes without subclasses."""
    subs = PBC_SUBCLASSES.get(folder_class)
    if not subs:
        return None
    prefix = filename.split("_", 1)[0].upper()
    return prefix if prefix in subs else None


def pbc_fine_label(folder_class: str, subclass: str | None) -> str:
    """PBC folder class + subclass -> the RV-PBS-level class (ig/MY -> myelocyte, neutrophil/BNE -> band_cell)."""
    return _PBC_FINE.get((folder_class, subclass or ""), folder_class)


#: Any canonical class -> the paper's common class, or None when it has no counterpart.
_TO_COMMON = {c: c for c in COMMON_CLASSES}
_TO_COMMON["band_cell"] = "neutrophil"


def to_common(label: str, subclass: str | None = None) -> str | None:
    """Map a class (and PBC subclass) onto the paper's 8 common classes; None if it is outside them."""
    lab = canonical(label)
    if lab in ("ig", "neutrophil") and subclass:
        lab = pbc_fine_label(lab, subclass)
    return _TO_COMMON.get(lab)


def common_between(a: tuple[str, ...] | list[str], b: tuple[str, ...] | list[str]) -> list[str]:
    """Classes shared by two vocabularies, in `a`'s order (e.g. PBC ∩ LISC = 5 classes)."""
    bs = {canonical(x) for x in b}
    return [x for x in (canonical(y) for y in a) if x in bs]
