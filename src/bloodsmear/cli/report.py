"""`bloodsmear report`: the differential report of an analyze folder's cases (argument parsing only)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bloodsmear.cli.common import emit_json
from bloodsmear.review.reporting import write_case_reports
from bloodsmear.review.session import ReviewRun


def report_cmd(
    out_dir: Path = typer.Argument(..., help="An analyze output folder (holding results.json)."),
    case: Optional[str] = typer.Option(None, "--case", help="Only this case (default: one report per case)."),
    wbc_count: Optional[float] = typer.Option(None, "--wbc-count", help="Total WBC count (x10^9/L) for absolute "
                                              "counts."),
    pdf: bool = typer.Option(False, "--pdf/--no-pdf", help="Also write the PDF."),
    ranges: Optional[Path] = typer.Option(None, "--ranges", help="Reference ranges YAML (default: the shipped adult "
                                          "ranges, source named on the report)."),
    dest: Optional[Path] = typer.Option(None, "--out", help="Folder to write into (default: OUT_DIR/report)."),
    db: Optional[str] = typer.Option(None, "--db", help="Review database URL (default: OUT_DIR/review.sqlite)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of the analysed fields, if moved."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Differential report per case: counts and % at both levels with 95 % intervals, reference ranges, flags, cell images, review status and signer; HTML (and PDF)."""  # noqa: E501
    run = ReviewRun.open(out_dir, db_url=db, images=images)
    paths = write_case_reports(run, dest or Path(out_dir) / "report", case=case, wbc_count=wbc_count, ranges=ranges,
                               pdf=pdf)
    for p in paths:
        typer.echo(f"wrote {p}")
    if as_json:
        emit_json({"files": [str(p) for p in paths]})


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
