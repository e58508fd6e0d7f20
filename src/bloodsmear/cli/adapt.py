"""`bloodsmear adapt`: adapt a trained classifier to an unlabelled folder with DANN (argument parsing only)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bloodsmear.cli.common import emit_json, print_table


def adapt_cmd(
    model: str = typer.Option("default", "--model", help="Model folder or shipped name to adapt."),
    target: Path = typer.Option(..., "--target", help="Folder of the new lab's images (no labels needed)."),
    out: Path = typer.Option(..., "--out", help="Folder for the adapted model (config, weights, card)."),
    fields: bool = typer.Option(False, "--fields/--crops",
                                help="Target images are fields with one WBC each (located and cropped) "
                                     "instead of single-cell crops."),
    crop_side: int = typer.Option(160, "--crop-side", help="--fields: square side (px) cut around the WBC."),
    source: Optional[Path] = typer.Option(None, "--source", help="Labelled class-per-folder source crops "
                                          "(default: the model's own training data under BLOODSMEAR_DATA)."),
    max_per_class: Optional[int] = typer.Option(None, "--max-per-class",
                                                help="Subsample the source to N training crops per class (CPU)."),
    epochs: int = typer.Option(15, "--epochs"),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(3e-4, "--lr"),
    train_from: int = typer.Option(17, "--train-from", help="First trainable backbone block (lower ones frozen)."),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Adapt a classifier to a lab's unlabelled images (DANN) and save a new model folder with its card."""
    from bloodsmear.errors import BloodsmearError
    from bloodsmear.training.adapt import adapt_model

    try:
        res = adapt_model(model, target, out, fields=fields, crop_side=crop_side, source=source, epochs=epochs,
                          batch_size=batch_size, lr=lr, train_from=train_from, seed=seed, threads=threads,
                          max_per_class=max_per_class, progress=progress)
    except BloodsmearError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    d = res.to_dict()
    rows = [("out_dir", d["out_dir"]), ("source train crops", d["n_source_train"]), ("target images", d["n_target"]),
            ("skipped target files", d["skipped"]), ("train seconds", d["train_seconds"])]
    rows += [(f"source test {k} before -> after", f"{d['source_test_before'][k]:.4f} -> {d['source_test_after'][k]:.4f}")
             for k in ("macro_f1", "accuracy")]
    print_table("bloodsmear adapt", ["figure", "value"], rows)
    if as_json:
        emit_json(d)


def register(app: typer.Typer) -> None:
    app.command("adapt")(adapt_cmd)
