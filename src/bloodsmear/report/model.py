"""What a differential report is made of: the case it reads (`ReportCase`, a list of `ReportCell`) and the
`Report` that `build_report` computes from it and `render_html` / `write_report` show.

A `Report` is plain data (counts, percentages and their 95 % Clopper-Pearson intervals, reference ranges,
flags, notes and a few thumbnails per class), so the review server can also send it as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

#: The report's statement, printed on every report (signed or not).
ASSISTIVE_STATEMENT = (
    "Assistive result: every cell was pre-classified by an automated model. The differential must be "
    "verified by a qualified technologist before it is used clinically."
)
#: Printed prominently on a case that is not signed.
PRELIMINARY_STATEMENT = (
    "PRELIMINARY - NOT SIGNED. This differential has not been verified and signed by a technologist and "
    "must not be released."
)
#: The CLSI H20-A2 reference method counts 200 cells; fewer than this many WBC get a precision note.
MIN_CELLS = 100
REFERENCE_COUNT = 200


@dataclass(frozen=True)
class ReportCell:
    """One detected object and its final label (the person's answer where there is one, else the model's)."""

    label: str  # canonical final label (bloodsmear.classes): a fine or group WBC class, or a non-WBC kind
    crop: np.ndarray | None = None  # RGB uint8 crop for the strip of cell images (any size)
    unidentified: bool = False  # flagged by the model and no person's answer yet


@dataclass
class ReportCase:
    """One case (an analyze folder or a folder of it) as the report reads it."""

    name: str
    cells: list[ReportCell]
    source: str  # the analyze folder
    status: str  # "not reviewed" | "new" | "in review" | "signed"
    signed_by: str | None = None
    signed_at: datetime | None = None
    reviewed_share: float = 0.0
    n_fields: int = 0
    model: str = ""  # e.g. "wbc-seg-fast + pbc-screen-stain"
    reopened: list[str] = field(default_factory=list)  # "2026-12-01 22:00 by ana: reason"

    @property
    def signed(self) -> bool:
        return self.status == "signed"


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class Row:
    """One line of a differential table: a class at one level, its share of the WBC counted."""

    label: str  # canonical class, or "<group>_unspecified" for group-only answers at the fine level
    name: str  # what the report prints ("Segmented neutrophil", "Neutrophil (unspecified)")
    level: str  # "fine" | "group"
    count: int
    percent: float | None  # None when no WBC was counted
    ci: Interval | None  # 95 % Clopper-Pearson, in percent
    ref_percent: Interval | None = None  # reference range, percent
    absolute: float | None = None  # x10^9/L, when the total WBC count is given
    abs_ci: Interval | None = None
    ref_absolute: Interval | None = None
    ref_note: str = ""
    status: str = ""  # "high" | "low" | "" (the interval lies wholly outside the range)


@dataclass(frozen=True)
class OtherLine:
    """A count outside the WBC differential (nRBC per 100 WBC, smudge cells, platelets, artefacts)."""

    label: str
    name: str
    count: int
    value: str  # what the report prints next to the count ("3.0 per 100 WBC (0.6-8.7)")


@dataclass(frozen=True)
class Flag:
    kind: str  # "blasts" | "immature_granulocytes" | "left_shift" | "nrbc" | "smudge_cells" | "high" | "low"
    message: str
    label: str = ""  # the class it concerns, when one


@dataclass(frozen=True)
class Strip:
    """A few thumbnails of the cells of one class."""

    label: str
    name: str
    count: int
    thumbs: tuple[np.ndarray, ...]
    unidentified: tuple[bool, ...]


@dataclass(frozen=True)
class Report:
    case: ReportCase
    n_cells: int  # every object of the case
    n_wbc: int  # the differential's denominator
    fine: tuple[Row, ...]
    group: tuple[Row, ...]
    other: tuple[OtherLine, ...]
    flags: tuple[Flag, ...]
    notes: tuple[str, ...]
    strips: tuple[Strip, ...]
    ranges_source: str
    wbc_count: float | None
    n_unidentified: int
    generated_at: datetime
    statement: str = ASSISTIVE_STATEMENT

    @property
    def preliminary(self) -> bool:
        return not self.case.signed

    def row(self, label: str, level: str = "group") -> Row:
        """The row of `label` at `level` (KeyError when the table has none)."""
        for r in self.fine if level == "fine" else self.group:
            if r.label == label:
                return r
        raise KeyError(f"no {level}-level row {label!r} in the report of {self.case.name!r}")

    def has_flag(self, kind: str, label: str | None = None) -> bool:
        return any(f.kind == kind and (label is None or f.label == label) for f in self.flags)
