"""The paper's WBC classifier: backbone -> global average pooling -> Dense(128) (ReLU, dropout) -> N logits.

    model = build_classifier("mobilenet_v2", num_classes=8, mode="finetune", pretrained=True)
    feats = model.forward_features(x)   # (B, feature_dim): what a domain head (DANN) or t-SNE reads
    logits = model.head(feats)          # (B, N); softmax at inference (`predict_proba`)

Modes: "frozen" (only the head trains; backbone parameters have requires_grad False and its BatchNorm
layers stay in eval mode even in `model.train()`) and "finetune" (everything trains).
Inputs are normalised float tensors (B, 3, S, S); `bloodsmear.preprocess.transforms.to_tensor` makes them.
"""

from __future__ import annotations

import torch
from torch import nn

from bloodsmear.models.registry import Backbone, create_backbone

MODES = ("finetune", "frozen")


class WBCClassifier(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int, *, hidden: int = 128, dropout: float = 0.2,
                 mode: str = "finetune"):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.classifier = nn.Sequential(
            nn.Linear(backbone.feature_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.mode = "finetune"
        self.set_mode(mode)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (valid: {', '.join(MODES)})")
        self.mode = mode
        for p in self.backbone.parameters():
            p.requires_grad_(mode == "finetune")
        if mode == "frozen":
            self.backbone.eval()

    def train(self, mode: bool = True) -> "WBCClassifier":
        super().train(mode)
        if self.mode == "frozen":
            self.backbone.eval()  # BatchNorm statistics stay as pretrained
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, feature_dim)."""
        return self.backbone(x)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last spatial feature maps (Grad-CAM)."""
        return self.backbone.forward_maps(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Features -> logits (B, num_classes)."""
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    @torch.inference_mode()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(x), dim=1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def build_classifier(backbone: str, num_classes: int, *, mode: str = "finetune", pretrained: bool | str = False,
                     hidden: int = 128, dropout: float = 0.2, allow_download: bool = False) -> WBCClassifier:
    bb = create_backbone(backbone, pretrained=pretrained, allow_download=allow_download)
    return WBCClassifier(bb, num_classes, hidden=hidden, dropout=dropout, mode=mode)


__all__ = ["WBCClassifier", "build_classifier", "MODES"]
