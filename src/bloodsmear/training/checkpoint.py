"""One checkpoint/resume format for every training (classifier, fast U-Net, Mask R-CNN).

    save_checkpoint(path, model=net, optimizer=opt, scheduler=sched, objective=obj, epoch=3, iteration=600,
                    config=cfg.to_dict(), ignore=RESUMABLE_KEYS, extra={"history": history})
    ck = load_checkpoint(path, model=net, optimizer=opt, scheduler=sched, objective=obj,
                         config=cfg.to_dict(), ignore=RESUMABLE_KEYS)   # None when there is none
    ck.epoch, ck.iteration, ck.extra

A checkpoint is one file written atomically (a kill never leaves half a file): model, optimizer,
scheduler and objective state dicts, epoch / iteration counters, the RNG states (torch, numpy's global
generator, Python's `random`), the training config and its hash, and the loop's own state (`extra`: history, best score,
elapsed time, ...; stored beside the reserved keys, top level). Loading restores all of it in place. A checkpoint
written for another config is refused with one `InputError` line naming the differing keys; keys in
`ignore` (time budgets, thread counts) may change between runs.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from bloodsmear.errors import InputError
from bloodsmear.io import atomic_path

FORMAT = "bloodsmear-checkpoint/1"
RESERVED = frozenset({"format", "model", "optimizer", "scheduler", "objective", "epoch", "iteration", "rng", "config",
                      "config_hash"})


@dataclass
class Checkpoint:
    epoch: int = 0
    iteration: int = 0
    extra: dict = field(default_factory=dict)
    config: dict | None = None


def config_hash(config: dict | None, ignore: Iterable[str] = ()) -> str | None:
    """sha1 (12 hex digits) of a config dict without the `ignore`d top-level keys."""
    if config is None:
        return None
    skip = set(ignore)
    d = {k: v for k, v in config.items() if k not in skip}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def config_diff(old: dict, new: dict, ignore: Iterable[str] = ()) -> list[str]:
    """Top-level keys whose values differ between two config dicts (`ignore`d keys left out)."""
    skip = set(ignore)
    return sorted(k for k in set(old) | set(new) if k not in skip and old.get(k) != new.get(k))


def check_same_config(path: str | Path, old: dict | None, new: dict | None, ignore: Iterable[str] = ()) -> None:
    """Refuse to resume from `path` when it was written with another config (a silent mix would be wrong)."""
    if old is None or new is None:
        return
    diff = config_diff(old, new, ignore)
    if diff:
        raise InputError(path, f"checkpoint was written with a different config (differs in: {', '.join(diff)}); "
                               "use another out_dir or --restart")


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "python" in state:
        random.setstate(state["python"])


def _state(obj) -> Any:
    return obj.state_dict() if obj is not None and hasattr(obj, "state_dict") else None


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer=None, scheduler=None, objective=None,
                    epoch: int = 0, iteration: int = 0, config: dict | None = None, ignore: Iterable[str] = (),
                    extra: dict | None = None) -> Path:
    """Write the whole training state to `path` atomically; returns the path."""
    path = Path(path)
    clash = sorted(RESERVED & set(extra or {}))
    if clash:
        raise ValueError(f"save_checkpoint: extra keys {clash} are reserved")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "model": model.state_dict(), "optimizer": _state(optimizer),
             "scheduler": _state(scheduler), "objective": _state(objective), "epoch": int(epoch),
             "iteration": int(iteration), "rng": rng_state(), "config": config,
             "config_hash": config_hash(config, ignore), **(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(state, str(tmp))
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict (CPU tensors); InputError when the file is not one of ours."""
    path = Path(path)
    try:
        ck = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise InputError(path, f"unreadable checkpoint ({e.__class__.__name__}: {e})") from e
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise InputError(path, f"not a {FORMAT} checkpoint (written by an older version?); use another out_dir "
                               "or --restart")
    return ck


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer=None, scheduler=None, objective=None,
                    config: dict | None = None, ignore: Iterable[str] = (),
                    restore_rng: bool = True) -> Checkpoint | None:
    """Restore a checkpoint into the given objects (in place); None when `path` does not exist.

    With `config`, a checkpoint written for a different config (outside `ignore`) is an InputError."""
    path = Path(path)
    if not path.is_file():
        return None
    ck = read_checkpoint(path)
    if config is not None and ck.get("config") is not None and ck.get("config_hash") != config_hash(config, ignore):
        check_same_config(path, ck["config"], config, ignore)
    model.load_state_dict(ck["model"])
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (objective, "objective")):
        if obj is not None and ck.get(key) is not None and hasattr(obj, "load_state_dict"):
            obj.load_state_dict(ck[key])
    if restore_rng and ck.get("rng"):
        set_rng_state(ck["rng"])
    return Checkpoint(epoch=int(ck["epoch"]), iteration=int(ck["iteration"]), extra={k: v for k, v in ck.items() if k not in RESERVED},
                      config=ck.get("config"))


__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "read_checkpoint", "check_same_config",
           "config_diff", "config_hash", "rng_state", "set_rng_state"]
