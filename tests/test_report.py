"""The differential report: counts, percentages and exact intervals, denominators, flags, notes, reference
ranges, and the HTML / PDF it is written as (the PDF rendered back to pixels and its text read).

`python tests/test_report.py [docs/img/report.png]` writes the docs screenshot of a realistic 200-cell case.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from bloodsmear.errors import BloodsmearError, InputError
from bloodsmear.io import write_image_atomic
from bloodsmear.report.build import build_report, clopper_pearson
from bloodsmear.report.model import PRELIMINARY_STATEMENT, ReportCase, ReportCell
from bloodsmear.report.ranges import load_ranges
from bloodsmear.report.render import pdf_page_png, render_html, write_report


def case_of(counts: dict[str, int], *, status: str = "in review", crops: bool = False,
            unidentified: int = 0, **kw) -> ReportCase:
    cells = []
    for label, k in counts.items():
        for i in range(k):
            cells.append(ReportCell(label, synthetic_crop(label, i) if crops else None,
                                    unidentified=len(cells) < unidentified))
    name = kw.pop("name", "case-1")
    return ReportCase(name=name, cells=cells, source=f"/data/out/{name}", status=status, **kw)


NORMAL = {"segmented_neutrophil": 110, "band_cell": 6, "lymphocyte": 58, "monocyte": 14, "eosinophil": 8,
          "basophil": 4}  # 200 WBC, every class inside the adult ranges


# ------------------------------------------------------------------------------- counts and intervals

def test_percentages_and_exact_intervals_at_known_values():
    ci0 = clopper_pearson(0, 100)
    assert ci0.low == 0.0 and ci0.high == pytest.approx(100 * (1 - 0.025 ** (1 / 100)), abs=1e-9)  # 3.62 %
    ci50 = clopper_pearson(50, 100)
    assert ci50.low == pytest.approx(39.832, abs=1e-3) and ci50.high == pytest.approx(60.168, abs=1e-3)
    r = build_report(case_of({"lymphocyte": 50, "segmented_neutrophil": 50}))
    lym = r.row("lymphocyte")
    assert lym.count == 50 and lym.percent == 50.0 and lym.ci == ci50
    bas = r.row("basophil")
    assert bas.count == 0 and bas.percent == 0.0 and bas.ci == ci0


def test_fine_and_grouped_levels_and_group_only_answers():
    r = build_report(case_of({"segmented_neutrophil": 60, "band_cell": 10, "neutrophil": 10, "myelocyte": 3,
                              "ig": 2, "lymphocyte": 15}))
    assert r.n_wbc == 100
    assert r.row("neutrophil").count == 80 and r.row("ig").count == 5
    assert r.row("neutrophil_unspecified", "fine").count == 10
    assert r.row("neutrophil_unspecified", "fine").name == "Neutrophil (unspecified)"
    assert r.row("ig_unspecified", "fine").count == 2 and r.row("myelocyte", "fine").percent == 3.0
    assert sum(x.count for x in r.fine) == sum(x.count for x in r.group) == 100
    assert any("not subclassified" in n for n in r.notes)
    plain = build_report(case_of({"segmented_neutrophil": 100}))
    with pytest.raises(KeyError):  # no group-only answer: no "(unspecified)" row
        plain.row("neutrophil_unspecified", "fine")


def test_denominator_excludes_artefact_smudge_nrbc_and_platelet():
    r = build_report(case_of({"lymphocyte": 40, "segmented_neutrophil": 60, "artefact": 30, "smudge_cell": 25,
                              "erythroblast": 5, "platelet": 50}))
    assert r.n_wbc == 100 and r.n_cells == 210
    assert r.row("lymphocyte").percent == 40.0
    other = {o.label: o for o in r.other}
    assert other["erythroblast"].value.startswith("5.0 per 100 WBC")
    assert other["smudge_cell"].count == 25 and other["smudge_cell"].value.startswith("20.0 % of WBC + smudge")
    assert other["platelet"].count == 50 and other["artefact"].count == 30


def test_unknown_or_unreportable_labels_are_one_clear_error():
    for bad in ("gobbler", "rbc"):
        with pytest.raises(BloodsmearError, match="case-1"):
            build_report(case_of({bad: 1}))
    with pytest.raises(BloodsmearError, match="positive"):
        build_report(case_of(NORMAL), wbc_count=-1.0)


def test_case_is_not_modified():
    case = case_of(NORMAL, crops=True)
    before = [(c.label, c.crop.copy()) for c in case.cells]
    build_report(case, wbc_count=7.0)
    assert [(c.label) for c in case.cells] == [b[0] for b in before]
    assert all(np.array_equal(c.crop, b[1]) for c, b in zip(case.cells, before))


# ------------------------------------------------------------------------------------- flags and notes

def test_a_normal_case_has_no_flags():
    r = build_report(case_of(NORMAL), wbc_count=7.0)
    assert r.flags == () and r.notes == ()
    assert all(row.status == "" for row in r.group + r.fine)


@pytest.mark.parametrize("extra, kind", [
    ({"blast_cell": 1}, "blasts"),
    ({"metamyelocyte": 1}, "immature_granulocytes"),
    ({"promyelocyte": 1}, "immature_granulocytes"),
    ({"ig": 1}, "immature_granulocytes"),
    ({"erythroblast": 3}, "nrbc"),
    ({"smudge_cell": 2}, "smudge_cells"),
])
def test_each_presence_flag_fires(extra, kind):
    r = build_report(case_of({**NORMAL, **extra}))
    assert r.has_flag(kind), r.flags
    assert [f.kind for f in r.flags].count(kind) == 1
    assert not build_report(case_of(NORMAL)).has_flag(kind)


def test_nrbc_are_reported_per_100_wbc():
    r = build_report(case_of({**NORMAL, "erythroblast": 6}))  # 6 per 200 WBC
    assert "3.0 per 100 WBC" in next(f.message for f in r.flags if f.kind == "nrbc")


def test_left_shift_fires_above_ten_percent_bands_only():
    at_ten = {"segmented_neutrophil": 60, "band_cell": 10, "lymphocyte": 30}  # exactly 10 %: quiet
    assert not build_report(case_of(at_ten)).has_flag("left_shift")
    above = {"segmented_neutrophil": 59, "band_cell": 11, "lymphocyte": 30}
    r = build_report(case_of(above))
    assert r.has_flag("left_shift", "band_cell")
    assert "11.0 %" in next(f.message for f in r.flags if f.kind == "left_shift")


def test_range_flags_need_the_whole_interval_outside():
    high = build_report(case_of({"segmented_neutrophil": 90, "lymphocyte": 10} | {"eosinophil": 100}))
    assert high.row("eosinophil").status == "high" and high.has_flag("high", "eosinophil")
    assert high.row("lymphocyte").status == "low" and high.has_flag("low", "lymphocyte")
    # 8 eosinophils of 100: 8 % is above the 6 % limit but its interval (3.5-15.2 %) is not wholly above it
    edge = build_report(case_of({"segmented_neutrophil": 62, "lymphocyte": 30, "eosinophil": 8}))
    assert edge.row("eosinophil").percent == 8.0 and edge.row("eosinophil").status == ""
    assert not edge.has_flag("high")


def test_absolute_counts_with_the_total_wbc_count():
    r = build_report(case_of(NORMAL), wbc_count=8.0)
    lym = r.row("lymphocyte")
    assert lym.absolute == pytest.approx(8.0 * 58 / 200)
    ci = clopper_pearson(58, 200)
    assert lym.abs_ci.low == pytest.approx(8.0 * ci.low / 100) and lym.abs_ci.high == pytest.approx(8.0 * ci.high / 100)
    assert build_report(case_of(NORMAL)).row("lymphocyte").absolute is None
    # 90 % neutrophils of a low count: percent high, absolute low
    low = build_report(case_of({"segmented_neutrophil": 180, "lymphocyte": 20}), wbc_count=1.2)
    assert low.row("neutrophil").status == "high %, low abs"
    assert low.has_flag("high", "neutrophil") and low.has_flag("low", "neutrophil")


def test_fewer_than_100_cells_get_the_precision_note():
    small = build_report(case_of({"lymphocyte": 40, "segmented_neutrophil": 59}))
    assert any("fewer than 100" in n and "H20-A2" in n for n in small.notes)
    assert not build_report(case_of({"lymphocyte": 40, "segmented_neutrophil": 60})).notes
    empty = build_report(case_of({"artefact": 3}))
    assert empty.n_wbc == 0 and empty.row("lymphocyte").percent is None and "no differential" in empty.notes[0]
    render_html(empty)  # renders without a denominator


def test_unidentified_cells_are_counted_and_noted():
    r = build_report(case_of(NORMAL, unidentified=3))
    assert r.n_unidentified == 3 and r.n_wbc == 200
    assert any("3 flagged cell(s) await" in n for n in r.notes)


# ------------------------------------------------------------------------------------- reference ranges

def test_shipped_ranges_name_their_source():
    rr = load_ranges()
    assert "Dacie and Lewis" in rr.source
    assert rr.get("neutrophil").percent == (40.0, 80.0) and rr.get("lymphocyte").absolute == (1.0, 3.0)
    assert build_report(case_of(NORMAL)).ranges_source == rr.source


@pytest.mark.parametrize("body, key", [
    ("source: x\nclasses:\n  neutrophil: {percent_lo: 40}\n", "classes.neutrophil.percent_lo"),
    ("source: x\nclasses:\n  gobbler: {percent_low: 1}\n", "gobbler"),
    ("source: x\nclasses:\n  neutrophil: {percent_low: 80, percent_high: 40}\n", "classes.neutrophil"),
    ("source: x\nclasses:\n  neutrophil: {percent_high: 140}\n", "percent_high"),
    ("sourse: x\n", "sourse"),
])
def test_a_bad_ranges_file_is_one_line_naming_file_and_key(tmp_path, body, key):
    p = tmp_path / "ranges.yaml"
    p.write_text(body)
    with pytest.raises(InputError) as e:
        load_ranges(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and key in msg


def test_custom_ranges_and_aliases(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("source: Local lab 2026\nclasses:\n  lymphocytes: {percent_high: 20}\n")
    rr = load_ranges(p)
    assert list(rr.classes) == ["lymphocyte"]
    r = build_report(case_of(NORMAL), ranges=rr)
    assert r.row("lymphocyte").status == "high" and r.ranges_source == "Local lab 2026"


# ------------------------------------------------------------------------------------- HTML and PDF

def test_html_is_self_contained_with_tables_strips_and_status():
    signed = case_of(NORMAL, status="signed", crops=True, signed_by="ana",
                     signed_at=datetime(2026, 12, 1, 21, 30, tzinfo=timezone.utc),
                     reopened=["2026-12-01 22:00 by ana: recount eosinophils"])
    html = render_html(build_report(signed, wbc_count=7.0))
    assert "<table" in html and "Segmented neutrophil" in html and "55.0" in html  # 110 / 200
    assert html.count("data:image/png;base64,") == 8 + 6 + 8 + 8 + 8 + 4  # at most 8 thumbnails per class
    assert "http://" not in html and "https://" not in html and "<link" not in html
    assert "ana" in html and "2026-12-01 21:30" in html and "recount eosinophils" in html
    assert "verified by a qualified technologist" in html and PRELIMINARY_STATEMENT not in html
    assert "Dacie and Lewis" in html and "10&#8313;/L" in html
    pre = render_html(build_report(case_of(NORMAL, status="in review")))
    assert PRELIMINARY_STATEMENT in pre and "10&#8313;/L" not in pre  # no absolute columns without a count
    assert "<script" not in render_html(build_report(case_of(NORMAL, name="<script>x</script>")))


def test_write_report_html_only_and_stem(tmp_path):
    paths = write_report(build_report(case_of(NORMAL)), tmp_path / "rep", stem="case-1")
    assert paths == [tmp_path / "rep" / "case-1.html"] and paths[0].is_file()
    assert not list((tmp_path / "rep").glob(".*"))  # no temporary file left behind
    with pytest.raises(BloodsmearError):
        write_report(build_report(case_of(NORMAL)), tmp_path, stem="../x")


def _pdf_text(pdf: Path) -> str:
    import pypdfium2  # heavy: only the PDF tests read PDF text

    doc = pypdfium2.PdfDocument(str(pdf))
    try:
        return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
    finally:
        doc.close()


def test_pdf_is_written_rendered_and_carries_the_table(tmp_path):
    case = case_of({**NORMAL, "segmented_neutrophil": 108, "blast_cell": 2, "erythroblast": 4, "smudge_cell": 3},
                   crops=True)  # 200 WBC: 108 segmented neutrophils = 54.0 %
    paths = write_report(build_report(case, wbc_count=7.2), tmp_path, pdf=True)
    pdf = tmp_path / "report.pdf"
    assert paths == [tmp_path / "report.html", pdf] and pdf.read_bytes()[:5] == b"%PDF-"
    img = pdf_page_png(pdf, 0, scale=1.0)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert abs(img.shape[0] / img.shape[1] - 297 / 210) < 0.01  # A4 portrait
    dark = (img.min(axis=2) < 128).mean()
    assert 0.01 < dark < 0.6, dark  # text and images on the page, not blank, not a black page
    text = _pdf_text(pdf)
    ci = clopper_pearson(108, 200)
    assert f"Segmented neutrophil 108 54.0 {ci.low:.1f}\u2013{ci.high:.1f}" in text  # one table row, as printed
    assert "Blasts present: 2 of 200 WBC" in text and "Dacie and Lewis" in text
    assert "PRELIMINARY" in text
    with pytest.raises(InputError):
        pdf_page_png(pdf, 99)


# ------------------------------------------------------------------------------------- synthetic cells

_SHAPES = {  # nucleus drawing per class: (nucleus colour, cytoplasm colour, cell radius)
    "segmented_neutrophil": ((95, 40, 140), (225, 190, 215), 30), "band_cell": ((95, 40, 140), (225, 190, 215), 30),
    "neutrophil": ((95, 40, 140), (225, 190, 215), 30), "lymphocyte": ((70, 30, 120), (170, 170, 225), 22),
    "monocyte": ((120, 70, 160), (190, 180, 215), 36), "eosinophil": ((95, 40, 140), (240, 150, 110), 31),
    "basophil": ((60, 20, 100), (150, 90, 170), 28), "blast_cell": ((140, 90, 180), (150, 150, 210), 34),
    "myelocyte": ((120, 70, 160), (220, 180, 200), 34), "metamyelocyte": ((110, 60, 150), (225, 185, 205), 32),
    "promyelocyte": ((130, 80, 170), (210, 160, 200), 38), "ig": ((120, 70, 160), (220, 180, 200), 34),
    "erythroblast": ((40, 15, 80), (210, 150, 160), 18), "platelet": ((120, 60, 150), (200, 160, 210), 6),
    "smudge_cell": ((150, 100, 180), (200, 170, 210), 30), "artefact": ((90, 90, 90), (200, 200, 200), 14),
}


def synthetic_crop(label: str, seed: int, size: int = 96) -> np.ndarray:
    """A stained-looking crop: pale pink background with red cells, the cell and a class-typical nucleus."""
    rng = np.random.default_rng(seed * 31 + len(label))
    img = np.full((size, size, 3), (238, 222, 226), np.uint8)
    for _ in range(5):  # red cells around
        c = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.circle(img, c, int(rng.integers(14, 18)), (222, 160, 170), -1, cv2.LINE_AA)
    nuc, cyto, rad = _SHAPES[label]
    c = (size // 2 + int(rng.integers(-3, 4)), size // 2 + int(rng.integers(-3, 4)))
    cv2.circle(img, c, rad, cyto, -1, cv2.LINE_AA)
    if label in ("segmented_neutrophil", "neutrophil", "eosinophil"):
        n = 2 if label == "eosinophil" else int(rng.integers(3, 5))
        for k in range(n):
            a = 2 * np.pi * k / n + rng.uniform(0, 1)
            cv2.circle(img, (int(c[0] + 11 * np.cos(a)), int(c[1] + 11 * np.sin(a))), 8, nuc, -1, cv2.LINE_AA)
    elif label in ("band_cell", "metamyelocyte"):
        cv2.ellipse(img, c, (14, 11), float(rng.uniform(0, 360)), 20, 300, nuc, 7, cv2.LINE_AA)
    elif label == "monocyte":
        cv2.ellipse(img, c, (20, 14), float(rng.uniform(0, 180)), 0, 360, nuc, -1, cv2.LINE_AA)
        cv2.circle(img, (c[0] + 10, c[1]), 7, cyto, -1, cv2.LINE_AA)
    elif label != "smudge_cell":
        cv2.circle(img, c, int(rad * (0.8 if label in ("lymphocyte", "blast_cell", "erythroblast") else 0.6)),
                   nuc, -1, cv2.LINE_AA)
    if label in ("eosinophil", "basophil", "promyelocyte"):
        dots = rng.normal(0, rad * 0.5, (60, 2))
        col = (230, 110, 60) if label == "eosinophil" else (50, 20, 90)
        for d in dots:
            cv2.circle(img, (int(c[0] + d[0]), int(c[1] + d[1])), 1, col, -1)
    if label == "smudge_cell":
        cv2.ellipse(img, c, (26, 18), 30.0, 0, 360, nuc, -1, cv2.LINE_AA)
        img = cv2.GaussianBlur(img, (0, 0), 4)
    return img


REALISTIC = {"segmented_neutrophil": 104, "band_cell": 8, "neutrophil": 2, "lymphocyte": 52, "monocyte": 16,
             "eosinophil": 9, "basophil": 2, "metamyelocyte": 3, "myelocyte": 2, "blast_cell": 2,
             "erythroblast": 3, "smudge_cell": 5, "platelet": 12, "artefact": 4}  # 200 WBC


def realistic_case() -> ReportCase:
    """200 WBC with a few blasts and IG, nRBC and smudge cells; the two blasts still await review."""
    case = case_of(REALISTIC, crops=True, status="in review", name="slide-0142", reviewed_share=0.86,
                   n_fields=24, model="wbc-seg-fast + pbc-screen-stain",
                   reopened=["2026-12-01 22:00 by ana: recount the eosinophils"])
    case.cells = [replace(c, unidentified=c.label == "blast_cell") for c in case.cells]
    return case


def write_docs_png(dest: Path) -> list[Path]:
    """The realistic case's PDF as the README's screenshots: page 1 at `dest`, page 2 (the cell images)
    next to it as `<stem>-cells.png`."""
    with tempfile.TemporaryDirectory() as d:
        write_report(build_report(realistic_case(), wbc_count=7.2), Path(d), pdf=True)
        pdf = Path(d) / "report.pdf"
        return [write_image_atomic(dest, pdf_page_png(pdf, 0, scale=1.5)),
                write_image_atomic(dest.with_name(f"{dest.stem}-cells.png"), pdf_page_png(pdf, 1, scale=1.5))]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    for path in write_docs_png(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/report.png")):
        logging.getLogger("bloodsmear.report").info("wrote %s", path)
