"""A trained classifier is a self-describing model folder (the contract is `bloodsmear.models.folder`):

    config.json     kind "classifier", backbone, input size, crop fraction, normalisation, classes, mode,
                    thresholds, the training config and seed
    weights.safetensors   (fp16 by default: small) - or weights.pt
    split.json      the split manifest it was trained on (paths relative to the dataset root)
    history.json    per-epoch training history;  metrics.json  test (and val) metrics
    card.md         the model card;  *.png  curves and confusion matrix

    save_model(model, "runs/x/model", info)      # info: ModelInfo
    loaded = load_model("default")               # LoadedClassifier(model, info, path)

Loading never needs the training code's defaults: everything to rebuild the network is in config.json,
and a key config.json does not define is an error (never silently dropped).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file

from bloodsmear import __version__
from bloodsmear.config import StrictConfig
from bloodsmear.errors import InputError
from bloodsmear.io import atomic_path, write_json_atomic, write_text_atomic
from bloodsmear.models.classifier import WBCClassifier
from bloodsmear.models.folder import (
    CLASSIFIER,
    DEFAULT_MODEL,
    LEGACY_CLASSIFIER_FORMAT,
    read_folder_config,
    resolve_model,
)
from bloodsmear.models.registry import create_backbone

log = logging.getLogger(__name__)

FORMAT = LEGACY_CLASSIFIER_FORMAT
FORMAT_VERSION = 1


class ModelInfo(StrictConfig):
    """Everything needed to rebuild and feed a classifier (its folder's config.json)."""

    kind: Literal["classifier"] = CLASSIFIER
    backbone: str
    classes: list[str]
    input_size: int
    mean: list[float]
    std: list[float]
    crop_fraction: float = 1.0
    mode: str = "finetune"
    hidden: int = 128
    dropout: float = 0.2
    thresholds: dict[str, Any] = Field(default_factory=lambda: {"min_confidence": 0.0})
    name: str = ""
    seed: int | None = None
    training: dict[str, Any] = Field(default_factory=dict)  # the training config as a dict
    # stain normalisation applied to every input after resizing (e.g. Reinhard to the training stain:
    # `preprocess.color.ReinhardNormalizer.to_dict()`); None = none
    color_normalization: dict[str, Any] | None = None
    weights: str = "weights.safetensors"
    dtype: str = "float16"
    format: Literal["bloodsmear-classifier"] = FORMAT
    format_version: int = FORMAT_VERSION
    bloodsmear_version: str = ""


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
    if not info.bloodsmear_version:
        info = info.updated(bloodsmear_version=__version__)
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


def read_info(ref: str | Path) -> ModelInfo:
    """The `ModelInfo` of a classifier folder (any reference `resolve_model` takes)."""
    folder = resolve_model(ref, kind=CLASSIFIER)
    return ModelInfo.from_dict(read_folder_config(folder), source=folder / "config.json")


def load_model(ref: str | Path = "default", *, device: str = "cpu",
               base_dir: str | Path | None = None) -> LoadedClassifier:
    """Rebuild the network from config.json (no pretrained download) and load its weights (as float32).
    `ref` as `models.folder.resolve_model` takes it (relative paths tried against `base_dir` first)."""
    folder = resolve_model(ref, kind=CLASSIFIER, base_dir=base_dir)
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


__all__ = ["ModelInfo", "LoadedClassifier", "save_model", "load_model", "read_info", "DEFAULT_MODEL"]
