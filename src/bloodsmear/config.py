"""One config system: strict pydantic models, loaded from YAML or JSON and saved with every trained model.

Every config kind (classifier, DANN, domains, grid, pipeline, segmenters) subclasses `StrictConfig`
and is read by the one loader `load_config`:

    from bloodsmear.config import StrictConfig, load_config, parse_overrides

    class OptimConfig(StrictConfig):
        lr: float = 1e-4

    class MyConfig(StrictConfig):
        name: str = "x"
        optim: OptimConfig = OptimConfig()

    cfg = load_config(MyConfig, "configs/x.yaml", parse_overrides(["optim.lr=3e-4"]))
    cfg.optim.lr                          # 0.0003
    cfg.updated(name="y")                 # a changed copy, validated (configs are never modified in place)
    MyConfig.from_dict(cfg.to_dict())     # round-trips through JSON/YAML-safe dicts

A misspelt key (nested too) or a wrong type is one `InputError` line naming the file, the dotted key
and, for unknown keys, the valid ones: `configs/x.yaml: unknown key 'optim.lrr' (valid: lr)`.
Relative dataset paths resolve against the data root (`BLOODSMEAR_DATA`, see `bloodsmear.settings`),
other relative paths (split manifest, out dir) against the current working directory.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
import yaml
from pydantic import ConfigDict

from bloodsmear.errors import InputError
from bloodsmear.io import read_json, write_json_atomic, write_text_atomic
from bloodsmear.settings import data_root

C = TypeVar("C", bound="StrictConfig")


class StrictConfig(pydantic.BaseModel):
    """Base of every config: unknown keys are rejected, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    def to_dict(self) -> dict:
        """Plain JSON/YAML-safe dict (what model folders store)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls: type[C], d: Any, *, source: str | Path | None = None) -> C:
        """Validate a dict; errors are one `InputError` line naming `source` and the dotted key."""
        return validate_config(cls, d, source)

    def updated(self: C, **changes: Any) -> C:
        """A copy with `changes`, validated as a config read from a file is (pydantic's
        `model_copy(update=...)` checks nothing): an unknown key or a wrong type is one `InputError` line.
        Fields kept out of `to_dict` (e.g. `PipelineConfig.base_dir`) are carried over."""
        d = {**self.model_dump(), **{k: getattr(self, k) for k, f in type(self).model_fields.items() if f.exclude}}
        return validate_config(type(self), {**d, **changes})

    def save(self, dest: str | Path) -> Path:
        """Write as JSON or YAML (by suffix), atomically."""
        dest = Path(dest)
        if dest.suffix.lower() in (".yaml", ".yml"):
            return write_text_atomic(dest, yaml.safe_dump(self.to_dict(), sort_keys=False))
        return write_json_atomic(dest, self.to_dict())


def read_config_dict(path: str | Path) -> dict:
    """Read a YAML or JSON config file into a dict (InputError on a missing or malformed file)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        d = read_json(path)
    else:
        if not path.is_file():
            raise InputError(path, "no such config file")
        try:
            d = yaml.safe_load(path.read_text(encoding="utf-8"))
            d = {} if d is None else d  # an empty (or all-comment) YAML file is the defaults
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise InputError(path, f"not readable YAML ({e.__class__.__name__}: {e})".replace("\n", " ")) from e
    if not isinstance(d, dict):
        raise InputError(path, "config must be a mapping at the top level")
    return d


def load_config(cls: type[C], path: str | Path, overrides: dict | list[str] | None = None) -> C:
    """Read `path` (YAML/JSON) into `cls`; `overrides` (a nested dict, or `["a.b=v"]` strings) win.

    A top-level `kind:` tag (used by `bloodsmear train` to pick the runner) is dropped when `cls`
    has no `kind` field.
    """
    d = read_config_dict(path)
    if "kind" not in cls.model_fields:
        d.pop("kind", None)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    if overrides:
        d = merge(d, overrides)
    return validate_config(cls, d, path)


def validate_config(cls: type[C], d: Any, source: str | Path | None = None, *, prefix: str = "") -> C:
    """`cls.model_validate(d)` with pydantic's errors turned into one `InputError` line.

    `prefix`: the dotted place of `d` in its file (e.g. "train." for a section validated on its own).
    """
    if not isinstance(d, dict):
        raise InputError(source, f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(d).__name__}")
    try:
        return cls.model_validate(d)
    except pydantic.ValidationError as e:
        raise InputError(source, _describe(cls, e, prefix)) from None


def check_key(cls: type[pydantic.BaseModel], dotted: str, where: object = "--set") -> None:
    """InputError unless `dotted` ("train.epochs") names a setting of `cls` (free-form dict sections pass)."""
    node: type[pydantic.BaseModel] | None = cls
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if node is None:  # inside a plain dict (e.g. train.dann.*): any key
            return
        if part not in node.model_fields:
            raise InputError(where, f"unknown key {'.'.join(parts[:i + 1])!r} "
                                    f"(valid: {', '.join(sorted(node.model_fields))})")
        node = _find_model(node.model_fields[part].annotation)


def _describe(cls: type[pydantic.BaseModel], e: pydantic.ValidationError, prefix: str = "") -> str:
    errs = sorted(e.errors(include_url=False), key=lambda x: x["type"] != "extra_forbidden")  # a typo first
    first = errs[0]
    loc = [p for p in first["loc"]]
    key = prefix + ".".join(str(p) for p in loc) or "<root>"
    more = f" (and {len(errs) - 1} more problem(s))" if len(errs) > 1 else ""
    if first["type"] == "extra_forbidden":
        model = _model_at(cls, loc[:-1])
        valid = ", ".join(sorted(model.model_fields)) if model is not None else "?"
        return f"unknown key {key!r} (valid: {valid}){more}"
    if first["type"] == "value_error":  # a validator's own message
        msg = first["msg"].removeprefix("Value error, ")
        return f"{msg}{more}" if not loc or msg.startswith("unknown key") else f"{key}: {msg}{more}"
    got = first.get("input")
    shown = repr(got) if not isinstance(got, dict) else "a mapping"
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"key {key!r}: {first['msg']} (got {shown}){more}"


def _model_at(cls: type[pydantic.BaseModel], loc: list) -> type[pydantic.BaseModel] | None:
    """The model class that validates the mapping at `loc` (list indices and dict keys skipped)."""
    node: Any = cls
    for part in loc:
        model = _find_model(node)
        if model is not None and isinstance(part, str) and part in model.model_fields:
            node = model.model_fields[part].annotation
        else:  # a list index or a dict key: one element of the container
            node = _element_type(node)
    return _find_model(node)


def _find_model(t: Any) -> type[pydantic.BaseModel] | None:
    if isinstance(t, type) and issubclass(t, pydantic.BaseModel):
        return t
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(t):
            m = _find_model(a)
            if m is not None:
                return m
    return None


def _element_type(t: Any) -> Any:
    """list[X] / dict[K, X] / X | None -> X (the type of one element)."""
    for a in reversed(typing.get_args(t)):
        if a is not type(None):
            inner = _find_model(a) or (_element_type(a) if typing.get_args(a) else None)
            if inner is not None:
                return inner
    return t


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
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        out = merge(out, nest(key.strip(), parsed))
    return out


def nest(dotted: str, value: Any) -> dict:
    """`nest("a.b", 1)` -> {"a": {"b": 1}}."""
    d: Any = value
    for k in reversed(dotted.split(".")):
        d = {k: d}
    return d


class DataConfig(StrictConfig):
    """Which images, which split, which classes, at what size."""

    dataset: str = "pbc224"  # folder; relative -> under the data root (BLOODSMEAR_DATA); or absolute
    format: str = "pbc"  # any `bloodsmear.data.FORMATS` entry
    split: str | None = None  # a saved split manifest (JSON); None -> make one from scheme + seed
    scheme: str = "64-16-20"
    split_seed: int = 42
    classes: list[str] | None = None  # None -> every label in the dataset, sorted
    class_map: dict[str, str] = {}  # label -> label (merge / rename)
    label: Literal["image", "fine"] = "image"  # image: the image's class (PBC folder); fine: its fine class
    #   (`classes.FINE_CLASSES`; PBC from the file prefix, meta["fine_label"]); images known only at group
    #   level (PBC's IG_*, NEUTROPHIL_*) are left out (`training.prepare.example_label`)
    image_size: int = 96  # network input side (px)
    crop_fraction: float = 1.0  # centre square of this fraction of the short side, then resize
    max_per_class: int | None = None  # cap training images per class (seeded) for small-scale runs
    subset_fraction: float = 1.0  # keep this fraction (seeded, per split) for small-scale runs
    cache_dir: str | None = None  # decoded-array cache; None -> ~/.cache/bloodsmear/arrays


class ModelConfig(StrictConfig):
    backbone: str = "mobilenet_v2"
    mode: str = "finetune"  # finetune | frozen
    pretrained: bool = True
    weights: str | None = None  # explicit local weights file for the backbone
    init_from: str | None = None  # a trained model folder (or shipped name) to start from: all weights
    hidden: int = 128  # the paper's Dense(128)
    dropout: float = 0.2


class OptimConfig(StrictConfig):
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-4  # the paper's Adam lr
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    backbone_lr_mult: float = 1.0  # backbone lr = lr * this (fine-tuning)


class ScheduleConfig(StrictConfig):
    name: str = "none"  # none | cosine | onecycle | step
    warmup_frac: float = 0.1  # onecycle: fraction of steps warming up; cosine: linear warm-up
    step_size: int = 10  # step: epochs per decay
    gamma: float = 0.1
    min_lr_frac: float = 0.01


class TrainConfig(StrictConfig):
    """One supervised classifier experiment."""

    name: str = "classifier"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
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


def load_train_config(path: str | Path, overrides: dict | list[str] | None = None) -> TrainConfig:
    return load_config(TrainConfig, path, overrides)


def resolve_dataset_path(dataset: str | Path) -> Path:
    """Absolute dataset folder: absolute paths as is, `./x` relative to cwd, else under the data root."""
    p = Path(dataset).expanduser()
    if p.is_absolute():
        return p
    if str(dataset).startswith(("./", "../")) or p.exists():
        return p.resolve()

    return data_root() / p
