"""Data-parallel training on several processes: torch DDP, launched by torchrun (docs/multi-gpu.md).

    torchrun --nproc_per_node 2 -m bloodsmear train configs/classifier/pbc_mobilenetv2.yaml

    with session("auto"):                      # process group from torchrun's env vars; no-op without them
        loader = shard(ArrayLoader(...))       # this rank's part of every epoch (DistributedSampler)
        step = wrap(model, objective, device)  # DDP around model + objective (gradients averaged)
        sums, n = reduce_sums(sums, n)         # epoch figures over every rank

Launched means torchrun's RANK and WORLD_SIZE (> 1) are set; MASTER_ADDR/MASTER_PORT/LOCAL_RANK are
read by `init_process_group("env://")`. Backend nccl when the run trains on CUDA (each process on
cuda:LOCAL_RANK), else gloo. Every rank computes the same seeded epoch order and takes its strided
part (padded so every rank has the same number of batches); the model and the objective (DANN: the
domain classifier behind the gradient-reversal layer) are one DDP module, so every trainable weight is
averaged and every rank ends with the same model. Only rank 0 writes (checkpoints, model folders,
tables), logs at INFO and draws progress bars. Not launched, every function here is the identity / a
no-op and training is exactly the single-process one.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from bloodsmear.errors import BloodsmearError
from bloodsmear.training.objectives import Objective, StepOutput

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ who am I
def launched() -> bool:
    """True when started by torchrun (or an equivalent launcher) with more than one process."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True while a process group is up."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    if active():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (also after the group is torn down, from torchrun's RANK), or a single process."""
    return rank() == 0


def describe() -> dict | None:
    """{"world_size", "backend"} of the running group (recorded in model folders), None when single."""
    if not active() or world_size() < 2:
        return None
    return {"world_size": world_size(), "backend": str(dist.get_backend()), "launcher": "torchrun"}


def describe_text(d: dict | None) -> str:
    """A card's words for `describe()`'s dict: "" for a single process."""
    if not d:
        return ""
    return (f", data-parallel on {d['world_size']} processes (torch DDP, {d['backend']}; the batch size is "
            "per process)")


# -------------------------------------------------------------------------------------------- session
def _wants_cuda(device: str | torch.device | None) -> bool:
    name = str(device) if device is not None else "auto"
    return torch.cuda.is_available() and (name in ("", "auto") or name.startswith("cuda"))


@contextmanager
def session(device: str | torch.device | None = "auto") -> Iterator[dict | None]:
    """The process group of a torchrun launch for the block (yields `describe()`); a no-op otherwise.

    `device` is the run's device setting: CUDA -> nccl, one GPU per process (LOCAL_RANK); else gloo.
    Ranks other than 0 log warnings only. A barrier before a clean exit; torn down either way."""
    if not launched() or active():
        yield describe()
        return
    cuda = _wants_cuda(device)
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    pkg = logging.getLogger("bloodsmear")
    level = pkg.level
    if not is_main():
        pkg.setLevel(logging.WARNING)
    log.info("torchrun: %d processes, backend %s", world_size(), dist.get_backend())
    ok = False
    try:
        yield describe()
        ok = True
    finally:
        try:
            if ok:
                dist.barrier()
        finally:
            dist.destroy_process_group()
            pkg.setLevel(level)


def local_device(device: torch.device) -> torch.device:
    """Under a group, a CUDA device becomes this process's GPU (cuda:LOCAL_RANK)."""
    if active() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def barrier() -> None:
    if active():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (filling caches), the other ranks after it (reading them)."""
    if not active():
        yield
        return
    if not is_main():
        dist.barrier()
    yield
    if is_main():
        dist.barrier()


# --------------------------------------------------------------------------------------------- shards
def shard_len(n: int, world: int) -> int:
    """Samples per rank of an n-sample epoch (padded up: every rank the same number)."""
    return n if world <= 1 else -(-n // world)


def shard_positions(n: int, rank_: int, world: int) -> np.ndarray:
    """Positions of an n-long epoch order that rank `rank_` of `world` takes (DistributedSampler, strided)."""
    if world <= 1:
        return np.arange(n)
    return np.fromiter(iter(DistributedSampler(range(n), num_replicas=world, rank=rank_, shuffle=False)),
                       dtype=np.int64, count=shard_len(n, world))


def shard(loader):
    """Give a loader (`ArrayLoader`, `MapLoader`) this rank's shard of every epoch; returns it."""
    loader.shard = (rank(), world_size())
    return loader


def resume_config(config: dict) -> dict:
    """A checkpoint's config plus the world size when > 1 (the steps per epoch depend on it)."""
    return {**config, "world_size": world_size()} if world_size() > 1 else config


# ------------------------------------------------------------------------------------------------ DDP
class _Step(nn.Module):
    """Model and objective as one module, so that DDP sees every trainable weight of a step."""

    def __init__(self, model: nn.Module, objective: nn.Module):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch, target_batch=None) -> StepOutput:
        return self.objective(self.model, batch, target_batch)


class DistributedStep(Objective):
    """An objective whose step runs through DistributedDataParallel (gradients all-reduced)."""

    def __init__(self, model: nn.Module, objective: Objective, device: torch.device | None = None):
        super().__init__()
        self.needs_target = objective.needs_target
        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device is not None and device.type == "cuda" else None
        self.ddp = DistributedDataParallel(_Step(model, objective), device_ids=ids)

    def forward(self, model: nn.Module, batch, target_batch=None) -> StepOutput:
        return self.ddp(batch, target_batch)


def wrap(model: nn.Module, objective: Objective, device: torch.device | None = None) -> Objective:
    """The objective to step with: DDP-wrapped under a group (weights broadcast from rank 0), else itself."""
    return DistributedStep(model, objective, device) if active() and world_size() > 1 else objective


# -------------------------------------------------------------------------------------------- reduce
def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def reduce_sums(sums: dict[str, float], n: int) -> tuple[dict[str, float], int]:
    """(sums, count) added over every rank (same keys on every rank); unchanged when single."""
    if not active():
        return sums, n
    keys = sorted(sums)
    t = torch.tensor([float(sums[k]) for k in keys] + [float(n)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    vals = t.cpu().tolist()
    return dict(zip(keys, vals[:-1])), int(round(vals[-1]))


def gather_arrays(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Every rank's list of arrays, rank by rank (for metrics over the whole epoch); unchanged when single."""
    if not active():
        return arrays
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, list(arrays))
    return [a for part in out for a in part]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s object on every rank (a decision or a result); `obj` itself when single."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def agree(value: Any, what: str) -> Any:
    """`value`, checked equal on every rank; one BloodsmearError line naming `what` when not."""
    if not active():
        return value
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    if any(v != out[0] for v in out):
        raise BloodsmearError(f"torchrun: the processes disagree on {what} ({out}); with several machines "
                              "out_dir must be on a filesystem they all share")
    return value


__all__ = ["launched", "active", "rank", "world_size", "is_main", "describe", "describe_text", "session",
           "local_device", "barrier", "main_first", "shard_len", "shard_positions", "shard", "resume_config",
           "DistributedStep", "wrap", "reduce_sums", "gather_arrays", "broadcast_object", "agree"]
