"""One training engine (torchvision-references style): `train_one_epoch` and `evaluate`.

    stats = train_one_epoch(model, objective, train_loader, optimizer, scheduler=sched, epoch=3)
    result = evaluate(model, val_loader, classes)        # EvalResult: report, loss, probs, y_true

The objective decides what a step computes (supervised cross-entropy, DANN, the fast U-Net's
segmentation loss, Mask R-CNN's loss dict: `training.seg_objectives`); batches are tuples whose first
item is a tensor batch or a list of images (detection), moved to `device` with `to_device`; a second
`target_loader` (cycled) is passed to it batch by batch when given. `scheduler` is stepped once per
optimizer step (OneCycle/cosine-by-step); epoch-level schedulers are the caller's business.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bloodsmear.metrics.classification import ClassificationReport, classification_report_arrays
from bloodsmear.training.distributed import gather_arrays, is_main, reduce_sums
from bloodsmear.training.objectives import Objective

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    report: ClassificationReport
    loss: float
    probs: np.ndarray  # (N, C)
    y_true: np.ndarray
    y_pred: np.ndarray


def _cycle(loader: Iterable):
    while True:
        yield from loader


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; otherwise the named device ("cpu", "cuda", "cuda:1")."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    return dev


def to_device(batch, device: torch.device | None):
    """A batch (tensor, or tuple/list/dict of them, nested) moved to `device` (unchanged when None)."""
    if device is None or batch is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def batch_size(batch) -> int:
    """Samples in a batch: the first tensor's length, or the length of a list of images (detection)."""
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) else len(first)


def train_one_epoch(model: nn.Module, objective: Objective, loader, optimizer: torch.optim.Optimizer, *,
                    scheduler=None, target_loader=None, epoch: int = 0, classes: Sequence[str] | None = None,
                    progress: bool = True, max_grad_norm: float | None = None,
                    device: torch.device | None = None) -> dict[str, float]:
    """Train for one pass over `loader`; returns the epoch's mean logs plus accuracy/macro precision.

    Loaders yield CPU tensors; with `device` each batch is moved there (model and objective must be there).
    """
    model.train()
    objective.train()
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    target_iter = None
    if target_loader is not None:
        if hasattr(target_loader, "set_epoch"):
            target_loader.set_epoch(epoch)
        target_iter = _cycle(target_loader)
    sums: dict[str, float] = {}
    n_seen = 0
    preds, trues = [], []
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", disable=not progress or not is_main(), leave=False, dynamic_ncols=True)
    for batch in bar:
        tb = next(target_iter) if target_iter is not None else None
        batch, tb = to_device(batch, device), to_device(tb, device)
        out = objective(model, batch, tb)
        if not torch.isfinite(out.loss):
            raise FloatingPointError(f"non-finite loss {float(out.loss)} at epoch {epoch + 1}")
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        bs = batch_size(batch)
        n_seen += bs
        for k, v in out.logs.items():
            sums[k] = sums.get(k, 0.0) + float(v) * bs
        if out.logits is not None and out.targets is not None:
            preds.append(out.logits.argmax(1).cpu().numpy())
            trues.append(out.targets.cpu().numpy())
        bar.set_postfix(loss=f"{out.logs['loss'] if 'loss' in out.logs else float(out.loss.detach()):.4f}")
    sums, n_seen = reduce_sums(sums, n_seen)  # under torchrun: the epoch over every rank
    preds, trues = gather_arrays(preds), gather_arrays(trues)
    stats = {k: v / max(1, n_seen) for k, v in sums.items()}
    if preds:
        p, t = np.concatenate(preds), np.concatenate(trues)
        names = list(classes) if classes is not None else [str(i) for i in range(int(max(p.max(), t.max())) + 1)]
        rep = classification_report_arrays(t, p, names)
        stats.update(accuracy=rep.accuracy, precision=rep.macro_precision, recall=rep.macro_recall, f1=rep.macro_f1)
    stats["lr"] = float(optimizer.param_groups[0]["lr"])
    return stats


@torch.inference_mode()
def predict(model: nn.Module, loader, *, progress: bool = False,
            device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, C), labels (N,)) over a loader; labels are -1 where the loader has none."""
    model.eval()
    probs, ys = [], []
    for x, y in tqdm(loader, desc="predict", disable=not progress, leave=False):
        probs.append(torch.softmax(model(to_device(x, device)).float(), 1).cpu().numpy())
        ys.append(y.numpy())
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(probs), np.concatenate(ys)


def evaluate(model: nn.Module, loader, classes: Sequence[str], *, progress: bool = False,
             device: torch.device | None = None) -> EvalResult:
    """Score a model on a labelled loader: metrics report, mean cross-entropy, probabilities."""
    probs, y = predict(model, loader, progress=progress, device=device)
    if len(y) == 0:
        raise ValueError("evaluate: the loader is empty")
    pred = probs.argmax(1)
    p_true = probs[np.arange(len(y)), y]
    loss = float(-np.mean(np.log(np.clip(p_true, 1e-12, 1.0))))
    rep = classification_report_arrays(y, pred, classes)
    return EvalResult(report=rep, loss=loss if math.isfinite(loss) else float("nan"), probs=probs, y_true=y,
                      y_pred=pred)


__all__ = ["train_one_epoch", "evaluate", "predict", "EvalResult", "resolve_device", "to_device",
           "batch_size"]
