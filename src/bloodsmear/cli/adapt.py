"""`bloodsmear adapt`: adapt a trained classifier to an unlabelled folder with DANN (argument parsing only)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bloodsmear.cli.common import emit_json, print_table
from bloodsmear.experiments.adapt import adapt_model


def adapt_cmd(
    model: str = typer.Option("default", "--model", help="Model folder or shipped name to adapt."),
    target: Path = typer.Option(..., "--target", help="Folder of the new lab's images (no labels needed)."),
    out: Path = typer.Option(..., "--out", help="Folder for the adapted model (config, weights, card)."),
    fields: bool = typer.Option(False, "--fields/--crops",
                                help="Target images are smear fields (every WBC the pipeline's segmenter finds "
                                     "is cut as `analyze` cuts it) instead of single-cell crops."),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", help="--fields: pipeline config whose segmenter "
                                           "and crop framing cut the WBCs (default: the shipped one)."),
    source: Optional[Path] = typer.Option(None, "--source", help="Labelled class-per-folder source crops "
                                          "(default: the model's own training data under BLOODSMEAR_DATA)."),
    max_per_class: Optional[int] = typer.Option(None, "--max-per-class",
                                                help="Subsample the source to N training crops per class (CPU)."),
    epochs: int = typer.Option(15, "--epochs"),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(3e-4, "--lr"),
    train_from: int = typer.Option(17, "--train-from", help="First trainable backbone block (lower ones frozen)."),
    max_source_drop: float = typer.Option(0.01, "--max-source-drop", help="Keep the latest epoch whose source "
                                          "validation macro F1 is at most this below the unadapted model's."),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Adapt a classifier to a lab's unlabelled images (DANN) and save a new model folder with its card."""
    res = adapt_model(model, target, out, fields=fields, pipeline=pipeline, source=source, epochs=epochs,
                      batch_size=batch_size, lr=lr, train_from=train_from, seed=seed, threads=threads,
                      max_per_class=max_per_class, max_source_drop=max_source_drop, device=device,
                      progress=progress)
    d = res.to_dict()
    rows = [("out_dir", d["out_dir"]), ("source train crops", d["n_source_train"]), ("target crops", d["n_target"]),
            ("epoch kept", d["kept_epoch"]),
            ("skipped target files", d["skipped"]), ("train seconds", d["train_seconds"])]
    rows += [(f"source test {k} before -> after", f"{d['source_test_before'][k]:.4f} -> {d['source_test_after'][k]:.4f}")
             for k in ("macro_f1", "accuracy")]
    print_table("bloodsmear adapt", ["figure", "value"], rows)
    if as_json:
        emit_json(d)


def register(app: typer.Typer) -> None:
    app.command("adapt")(adapt_cmd)
