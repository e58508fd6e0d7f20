"""`bloodsmear review` (the web app over an analyze folder) and `bloodsmear export` (its corrected exports):
argument parsing only."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
import uvicorn

from bloodsmear.cli.common import emit_json
from bloodsmear.review.app import create_app
from bloodsmear.review.exports import EXPORT_FORMATS, export
from bloodsmear.review.session import ReviewRun

log = logging.getLogger(__name__)


def review_cmd(
    out_dir: Path = typer.Argument(..., help="An analyze output folder (holding results.json)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; any other than localhost requires the "
                             "access token printed at start on every request."),
    port: int = typer.Option(8765, "--port"),
    db: Optional[str] = typer.Option(None, "--db", help="Database URL (default: sqlite in OUT_DIR/review.sqlite; "
                                     "postgresql://user@host/db for a server shared by several reviewers)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of the analysed fields, if they moved "
                                          "since the analysis."),
    token: Optional[str] = typer.Option(None, "--token", help="Access token to require (default: a new random one "
                                        "when --host is not localhost)."),
) -> None:
    """Review, correct and sign an analyze output folder in the browser (cases, slides, gallery, report)."""
    app = create_app(out_dir, db_url=db, host=host, token=token, images=images)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
    if app.state.token:
        url += f"?token={app.state.token}"
    typer.echo(f"bloodsmear review: {out_dir} at {url}  (Ctrl+C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def export_cmd(
    out_dir: Path = typer.Argument(..., help="An analyze output folder (holding results.json)."),
    format: str = typer.Option(..., "--format", "-f", help=f"One of {', '.join(EXPORT_FORMATS)}."),  # noqa: A002
    dest: Optional[Path] = typer.Option(None, "--out", help="Folder to write into (default: OUT_DIR/export)."),
    case: Optional[str] = typer.Option(None, "--case", help="Only this case (default: every case)."),
    level: str = typer.Option("fine", "--level", help="Class level of cvat/coco labels: fine or group."),
    db: Optional[str] = typer.Option(None, "--db", help="Review database URL (default: OUT_DIR/review.sqlite)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of the analysed fields (crops), if moved."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Export an analyze folder with the review's corrections applied: CVAT XML, COCO, paper JSON, counts CSV or labelled crops for `bloodsmear learn`."""  # noqa: E501
    run = ReviewRun.open(out_dir, db_url=db, images=images)
    path = export(run, format, dest or Path(out_dir) / "export", case=case, level=level)
    typer.echo(f"wrote {path}")
    if as_json:
        emit_json({"format": format, "path": str(path), "case": case})


def register(app: typer.Typer) -> None:
    app.command("review")(review_cmd)
    app.command("export")(export_cmd)
