"""The differential report of one case: counts and percentages at the fine and the grouped level, their 95 %
Clopper-Pearson intervals, reference ranges, absolute counts and the flags a haematology report carries.

The denominator is the WBC only: nucleated red cells (erythroblast, reported per 100 WBC), platelets,
smudge cells (their own line and flag) and artefacts are counted apart. A group-only answer (``neutrophil``
or ``ig`` from a grouped classifier) counts in its group and, at the fine level, as "(unspecified)". Cells
flagged and not yet reviewed count under the model's label; the report says how many there are.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from datetime import datetime

import cv2
import numpy as np
from scipy.stats import binomtest

from bloodsmear.classes import (
    FINE_CLASSES,
    GROUP_CLASSES,
    GROUPS,
    REVIEW_KINDS,
    canonical,
    group_of,
)
from bloodsmear.errors import BloodsmearError, UnknownLabelError
from bloodsmear.report.model import (
    MIN_CELLS,
    REFERENCE_COUNT,
    Flag,
    Interval,
    OtherLine,
    Report,
    ReportCase,
    ReportCell,
    Row,
    Strip,
)
from bloodsmear.report.ranges import RangeEntry, ReferenceRanges, load_ranges

log = logging.getLogger(__name__)

#: Objects that are not part of the WBC differential.
NON_WBC: tuple[str, ...] = ("erythroblast", "platelet", *REVIEW_KINDS)
#: The order a haematology report lists the classes in (classes the vocabulary adds later come last).
_CLINICAL_ORDER: tuple[str, ...] = (
    "neutrophil", "segmented_neutrophil", "band_cell", "lymphocyte", "monocyte", "eosinophil", "basophil",
    "ig", "metamyelocyte", "myelocyte", "promyelocyte", "blast_cell", "erythroblast", "platelet",
    "smudge_cell", "artefact",
)
LEFT_SHIFT_BANDS = 10.0  # percent of WBC
UNSPECIFIED = "_unspecified"  # fine-level row of group-only answers: "neutrophil_unspecified"
THUMBS_PER_CLASS = 8
THUMB_SIDE = 72  # px, the longest side of a strip thumbnail
_NAMES: dict[str, str] = {
    "band_cell": "Band neutrophil", "segmented_neutrophil": "Segmented neutrophil", "blast_cell": "Blast",
    "ig": "Immature granulocytes (IG)", "erythroblast": "Nucleated red cell (nRBC)",
    "smudge_cell": "Smudge cell", "artefact": "Artefact (not a WBC)",
}


def _rank(label: str) -> tuple[int, str]:
    return (_CLINICAL_ORDER.index(label) if label in _CLINICAL_ORDER else len(_CLINICAL_ORDER), label)


#: The WBC groups (the grouped table) and the fine classes of each, in report order.
WBC_GROUPS: tuple[str, ...] = tuple(sorted((g for g in GROUP_CLASSES if g not in NON_WBC), key=_rank))
REPORTABLE: frozenset[str] = frozenset(FINE_CLASSES) | frozenset(GROUP_CLASSES) | frozenset(REVIEW_KINDS)


def display_name(label: str) -> str:
    """How the report names a class ("band_cell" -> "Band neutrophil", "ig_unspecified" -> "IG (unspecified)")."""
    if label.endswith(UNSPECIFIED):
        g = label[: -len(UNSPECIFIED)]
        return f"{'IG' if g == 'ig' else display_name(g)} (unspecified)"
    return _NAMES.get(label, label.replace("_", " ").capitalize())


def _fine_rows_of(group: str) -> tuple[str, ...]:
    members = GROUPS.get(group)
    return (group,) if members is None else (*sorted(members, key=_rank), group + UNSPECIFIED)


def _cell_label(case: ReportCase, cell: ReportCell) -> str:
    try:
        lab = canonical(cell.label)
    except UnknownLabelError as e:
        raise BloodsmearError(f"case {case.name!r}: {e}") from None
    if lab not in REPORTABLE:
        raise BloodsmearError(f"case {case.name!r}: a cell labelled {cell.label!r} cannot be reported "
                              f"(reportable: {', '.join(sorted(REPORTABLE))})")
    return lab


def _fine_key(label: str) -> str:
    """The fine-level row of a canonical label (a group-only answer -> "<group>_unspecified")."""
    return label + UNSPECIFIED if label in GROUPS else label


def clopper_pearson(k: int, n: int) -> Interval:
    """95 % exact (Clopper-Pearson) interval of k/n, in percent."""
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return Interval(100.0 * ci.low, 100.0 * ci.high)


def _outside(ci: Interval | None, ref: tuple[float | None, float | None] | None) -> str:
    if ci is None or ref is None:
        return ""
    lo, hi = ref
    if hi is not None and ci.low > hi:
        return "high"
    if lo is not None and ci.high < lo:
        return "low"
    return ""


def _pair(ref: tuple[float | None, float | None] | None) -> Interval | None:
    if ref is None:
        return None
    return Interval(-math.inf if ref[0] is None else ref[0], math.inf if ref[1] is None else ref[1])


def _row(label: str, level: str, k: int, n: int, entry: RangeEntry | None, wbc_count: float | None) -> Row:
    pct = ci = absolute = abs_ci = None
    if n > 0:
        pct, ci = 100.0 * k / n, clopper_pearson(k, n)
        if wbc_count is not None:
            absolute = wbc_count * k / n
            abs_ci = Interval(wbc_count * ci.low / 100.0, wbc_count * ci.high / 100.0)
    ref_p = entry.percent if entry else None
    ref_a = entry.absolute if entry else None
    st_p, st_a = _outside(ci, ref_p), _outside(abs_ci, ref_a)
    status = st_p if st_p == st_a or not st_a else st_a if not st_p else f"{st_p} %, {st_a} abs"
    return Row(label=label, name=display_name(label), level=level, count=k, percent=pct, ci=ci,
               ref_percent=_pair(ref_p), absolute=absolute, abs_ci=abs_ci, ref_absolute=_pair(ref_a),
               ref_note=entry.note if entry else "", status=status)


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def _range_flags(rows: list[Row], ranges: ReferenceRanges) -> list[Flag]:
    out, seen = [], set()
    for r in rows:
        if r.label in seen or not r.status:
            continue
        seen.add(r.label)
        entry = ranges.get(r.label)
        for unit, value, ci, ref in (("%", r.percent, r.ci, entry.percent if entry else None),
                                     ("x10^9/L", r.absolute, r.abs_ci, entry.absolute if entry else None)):
            side = _outside(ci, ref)
            if not side:
                continue
            lo, hi = ref
            bound = f"{hi:g}" if side == "high" else f"{lo:g}"
            prec = 1 if unit == "%" else 2
            out.append(Flag(side, f"{r.name} {value:.{prec}f} {unit} (95 % CI {ci.low:.{prec}f}-{ci.high:.{prec}f}) "
                                  f"is {'above' if side == 'high' else 'below'} the reference "
                                  f"{'upper' if side == 'high' else 'lower'} limit {bound} {unit}", r.label))
    return out


def _per_100_wbc(e: int, n: int) -> tuple[float, Interval] | None:
    """e objects per 100 WBC and its 95 % interval (Clopper-Pearson on e of e + n, as a ratio)."""
    if n == 0:
        return None
    ci = clopper_pearson(e, e + n)
    ratio = (lambda p: math.inf if p >= 100.0 else 100.0 * p / (100.0 - p))
    return 100.0 * e / n, Interval(ratio(ci.low), ratio(ci.high))


def _other_lines(counts: Counter, n: int) -> tuple[list[OtherLine], list[Flag]]:
    lines, flags = [], []
    e = counts["erythroblast"]
    per = _per_100_wbc(e, n)
    value = "-" if per is None else f"{_fmt(per[0])} per 100 WBC (95 % CI {_fmt(per[1].low)}-{_fmt(per[1].high)})"
    lines.append(OtherLine("erythroblast", display_name("erythroblast"), e, value))
    if e:
        flags.append(Flag("nrbc", f"Nucleated red cells: {e} counted, {value}", "erythroblast"))
    s = counts["smudge_cell"]
    if s + n:
        ci = clopper_pearson(s, s + n)
        value = f"{_fmt(100.0 * s / (s + n))} % of WBC + smudge cells (95 % CI {_fmt(ci.low)}-{_fmt(ci.high)})"
    else:
        value = "-"
    lines.append(OtherLine("smudge_cell", display_name("smudge_cell"), s, value))
    if s:
        flags.append(Flag("smudge_cells", f"Smudge cells: {s} counted, {value}; not in the differential",
                          "smudge_cell"))
    lines.append(OtherLine("platelet", "Platelet", counts["platelet"], "seen; not part of the differential"))
    lines.append(OtherLine("artefact", display_name("artefact"), counts["artefact"], "excluded from every count"))
    return lines, flags


def _presence_flags(fine: Counter, group: Counter, n: int) -> list[Flag]:
    out = []
    pct = (lambda k: f"{_fmt(100.0 * k / n)} % of WBC" if n else "no WBC counted")
    if group["blast_cell"]:
        out.append(Flag("blasts", f"Blasts present: {group['blast_cell']} of {n} WBC ({pct(group['blast_cell'])})",
                        "blast_cell"))
    if group["ig"]:
        parts = ", ".join(f"{display_name(f).lower()} {fine[f]}" for f in _fine_rows_of("ig") if fine[f])
        out.append(Flag("immature_granulocytes",
                        f"Immature granulocytes present: {group['ig']} ({pct(group['ig'])}: {parts})", "ig"))
    bands = fine["band_cell"]
    if n and 100.0 * bands / n > LEFT_SHIFT_BANDS:
        out.append(Flag("left_shift", f"Left shift: band neutrophils {pct(bands)} "
                                      f"(> {LEFT_SHIFT_BANDS:g} %)", "band_cell"))
    return out


def _thumb(crop: np.ndarray) -> np.ndarray | None:
    a = np.asarray(crop)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8 or min(a.shape[:2]) < 1:
        log.warning("a cell crop of shape %s and type %s is not an RGB uint8 image: left out of the strip",
                    a.shape, a.dtype)
        return None
    a = a[:, :, :3]
    h, w = a.shape[:2]
    s = THUMB_SIDE / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(np.ascontiguousarray(a), size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def _strips(case: ReportCase, keys: list[str]) -> list[Strip]:
    by: dict[str, list[ReportCell]] = {}
    for key, cell in zip(keys, case.cells):
        by.setdefault(key, []).append(cell)
    out = []
    order = [f for g in WBC_GROUPS for f in _fine_rows_of(g)] + sorted(NON_WBC, key=_rank)
    for key in sorted(by, key=order.index):
        cells = sorted((c for c in by[key] if c.crop is not None), key=lambda c: c.unidentified)
        thumbs, unid = [], []
        for c in cells:
            t = _thumb(c.crop)
            if t is not None:
                thumbs.append(t)
                unid.append(c.unidentified)
            if len(thumbs) == THUMBS_PER_CLASS:
                break
        out.append(Strip(key, display_name(key), len(by[key]), tuple(thumbs), tuple(unid)))
    return out


def _notes(n: int, fine: Counter, n_unid: int) -> list[str]:
    out = []
    if n == 0:
        out.append("No white cell was counted: there is no differential.")
    elif n < MIN_CELLS:
        out.append(f"Only {n} white cells were counted (fewer than {MIN_CELLS}): the percentages are imprecise "
                   f"(see their intervals); the CLSI H20-A2 reference count is {REFERENCE_COUNT} cells.")
    if fine["neutrophil" + UNSPECIFIED]:
        out.append(f"{fine['neutrophil' + UNSPECIFIED]} neutrophils were not subclassified (band vs segmented): "
                   "the band percentage and the left-shift flag are lower bounds.")
    if n_unid:
        out.append(f"{n_unid} flagged cell(s) await a person's answer; they are counted under the model's label. "
                   "The case cannot be signed until they are reviewed.")
    return out


def build_report(case: ReportCase, *, wbc_count: float | None = None,
                 ranges: ReferenceRanges | None = None) -> Report:
    """The differential report of `case` (never modified). `wbc_count`: the total WBC count in x10^9/L,
    for absolute counts; `ranges`: reference ranges (None: the shipped adult default)."""
    if wbc_count is not None and not (math.isfinite(wbc_count) and wbc_count > 0):
        raise BloodsmearError(f"the total WBC count must be a positive number (x10^9/L), got {wbc_count!r}")
    ranges = load_ranges() if ranges is None else ranges
    labels = [_cell_label(case, c) for c in case.cells]
    keys = [_fine_key(lab) for lab in labels]
    fine = Counter(keys)
    group = Counter(group_of(lab) for lab in labels)
    n = sum(group[g] for g in WBC_GROUPS)
    fine_rows = [_row(f, "fine", fine[f], n, ranges.get(f), wbc_count)
                 for g in WBC_GROUPS for f in _fine_rows_of(g) if not f.endswith(UNSPECIFIED) or fine[f]]
    group_rows = [_row(g, "group", group[g], n, ranges.get(g), wbc_count) for g in WBC_GROUPS]
    other, other_flags = _other_lines(Counter(labels), n)
    flags = _presence_flags(fine, group, n) + other_flags + _range_flags(group_rows + fine_rows, ranges)
    n_unid = sum(c.unidentified for c in case.cells)
    return Report(case=case, n_cells=len(case.cells), n_wbc=n, fine=tuple(fine_rows), group=tuple(group_rows),
                  other=tuple(other), flags=tuple(flags), notes=tuple(_notes(n, fine, n_unid)),
                  strips=tuple(_strips(case, keys)), ranges_source=ranges.source, wbc_count=wbc_count,
                  n_unidentified=n_unid, generated_at=datetime.now().astimezone())
