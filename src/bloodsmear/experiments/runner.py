"""`bloodsmear train CONFIG`: the config kinds, each a (config class, run function, CLI shortcuts).

    res = run_config_file("configs/domains/pbc_lisc.yaml", shortcuts={"epochs": 2}, sets=["device=cuda"])
    res.to_dict()

A config file's top-level `kind:` (default "classifier") picks its `Kind`. Every kind declares which
CLI shortcuts it takes and the dotted key each sets (`--epochs` is `epochs` for a classifier,
`train.epochs` for domains and DANN runs; the segmenters, `fast-unet` and `maskrcnn`, take none: they
count iterations or two epoch stages); `--set a.b=value` sets any key of the kind's config.
A shortcut the kind does not declare, or a `--set` key its config does not have, is one `InputError`
naming the valid ones.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bloodsmear.config import StrictConfig, TrainConfig, check_key, load_config, merge, nest, parse_overrides, read_config_dict
from bloodsmear.errors import BloodsmearError, InputError
from bloodsmear.experiments.dann import DannConfig, run_id, train_dann
from bloodsmear.experiments.domains import run_domains
from bloodsmear.experiments.domains_config import DomainsConfig
from bloodsmear.experiments.grid import GridConfig, load_grid_config, run_grid
from bloodsmear.experiments.lodo import run_lodo
from bloodsmear.experiments.lodo_config import LodoConfig
from bloodsmear.training.distributed import barrier, is_main, launched, session
from bloodsmear.training.maskrcnn_train import MaskRCNNTrainConfig, train_maskrcnn
from bloodsmear.training.seg_train import SegTrainConfig, train_segmenter
from bloodsmear.training.trainer import train

DEFAULT_KIND = "classifier"
DATA_PARALLEL_KINDS = ("classifier", "dann")  # trained data-parallel under torchrun (docs/multi-gpu.md)


@dataclass(frozen=True)
class Kind:
    """One config kind: its class, how a loaded config runs, and its CLI shortcuts (name -> dotted key)."""

    name: str
    config: type[StrictConfig]
    run: Callable[..., Any]  # (cfg, *, restart: bool, progress: bool) -> result with .to_dict()
    shortcuts: dict[str, str] = field(default_factory=dict)
    load: Callable[[Path, dict], StrictConfig] | None = None  # default: load_config(config, path, overrides)

    def load_file(self, path: str | Path, overrides: dict | None = None) -> StrictConfig:
        return self.load(Path(path), overrides or {}) if self.load else load_config(self.config, path, overrides)


def _run_classifier(cfg: TrainConfig, *, restart: bool = False, progress: bool = True):
    with session("auto"):  # torchrun: one process group for the run; a no-op otherwise
        return train(cfg, restart=restart, progress=progress)


def _run_domains(cfg: DomainsConfig, *, restart: bool = False, progress: bool = True):
    if restart:
        shutil.rmtree(Path(cfg.out_dir) / "runs", ignore_errors=True)
    return run_domains(cfg, progress=progress)


def _run_dann(cfg: DannConfig, *, restart: bool = False, progress: bool = True):
    with session(cfg.device):  # torchrun: one process group for the run; a no-op otherwise
        if restart and is_main():
            shutil.rmtree(Path(cfg.out_dir) / "runs" / run_id(cfg), ignore_errors=True)
        barrier()
        return train_dann(cfg, progress=progress)


def _run_lodo(cfg: LodoConfig, *, restart: bool = False, progress: bool = True):
    if restart:
        shutil.rmtree(Path(cfg.out_dir) / "runs", ignore_errors=True)
    return run_lodo(cfg, progress=progress)


def _run_grid(cfg: GridConfig, *, restart: bool = False, progress: bool = True):
    return run_grid(cfg, rerun=restart)


@dataclass(frozen=True)
class SegmenterRun:
    """What a segmenter training returns to `bloodsmear train`: the model folder and its summary figures."""

    figures: dict

    def to_dict(self) -> dict:
        return dict(self.figures)


def _run_fast_unet(cfg: SegTrainConfig, *, restart: bool = False, progress: bool = True) -> SegmenterRun:
    if restart:
        (Path(cfg.out_dir) / "checkpoint.pt").unlink(missing_ok=True)
    s = train_segmenter(cfg, progress=progress)
    best = s["best_val"] or {}
    return SegmenterRun({"model": str(Path(cfg.out_dir) / "best"), "iterations": s["iterations"],
                         "minutes": s["minutes"], "cpu_minutes": s["cpu_minutes"], "best_iter": s["best_iter"],
                         **{f"val_{k}": best.get(k) for k in ("precision", "recall", "f1")},
                         "best_val": s["best_val"], "config": s["config"], "data": s["data"]})


def _run_maskrcnn(cfg: MaskRCNNTrainConfig, *, restart: bool = False, progress: bool = True) -> SegmenterRun:
    if restart:
        (Path(cfg.out_dir) / "checkpoint.pt").unlink(missing_ok=True)
    return SegmenterRun({"model": str(train_maskrcnn(cfg))})


_TOP = {"epochs": "train.epochs", "lr": "train.lr", "batch_size": "train.batch_size", "seed": "train.seed",
        "pretrained": "train.pretrained", "out_dir": "out_dir", "device": "device"}  # domains and DANN runs

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("classifier", TrainConfig, _run_classifier,
         {"epochs": "epochs", "lr": "optim.lr", "batch_size": "batch_size", "seed": "seed",
          "pretrained": "model.pretrained", "out_dir": "out_dir"}),
    Kind("domains", DomainsConfig, _run_domains, dict(_TOP)),
    Kind("dann", DannConfig, _run_dann, dict(_TOP)),
    Kind("lodo", LodoConfig, _run_lodo, {k: v for k, v in _TOP.items() if k != "seed"}),  # seeds: a list
    Kind("grid", GridConfig, _run_grid,
         {"epochs": "epochs", "lr": "lr", "batch_size": "batch_size", "seed": "seed", "out_dir": "out"},
         load=lambda path, over: load_grid_config(path, over)),
    Kind("fast-unet", SegTrainConfig, _run_fast_unet,
         {"lr": "lr", "batch_size": "batch_size", "seed": "seed", "out_dir": "out_dir"},  # iterations, not epochs
         load=lambda path, over: SegTrainConfig.load(path, over)),
    Kind("maskrcnn", MaskRCNNTrainConfig, _run_maskrcnn,
         {"lr": "lr", "batch_size": "batch_size", "seed": "seed", "out_dir": "out_dir",
          "pretrained": "pretrained_backbone"},  # two epoch counts (heads, all): --set epochs_all=N
         load=lambda path, over: MaskRCNNTrainConfig.load(path, over)),
)}


def config_kind(path: str | Path) -> Kind:
    """The `Kind` named by a config file's `kind:` tag (default classifier)."""
    name = str(read_config_dict(path).get("kind", DEFAULT_KIND))
    if name not in KINDS:
        raise InputError(path, f"unknown config kind {name!r} (valid: {', '.join(KINDS)})")
    return KINDS[name]


def option_name(shortcut: str) -> str:
    return "--" + shortcut.replace("_", "-")


def build_overrides(kind: Kind, shortcuts: dict[str, Any] | None = None, sets: list[str] | None = None) -> dict:
    """The nested overrides of CLI shortcuts (None values skipped) and `--set KEY=VALUE` items."""
    over: dict = {}
    for name, value in (shortcuts or {}).items():
        if value is None:
            continue
        if name not in kind.shortcuts:
            valid = ", ".join(option_name(s) for s in kind.shortcuts)
            raise InputError(option_name(name), f"not an option of {kind.name} configs (valid: {valid}, or --set KEY=VALUE)")
        over = merge(over, nest(kind.shortcuts[name], value))
    sets_over = parse_overrides(sets, "--set")
    for item in sets or []:
        check_key(kind.config, item.partition("=")[0].strip(), f"--set ({kind.name} config)")
    return merge(over, sets_over)


def load_config_file(path: str | Path, shortcuts: dict[str, Any] | None = None,
                     sets: list[str] | None = None) -> tuple[Kind, StrictConfig]:
    """(kind, config) of a config file with the CLI overrides applied."""
    kind = config_kind(path)
    return kind, kind.load_file(path, build_overrides(kind, shortcuts, sets))


def run_config_file(path: str | Path, *, shortcuts: dict[str, Any] | None = None, sets: list[str] | None = None,
                    restart: bool = False, progress: bool = True):
    """Load and run the experiment in a config file; its `kind` picks the runner."""
    kind, cfg = load_config_file(path, shortcuts, sets)
    if launched() and kind.name not in DATA_PARALLEL_KINDS:
        raise BloodsmearError(f"torchrun: {kind.name} configs do not train data-parallel (only "
                              f"{', '.join(DATA_PARALLEL_KINDS)}); run it as one process")
    return kind.run(cfg, restart=restart, progress=progress)


__all__ = ["Kind", "KINDS", "config_kind", "build_overrides", "load_config_file", "run_config_file"]
