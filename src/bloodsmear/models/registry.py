"""Backbone registry (timm style): name -> constructor, with each backbone's facts.

    create_backbone("mobilenet_v2", pretrained=True)    # ImageNet weights, resolved offline
    create_backbone("resnet101", pretrained=False)      # random init (no weights offline)
    list_backbones()                                    # every registered name
    get_spec("xception").input_size                     # 299

A backbone is a `Backbone` module: `forward(x) -> (B, feature_dim)` pooled features (global average
pooling for CNNs, the class token for ViT), `forward_maps(x)` -> the last spatial feature maps
(B, C, h, w) for Grad-CAM. An unknown name raises `UnknownBackboneError` listing the valid names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch
import torchvision
from torch import nn

from bloodsmear.errors import BloodsmearError
from bloodsmear.models.pretrained import TIMM_ALIASES, load_pretrained
from bloodsmear.preprocess.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


class UnknownBackboneError(BloodsmearError, KeyError):
    def __init__(self, name: str, valid: list[str]):
        super().__init__(f"unknown backbone {name!r} (valid: {', '.join(valid)})")

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the code needs to know about a backbone, without building it."""

    name: str
    feature_dim: int
    input_size: int  # the size its ImageNet weights were trained at
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    source: str = "timm"  # timm | torchvision | local
    weight_files: tuple[str, ...] = ()  # file names looked up in the weight caches
    in_paper: bool = False  # one of the seed paper's seven
    description: str = ""
    builder: Callable[[], nn.Module] | None = field(default=None, compare=False, repr=False)


class Backbone(nn.Module):
    """Wraps a feature extractor: `forward_maps` (spatial) and `forward` (pooled, (B, feature_dim))."""

    def __init__(self, body: nn.Module, spec: BackboneSpec, kind: str):
        super().__init__()
        self.body = body
        self.spec = spec
        self.kind = kind  # "torchvision_features" | "timm" | "timm_vit"
        self.feature_dim = spec.feature_dim

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "torchvision_features":
            return self.body(x)
        return self.body.forward_features(x)  # ViT: tokens (B, N, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "torchvision_features":
            return torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(x), 1), 1)
        return self.body(x)  # timm with num_classes=0: pooled features


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones(*, paper_only: bool = False) -> list[str]:
    return sorted(n for n, s in _REGISTRY.items() if s.in_paper or not paper_only)


def get_spec(name: str) -> BackboneSpec:
    if name not in _REGISTRY:
        raise UnknownBackboneError(name, list_backbones())
    return _REGISTRY[name]


def _timm(name: str, dim: int, size: int, *, inception: bool = False, paper: bool = True, desc: str = "") -> None:
    mean, std = (INCEPTION_MEAN, INCEPTION_STD) if inception else (IMAGENET_MEAN, IMAGENET_STD)
    register_backbone(BackboneSpec(
        name=name, feature_dim=dim, input_size=size, mean=mean, std=std, source="timm",
        weight_files=(f"{name}.safetensors", f"{name}.pth", f"{name}.bin"), in_paper=paper, description=desc))


# The seed paper's seven (timm names).
_timm("inception_v3", 2048, 299, inception=True, desc="InceptionV3")
_timm("inception_resnet_v2", 1536, 299, inception=True, desc="InceptionResNetV2 (paper's best)")
_timm("nasnetalarge", 4032, 331, inception=True, desc="NASNetLarge")
_timm("vgg16", 512, 224, desc="VGG16 conv base + GAP (as Keras include_top=False), 14.7M params")
_timm("xception", 2048, 299, inception=True, desc="Xception (timm legacy_xception)")
_timm("resnet101", 2048, 224, desc="ResNet101")
_timm("vit_base_patch16_224", 768, 224, inception=True, desc="ViT-B/16")
# CPU-fast ones.
_timm("efficientnet_lite0", 1280, 224, paper=False, desc="EfficientNet-Lite0 (timm)")
register_backbone(BackboneSpec(
    name="mobilenet_v2", feature_dim=1280, input_size=224, source="torchvision",
    weight_files=("mobilenet_v2-b0353104.pth",), description="MobileNetV2 (torchvision, ImageNet weights offline)"))
register_backbone(BackboneSpec(
    name="tiny_cnn", feature_dim=16, input_size=32, source="local", description="3-conv CNN for tests"))



def _tiny_cnn() -> nn.Module:
    def block(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                             nn.MaxPool2d(2))

    return nn.Sequential(block(3, 8), block(8, 16), block(16, 16))


def _build_body(spec: BackboneSpec) -> tuple[nn.Module, str]:
    if spec.name == "tiny_cnn":
        return _tiny_cnn(), "torchvision_features"
    if spec.name == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(weights=None).features, "torchvision_features"

    tname = TIMM_ALIASES.get(spec.name, spec.name)
    import timm  # heavy (~1 s, +100 MB): only timm backbones need it, not the shipped MobileNetV2

    body = timm.create_model(tname, pretrained=False, num_classes=0)
    if spec.name == "vgg16":
        # timm keeps fc6/fc7 as convs ("pre_logits", 120M params); the paper's Keras VGG16 has no top:
        # conv base -> global average pooling over 512 channels.
        body.pre_logits = nn.Identity()
    return body, ("timm_vit" if spec.name.startswith("vit") else "timm")


def create_backbone(name: str, pretrained: bool | str = False, *, allow_download: bool = False) -> Backbone:
    """Build a registered backbone.

    `pretrained`: False -> random init; True -> ImageNet weights, resolved local file -> torch/timm cache
    -> download (only with `allow_download`), `WeightsNotFoundError` when none is available; a path -> that
    file. Never downloads unless `allow_download` (or BLOODSMEAR_ALLOW_DOWNLOAD=1) is set.
    """
    spec = get_spec(name)
    body, kind = _build_body(spec)
    bb = Backbone(body, spec, kind)
    if pretrained:
        load_pretrained(bb, spec, None if pretrained is True else str(pretrained), allow_download=allow_download)
    return bb


__all__ = ["BackboneSpec", "Backbone", "UnknownBackboneError", "register_backbone", "list_backbones", "get_spec",
           "create_backbone"]
