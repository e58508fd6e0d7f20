"""`bloodsmear analyze` and `bloodsmear evaluate`: the full pipeline over photos, and its accuracy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

from bloodsmear.cli.common import SCALE_HELP, emit_json, print_table
from bloodsmear.errors import BloodsmearError
from bloodsmear.evaluation.pipeline_eval import evaluate_pipeline
from bloodsmear.inference.batch import WORKERS_HELP, check_inputs
from bloodsmear.inference.batch import analyze as run_batch
from bloodsmear.inference.pipeline import Pipeline
from bloodsmear.inference.pipeline_config import parse_scale

log = logging.getLogger(__name__)


def analyze(
    inputs: List[Path] = typer.Argument(..., help="Image files or folders (JPEG, PNG, TIFF, BMP; recursive)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (re-running the same run on it resumes)."),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", "-p",
                                           help="Pipeline config (YAML) or shipped name: default, maskrcnn."),
    scale: str = typer.Option("auto", "--scale", help=SCALE_HELP),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write an overlay PNG per image."),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
    fresh: bool = typer.Option(False, "--fresh", help="Start over: remove what an earlier run wrote into --out "
                               "(default: resume it; one with another pipeline, models or --scale is refused)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as one JSON object (last line)."),
) -> None:
    """Find, outline, classify and count every WBC: results.json, coco.json, annotations.xml, counts.csv, overlays/."""
    parse_scale(scale, "--scale")
    check_inputs(inputs, out)  # before the models load: a wrong path is reported at once
    pipe = Pipeline.from_config(pipeline)
    summary = run_batch(inputs, out, pipe, scale=scale, overlays=overlays, workers=workers, fresh=fresh)
    d = summary.to_dict()
    rows = [(k, v) for k, v in sorted(summary.counts.items())]
    print_table(f"WBCs in {summary.n_images - summary.n_skipped} image(s)", ["class", "count"], rows)
    typer.echo(f"{summary.n_analysed} analysed, {summary.n_resumed} already done, {summary.n_skipped} skipped; "
               f"outputs in {out}", err=True)
    if json_out:
        emit_json(d)
    if summary.n_images and summary.n_skipped == summary.n_images:
        raise typer.Exit(1)


def evaluate(
    dataset: Path = typer.Argument(..., help="Annotated dataset (BCCD VOC, LISC, CVAT, COCO...)."),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", "-p", help="Pipeline config or shipped name."),
    segmenter: Optional[str] = typer.Option(None, "--segmenter", help="Evaluate a segmenter model folder alone."),
    split: Optional[str] = typer.Option(None, "--split",
                                        help="Official split to use (default: test where the dataset has one)."),
    fmt: str = typer.Option("auto", "--format", help="Dataset format (auto, voc, lisc, cvat, coco, ...)."),
    scale: str = typer.Option("auto", "--scale", help=SCALE_HELP),
    rescale: float = typer.Option(1.0, "--rescale", help="Resize every field (and its annotations) by this "
                                                           "factor first: magnification robustness."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N images."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="Take the split from this split manifest "
                                            "(e.g. a model folder's split.json; --split names the part, default test)."),
    errors: Optional[Path] = typer.Option(None, "--errors", help="Write every detection error (unmatched "
                                          "prediction, missed WBC; on one-WBC fields: none or extra) to "
                                          "DIR/errors.csv with an overlay per image, for review."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as one JSON object (last line)."),
) -> None:
    """Detection, segmentation and classification figures of a pipeline against annotations."""
    if pipeline and segmenter:
        raise BloodsmearError("give --pipeline or --segmenter, not both")
    report = evaluate_pipeline(dataset, pipeline=pipeline, segmenter=segmenter, split=split, fmt=fmt,
                               scale=scale, rescale=rescale, limit=limit, manifest=manifest, errors_dir=errors)
    figs = report["figures"]
    print_table(f"{report['dataset']} ({report['split']}, {report['n_images']} images)", ["figure", "value"],
                [(k, v) for k, v in figs.items() if not isinstance(v, (dict, list))])
    if "errors" in report:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(report["errors"]["by_kind"].items())) or "none"
        typer.echo(f"errors ({kinds}) in {report['errors']['n_images']} image(s): {errors}/errors.csv, "
                   f"{errors}/overlays/", err=True)
    if json_out:
        emit_json(report)


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze)
    app.command("evaluate")(evaluate)
