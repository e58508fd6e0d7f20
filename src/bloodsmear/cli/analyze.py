"""`bloodsmear analyze`: the full pipeline over photos (`evaluate`, its accuracy, is in cli/evaluate.py)."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import List, Optional

import typer

from bloodsmear.classes import LEVELS
from bloodsmear.cli.common import SCALE_HELP, emit_json, print_table
from bloodsmear.errors import InputError
from bloodsmear.inference.batch import WORKERS_HELP, check_inputs
from bloodsmear.inference.batch import analyze as run_batch
from bloodsmear.inference.onnx_backend import check_backend
from bloodsmear.inference.pipeline import Pipeline
from bloodsmear.inference.pipeline_config import PipelineConfig, parse_scale
from bloodsmear.inference.ray_engine import ADDRESS_HELP, analyze_ray, import_ray

log = logging.getLogger(__name__)


def analyze(
    inputs: List[Path] = typer.Argument(..., help="Image files or folders (JPEG, PNG, TIFF, BMP; recursive)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (re-running the same run on it resumes)."),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", "-p",
                                           help="Pipeline config (YAML) or shipped name: default, maskrcnn."),
    scale: str = typer.Option("auto", "--scale", help=SCALE_HELP),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write an overlay PNG per image."),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP + " With --engine ray: Ray actors "
                                          "(default 2), each loading the models once."),
    engine: str = typer.Option("local", "--engine", help="local (threads in this process) or ray (Ray Data over "
                               "a local Ray or a cluster; needs pip install 'bloodsmear\\[ray]'). Same outputs."),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP + " Only with --engine ray."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over: remove what an earlier run wrote into --out "
                               "(default: resume it; one with another pipeline, models or --scale is refused)."),
    level: str = typer.Option("group", "--level", help="Class level of coco.json and annotations.xml: group "
                              "(ig, neutrophil, ...) or fine (band_cell, segmented_neutrophil, myelocyte, ...; "
                              "a group-only answer keeps its group's name). counts.csv holds both."),
    adapt_bn: Optional[bool] = typer.Option(None, "--adapt-bn/--no-adapt-bn", help="Re-estimate the screening "
                                            "model's batch norm on this run's own WBC crops first (no labels; default: "
                                            "the pipeline config's, off; docs/lodo.md)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="How the networks run on the CPU: torch or onnx "
                                          "(ONNX Runtime, pip install bloodsmear[onnx]; docs/speed.md). Default: the "
                                          "pipeline config's, torch."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as one JSON object (last line)."),
) -> None:
    """Find, outline, classify and count every WBC: results.json, coco.json, annotations.xml, counts.csv, overlays/."""
    parse_scale(scale, "--scale")
    if level not in LEVELS:
        raise InputError(None, f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    if engine not in ("local", "ray"):
        raise InputError(None, f"--engine must be local or ray, got {engine!r}")
    if address and engine != "ray":
        raise InputError(None, "--address is for --engine ray")
    if engine == "ray":
        import_ray()  # before anything is read or written: one clear line when the extra is missing
    jobs = check_inputs(inputs, out)  # before the models load: a wrong path is reported at once
    changes = {k: v for k, v in (("backend", backend and check_backend(backend, "--backend")),
                                 ("adapt_bn", adapt_bn)) if v is not None}
    source = PipelineConfig.load(pipeline).updated(**changes) if changes else pipeline  # the flags over the config
    pipe = Pipeline.from_config(source)
    common = dict(jobs=jobs, scale=scale, overlays=overlays, workers=workers, fresh=fresh, level=level)
    if engine == "ray":  # each actor loads the pipeline from the same config (a shipped name or a shared path)
        summary = analyze_ray(inputs, out, pipe, factory=partial(Pipeline.from_config, source), address=address,
                              **common)
    else:
        summary = run_batch(inputs, out, pipe, **common)
    d = summary.to_dict()
    rows = [(k, v) for k, v in sorted(summary.counts.items())]
    print_table(f"WBCs in {summary.n_images - summary.n_skipped} image(s)", ["class", "count"], rows)
    typer.echo(f"{summary.n_analysed} analysed, {summary.n_resumed} already done, {summary.n_skipped} skipped; "
               f"outputs in {out}", err=True)
    if json_out:
        emit_json(d)
    if summary.n_images and summary.n_skipped == summary.n_images:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze)
