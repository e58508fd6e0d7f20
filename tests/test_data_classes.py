"""The class vocabulary (bloodsmear.classes) as the readers use it."""

from __future__ import annotations

import pytest

from bloodsmear.classes import (
    COMMON_CLASSES, LISC_CLASSES, PBC_CLASSES, RVPBS_CLASSES, canonical, common_between, is_known,
    pbc_fine_label, pbc_subclass, to_common,
)
from bloodsmear.errors import UnknownLabelError


@pytest.mark.parametrize("alias, expected", [
    ("BASOPHILS", "basophil"), ("band cell", "band_cell"), ("BAND CELLS", "band_cell"), ("NEUTROPHIL", "neutrophil"),
    ("baso", "basophil"), ("Platelets", "platelet"), ("WBC", "wbc"), ("RBC", "rbc"), ("blast cell", "blast_cell"),
    ("MYELOCYTE", "myelocyte"), ("  Lymphocytes ", "lymphocyte"), ("ig", "ig"), ("band-cell", "band_cell"),
])
def test_aliases(alias, expected):
    assert canonical(alias) == expected


def test_every_dataset_vocabulary_is_canonical():
    for vocab in (RVPBS_CLASSES, PBC_CLASSES, LISC_CLASSES, COMMON_CLASSES):
        assert all(canonical(c) == c for c in vocab)
    assert len(RVPBS_CLASSES) == 10 and len(PBC_CLASSES) == 8 and len(LISC_CLASSES) == 5


def test_unknown_label_names_label_and_path():
    with pytest.raises(UnknownLabelError, match=r"some/file.xml: unknown class label 'schistocyte'"):
        canonical("schistocyte", path="some/file.xml")
    with pytest.raises(UnknownLabelError):
        canonical("")
    assert not is_known("schistocyte") and is_known("eos")
    assert isinstance(UnknownLabelError("x"), KeyError)


def test_pbc_subclass_and_fine_label():
    assert pbc_subclass("ig", "MMY_123.jpg") == "MMY"
    assert pbc_subclass("ig", "my_5.jpg") == "MY"
    assert pbc_subclass("neutrophil", "BNE_1.jpg") == "BNE"
    assert pbc_subclass("basophil", "BA_1.jpg") is None
    assert pbc_subclass("ig", "XYZ_1.jpg") is None
    assert pbc_fine_label("ig", "MY") == "myelocyte"
    assert pbc_fine_label("ig", "PMY") == "promyelocyte"
    assert pbc_fine_label("ig", "IG") == "ig"
    assert pbc_fine_label("neutrophil", "BNE") == "band_cell"
    assert pbc_fine_label("neutrophil", "SNE") == "segmented_neutrophil"
    assert pbc_fine_label("neutrophil", "NEUTROPHIL") == "neutrophil"  # no subclass: the group only
    assert pbc_fine_label("monocyte", None) == "monocyte"


def test_to_common():
    assert to_common("BASOPHILS") == "basophil"
    assert to_common("band cell") == "neutrophil"
    assert to_common("ig", "MMY") == "metamyelocyte"
    assert to_common("ig", "IG") is None
    assert to_common("ig") is None
    assert to_common("platelet") is None and to_common("blast_cell") is None
    assert to_common("neutrophil", "BNE") == "neutrophil"
    with pytest.raises(UnknownLabelError):
        to_common("schistocyte")


def test_common_between():
    assert common_between(PBC_CLASSES, LISC_CLASSES) == ["basophil", "eosinophil", "lymphocyte", "monocyte",
                                                         "neutrophil"]
    assert "platelet" not in common_between(PBC_CLASSES, RVPBS_CLASSES)


def test_reviewer_kinds_are_known_and_never_wbc_types():
    from bloodsmear.classes import REVIEW_KINDS

    assert canonical("smudge") == "smudge_cell" and canonical("Basket cell") == "smudge_cell"
    assert canonical("artifact") == "artefact" and canonical("not a WBC") == "artefact"
    assert set(REVIEW_KINDS) == {"artefact", "smudge_cell"}
