"""`bloodsmear segment ...`: WBC segmenter training (fast U-Net or Mask R-CNN, chosen by the config's
`kind`), export / eval / card of a model folder, the training masks and the scale estimate."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from bloodsmear.cli.common import App, emit_json, print_table
from bloodsmear.config import read_config_dict
from bloodsmear.errors import BloodsmearError, InputError
from bloodsmear.inference.pipeline import own_choice, small_copy
from bloodsmear.inference.pipeline_config import PipelineConfig
from bloodsmear.inference.scale_plan import pool_scales
from bloodsmear.inference.stages import rbc_estimate
from bloodsmear.io import list_images, read_image, read_json, write_json_atomic, write_text_atomic
from bloodsmear.preprocess.scale import SCALE_MODES
from bloodsmear.settings import data_root
from bloodsmear.training.seg_data import check_bccd_masks
from bloodsmear.training.maskrcnn_data import MASK_RECIPES
from bloodsmear.training.maskrcnn_train import (MaskRCNNTrainConfig, evaluate_model_folder, export_best, render_card,
                                                train_maskrcnn)
from bloodsmear.training.seg_train import SegTrainConfig, train_segmenter

app = App(help="WBC instance segmenters: train, export, eval, card, check training masks, estimate scale.",
                  no_args_is_help=True)

# config `kind:` -> its training config (a config without `kind` is the fast U-Net's)
KINDS = {"fast-unet": SegTrainConfig, "maskrcnn": MaskRCNNTrainConfig}


def _config_kind(config: Path) -> str:
    kind = str(read_config_dict(config).get("kind", "fast-unet"))
    if kind not in KINDS:
        raise InputError(config, f"unknown segmenter kind {kind!r} (valid: {', '.join(KINDS)})")
    return kind


@app.command("train")
def train(
    config: Path = typer.Argument(..., help="Training config: configs/segmenter/fast.yaml (kind fast-unet) or "
                                            "configs/segmenter/maskrcnn.yaml (kind maskrcnn)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: the config's out_dir). Fast U-Net: "
                                       "the best model on the val splits goes to OUT/best; Mask R-CNN: the best "
                                       "epoch is exported to the config's export_dir (default OUT/model)."),
    restart: bool = typer.Option(False, "--restart", help="Delete OUT/checkpoint.pt and train from scratch "
                                                          "(resuming with another config, time budgets and "
                                                          "threads aside, is refused)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Train a segmenter (fast U-Net or Mask R-CNN, by the config's kind), resuming from OUT/checkpoint.pt."""
    kind = _config_kind(config)
    cfg = KINDS[kind].load(config)
    if out is not None:
        cfg = cfg.updated(out_dir=str(out))
    if restart:
        (Path(cfg.out_dir) / "checkpoint.pt").unlink(missing_ok=True)
    if kind == "maskrcnn":
        model = train_maskrcnn(cfg)
        print_table("Mask R-CNN training", ["model"], [[str(model)]])
        if json_out:
            emit_json({"model": str(model)})
        return
    s = train_segmenter(cfg)
    best = s["best_val"] or {}
    print_table("fast segmenter training", ["iterations", "cpu min", "best iter", "val P", "val R", "val F1"],
                [[s["iterations"], s["cpu_minutes"], s["best_iter"], best.get("precision"), best.get("recall"),
                  best.get("f1")]])
    if json_out:
        emit_json({k: v for k, v in s.items() if k != "history"})


@app.command("export")
def export(
    config: Path = typer.Argument(..., help="The Mask R-CNN training config of a stopped training."),
    to: Optional[Path] = typer.Option(None, "--to", help="Model folder (default: the config's export_dir)."),
) -> None:
    """Write the Mask R-CNN model folder from OUT/best.pt of a stopped training."""
    if _config_kind(config) != "maskrcnn":
        raise InputError(config, "export is for Mask R-CNN trainings (the fast U-Net writes OUT/best as it trains)")
    cfg = MaskRCNNTrainConfig.load(config)
    if to is not None:
        cfg = cfg.updated(export_dir=str(to))
    emit_json({"model": str(export_best(cfg))})


@app.command("eval")
def evaluate(
    model: str = typer.Argument(..., help="Segmenter model folder or shipped name (wbc-maskrcnn, wbc-seg-fast)."),
    split: str = typer.Option("test", "--split", help="BCCD official split."),
    threads: int = typer.Option(2, "--threads", help="Torch threads."),
    data: Optional[Path] = typer.Option(None, "--data", help="BCCD root (default: $BLOODSMEAR_DATA/bccd)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N fields."),
    masks: str = typer.Option("classical", "--masks", help=f"GT whole-cell masks: {', '.join(sorted(MASK_RECIPES))}."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Cache of the GT masks (.npz per field)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the figures JSON here."),
) -> None:
    """A segmenter on a BCCD split in original pixels: box / mask AP, P/R/F1, counting, ms per field."""
    if masks not in MASK_RECIPES:
        raise BloodsmearError(f"--masks: unknown recipe {masks!r} (valid: {', '.join(sorted(MASK_RECIPES))})")
    res = evaluate_model_folder(model, data=data, split=split, threads=threads, limit=limit, masks=masks,
                                cache_dir=cache_dir)
    if out is not None:
        write_json_atomic(out, res)
    emit_json({k: v for k, v in res.items() if k != "report"})


@app.command("card")
def card(
    model: Path = typer.Argument(..., help="Mask R-CNN model folder."),
    test_json: Optional[Path] = typer.Option(None, "--test-json", help="Figures written by `segment eval --out`."),
    notes: Optional[Path] = typer.Option(None, "--notes", help="A markdown file appended to the card."),
) -> None:
    """Write MODEL/card.md of a Mask R-CNN model folder from its config, history and test figures."""
    conf = read_config_dict(model / "config.json")
    if conf.get("kind") != "maskrcnn":
        raise InputError(model / "config.json", f"kind is {conf.get('kind')!r}; `segment card` writes Mask R-CNN "
                                                "cards (kind 'maskrcnn')")
    test = read_json(test_json) if test_json else None
    cmds = {"train": "bloodsmear segment train configs/segmenter/maskrcnn.yaml",
            "test": f"bloodsmear segment eval {model} --split test --threads 2"}
    text = render_card(model, test, commands=cmds, notes=notes.read_text() if notes else "")
    write_text_atomic(model / "card.md", text)
    emit_json({"card": str(model / "card.md")})


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
    images: List[Path] = typer.Argument(..., help="Images or folders (unreadable images are reported and "
                                                  "skipped)."),
    mode: str = typer.Option("auto", "--mode", help="Pooling shown in the 'used' column: auto, field or folder "
                                                    "(as analyze --scale: per folder and pixel size; a field "
                                                    "without enough like fields checked against its size and "
                                                    "its parts)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Typical red-cell diameter (px) of each image, and the one `analyze --scale MODE` uses (as analyze pools)."""
    log = logging.getLogger(__name__)
    mode = mode.strip().lower()
    if mode not in SCALE_MODES:
        raise BloodsmearError(f"--mode: unknown scale mode {mode!r} (valid: {', '.join(SCALE_MODES)})")
    max_side = PipelineConfig().scale_max_side  # measured as the pipeline does
    rows, shapes, skipped = [], [], 0
    for p in [f for i in images for f in list_images(i)]:
        try:
            rgb = read_image(p)
        except InputError as err:
            log.warning("skipped %s", err)
            skipped += 1
            continue
        own, confidence = rbc_estimate(*small_copy(rgb, max_side))
        rows.append([str(p), own, confidence])
        shapes.append(rgb.shape[:2])
    # the choice `analyze` makes: the folder's consensus (`plan_for`), else the field's own check
    plan = pool_scales([Path(r[0]) for r in rows], [r[1] for r in rows], shapes, mode) if mode != "field" else {}
    chosen = [plan.get(Path(r[0])) or own_choice(*small_copy(read_image(Path(r[0])), max_side), mode, r[1],
                                                  name=r[0])
              for r in rows]
    for r, c in zip(rows, chosen):
        r += [c.diameter_px, c.source]
    print_table("red-cell diameter", ["image", "diameter px", "confidence", f"used ({mode})", "source"], rows)
    d = [r[1] for r in rows if r[1] is not None and np.isfinite(r[1])]
    if skipped:
        log.warning("%d image(s) skipped", skipped)
    if json_out:
        emit_json({"images": [{"path": r[0], "diameter_px": r[1], "confidence": r[2], "used_px": r[3],
                               "source": r[4]} for r in rows],
                   "median_diameter_px": float(np.median(d)) if d else None, "skipped": skipped})
