"""`bloodsmear segment ...`: the fast WBC segmenter's training, its training data and the scale estimate."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from bloodsmear.cli.common import emit_json, print_table
from bloodsmear.errors import InputError
from bloodsmear.inference.pipeline import PipelineConfig, small_copy
from bloodsmear.inference.scale_plan import folder_group
from bloodsmear.io import list_images, read_image
from bloodsmear.preprocess.scale import choose_diameters, estimate_rbc_diameter
from bloodsmear.settings import data_root
from bloodsmear.training.seg_data import check_bccd_masks
from bloodsmear.training.seg_train import train_segmenter

app = typer.Typer(help="Fast WBC instance segmenter: train, check training masks, estimate scale.",
                  no_args_is_help=True)


@app.command("train")
def train(
    config: Path = typer.Argument(..., help="Training config (configs/segmenter/fast.yaml)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: the config's out_dir)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Train (or resume) the fast segmenter; the best model on the val splits goes to OUT/best."""
    s = train_segmenter(config, out_dir=out)
    best = s["best_val"] or {}
    print_table("fast segmenter training", ["iterations", "cpu min", "best iter", "val P", "val R", "val F1"],
                [[s["iterations"], s["cpu_minutes"], s["best_iter"], best.get("precision"), best.get("recall"),
                  best.get("f1")]])
    if json_out:
        emit_json({k: v for k, v in s.items() if k != "history"})


@app.command("check-masks")
def check_masks(
    split: str = typer.Option("train", "--split", help="BCCD official split."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data root (default: $BLOODSMEAR_DATA)."),
    limit: Optional[int] = typer.Option(None, "--limit"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Classical whole-cell training masks against BCCD's nucleus masks."""
    r = check_bccd_masks(data or data_root(), split, limit)
    print_table("BCCD classical masks vs nucleus masks", list(asdict(r)), [list(asdict(r).values())])
    if json_out:
        emit_json(asdict(r))


@app.command("scale")
def scale(
    images: List[Path] = typer.Argument(..., help="Images or folders."),
    mode: str = typer.Option("auto", "--mode", help="Pooling shown in the 'used' column: auto, field or folder "
                                                    "(as analyze --scale)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Typical red-cell diameter (px) of each image, and the one `analyze --scale MODE` uses (pooled per
    folder and pixel size); unreadable images are reported and skipped."""
    log = logging.getLogger(__name__)
    rows, groups, skipped = [], [], 0
    for p in [f for i in images for f in list_images(i)]:
        try:
            rgb = read_image(p)
            small, f = small_copy(rgb, PipelineConfig().scale_max_side)  # measured as the pipeline does
            e = estimate_rbc_diameter(small)
        except InputError as err:
            log.warning("skipped %s", err)
            skipped += 1
            continue
        rows.append([str(p), e.diameter_px / f, e.confidence])
        groups.append(folder_group(p, rgb.shape))
    try:
        chosen = choose_diameters([r[1] for r in rows], groups, mode.lower())
    except ValueError as err:
        typer.echo(f"error: --mode: {err}", err=True)
        raise typer.Exit(2) from None
    for r, c in zip(rows, chosen):
        r += [c.diameter_px, c.source]
    print_table("red-cell diameter", ["image", "diameter px", "confidence", f"used ({mode})", "source"], rows)
    d = [r[1] for r in rows if np.isfinite(r[1])]
    if skipped:
        log.warning("%d image(s) skipped", skipped)
    if json_out:
        emit_json({"images": [{"path": r[0], "diameter_px": r[1], "confidence": r[2], "used_px": r[3],
                               "source": r[4]} for r in rows],
                   "median_diameter_px": float(np.median(d)) if d else None, "skipped": skipped})
