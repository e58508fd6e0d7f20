"""The report as one self-contained HTML page (CSS inline, cell images as data: URIs, A4 print layout) and as
PDF (WeasyPrint); `pdf_page_png` renders a PDF page back to pixels (pypdfium2) for tests and screenshots.
"""

from __future__ import annotations

import base64
import logging
import math
from datetime import datetime
from pathlib import Path

import cv2
import jinja2
import numpy as np

from bloodsmear.errors import BloodsmearError, InputError
from bloodsmear.io import atomic_path, write_text_atomic
from bloodsmear.outputs.overlay import REVIEW_COLOUR_HEX, class_colour_hex
from bloodsmear.report.build import UNSPECIFIED
from bloodsmear.report.model import (
    PRELIMINARY_STATEMENT,
    REFERENCE_COUNT,
    Interval,
    Report,
)

ASSETS = Path(__file__).with_name("assets")
TEMPLATE = "report.html.j2"
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(ASSETS), autoescape=True, trim_blocks=True,
                          lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def _num(v: float | None, prec: int = 1) -> str:
    return "-" if v is None else f"{v:.{prec}f}"


def _interval(ci: Interval | None, prec: int = 1) -> str:
    return "-" if ci is None else f"{ci.low:.{prec}f}\u2013{ci.high:.{prec}f}"


def _bound(v: float, decimals: int) -> str:
    """A range bound with at least `decimals` decimals (2 -> "2.0" at decimals 1, 0.02 -> "0.02")."""
    return f"{v:.{decimals}f}" if round(v, decimals) == v else f"{v:g}"


def _reference(ref: Interval | None, note: str = "", decimals: int = 0) -> str:
    """A reference range as printed: "40\u201380", "\u2264 2", "\u2265 1"; its note when it has no bounds."""
    if ref is None or (math.isinf(ref.low) and math.isinf(ref.high)):
        return note or "-"
    lo, hi = _bound(ref.low, decimals), _bound(ref.high, decimals)
    if math.isinf(ref.low):
        return f"\u2264 {hi}"
    if math.isinf(ref.high):
        return f"\u2265 {lo}"
    return f"{lo}\u2013{hi}"


def _when(t: datetime | None) -> str:
    return "-" if t is None else t.strftime("%Y-%m-%d %H:%M %Z").strip()


def _data_uri(rgb: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise BloodsmearError("could not encode a cell thumbnail as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (nothing fetched: it prints and archives as is)."""
    case = report.case
    strips = [{"name": s.name, "count": s.count, "colour": class_colour_hex(s.label.removesuffix(UNSPECIFIED)),
               "thumbs": [{"src": _data_uri(t), "unidentified": u} for t, u in zip(s.thumbs, s.unidentified)]}
              for s in report.strips]
    info = [("Case", case.name), ("Source", case.source), ("Fields", str(case.n_fields)),
            ("Model", case.model or "-"), ("Review status", case.status),
            ("Reviewed", f"{100.0 * case.reviewed_share:.0f} % of cells"),
            ("Signed by", case.signed_by or "-"), ("Signed at", _when(case.signed_at)),
            ("WBC counted", f"{report.n_wbc} (of {report.n_cells} objects)"),
            ("Total WBC", "not given" if report.wbc_count is None else f"{report.wbc_count:g} \u00d710\u2079/L"),
            ("Generated", _when(report.generated_at))]
    return _ENV.get_template(TEMPLATE).render(
        r=report, case=case, info=info, strips=strips, num=_num, interval=_interval, reference=_reference,
        preliminary_statement=PRELIMINARY_STATEMENT, reference_count=REFERENCE_COUNT,
        review_colour=REVIEW_COLOUR_HEX, absolute=report.wbc_count is not None)


def write_pdf(html: str, dest: Path) -> Path:
    """The HTML page as PDF (WeasyPrint), written atomically."""
    logging.getLogger("weasyprint.progress").setLevel(logging.WARNING)  # its steps per PDF, at INFO
    import weasyprint  # heavy (pango, cairo bindings): loaded only when a PDF is asked for

    with atomic_path(dest) as tmp:
        weasyprint.HTML(string=html, base_url=str(ASSETS)).write_pdf(str(tmp))
    return dest


def write_report(report: Report, dest_dir: Path, *, pdf: bool = False, stem: str | None = None) -> list[Path]:
    """Write `<stem>.html` (and `<stem>.pdf`) into `dest_dir`; `stem` defaults to "report". Atomic writes."""
    dest_dir = Path(dest_dir)
    stem = stem or "report"
    if Path(stem).name != stem or stem in (".", ".."):
        raise BloodsmearError(f"report file stem {stem!r} must be a plain file name")
    html = render_html(report)
    out = [write_text_atomic(dest_dir / f"{stem}.html", html)]
    if pdf:
        out.append(write_pdf(html, dest_dir / f"{stem}.pdf"))
    return out


def pdf_page_png(pdf: Path, page: int = 0, *, scale: float = 1.5) -> np.ndarray:
    """Page `page` of a PDF rendered to an RGB uint8 array (scale 1 = 72 dpi)."""
    import pypdfium2  # heavy (the pdfium binary): only tests and screenshot scripts render PDFs

    pdf = Path(pdf)
    if not pdf.is_file():
        raise InputError(pdf, "no such file")
    try:
        doc = pypdfium2.PdfDocument(str(pdf))
    except pypdfium2.PdfiumError as e:
        raise InputError(pdf, f"not a readable PDF ({e})") from e
    try:
        if not 0 <= page < len(doc):
            raise InputError(pdf, f"has {len(doc)} page(s), no page {page}")
        img = doc[page].render(scale=scale).to_pil().convert("RGB")
        return np.asarray(img).copy()
    finally:
        doc.close()
