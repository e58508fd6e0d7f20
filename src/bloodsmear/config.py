"""Typed experiment configs, loaded from YAML or JSON and saved with every trained model.

    cfg = load_train_config("configs/classifier/pbc_mobilenetv2.yaml")
    cfg.optim.lr, cfg.model.backbone, cfg.to_dict()

Unknown keys are an error that names the key and the valid ones (a typo never silently does nothing).
Relative dataset paths resolve against the data root (`BLOODSMEAR_DATA`, see `bloodsmear.settings`),
other relative paths (split manifest, out dir) against the config file's folder's project, i.e. the
current working directory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from bloodsmear.errors import InputError
from bloodsmear.io import write_json_atomic, write_text_atomic
from bloodsmear.settings import data_root


@dataclass
class DataConfig:
    """Which images, which split, which classes, at what size."""

    dataset: str = "pbc224"  # folder; relative -> under the data root (BLOODSMEAR_DATA); or absolute
    format: str = "pbc"  # any `bloodsmear.data.FORMATS` entry
    split: str | None = None  # a saved split manifest (JSON); None -> make one from scheme + seed
    scheme: str = "64-16-20"
    split_seed: int = 42
    classes: list[str] | None = None  # None -> every label in the dataset, sorted
    class_map: dict[str, str] = field(default_factory=dict)  # label -> label (merge / rename)
    image_size: int = 96  # network input side (px)
    crop_fraction: float = 1.0  # centre square of this fraction of the short side, then resize
    max_per_class: int | None = None  # cap training images per class (seeded) for small-scale runs
    subset_fraction: float = 1.0  # keep this fraction (seeded, per split) for small-scale runs
    cache_dir: str | None = None  # decoded-array cache; None -> ~/.cache/bloodsmear/arrays


@dataclass
class ModelConfig:
    backbone: str = "mobilenet_v2"
    mode: str = "finetune"  # finetune | frozen
    pretrained: bool = True
    weights: str | None = None  # explicit local weights file for the backbone
    init_from: str | None = None  # a trained model folder (or shipped name) to start from: all weights
    hidden: int = 128  # the paper's Dense(128)
    dropout: float = 0.2


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-4  # the paper's Adam lr
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    backbone_lr_mult: float = 1.0  # backbone lr = lr * this (fine-tuning)


@dataclass
class ScheduleConfig:
    name: str = "none"  # none | cosine | onecycle | step
    warmup_frac: float = 0.1  # onecycle: fraction of steps warming up; cosine: linear warm-up
    step_size: int = 10  # step: epochs per decay
    gamma: float = 0.1
    min_lr_frac: float = 0.01


@dataclass
class TrainConfig:
    """One supervised classifier experiment."""

    name: str = "classifier"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    objective: str = "supervised"  # supervised (DANN etc. plug in via training.objectives)
    label_smoothing: float = 0.0
    batch_size: int = 16
    eval_batch_size: int = 128
    epochs: int = 10
    augment: str = "flips"  # a preset of bloodsmear.preprocess.augment
    balanced_sampling: bool = False
    early_stopping_patience: int | None = 5  # epochs without val macro-F1 gain; None = off
    seed: int = 0
    threads: int = 2
    channels_last: bool = True
    out_dir: str = "runs/classifier"
    max_train_minutes: float | None = None  # stop after the epoch that passes this budget

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, source: str | Path | None = None) -> "TrainConfig":
        return _from_dict(cls, d, source, "")


def _from_dict(cls: type, d: Any, source: str | Path | None, where: str):
    if not isinstance(d, dict):
        raise InputError(source, f"config section {where or '<root>'!r} must be a mapping, got {type(d).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise InputError(source, f"unknown config key(s) {', '.join(where + k for k in unknown)} "
                                 f"(valid in {where or 'top level'}: {', '.join(sorted(names))})")
    kw = {}
    for k, v in d.items():
        t = hints[k]
        if is_dataclass(t):
            kw[k] = _from_dict(t, v or {}, source, f"{where}{k}.")
        else:
            kw[k] = v
    return cls(**kw)


def load_config_dict(path: str | Path) -> dict:
    """Read a YAML or JSON config file into a dict (InputError on a missing or malformed file)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such config file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            d = json.loads(text)
        else:
            d = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - yaml/json raise several types
        raise InputError(path, f"not a readable config ({e.__class__.__name__}: {e})") from e
    if not isinstance(d, dict):
        raise InputError(path, "config must be a mapping at the top level")
    return d


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    d = load_config_dict(path)
    d.pop("kind", None)  # optional "kind: classifier" tag used by `bloodsmear train`
    if overrides:
        d = merge(d, overrides)
    return TrainConfig.from_dict(d, source=path)


def merge(base: dict, over: dict) -> dict:
    """Recursive dict merge (`over` wins), returning a new dict."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str] | None, where: object = "--set") -> dict:
    """`["train.epochs=2", "device=cuda"]` -> {"train": {"epochs": 2}, "device": "cuda"} (values parsed as YAML)."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(where, f"expected KEY=VALUE (dotted keys for nested settings), got {item!r}")
        node = out
        parts = key.strip().split(".")
        for k in parts[:-1]:
            node = node.setdefault(k, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def save_config(cfg: Any, dest: str | Path) -> Path:
    """Write a config dataclass (or dict) as JSON or YAML, by suffix, atomically."""
    d = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
    dest = Path(dest)
    if dest.suffix.lower() in (".yaml", ".yml"):
        return write_text_atomic(dest, yaml.safe_dump(d, sort_keys=False))
    return write_json_atomic(dest, d)


def resolve_dataset_path(dataset: str | Path) -> Path:
    """Absolute dataset folder: absolute paths as is, `./x` relative to cwd, else under the data root."""
    p = Path(dataset).expanduser()
    if p.is_absolute():
        return p
    if str(dataset).startswith(("./", "../")) or p.exists():
        return p.resolve()

    return data_root() / p
