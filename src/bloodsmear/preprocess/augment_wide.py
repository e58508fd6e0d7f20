"""A wide per-image augmentation meant to span real labs' stains, optics and cameras (issue 12, item 1).

    policy = WidePolicy()
    out = policy(rgb, np.random.default_rng(seed))     # uint8 (H, W, 3) -> new uint8 (H, W, 3)

In order (each draw from the generator passed in, so the same seed gives the same image; the input is
never modified; the shape is kept, square or not):

1. geometry: horizontal / vertical flip (p = .5 each), rotation by k * 90 degrees (square images);
2. HED stain jitter (p = `p_hed`): colour deconvolution (skimage's matrices) into haematoxylin, eosin, DAB
   optical densities, each scaled by U(1 - `hed_alpha`, 1 + `hed_alpha`) and shifted by
   U(-`hed_beta`, `hed_beta`), back to RGB;
3. colour: hue shift U(+-`hue`) of a turn, saturation x U(1 +- `saturation`), brightness x U(1 +- `brightness`),
   contrast about the mean x U(1 +- `contrast`), gamma in [1 / `gamma`, `gamma`] (log-uniform),
   white balance (a gain per channel, U(1 +- `white_balance`));
4. optics and camera, each with its own probability: defocus (Gaussian blur, sigma U(`blur_sigma`)),
   loss of resolution (down to U(`down_scale`) of the side and back up), sensor noise (Gaussian, sigma
   U(0, `noise`) grey levels), JPEG re-encoding (quality U(`jpeg_quality`)).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image
from skimage.color import hed_from_rgb, rgb_from_hed


def _u(rng: np.random.Generator, half: float) -> float:
    return float(rng.uniform(1.0 - half, 1.0 + half))


def hed_jitter(rgb: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """float (H, W, 3) RGB in 0..1 with HED densities scaled by `alpha` (3,) and shifted by `beta` (3,).

    skimage's colour-deconvolution matrices (Ruifrok & Johnston), without the clipping of negative
    densities that `rgb2hed` does, so alpha = 1, beta = 0 gives the image back."""
    od = -np.log(np.clip(rgb, 1e-6, 1.0))
    hed = od @ hed_from_rgb
    return np.clip(np.exp(-((hed * alpha + beta) @ rgb_from_hed)), 0.0, 1.0)


def color_ops(rgb: np.ndarray, rng: np.random.Generator, *, hue: float, saturation: float, brightness: float,
              contrast: float, gamma: float, white_balance: float) -> np.ndarray:
    """Hue, saturation, brightness, contrast, gamma and white balance on float RGB in 0..1 (new array)."""
    hsv = cv2.cvtColor(rgb.astype(np.float32), cv2.COLOR_RGB2HSV)  # H in degrees 0..360, S and V in 0..1
    hsv[..., 0] = (hsv[..., 0] + 360.0 * float(rng.uniform(-hue, hue))) % 360.0
    hsv[..., 1] = np.clip(hsv[..., 1] * _u(rng, saturation), 0.0, 1.0)
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float64)
    out = out * _u(rng, brightness)
    mean = out.mean()
    out = (out - mean) * _u(rng, contrast) + mean
    out = np.clip(out, 0.0, 1.0) ** float(np.exp(rng.uniform(-np.log(gamma), np.log(gamma))))
    out = out * np.array([_u(rng, white_balance) for _ in range(3)])
    return np.clip(out, 0.0, 1.0)


@dataclass(frozen=True)
class WidePolicy:
    """The wide augmentation (module doc); every field a range or probability."""

    p_hed: float = 0.8
    hed_alpha: float = 0.25
    hed_beta: float = 0.015
    hue: float = 0.04
    saturation: float = 0.3
    brightness: float = 0.2
    contrast: float = 0.25
    gamma: float = 1.4
    white_balance: float = 0.1
    p_blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    p_down: float = 0.3
    down_scale: tuple[float, float] = (0.35, 0.9)
    p_noise: float = 0.3
    noise: float = 8.0
    p_jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 90)

    def __call__(self, rgb: np.ndarray, rng: np.random.Generator | int | None = None) -> np.ndarray:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image, got {rgb.shape} {rgb.dtype}")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        img = rgb
        if rng.random() < 0.5:
            img = img[:, ::-1]
        if rng.random() < 0.5:
            img = img[::-1]
        k = int(rng.integers(4))
        if img.shape[0] == img.shape[1]:
            img = np.rot90(img, k)
        f = img.astype(np.float64) / 255.0
        if rng.random() < self.p_hed:
            f = hed_jitter(f, rng.uniform(1 - self.hed_alpha, 1 + self.hed_alpha, 3),
                           rng.uniform(-self.hed_beta, self.hed_beta, 3))
        f = color_ops(f, rng, hue=self.hue, saturation=self.saturation, brightness=self.brightness,
                      contrast=self.contrast, gamma=self.gamma, white_balance=self.white_balance)
        out = np.clip(f * 255.0, 0, 255).astype(np.float32)
        h, w = out.shape[:2]
        if rng.random() < self.p_blur:
            out = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(*self.blur_sigma)), borderType=cv2.BORDER_REFLECT)
        if rng.random() < self.p_down:
            s = float(rng.uniform(*self.down_scale))
            small = cv2.resize(out, (max(4, round(w * s)), max(4, round(h * s))), interpolation=cv2.INTER_AREA)
            out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        if rng.random() < self.p_noise:
            out = out + rng.normal(0.0, float(rng.uniform(0.0, self.noise)), out.shape)
        img8 = np.clip(np.round(out), 0, 255).astype(np.uint8)
        if rng.random() < self.p_jpeg:
            buf = io.BytesIO()
            Image.fromarray(img8).save(buf, format="JPEG", quality=int(rng.integers(*self.jpeg_quality)))
            img8 = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.uint8)
        return np.ascontiguousarray(img8)


__all__ = ["WidePolicy", "color_ops", "hed_jitter"]
