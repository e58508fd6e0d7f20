"""`bloodsmear learn`: fine-tune a classifier on cells a person labelled (argument parsing only)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from bloodsmear.cli.common import emit_json, print_table
from bloodsmear.experiments.learn import DEFAULT_BASE, learn


def learn_cmd(
    labelled: list[Path] = typer.Argument(..., help="Labelled cells: CVAT XML, COCO JSON, a class-per-folder of "
                                          "cell crops, or a (reviewed) analyze output folder."),
    out: Path = typer.Option(..., "--out", help="Folder for the lab model (config, weights, card)."),
    base: str = typer.Option(DEFAULT_BASE, "--base", help="Model folder or shipped name to start from."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Comma-separated classes to learn (each must "
                                          "have labelled cells; others are left out)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of the field images when they are not "
                                          "beside the annotations (an analyze folder: the folder analyzed)."),
    level: Optional[str] = typer.Option(None, "--level", help="Move every label to this class level: fine or group."),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", help="Pipeline config whose crop framing cuts "
                                           "field cells (default: the shipped one)."),
    epochs: int = typer.Option(15, "--epochs"),
    seed: int = typer.Option(0, "--seed"),
    lr: float = typer.Option(1e-3, "--lr"),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads (default: torch's)."),
    progress: bool = typer.Option(False, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Fine-tune a classifier on a few cells a person labelled and save a lab model folder with its card."""
    want = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    command = "bloodsmear " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["learn"] else None
    res = learn(labelled, out, base=base, classes=want, epochs=epochs, seed=seed, lr=lr, images=images,
                pipeline=pipeline, level=level, threads=threads, progress=progress, command=command)
    d = res.to_dict()
    rows = [("out_dir", d["out_dir"]), ("classes", ", ".join(d["classes"])),
            ("new classes", ", ".join(d["new_classes"]) or "none"),
            ("cells train / val", f"{sum(d['counts']['train'].values())} / {sum(d['counts']['val'].values())}")]
    for part in ("train", "val"):
        b, a = d[f"{part}_before"], d[f"{part}_after"]
        if a is not None:
            rows.append((f"{part} accuracy before -> after", f"{b['accuracy']:.4f} -> {a['accuracy']:.4f}"))
    rows.append(("train seconds", d["train_seconds"]))
    print_table("bloodsmear learn", ["figure", "value"], rows)
    if as_json:
        emit_json(d)


def register(app: typer.Typer) -> None:
    app.command("learn")(learn_cmd)
