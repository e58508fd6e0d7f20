"""`bloodsmear evaluate`: a pipeline's (or a segmenter's) detection, segmentation and classification
figures against annotations (its own module, so `analyze` does not load the evaluation stack)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bloodsmear.cli.common import SCALE_HELP, emit_json, print_table
from bloodsmear.errors import BloodsmearError
from bloodsmear.evaluation.pipeline_eval import evaluate_pipeline


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
    app.command("evaluate")(evaluate)
