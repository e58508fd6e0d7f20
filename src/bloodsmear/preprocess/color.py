"""Stain / colour normalisation: Reinhard et al. (2001) colour transfer in CIE L*a*b*.

Each channel of an image's L*a*b* values is standardised (its own mean and std) and rescaled to a
target's mean and std; the target is one image or the pooled statistics of a set of images (a
domain). Colour conversion is OpenCV's float L*a*b* (L in [0, 100], a/b in about [-127, 127]).
Functions are pure: inputs are never modified; the result is a new RGB uint8 array.

`ReinhardNormalizer` holds a fitted target and round-trips through a dict so a model folder can
store the normalisation it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np

#: the methods `make_normalizer` knows
METHODS = ("none", "reinhard")


@dataclass(frozen=True)
class LabStats:
    """Per-channel mean and standard deviation of L*, a*, b*."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "LabStats":
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))  # type: ignore[arg-type]


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 L*a*b*."""
    _check_rgb(rgb)
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """float L*a*b* -> RGB uint8 (clipped)."""
    rgb = cv2.cvtColor(np.ascontiguousarray(lab, dtype=np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def lab_stats(images: np.ndarray | Sequence[np.ndarray], mask: np.ndarray | None = None) -> LabStats:
    """L*a*b* mean/std of one RGB image, or pooled over several (every pixel weighs the same).

    `mask` (one image only): restrict the statistics to the True pixels.
    """
    imgs = [images] if isinstance(images, np.ndarray) and images.ndim == 3 else list(images)
    if not imgs:
        raise ValueError("lab_stats needs at least one image")
    s = np.zeros(3)
    s2 = np.zeros(3)
    n = 0
    for im in imgs:
        lab = rgb_to_lab(im).reshape(-1, 3).astype(np.float64)
        if mask is not None:
            if len(imgs) != 1:
                raise ValueError("mask is only supported for a single image")
            lab = lab[np.asarray(mask, bool).reshape(-1)]
        s += lab.sum(0)
        s2 += (lab**2).sum(0)
        n += len(lab)
    if n == 0:
        raise ValueError("lab_stats: no pixels")
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    return LabStats(tuple(float(v) for v in mean), tuple(float(v) for v in std))  # type: ignore[arg-type]


def reinhard_normalize(rgb: np.ndarray, target: LabStats, source: LabStats | None = None,
                       *, min_std: float = 1e-3) -> np.ndarray:
    """Reinhard colour transfer of `rgb` onto `target`'s L*a*b* statistics.

    `source`: the statistics to standardise with (default: the image's own; pass a domain's pooled
    statistics to keep the image-to-image differences within that domain).
    """
    lab = rgb_to_lab(rgb)
    if source is None:  # the image's own statistics, from the one conversion (as `lab_stats(rgb)`)
        mean, std = cv2.meanStdDev(lab)
        src = LabStats(tuple(float(v) for v in mean.ravel()), tuple(float(v) for v in std.ravel()))  # type: ignore[arg-type]
    else:
        src = source
    mu_s, sd_s = np.asarray(src.mean, np.float32), np.maximum(np.asarray(src.std, np.float32), min_std)
    mu_t, sd_t = np.asarray(target.mean, np.float32), np.asarray(target.std, np.float32)
    gain = sd_t / sd_s
    out = lab * gain + (mu_t - mu_s * gain)  # = (lab - mu_s) / sd_s * sd_t + mu_t, in two passes
    np.clip(out, np.float32([0.0, -127.0, -127.0]), np.float32([100.0, 127.0, 127.0]), out=out)
    return lab_to_rgb(out)


class ReinhardNormalizer:
    """Fit a target (`fit(images)`), then `normalizer(rgb)` -> the normalised image."""

    method = "reinhard"

    def __init__(self, target: LabStats | None = None, *, per_image: bool = True):
        self.target = target
        self.per_image = per_image  # standardise with each image's own statistics (classic Reinhard)
        self.source: LabStats | None = None

    def fit(self, images: Iterable[np.ndarray]) -> "ReinhardNormalizer":
        self.target = lab_stats(list(images))
        return self

    def fit_source(self, images: Iterable[np.ndarray]) -> "ReinhardNormalizer":
        """Pooled source-domain statistics, used instead of per-image ones when per_image is False."""
        self.source = lab_stats(list(images))
        return self

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        if self.target is None:
            raise RuntimeError("ReinhardNormalizer: call fit() first (or pass a target)")
        src = None if self.per_image else self.source
        return reinhard_normalize(rgb, self.target, src)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "per_image": self.per_image,
            "target": None if self.target is None else self.target.to_dict(),
            "source": None if self.source is None else self.source.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ReinhardNormalizer":
        n = cls(LabStats.from_dict(d["target"]) if d.get("target") else None, per_image=bool(d.get("per_image", True)))
        if d.get("source"):
            n.source = LabStats.from_dict(d["source"])
        return n


def make_normalizer(spec: dict | None):
    """A normaliser from its dict (as stored in a model folder); None for no normalisation."""
    if not spec or spec.get("method", "none") == "none":
        return None
    if spec["method"] == "reinhard":
        return ReinhardNormalizer.from_dict(spec)
    raise ValueError(f"unknown colour normalisation {spec['method']!r} (known: {', '.join(METHODS)})")


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) array, got {getattr(rgb, 'shape', None)} "
                         f"{getattr(rgb, 'dtype', type(rgb).__name__)}")
