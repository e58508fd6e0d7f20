"""Fit a classifier from a `TrainConfig`: data -> cached arrays -> model -> epochs -> model folder.

    result = train(load_train_config("configs/classifier/pbc_mobilenetv2.yaml"))
    result.test.macro_f1, result.model_dir, result.train_seconds

`fit()` is the reusable loop (checkpoint every epoch, resume, early stopping on validation macro-F1,
time budget, optional target loader for domain adaptation objectives); `train()` wires a config to it.
Re-running `train()` with the same config and out_dir resumes from `out_dir/checkpoint.pt` (after a
kill); a finished run is not retrained unless `restart=True`.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bloodsmear.config import TrainConfig
from bloodsmear.errors import InputError
from bloodsmear.io import read_json, write_json_atomic, write_text_atomic
from bloodsmear.metrics.classification import ClassificationReport
from bloodsmear.metrics.plots import plot_confusion, plot_history
from bloodsmear.models.artifact import ModelInfo, load_model, save_model
from bloodsmear.models.card import render_card
from bloodsmear.models.classifier import build_classifier
from bloodsmear.training.checkpoint import check_same_config, load_checkpoint, save_checkpoint
from bloodsmear.training.distributed import (agree, barrier, broadcast_object, describe, describe_text, is_main,
                                             local_device, main_first, resume_config, shard, shard_len, world_size,
                                             wrap)
from bloodsmear.training.engine import evaluate, resolve_device, train_one_epoch
from bloodsmear.training.loaders import ArrayLoader
from bloodsmear.training.objectives import build_objective
from bloodsmear.training.prepare import prepare_data

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
RESUMABLE_KEYS = ("max_train_minutes", "threads", "eval_batch_size")  # may change when resuming


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int  # 1-based; 0 = no validation
    best_val_f1: float
    epochs_run: int
    train_seconds: float
    stopped: str  # "completed" | "early_stopping" | "time_budget"


@dataclass
class TrainResult:
    out_dir: Path
    model_dir: Path
    history: list[dict]
    val: ClassificationReport | None
    test: ClassificationReport | None
    best_epoch: int
    epochs_run: int
    train_seconds: float
    stopped: str
    model: torch.nn.Module | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "model_dir": str(self.model_dir), "best_epoch": self.best_epoch,
                "epochs_run": self.epochs_run, "train_seconds": round(self.train_seconds, 1), "stopped": self.stopped,
                "val": self.val.headline() if self.val else None, "test": self.test.headline() if self.test else None}


# ----------------------------------------------------------------------------------------------- optim
def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, extra_params: list | None = None) -> torch.optim.Optimizer:
    o = cfg.optim
    bb = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    groups = [{"params": rest, "lr": o.lr}]
    if bb:
        groups.append({"params": bb, "lr": o.lr * o.backbone_lr_mult})
    if extra_params:
        groups.append({"params": list(extra_params), "lr": o.lr})
    name = o.name.lower()
    if name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=True)
    raise ValueError(f"unknown optimizer {o.name!r} (valid: adam, adamw, sgd)")


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """A per-step LR scheduler (or None)."""
    s = cfg.schedule
    total = max(1, steps_per_epoch * cfg.epochs)
    name = s.name.lower()
    if name == "none":
        return None
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=s.warmup_frac, final_div_factor=1.0 / max(s.min_lr_frac, 1e-6) / 25.0)
    if name == "cosine":
        warm = int(total * s.warmup_frac)

        def f(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = (step - warm) / max(1, total - warm)
            return s.min_lr_frac + (1 - s.min_lr_frac) * 0.5 * (1 + np.cos(np.pi * min(1.0, t)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, f)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size * steps_per_epoch, gamma=s.gamma)
    raise ValueError(f"unknown schedule {s.name!r} (valid: none, cosine, onecycle, step)")


# ------------------------------------------------------------------------------------------------- fit
def fit(model: torch.nn.Module, objective, train_loader, val_loader, optimizer, *, epochs: int, classes: list[str],
        scheduler=None, target_loader=None, checkpoint: str | Path | None = None, patience: int | None = None,
        max_minutes: float | None = None, progress: bool = True, extra_state: dict | None = None,
        on_epoch_end: Callable[[dict], None] | None = None, device: torch.device | None = None,
        config: dict | None = None) -> FitResult:
    """Train for up to `epochs`, evaluating on `val_loader` (may be None) after each epoch.

    Checkpoints (`training.checkpoint`: model, optimizer, scheduler, objective, RNG, history, best weights,
    elapsed time) are written atomically to `checkpoint` after every epoch; when the file exists the loop
    resumes from it (refused when written for another `config`, outside RESUMABLE_KEYS). The best
    validation macro-F1 weights are restored into `model` at the end.
    """
    ckpt_path = Path(checkpoint) if checkpoint else None
    if ckpt_path is not None:  # torchrun: every rank resumes from the one checkpoint, or none does
        agree(ckpt_path.is_file(), f"whether {ckpt_path} exists")
    history: list[dict] = []
    start_epoch, best_f1, best_epoch, elapsed, best_state, stopped = 0, -1.0, 0, 0.0, None, "completed"
    ck = load_checkpoint(ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler, objective=objective,
                         config=config, ignore=RESUMABLE_KEYS) if ckpt_path is not None else None
    if ck is not None:
        x = ck.extra
        start_epoch, history = ck.epoch, list(x["history"])
        best_f1, best_epoch, elapsed = float(x["best_f1"]), int(x["best_epoch"]), float(x["elapsed"])
        best_state, stopped = x.get("best_state"), x.get("stopped", "completed")
        log.info("resumed from %s after epoch %d (%.0f s trained so far)", ckpt_path, start_epoch, elapsed)
        if x.get("finished"):
            start_epoch = epochs
    step = wrap(model, objective, device)  # under torchrun: model + objective in DistributedDataParallel
    for epoch in range(start_epoch, epochs):
        if hasattr(objective, "on_epoch_start"):
            objective.on_epoch_start(epoch, epochs)
        t0 = time.perf_counter()
        tr = train_one_epoch(model, step, train_loader, optimizer, scheduler=scheduler, target_loader=target_loader,
                             epoch=epoch, classes=classes, progress=progress, device=device)
        train_s = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "train_seconds": round(train_s, 2)}
        row.update({f"train_{k}": v for k, v in tr.items()})
        if val_loader is not None:
            ev = evaluate(model, val_loader, classes, device=device)
            row.update(val_loss=ev.loss, val_accuracy=ev.report.accuracy, val_precision=ev.report.macro_precision,
                       val_recall=ev.report.macro_recall, val_f1=ev.report.macro_f1)
            if broadcast_object(ev.report.macro_f1 >= best_f1):  # ties: the later epoch; torchrun: rank 0's call
                best_f1, best_epoch = ev.report.macro_f1, epoch + 1
                best_state = copy.deepcopy(model.state_dict())
        elapsed += time.perf_counter() - t0
        row["elapsed_seconds"] = round(elapsed, 1)
        history.append(row)
        log.info("epoch %d/%d: %s", epoch + 1, epochs, ", ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "epoch"))
        if on_epoch_end is not None:
            on_epoch_end(row)
        done = epoch + 1 == epochs
        if patience is not None and val_loader is not None and epoch + 1 - best_epoch >= patience and not done:
            stopped, done = "early_stopping", True
        if max_minutes is not None and elapsed > max_minutes * 60 and not done:
            stopped, done = "time_budget", True
        stopped, done = broadcast_object((stopped, done))  # rank 0 decides for every rank (clocks differ)
        if ckpt_path is not None and is_main():
            save_checkpoint(ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler, objective=objective,
                            epoch=epoch + 1, iteration=(epoch + 1) * len(train_loader), config=config,
                            ignore=RESUMABLE_KEYS,
                            extra={"history": history, "best_f1": best_f1, "best_epoch": best_epoch,
                                   "best_state": best_state, "elapsed": elapsed, "finished": done,
                                   "stopped": stopped, "extra": extra_state or {}})
        if done:
            if stopped != "completed":
                log.info("stopping after epoch %d: %s", epoch + 1, stopped.replace("_", " "))
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(history=history, best_epoch=best_epoch, best_val_f1=best_f1, epochs_run=len(history),
                     train_seconds=elapsed, stopped=stopped)


# ----------------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig, *, restart: bool = False, progress: bool = True, write_card: bool = True) -> TrainResult:
    """Run one experiment end to end and write the model folder `out_dir/model`."""
    torch.set_num_threads(max(1, int(cfg.threads)))
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    if restart and ckpt.exists() and is_main():
        ckpt.unlink()
    barrier()  # torchrun: rank 0 writes, every rank reads (train_config.json, the checkpoint, caches)
    _check_resume_config(cfg, out, ckpt)
    if is_main():
        write_json_atomic(out / "train_config.json", cfg.to_dict())
    with main_first():
        data = prepare_data(cfg, progress=progress and is_main())
    model = build_classifier(cfg.model.backbone, len(data.classes), mode=cfg.model.mode,
                             pretrained=(cfg.model.weights or True) if cfg.model.pretrained else False,
                             hidden=cfg.model.hidden, dropout=cfg.model.dropout)
    if cfg.model.init_from:
        _init_from(model, cfg.model.init_from, data.classes)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    spec = model.backbone.spec
    mk = dict(mean=spec.mean, std=spec.std, channels_last=cfg.channels_last)
    drop_last = shard_len(len(data.train_y), world_size()) > cfg.batch_size
    train_loader = shard(ArrayLoader(data.train_x, data.train_y, batch_size=cfg.batch_size, shuffle=True,
                                     augment=cfg.augment, balanced=cfg.balanced_sampling, seed=cfg.seed,
                                     drop_last=drop_last, **mk))
    val_loader = ArrayLoader(data.val_x, data.val_y, batch_size=cfg.eval_batch_size, **mk) if len(data.val_y) else None
    objective = build_objective(cfg.objective, label_smoothing=cfg.label_smoothing)
    dist_info = describe()  # None for a single process (CPU, as always); torchrun: GPU per process if any
    dev = local_device(resolve_device("auto")) if dist_info else None
    if dev is not None:
        model, objective = model.to(dev), objective.to(dev)
    optimizer = build_optimizer(cfg, model, [p for p in objective.parameters()])
    scheduler = build_scheduler(cfg, optimizer, len(train_loader))
    log.info("training %s (%s, %s) on %d images, %d classes, %d px, %d epochs of %d steps", cfg.model.backbone,
             cfg.model.mode, "ImageNet" if cfg.model.pretrained else "random init", len(data.train_y),
             len(data.classes), cfg.data.image_size, cfg.epochs, len(train_loader))
    fr = fit(model, objective, train_loader, val_loader, optimizer, epochs=cfg.epochs, classes=data.classes,
             scheduler=scheduler, checkpoint=ckpt, patience=cfg.early_stopping_patience,
             max_minutes=cfg.max_train_minutes, progress=progress, config=resume_config(cfg.to_dict()), device=dev)
    if not is_main():  # torchrun: rank 0 scores the model and writes the folder
        return TrainResult(out_dir=out, model_dir=out / "model", history=fr.history, val=None, test=None,
                           best_epoch=fr.best_epoch, epochs_run=fr.epochs_run, train_seconds=fr.train_seconds,
                           stopped=fr.stopped, model=model)

    val_rep = evaluate(model, val_loader, data.classes, device=dev).report if val_loader is not None else None
    test_rep = None
    if len(data.test_y):
        test_loader = ArrayLoader(data.test_x, data.test_y, batch_size=cfg.eval_batch_size, **mk)
        test_rep = evaluate(model, test_loader, data.classes, device=dev).report
    model = model.cpu() if dev is not None else model
    info = ModelInfo(backbone=cfg.model.backbone, classes=list(data.classes), input_size=cfg.data.image_size,
                     mean=list(spec.mean), std=list(spec.std), crop_fraction=cfg.data.crop_fraction,
                     mode=cfg.model.mode, hidden=cfg.model.hidden, dropout=cfg.model.dropout, name=cfg.name,
                     seed=cfg.seed, training={**cfg.to_dict(), **({"distributed": dist_info} if dist_info else {})})
    metrics = {"test": test_rep.to_dict() if test_rep else None, "val": val_rep.to_dict() if val_rep else None,
               "best_epoch": fr.best_epoch, "epochs_run": fr.epochs_run, "train_seconds": round(fr.train_seconds, 1),
               "stopped": fr.stopped, "n_train": int(len(data.train_y)), "n_val": int(len(data.val_y)),
               "n_test": int(len(data.test_y)), **({"distributed": dist_info} if dist_info else {})}
    model_dir = out / "model"
    save_model(model, model_dir, info, history=fr.history, metrics=metrics, manifest=data.manifest)
    plot_history(fr.history, model_dir / "history.png", title=cfg.name)
    if test_rep is not None:
        plot_confusion(test_rep, model_dir / "confusion_test.png", title=f"{cfg.name} test")
    if write_card:
        write_text_atomic(model_dir / "card.md", render_card(info, metrics, fr.history, data,
                                                          extra=_distributed_note(dist_info, cfg.batch_size)))
    write_json_atomic(out / "result.json", {**metrics, "model_dir": str(model_dir)})
    return TrainResult(out_dir=out, model_dir=model_dir, history=fr.history, val=val_rep, test=test_rep,
                       best_epoch=fr.best_epoch, epochs_run=fr.epochs_run, train_seconds=fr.train_seconds,
                       stopped=fr.stopped, model=model)


def _distributed_note(d: dict | None, batch: int) -> str:
    if not d:
        return ""
    return f"Trained{describe_text(d)}: {d['world_size']} x {batch} = {d['world_size'] * batch} images per step."


def _init_from(model: torch.nn.Module, ref: str, classes: list[str]) -> None:
    """Start from a trained model folder's weights (same backbone, classes and head)."""
    src = load_model(ref)
    if list(src.info.classes) != list(classes) or src.info.backbone != model.backbone.spec.name:
        raise InputError(str(src.path), f"init_from model has backbone {src.info.backbone} and classes {src.info.classes}; "
                                        f"this run needs {model.backbone.spec.name} and {classes}")
    model.load_state_dict(src.model.state_dict())
    log.info("initialised all weights from %s", src.path)


def _check_resume_config(cfg: TrainConfig, out: Path, ckpt: Path) -> None:
    """Refuse to resume a checkpoint written for a different config (a silent mix would be wrong)."""
    prev = out / "train_config.json"
    if ckpt.exists() and prev.exists():
        check_same_config(ckpt, read_json(prev), cfg.to_dict(), RESUMABLE_KEYS)


__all__ = ["fit", "train", "FitResult", "TrainResult", "build_optimizer",
           "build_scheduler"]
