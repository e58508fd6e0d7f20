"""Training objectives: what one step computes from a model and a batch.

An objective is a callable `objective(model, batch, target_batch=None) -> StepOutput`:
- `batch` is `(x, y)` from the source loader; `target_batch` is `(x_t, y_t)` from an optional second
  (target-domain) loader, passed only when the trainer was given one (DANN-style objectives).
- `StepOutput.loss` is the scalar to back-propagate; `logs` holds floats averaged per epoch in the
  history; `logits`/`targets` (optional) feed the training accuracy/precision columns.

Objectives may own parameters (a domain discriminator): `parameters()` returns them so the trainer
adds them to the optimizer, and `state_dict()`/`load_state_dict()` let checkpoints carry them.
Register new ones with `@register_objective("name")`; build with `build_objective(name, **kwargs)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass
class StepOutput:
    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None

    def __iter__(self):  # allows `loss, logs = objective(model, batch)`
        yield self.loss
        yield self.logs


class Objective(nn.Module):
    """Base class: an nn.Module so that objectives with parameters checkpoint like models."""

    needs_target: bool = False

    def forward(self, model: nn.Module, batch, target_batch=None) -> StepOutput:  # pragma: no cover
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        """Hook for schedules inside the objective (e.g. the DANN lambda ramp)."""


_OBJECTIVES: dict[str, Callable[..., Objective]] = {}


def register_objective(name: str):
    def deco(factory):
        _OBJECTIVES[name] = factory
        return factory

    return deco


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def build_objective(name: str, **kwargs) -> Objective:
    if name not in _OBJECTIVES:
        raise KeyError(f"unknown objective {name!r} (valid: {', '.join(list_objectives())})")
    return _OBJECTIVES[name](**kwargs)


@register_objective("supervised")
class SupervisedObjective(Objective):
    """Cross-entropy on the labelled batch (optional label smoothing and class weights)."""

    def __init__(self, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None, **_ignored):
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("class_weights", class_weights if class_weights is not None else None)

    def forward(self, model: nn.Module, batch, target_batch=None) -> StepOutput:
        x, y = batch
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y, weight=self.class_weights, label_smoothing=self.label_smoothing)
        return StepOutput(loss=loss, logs={"loss": float(loss.detach())}, logits=logits.detach(), targets=y)


__all__ = ["StepOutput", "Objective", "SupervisedObjective", "register_objective", "build_objective",
           "list_objectives"]
