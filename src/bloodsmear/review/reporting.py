"""The differential report of a case under review (`bloodsmear report`, the page's Report button): the
review store's current answers (every correction applied, deleted cells left out) as a `report.ReportCase`,
with a few crops per class for the report's strips, rendered by `bloodsmear.report`.
"""

from __future__ import annotations

from pathlib import Path

from bloodsmear.report.build import build_report
from bloodsmear.report.model import Report, ReportCase, ReportCell
from bloodsmear.report.ranges import load_ranges
from bloodsmear.report.render import write_report
from bloodsmear.review.media import Media
from bloodsmear.review.session import ReviewRun

CROPS_PER_CLASS = 8  # the report shows at most this many per class


def _model_name(meta: dict) -> str:
    p = meta.get("pipeline") or {}
    return " + ".join(str(p[k]) for k in ("segmenter", "screening", "refine") if p.get(k))


def report_case(run: ReviewRun, name: str, media: Media | None = None, *, crops: bool = True) -> ReportCase:
    media = media or Media(run.out_dir)
    case = run.store.case(run.run_id, name)
    slides = {s.id: s for s in run.store.slides(case.id)}
    live = [c for c in run.store.cells(case_id=case.id) if not c.deleted]
    shown: dict[str, int] = {}
    cells = []
    for c in sorted(live, key=lambda c: (c.unidentified, c.id)):  # answered cells first in the strips
        crop = None
        if crops and shown.get(c.label, 0) < CROPS_PER_CLASS:
            crop = media.crop(c, slides[c.slide_id])
            shown[c.label] = shown.get(c.label, 0) + 1
        cells.append(ReportCell(label=c.label, crop=crop, unidentified=c.unidentified))
    reopened = [f"{e.at:%Y-%m-%d %H:%M} by {e.who}: {e.note}" for e in reversed(run.store.events(case.id))
                if e.kind == "reopen"]
    summary = run.case_summary(case)
    return ReportCase(name=case.name, cells=cells, source=str(run.out_dir.resolve()), status=case.status,
                      signed_by=case.signed_by, signed_at=case.signed_at, reviewed_share=summary["reviewed_share"],
                      n_fields=len(slides), model=_model_name(run.meta), reopened=reopened)


def case_report(run: ReviewRun, name: str, *, wbc_count: float | None = None, ranges: str | Path | None = None,
                media: Media | None = None) -> Report:
    return build_report(report_case(run, name, media), wbc_count=wbc_count, ranges=load_ranges(ranges))


def write_case_reports(run: ReviewRun, dest_dir: str | Path, *, case: str | None = None, wbc_count: float | None = None,
                       ranges: str | Path | None = None, pdf: bool = False) -> list[Path]:
    """report-<case>.html (and .pdf) for `case` or every case of the run."""
    names = [case] if case else [c.name for c in run.store.cases(run.run_id)]
    media = Media(run.out_dir)
    out: list[Path] = []
    for n in names:
        rep = case_report(run, n, wbc_count=wbc_count, ranges=ranges, media=media)
        out += write_report(rep, Path(dest_dir), pdf=pdf, stem=f"report-{n.replace('/', '_')}")
    return out
