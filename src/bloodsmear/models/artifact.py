"""A trained classifier is a self-describing folder (stardist style):

    config.json     backbone, input size, crop fraction, normalisation, classes, mode, thresholds,
                    the training config and seed
    weights.safetensors   (fp16 by default: small) - or weights.pt
    split.json      the split manifest it was trained on (paths relative to the dataset root)
    history.json    per-epoch training history;  metrics.json  test (and val) metrics
    card.md         the model card;  *.png  curves and confusion matrix

    save_model(model, "runs/x/model", info)      # info: ModelInfo
    loaded = load_model("default")               # LoadedClassifier(model, info, path)
    resolve_model("default" | shipped name | path) -> Path

Loading never needs the training code's defaults: everything to rebuild the network is in config.json.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bloodsmear import __version__
from bloodsmear.errors import InputError
from bloodsmear.io import atomic_path, write_json_atomic, write_text_atomic
from bloodsmear.models.classifier import WBCClassifier
from bloodsmear.models.registry import create_backbone
from bloodsmear.settings import ZOO_DIR

log = logging.getLogger(__name__)

FORMAT = "bloodsmear-classifier"
FORMAT_VERSION = 1
DEFAULT_MODEL = "pbc-mobilenetv2"


@dataclass
class ModelInfo:
    """Everything needed to rebuild and feed a classifier."""

    backbone: str
    classes: list[str]
    input_size: int
    mean: list[float]
    std: list[float]
    crop_fraction: float = 1.0
    mode: str = "finetune"
    hidden: int = 128
    dropout: float = 0.2
    thresholds: dict = field(default_factory=lambda: {"min_confidence": 0.0})
    name: str = ""
    seed: int | None = None
    training: dict = field(default_factory=dict)  # the TrainConfig as a dict
    # stain normalisation applied to every input after resizing (e.g. Reinhard to the training stain:
    # `preprocess.color.ReinhardNormalizer.to_dict()`); None = none
    color_normalization: dict | None = None
    weights: str = "weights.safetensors"
    dtype: str = "float16"
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    bloodsmear_version: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, path: str | Path | None = None) -> "ModelInfo":
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("backbone", "classes", "input_size", "mean", "std") if k not in d]
        if missing:
            raise InputError(path, f"model config lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class LoadedClassifier:
    model: torch.nn.Module
    info: ModelInfo
    path: Path


def _state_dict_for_save(model: torch.nn.Module, dtype: str) -> dict[str, torch.Tensor]:
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype == "float16" and v.is_floating_point():
            v = v.half()
        sd[k] = v.contiguous()
    return sd


def save_model(model: torch.nn.Module, folder: str | Path, info: ModelInfo, *, history: list | None = None,
               metrics: dict | None = None, manifest: dict | None = None, card: str | None = None) -> Path:
    """Write a model folder. Files are written atomically; existing extra files (PNGs) are kept."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info.bloodsmear_version = info.bloodsmear_version or __version__
    sd = _state_dict_for_save(model, info.dtype)
    wfile = folder / info.weights
    with atomic_path(wfile) as tmp:
        if wfile.suffix == ".safetensors":
            save_file(sd, str(tmp), metadata={"format": FORMAT, "backbone": info.backbone})
        else:
            torch.save(sd, str(tmp))
    write_json_atomic(folder / "config.json", info.to_dict())
    if history is not None:
        write_json_atomic(folder / "history.json", history)
    if metrics is not None:
        write_json_atomic(folder / "metrics.json", metrics)
    if manifest is not None:
        write_json_atomic(folder / "split.json", manifest, indent=1)
    if card is not None:
        write_text_atomic(folder / "card.md", card)
    return folder


def list_shipped() -> list[str]:
    """Names of the classifier folders under the package's zoo/."""
    out = []
    if ZOO_DIR.is_dir():
        for d in sorted(ZOO_DIR.iterdir()):
            cfg = d / "config.json"
            if cfg.is_file():
                try:
                    if json.loads(cfg.read_text()).get("format") == FORMAT:
                        out.append(d.name)
                except ValueError:
                    continue
    return out


def resolve_model(ref: str | Path | None = "default") -> Path:
    """A model folder from "default", a shipped model's name, or a path."""
    ref = "default" if ref in (None, "") else ref
    if str(ref) == "default":
        ref = DEFAULT_MODEL
    p = Path(ref).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        return p
    if p.is_file() and p.name == "config.json":
        return p.parent
    z = ZOO_DIR / str(ref)
    if z.is_dir() and (z / "config.json").is_file():
        return z
    shipped = list_shipped()
    raise InputError(str(ref), "not a model folder (no config.json) nor a shipped model "
                               f"(shipped: {', '.join(['default'] + shipped) if shipped else 'none'})")


def read_info(folder: str | Path) -> ModelInfo:
    folder = resolve_model(folder)
    cfg = folder / "config.json"
    try:
        d = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(cfg, f"unreadable model config ({e})") from e
    if d.get("format", FORMAT) != FORMAT:
        raise InputError(cfg, f"not a classifier model folder (format {d.get('format')!r})")
    return ModelInfo.from_dict(d, path=cfg)


def load_model(ref: str | Path = "default", *, device: str = "cpu") -> LoadedClassifier:
    """Rebuild the network from config.json (no pretrained download) and load its weights (as float32)."""
    folder = resolve_model(ref)
    info = read_info(folder)
    wfile = folder / info.weights
    if not wfile.is_file():
        raise InputError(wfile, "model weights file missing")
    if wfile.suffix == ".safetensors":
        sd = load_file(str(wfile))
    else:
        sd = torch.load(str(wfile), map_location="cpu", weights_only=True)
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    model = WBCClassifier(create_backbone(info.backbone, pretrained=False), len(info.classes), hidden=info.hidden,
                          dropout=info.dropout, mode=info.mode)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise InputError(wfile, f"weights do not match the model in config.json: {str(e)[:300]}") from e
    model.to(device).eval()
    return LoadedClassifier(model=model, info=info, path=folder)


def read_card_metrics(folder: str | Path) -> dict:
    """Headline test metrics of a model folder (from metrics.json), {} when absent."""
    f = Path(folder) / "metrics.json"
    if not f.is_file():
        return {}
    try:
        d = json.loads(f.read_text())
    except ValueError:
        return {}
    test = d.get("test") or {}
    return {k: test[k] for k in ("macro_f1", "macro_precision", "macro_recall", "accuracy", "n") if k in test}


__all__ = ["ModelInfo", "LoadedClassifier", "save_model", "load_model", "resolve_model", "read_info",
           "list_shipped", "read_card_metrics", "DEFAULT_MODEL"]
