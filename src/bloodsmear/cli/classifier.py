"""Top-level classifier commands: `train`, `classify`, `eval-classifier` (argument parsing only)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import torch
import typer

from bloodsmear.cli.common import TTA_HELP, emit_json, print_table, tta_option
from bloodsmear.errors import InputError
from bloodsmear.experiments.runner import run_config_file
from bloodsmear.evaluation.classifier import evaluate_model
from bloodsmear.inference.classify import FRAMINGS, classify_paths, write_predictions
from bloodsmear.inference.single_cell import CellFramer
from bloodsmear.metrics.plots import plot_confusion
from bloodsmear.training.distributed import is_main

log = logging.getLogger(__name__)

FRAMING_HELP = ("cell: find the cell with the pipeline's segmenter and frame it as PBC does (docs/framing.md); "
                "centre: the image as it is (the model's centre square, for images already cropped as PBC).")


def framing_option(value: str) -> str:
    if value not in FRAMINGS:
        raise typer.BadParameter(f"must be one of {', '.join(FRAMINGS)}, not {value!r}")
    return value


def make_framer(framing: str, pipeline: str) -> CellFramer | None:
    """The framer of a --framing choice (None: centre framing)."""
    return CellFramer.from_pipeline(pipeline) if framing == "cell" else None


def train_cmd(
    config: Path = typer.Argument(..., help="Experiment config (YAML/JSON); `kind:` picks classifier (default), "
                                            "domains, dann, lodo, grid, fast-unet or maskrcnn."),
    restart: bool = typer.Option(False, "--restart", help="Ignore an existing checkpoint and start over."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Override the output folder."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override epochs (domains/dann: train.epochs)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Override the learning rate (classifier: optim.lr)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Override the batch size."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the training seed."),
    device: Optional[str] = typer.Option(None, "--device", help="domains/dann: cpu, cuda or auto."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained",
                                              help="Override pretrained (random init with --no-pretrained)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY=VALUE",
                                             help="Override any config key, dotted (e.g. train.dann.max_lambda=0.5)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Train a model from a config file; re-running the same command resumes after a kill."""
    shortcuts = {"out_dir": None if out_dir is None else str(out_dir), "epochs": epochs, "lr": lr,
                 "batch_size": batch_size, "seed": seed, "device": device, "pretrained": pretrained}
    res = run_config_file(config, shortcuts=shortcuts, sets=set_, restart=restart, progress=progress)
    if not is_main():  # torchrun: rank 0 reports
        return
    d = res.to_dict()
    test = d.get("test") or {}
    print_table("Training result", ["figure", "value"],
                [(k, v) for k, v in d.items() if not isinstance(v, dict)] + [(f"test_{k}", v) for k, v in test.items()])
    if as_json:
        emit_json(d)


def classify_cmd(
    inputs: List[Path] = typer.Argument(..., help="Single-cell images and/or folders (walked)."),
    model: str = typer.Option("default", "--model", "-m", help="Model folder or shipped name (default: shipped PBC model)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write predictions to FILE.csv or FILE.json."),
    batch_size: int = typer.Option(256, "--batch-size"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: torch's)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    tta: str = typer.Option("none", "--tta", help=TTA_HELP, callback=tta_option),
    framing: str = typer.Option("centre", "--framing", help=FRAMING_HELP, callback=framing_option),
    pipeline: str = typer.Option("default", "--pipeline", help="--framing cell: the pipeline whose segmenter "
                                                               "finds the cell (config or shipped name)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (summary) as the last line."),
) -> None:
    """Classify single-cell images: class and probabilities per image (bad images reported and skipped).

    With --framing cell, an image where no cell is found is a row with status "no cell found"."""
    if threads:
        torch.set_num_threads(threads)
    res = classify_paths(inputs, model=model, batch_size=batch_size, progress=progress, tta=tta,
                         framer=make_framer(framing, pipeline))
    if not res.predictions:
        first = f": {res.skipped[0]}" if res.skipped else ""
        raise InputError(None, f"no image classified ({len(res.skipped)} input(s) skipped{first})")
    if out is not None:
        write_predictions(res, out)
        log.info("wrote %d predictions to %s", len(res.predictions), out)
    status = framing != "centre"  # centre framing prints and writes what it did before
    if not as_json and (out is None or len(res.predictions) <= 50):
        print_table(f"{len(res.predictions)} cells", ["image", "class", "confidence"] + ["status"] * status,
                    [(p.path, p.label, p.confidence) + (p.status,) * status for p in res.predictions])
    counts: dict[str, int] = {}
    for p in res.classified:
        counts[p.label] = counts.get(p.label, 0) + 1
    if res.skipped:
        log.warning("%d input(s) skipped", len(res.skipped))
    if as_json:
        summary = {"n": len(res.predictions), "skipped": len(res.skipped), "skipped_files": res.skipped,
                   "counts": counts, "seconds": round(res.seconds, 3), "model": res.model,
                   "out": str(out) if out else None}
        if status:
            summary.update(framing=framing, no_cell=len(res.no_cell), no_cell_files=res.no_cell)
        if out is None:
            summary["predictions"] = [{"path": p.path, "label": p.label, "confidence": p.confidence, "probs": p.probs}
                                      | ({"status": p.status} if status else {}) for p in res.predictions]
        emit_json(summary)


def eval_classifier_cmd(
    model: str = typer.Argument(..., help="Model folder, or a shipped model's name (`default` included)."),
    dataset: Path = typer.Argument(..., help="Labelled dataset folder (relative names also tried under BLOODSMEAR_DATA)."),
    split: Optional[Path] = typer.Option(None, "--split", help="Split manifest (default: the model's own split.json)."),
    part: str = typer.Option("test", "--part", help="Which part of the manifest to score."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Dataset format (default: the model's training format)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score a seeded sample of N images."),
    confusion_png: Optional[Path] = typer.Option(None, "--confusion", help="Write the confusion matrix PNG here."),
    tta: str = typer.Option("none", "--tta", help=TTA_HELP, callback=tta_option),
    framing: str = typer.Option("centre", "--framing", help=FRAMING_HELP + " Default centre: the models as trained.",
                                callback=framing_option),
    pipeline: str = typer.Option("default", "--pipeline", help="--framing cell: the pipeline whose segmenter "
                                                               "finds the cell."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Score a classifier: macro P/R/F1, accuracy, per class, confusion matrix.

    With --framing cell, images where no cell is found are left out of the scores and counted (no_cell)."""
    ev = evaluate_model(model, dataset, split_manifest=split, split=part, format=fmt, limit=limit, tta=tta,
                        framer=make_framer(framing, pipeline))
    rep = ev.report
    print_table(f"{Path(ev.model).name} on {ev.split} (n={ev.n})", ["class", "precision", "recall", "f1", "support"],
                [(c, m.precision, m.recall, m.f1, m.support) for c, m in rep.per_class.items()]
                + [("macro", rep.macro_precision, rep.macro_recall, rep.macro_f1, rep.n),
                   ("weighted", rep.weighted_precision, rep.weighted_recall, rep.weighted_f1, rep.n)])
    print_table("Confusion (rows true, cols predicted)", ["true"] + rep.classes,
                [[c] + row for c, row in zip(rep.classes, rep.confusion)])
    print_table("Summary", ["figure", "value"], list(rep.headline().items())
                + ([("no_cell", ev.no_cell), ("framing", ev.framing)] if ev.framing != "centre" else []))
    for lvl, r in (ev.levels or {}).items():  # a fine model: at group level and on the paper's 8 classes
        print_table(f"At {lvl} level (n={r.n})", ["figure", "value"], list(r.headline().items()))
    if confusion_png is not None:
        plot_confusion(rep, confusion_png)
    if as_json:
        emit_json(ev.to_dict())


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("classify")(classify_cmd)
    app.command("eval-classifier")(eval_classifier_cmd)
