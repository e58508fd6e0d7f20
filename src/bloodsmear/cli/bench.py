"""`bloodsmear bench ...`: benchmark commands that print figures (never timed tests)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Benchmarks that print figures (speed, accuracy).", no_args_is_help=True)

# Commands are added below by feature: crop, classify, grid, analyze, domains.


@app.command("analyze")
def bench_analyze_cmd(
    images_dir: str = typer.Argument(..., help="Folder of fields (e.g. BCCD JPEGImages)."),
    limit: int = typer.Option(None, "--limit", help="Use the first N images."),
    pipeline: str = typer.Option("default", "--pipeline", help="Pipeline config or shipped name to time."),
    compare: str = typer.Option("maskrcnn", "--compare", help="Pipeline to compare with ('' for none)."),
    compare_limit: int = typer.Option(None, "--compare-limit", help="Use only the first N images for the comparison."),
    photo: bool = typer.Option(False, "--photo", help="Also time a synthetic 4032x3024 photo (fresh process)."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write overlays (part of end to end)."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as one JSON object (last line)."),
) -> None:
    """End-to-end fields/s of the default pipeline and the Mask R-CNN pipeline on the same fields."""
    from bloodsmear.cli.common import emit_json, print_table
    from bloodsmear.inference.bench import bench_analyze

    d = bench_analyze(images_dir, limit=limit, pipeline=pipeline, compare=compare or None,
                      compare_limit=compare_limit, photo=photo, overlays=overlays)
    print_table("bench analyze", ["figure", "value"], [(k, v) for k, v in d.items() if not isinstance(v, dict)])
    if json_out:
        emit_json(d)
