"""Re-estimate batch-norm statistics on unlabelled data (test-time adaptation, issue 12 item 4).

    adapted = adapt_batchnorm(model, loader)    # a new model; `model` is untouched

Every BatchNorm layer's running mean and variance are reset and re-estimated as the plain average
over the loader's batches (momentum None), with the layers in train mode and everything else (dropout,
...) in eval mode, without gradients. Labels are never used: the loader may yield `x` or `(x, y)`.
Weights (affine scale and shift, convolutions, head) do not change. A BatchNorm layer that no batch
reached (e.g. the frozen trunk of a `TailModel`, whose input is the cached maps) keeps its statistics.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

_BN = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, loader, *, device: torch.device | str | None = None) -> nn.Module:
    """A copy of `model` with its BatchNorm statistics re-estimated on `loader`'s inputs (module doc)."""
    out = copy.deepcopy(model)
    if device is not None:
        out.to(device)
    bns = [m for m in out.modules() if isinstance(m, _BN) and m.track_running_stats]
    saved = {id(m): (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
             for m in bns}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    out.eval()
    for m in bns:
        m.train()
    seen = 0
    for batch in loader:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if device is not None:
            x = x.to(device)
        out(x)
        seen += 1
    if seen == 0:
        raise ValueError("adapt_batchnorm: the loader is empty")
    for m in bns:
        mean, var, n, momentum = saved[id(m)]
        if int(m.num_batches_tracked) == 0:  # never reached by a batch: keep what it had
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)
        m.momentum = momentum
    out.eval()
    return out


__all__ = ["adapt_batchnorm"]
