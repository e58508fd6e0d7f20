"""`bloodsmear complexity` (the paper's Tables 7/8) and `bloodsmear insight actmax|gradcam|tsne` (Fig. 10,
Grad-CAM heat maps, t-SNE of the 128-d head features). Only argument parsing here; the work is in
`bloodsmear.evaluation.complexity`, `bloodsmear.viz.insight` and `bloodsmear.viz.tsne`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Literal, Optional

import torch
import typer

from bloodsmear.cli.common import App, emit_json, print_table
from bloodsmear.evaluation.complexity import complexity_rows, model_complexity
from bloodsmear.io import write_text_atomic
from bloodsmear.models.artifact import load_model
from bloodsmear.outputs.tables import markdown_table, write_csv
from bloodsmear.viz.insight import actmax_model, conv_layer_names, gradcam_model
from bloodsmear.viz.tsne import tsne_model

log = logging.getLogger(__name__)

insight_app = App(help="Look inside a classifier: activation maximisation, Grad-CAM, t-SNE.",
                          no_args_is_help=True)


def complexity(
    names: List[str] = typer.Argument(..., help="Registered backbone names (the paper's classifier is built on each)."),
    input_size: int = typer.Option(224, "--input-size", help="Square input side in pixels."),
    batch_size: int = typer.Option(8, "--batch-size", help="Batch for activation memory and timing."),
    repeats: int = typer.Option(3, "--repeats", help="Timing repeats (mean ± std)."),
    train_images: int = typer.Option(0, "--train-images", help="Synthetic images per timed epoch (default 4 batches)."),
    train_mode: Literal["frozen", "finetune"] = typer.Option("finetune", "--train-mode",
                                                             help="Mode of the timed training epoch."),
    num_classes: int = typer.Option(8, "--num-classes", help="Classes of the softmax head."),
    timing: bool = typer.Option(True, "--timing/--no-timing", help="Time a train epoch and inference."),
    threads: int = typer.Option(0, "--threads", help="torch threads (0 = torch's default)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the table: .csv or .md (both from a stem)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Conv/dense layers, parameters (frozen and fine-tuned), activation memory, file size, train/inference time."""
    if threads:
        torch.set_num_threads(threads)
    results = []
    for name in names:
        log.info("complexity of %s at %d px", name, input_size)
        results.append(model_complexity(name, input_size=input_size, batch_size=batch_size, num_classes=num_classes,
                                        repeats=repeats, train_images=train_images, train_mode=train_mode,
                                        timing=timing))
    cols, rows = complexity_rows(results)
    # transposed on screen (one column per model): the table is wide
    print_table(f"Model complexity ({input_size} px, batch {batch_size}, {torch.get_num_threads()} threads)",
                ["figure"] + [str(r[0]) for r in rows], [[c] + [r[i] for r in rows] for i, c in enumerate(cols) if i])
    if out is not None:
        if out.suffix.lower() == ".csv":
            write_csv(out, cols, rows)
        elif out.suffix.lower() == ".md":
            write_text_atomic(out, markdown_table(cols, rows))
        else:
            write_csv(out.with_suffix(".csv"), cols, rows)
            write_text_atomic(out.with_suffix(".md"), markdown_table(cols, rows))
        typer.echo(f"table written next to {out}", err=True)
    if json_out:
        emit_json({"models": [r.to_dict() for r in results], "columns": cols, "rows": rows})


_MODEL_HELP = "Model folder or shipped model name ('default' included)."


@insight_app.command("actmax")
def actmax(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    layer: Optional[str] = typer.Option(None, "--layer", help="Layer name (named_modules); default: the last conv."),
    filters: List[int] = typer.Option([0], "--filter", "-k", help="Filter index (repeatable: one tile each)."),
    steps: int = typer.Option(80, "--steps", help="Gradient-ascent steps."),
    size: Optional[int] = typer.Option(None, "--size", help="Image side (default: the model's input size)."),
    list_layers: bool = typer.Option(False, "--list-layers", help="Print the conv layer names and stop."),
    out: Path = typer.Option(Path("actmax.png"), "--out", "-o", help="Output PNG."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Activation maximisation (the paper's Fig. 10): the input that most excites a filter, from noise."""
    if list_layers:
        for name in conv_layer_names(load_model(model).model):
            typer.echo(name)
        return
    d = actmax_model(model, layer, filters, out, steps=steps, size=size)
    print_table(f"activation maximisation of {d['layer']} -> {out}", ["filter", "start activation", "final activation"],
                [(f["filter"], f["start_activation"], f["final_activation"]) for f in d["filters"]])
    if json_out:
        emit_json(d)


@insight_app.command("gradcam")
def gradcam(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    images: List[Path] = typer.Argument(..., help="Single-cell images or folders."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for <stem>_gradcam.png."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Target layer (default: the last spatial feature map)."),
    target: Optional[str] = typer.Option(None, "--target", help="Class to explain (default: the predicted one)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Grad-CAM heat maps over single-cell images (cell | heat map side by side)."""
    d = gradcam_model(model, images, out, layer=layer, target=target)
    print_table(f"Grad-CAM ({d['layer']}) -> {out}", ["image", "class", "probability"],
                [(Path(r["image"]).name, r["class"], r["probability"]) for r in d["images"]])
    typer.echo(f"{d['n_images']} image(s) written, {d['n_skipped']} skipped", err=True)
    if json_out:
        emit_json(d)
    if d["n_skipped"] and not d["n_images"]:
        raise typer.Exit(1)


@insight_app.command("tsne")
def tsne(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    dataset: Path = typer.Argument(..., help="Class-per-folder dataset (PBC, LISC, crops...)."),
    n: int = typer.Option(500, "--n", help="Images to embed (seeded, stratified by class)."),
    fmt: str = typer.Option("auto", "--format", help="Dataset format (auto, pbc, lisc, folders)."),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("tsne.png"), "--out", "-o", help="Output PNG."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """t-SNE of the penultimate (Dense(128)) features, coloured by class."""
    d = tsne_model(model, dataset, out, n=n, fmt=fmt, seed=seed)
    print_table(f"t-SNE of {d['n_images']} images ({d['feature_dim']}-d features) -> {out}", ["class", "images"],
                sorted(d["per_class"].items()))
    if json_out:
        emit_json(d)


def register(app: typer.Typer) -> None:
    app.command("complexity")(complexity)
    app.add_typer(insight_app, name="insight")
