"""The one class vocabulary: RV-PBS's 10 WBC classes, PBC's 8 classes and subclasses, LISC's 5,
aliases for the spellings the datasets use, and the explicit maps between them.

Canonical names are lower-case with underscores ("band_cell"). `canonical()` accepts any alias
("BASOPHILS", "band cell", "NEUTROPHIL", "baso", ...) and raises `UnknownLabelError` naming the label.

Two levels. The fine classes (`FINE_CLASSES`, the paper's RV-PBS types plus PBC's erythroblast and
platelet) and their groups (`GROUP_CLASSES`): ``ig`` = myelocyte + metamyelocyte + promyelocyte,
``neutrophil`` = band_cell + segmented_neutrophil; every other class is its own group (`level_of` says
"both"). The name ``neutrophil`` is always the GROUP (PBC's folder class, LISC, BCCD, every shipped
classifier); the segmented form is ``segmented_neutrophil`` (aliases "seg", "sne", "segmented
neutrophil"). RV-PBS writes its segmented neutrophils as "neutrophil": readers of RV-PBS labels (CVAT)
use `canonical_fine`, which reads that one name as the fine class; PBC's SNE prefix maps to it in
`pbc_fine_label`. `group_of`, `fine_classes_of`, `level_of` and `label_at` move between the levels.
"""

from __future__ import annotations

import functools
import re

from bloodsmear.errors import BloodsmearError, UnknownLabelError

#: The seed paper's RV-PBS classes (10), canonical (RV-PBS's own label "neutrophil" is the segmented form).
RVPBS_CLASSES: tuple[str, ...] = (
    "band_cell", "basophil", "blast_cell", "eosinophil", "lymphocyte",
    "metamyelocyte", "monocyte", "myelocyte", "promyelocyte", "segmented_neutrophil",
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
#: What a reviewer answers for a detection that has no WBC type: not a WBC at all (dust, stain precipitate,
#: a red-cell clump: "artefact") or a WBC too damaged to type ("smudge_cell", counted apart: a report flag).
#: Neither counts in the differential.
REVIEW_KINDS: tuple[str, ...] = ("artefact", "smudge_cell")

#: The fine classes (12, sorted): RV-PBS's 10 (blast_cell keeps its slot: no blast images here, a lab that has
#: them trains it) plus PBC's erythroblast and platelet.
FINE_CLASSES: tuple[str, ...] = tuple(sorted((*RVPBS_CLASSES, "erythroblast", "platelet")))
#: The groups whose members are more than one fine class, and their fine classes.
GROUPS: dict[str, tuple[str, ...]] = {
    "ig": ("metamyelocyte", "myelocyte", "promyelocyte"),
    "neutrophil": ("band_cell", "segmented_neutrophil"),
}
#: The group-level classes (9, sorted): PBC's 8 folder classes plus blast_cell.
GROUP_CLASSES: tuple[str, ...] = tuple(sorted(
    {c for c in FINE_CLASSES if not any(c in m for m in GROUPS.values())} | set(GROUPS)))
LEVELS: tuple[str, ...] = ("fine", "group")

#: Every canonical name.
ALL_CLASSES: tuple[str, ...] = tuple(sorted(set(RVPBS_CLASSES) | set(PBC_CLASSES) | set(OTHER_KINDS)
                                            | set(FINE_CLASSES) | set(REVIEW_KINDS)))

_ALIASES: dict[str, str] = {
    # plural / upper-case folder names of RV-PBS and BCCD
    "band": "band_cell", "bands": "band_cell", "band_cells": "band_cell", "band_neutrophil": "band_cell",
    "bne": "band_cell", "stab": "band_cell", "band_neutrophils": "band_cell", "band_form": "band_cell",
    "baso": "basophil", "basophils": "basophil", "bas": "basophil",
    "blast": "blast_cell", "blasts": "blast_cell", "blast_cells": "blast_cell", "myeloblast": "blast_cell",
    "eos": "eosinophil", "eosinophils": "eosinophil", "eo": "eosinophil",
    "lymph": "lymphocyte", "lymphocytes": "lymphocyte", "lym": "lymphocyte", "lympho": "lymphocyte",
    "meta": "metamyelocyte", "metamyelocytes": "metamyelocyte", "mmy": "metamyelocyte",
    "mono": "monocyte", "monocytes": "monocyte", "mon": "monocyte",
    "myelocytes": "myelocyte", "my": "myelocyte",
    "neut": "neutrophil", "neutrophils": "neutrophil", "neu": "neutrophil",
    "seg": "segmented_neutrophil", "segs": "segmented_neutrophil", "sne": "segmented_neutrophil",
    "segmented": "segmented_neutrophil", "segmented_neutrophils": "segmented_neutrophil",
    "neutrophil_segmented": "segmented_neutrophil", "seg_neutrophil": "segmented_neutrophil",
    "pro": "promyelocyte", "promyelocytes": "promyelocyte", "pmy": "promyelocyte",
    "erythroblasts": "erythroblast", "ery": "erythroblast", "nrbc": "erythroblast",
    "immature_granulocyte": "ig", "immature_granulocytes": "ig",
    "platelets": "platelet", "plt": "platelet", "thrombocyte": "platelet",
    "white_blood_cell": "wbc", "leukocyte": "wbc", "leucocyte": "wbc",
    "red_blood_cell": "rbc", "erythrocyte": "rbc",
    "artifact": "artefact", "not_wbc": "artefact", "not_a_wbc": "artefact", "debris": "artefact",
    "smudge": "smudge_cell", "smudge_cells": "smudge_cell", "basket_cell": "smudge_cell", "gumprecht": "smudge_cell",
}


@functools.lru_cache(maxsize=4096)  # called per cell by every writer; labels are few
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
    ("neutrophil", "SNE"): "segmented_neutrophil",
    ("neutrophil", "NEUTROPHIL"): "neutrophil",  # no subclass in the name: the group only
}


def pbc_subclass(folder_class: str, filename: str) -> str | None:
    """Subclass from a PBC file name prefix (`MMY_123.jpg` -> "MMY"); None for classes without subclasses."""
    subs = PBC_SUBCLASSES.get(folder_class)
    if not subs:
        return None
    prefix = filename.split("_", 1)[0].upper()
    return prefix if prefix in subs else None


def pbc_fine_label(folder_class: str, subclass: str | None) -> str:
    """PBC folder class + subclass -> the fine class (ig/MY -> myelocyte, neutrophil/BNE -> band_cell,
    neutrophil/SNE -> segmented_neutrophil); files without a subclass (IG_*, NEUTROPHIL_*) keep the group."""
    return _PBC_FINE.get((folder_class, subclass or ""), folder_class)


#: Any canonical class -> the paper's common class, or None when it has no counterpart.
_TO_COMMON = {c: c for c in COMMON_CLASSES}
_TO_COMMON["band_cell"] = "neutrophil"
_TO_COMMON["segmented_neutrophil"] = "neutrophil"


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


# ------------------------------------------------------------------------------------ fine and group level

#: fine class -> its group (only the classes whose group is another name).
_GROUP_OF: dict[str, str] = {f: g for g, members in GROUPS.items() for f in members}
#: RV-PBS spellings whose canonical name is a group but whose RV-PBS meaning is a fine class.
_RVPBS_FINE: dict[str, str] = {"neutrophil": "segmented_neutrophil"}


def canonical_fine(label: str, *, path: object = None) -> str:
    """`canonical`, reading a name as RV-PBS means it: "neutrophil" (RV-PBS's label for the segmented
    form) -> "segmented_neutrophil". For readers of RV-PBS-style annotations (CVAT)."""
    lab = canonical(label, path=path)
    return _RVPBS_FINE.get(lab, lab)


def level_of(label: str) -> str:
    """"fine" (band_cell, segmented_neutrophil, myelocyte, metamyelocyte, promyelocyte), "group" (ig,
    neutrophil) or "both" (every other class: its own group, e.g. basophil; also the kinds wbc and rbc)."""
    lab = canonical(label)
    if lab in _GROUP_OF:
        return "fine"
    return "group" if lab in GROUPS else "both"


def group_of(label: str) -> str:
    """The group of any class: myelocyte -> ig, band_cell -> neutrophil, neutrophil -> neutrophil, basophil
    -> basophil. `UnknownLabelError` for an unknown label."""
    lab = canonical(label)
    return _GROUP_OF.get(lab, lab)


def fine_classes_of(group: str) -> tuple[str, ...]:
    """The fine classes of a group (ig -> metamyelocyte, myelocyte, promyelocyte); a class that is its own
    group -> (itself,). A fine-only class is not a group: `BloodsmearError` naming its group."""
    lab = canonical(group)
    if lab in GROUPS:
        return GROUPS[lab]
    if lab in _GROUP_OF:
        raise BloodsmearError(f"{lab!r} is a fine class, not a group (its group is {_GROUP_OF[lab]!r})")
    return (lab,)


def label_at(label: str, level: str) -> str:
    """A class name at `level`: "group" -> `group_of`; "fine" -> the class itself, which for a group-level
    answer (ig, neutrophil from a grouped model) stays the group name (its fine class is unknown). A
    label outside the vocabulary is returned unchanged."""
    if level not in LEVELS:
        raise BloodsmearError(f"unknown class level {level!r} (choose from {', '.join(LEVELS)})")
    if not is_known(label):
        return label
    return group_of(label) if level == "group" else canonical(label)


def cell_levels(label: str) -> dict[str, str | None]:
    """The two levels of one answer, as the pipeline's cell attributes: `fine_label` (the answer when it
    is a fine class, None when it names a group only) and `group_label`. A label outside the vocabulary:
    fine None, group the label itself."""
    if not is_known(label):
        return {"fine_label": None, "group_label": label}
    lab = canonical(label)
    return {"fine_label": None if level_of(lab) == "group" else lab, "group_label": group_of(lab)}
