"""The segmenters' objectives for the one training engine (`engine.train_one_epoch`).

    build_objective("segmentation")   # fast U-Net: batch (x, fg, centre) -> seg_loss
    build_objective("maskrcnn")       # torchvision Mask R-CNN: batch (images, targets) -> sum of its losses

Neither has parameters of its own nor classifier logits (no training accuracy columns).
"""

from __future__ import annotations

import torch
from torch import nn

from bloodsmear.training.objectives import Objective, StepOutput, register_objective

CENTRE_WEIGHT = 2.0


def seg_losses(out: torch.Tensor, fg: torch.Tensor, cen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(foreground BCE, centredness BCE) of the U-Net's 2 output maps (logits) against their targets."""
    bce = nn.functional.binary_cross_entropy_with_logits
    return bce(out[:, :1], fg), bce(out[:, 1:2], cen)


def seg_loss(out: torch.Tensor, fg: torch.Tensor, cen: torch.Tensor) -> torch.Tensor:
    """The fast segmenter's training loss: foreground BCE + 2 x centredness BCE."""
    f, c = seg_losses(out, fg, cen)
    return f + CENTRE_WEIGHT * c


@register_objective("segmentation")
class SegmentationObjective(Objective):
    """Fast U-Net: foreground + centredness loss on a batch (x, fg, centre) of crops."""

    def __init__(self, **_ignored):
        super().__init__()

    def forward(self, model: nn.Module, batch, target_batch=None) -> StepOutput:
        x, fg, cen = batch
        f, c = seg_losses(model(x), fg, cen)
        loss = f + CENTRE_WEIGHT * c
        return StepOutput(loss=loss, logs={"loss": float(loss.detach()), "fg_loss": float(f.detach()),
                                           "centre_loss": float(c.detach())})


@register_objective("maskrcnn")
class MaskRCNNObjective(Objective):
    """torchvision Mask R-CNN in training mode: the sum of its loss dict on (images, targets)."""

    def __init__(self, **_ignored):
        super().__init__()

    def forward(self, model: nn.Module, batch, target_batch=None) -> StepOutput:
        images, targets = batch
        losses = model(list(images), list(targets))
        loss = sum(losses.values())
        logs = {k: float(v.detach()) for k, v in losses.items()}
        logs["loss"] = float(loss.detach())
        return StepOutput(loss=loss, logs=logs)


__all__ = ["SegmentationObjective", "MaskRCNNObjective", "seg_loss", "seg_losses"]
