"""The paper's augmentation policy (Pal et al., domain balancing): an 11-element on/off vector per image.

For each image a vector of 11 independent coin flips (probability `p_on` each) picks which of these
operations run, in this order (geometry first, then colour):

 0 zoom        zoom in by a factor in [`zoom_min`, 1] (a random window of that relative side, resized back)
 1 rotate      rotation by an angle drawn from one of the four quadrants (p = 1/4 each), uniform inside it
 2 flip        horizontal, vertical or both (p = 1/3 each)
 3 shift       translation by up to `shift_max` of the side (the cell off-centre, as a detector's box)
 4 background  the bright unstained background blended towards a random light colour
 5 cast        a warm ("fiery") or cool colour cast: one of 3 warm and 3 cool strengths (p = 1/6 each)
 6 blur        Gaussian blur repeated 1-3 times (out of focus)
 7 contrast    contrast x [0.6, 1.4] about the mean
 8 brightness  brightness + [-40, 40] grey levels
 9 saturation  saturation x [0.6, 1.4] (HSV)
10 noise       Gaussian sensor noise, sigma in [3, 10] grey levels

Reproducible: every draw comes from the `numpy.random.Generator` passed in, so the same seed gives the
same image. `PaperPolicy(flags=...)` forces a vector (used by tests and to show one operation alone).
Pure: the input array is never modified. Borders exposed by rotation/shift/zoom are reflected.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FLAGS: tuple[str, ...] = ("zoom", "rotate", "flip", "shift", "background", "cast", "blur",
                          "contrast", "brightness", "saturation", "noise")

#: (R, G, B) multipliers: three warm (towards red/orange, "fiery") then three cool (towards blue).
CASTS: tuple[tuple[float, float, float], ...] = (
    (1.08, 1.00, 0.92), (1.16, 1.02, 0.84), (1.25, 1.04, 0.72),
    (0.92, 1.00, 1.08), (0.85, 0.98, 1.16), (0.75, 0.95, 1.25),
)


@dataclass
class PaperPolicy:
    """Callable: `policy(rgb, rng)` -> augmented RGB uint8 (same shape)."""

    p_on: float = 0.5
    zoom_min: float = 0.5
    shift_max: float = 0.1
    flags: tuple[bool, ...] | None = None  # force the on/off vector (11 booleans)

    def draw_flags(self, rng: np.random.Generator) -> np.ndarray:
        if self.flags is not None:
            if len(self.flags) != len(FLAGS):
                raise ValueError(f"flags must have {len(FLAGS)} entries ({', '.join(FLAGS)})")
            return np.asarray(self.flags, dtype=bool)
        return rng.random(len(FLAGS)) < self.p_on

    def __call__(self, rgb: np.ndarray, rng: np.random.Generator | int | None = None) -> np.ndarray:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image, got {rgb.shape} {rgb.dtype}")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        on = self.draw_flags(rng)
        img = rgb
        if on[0]:
            img = zoom(img, float(rng.uniform(self.zoom_min, 1.0)), rng)
        if on[1]:
            q = int(rng.integers(4))
            img = rotate(img, 90.0 * q + float(rng.uniform(0.0, 90.0)))
        if on[2]:
            img = flip(img, int(rng.integers(3)))
        if on[3]:
            m = self.shift_max * img.shape[0]
            img = shift(img, float(rng.uniform(-m, m)), float(rng.uniform(-m, m)))
        if on[4]:
            img = random_background(img, rng)
        if on[5]:
            img = colour_cast(img, int(rng.integers(len(CASTS))))
        if on[6]:
            img = repeated_blur(img, int(rng.integers(1, 4)), float(rng.uniform(0.8, 1.6)))
        if on[7]:
            img = contrast(img, float(_away_from_one(rng, 0.6, 1.4)))
        if on[8]:
            img = brightness(img, float(rng.choice([-1, 1]) * rng.uniform(10, 40)))
        if on[9]:
            img = saturation(img, float(_away_from_one(rng, 0.6, 1.4)))
        if on[10]:
            img = gaussian_noise(img, float(rng.uniform(3, 10)), rng)
        return img if img is not rgb else rgb.copy()


def _away_from_one(rng: np.random.Generator, lo: float, hi: float, gap: float = 0.1) -> float:
    """Uniform in [lo, 1 - gap] U [1 + gap, hi]: a factor that visibly changes the image."""
    return float(rng.uniform(lo, 1 - gap)) if rng.random() < 0.5 else float(rng.uniform(1 + gap, hi))


# ------------------------------------------------------------------------------------------------
# the operations (pure functions on RGB uint8)


def zoom(rgb: np.ndarray, factor: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Zoom in: a window of side `factor` x the image (random position when rng), resized back."""
    h, w = rgb.shape[:2]
    ch, cw = max(1, int(round(h * factor))), max(1, int(round(w * factor)))
    y0 = int(rng.integers(0, h - ch + 1)) if rng is not None else (h - ch) // 2
    x0 = int(rng.integers(0, w - cw + 1)) if rng is not None else (w - cw) // 2
    return cv2.resize(rgb[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)


def rotate(rgb: np.ndarray, angle: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    return cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def flip(rgb: np.ndarray, mode: int) -> np.ndarray:
    """mode 0: horizontal, 1: vertical, 2: both."""
    return np.ascontiguousarray({0: rgb[:, ::-1], 1: rgb[::-1], 2: rgb[::-1, ::-1]}[mode])


def shift(rgb: np.ndarray, dx: float, dy: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def background_weight(rgb: np.ndarray) -> np.ndarray:
    """0..1 per pixel: how much a pixel is bright, unstained background (smooth ramp)."""
    a = rgb.astype(np.float32)
    grey = a.mean(axis=2)
    sat = a.max(axis=2) - a.min(axis=2)
    w = np.clip((grey - 185.0) / 40.0, 0, 1) * np.clip((60.0 - sat) / 30.0, 0, 1)
    return cv2.GaussianBlur(w, (0, 0), 1.5)


def random_background(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blend the background towards a random light colour (a different slide/plasma tone)."""
    colour = rng.uniform(150, 255, size=3).astype(np.float32)
    w = background_weight(rgb)[..., None]
    if float(w.max()) < 0.05:  # no background found: tint the whole image lightly instead
        w = np.full_like(w, 0.25)
    out = rgb.astype(np.float32) * (1 - w) + colour * w
    return np.clip(out, 0, 255).astype(np.uint8)


def colour_cast(rgb: np.ndarray, index: int) -> np.ndarray:
    """One of `CASTS`: 0-2 warm (2 = fiery), 3-5 cool."""
    out = rgb.astype(np.float32) * np.asarray(CASTS[index], np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def repeated_blur(rgb: np.ndarray, times: int, sigma: float) -> np.ndarray:
    out = rgb
    for _ in range(max(1, times)):
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    return out


def contrast(rgb: np.ndarray, factor: float) -> np.ndarray:
    a = rgb.astype(np.float32)
    return np.clip((a - a.mean()) * factor + a.mean(), 0, 255).astype(np.uint8)


def brightness(rgb: np.ndarray, delta: float) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) + delta, 0, 255).astype(np.uint8)


def saturation(rgb: np.ndarray, factor: float) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def gaussian_noise(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) + rng.normal(0, sigma, rgb.shape), 0, 255).astype(np.uint8)


def only(flag: str, **kw) -> PaperPolicy:
    """A policy with exactly one operation on (by name)."""
    if flag not in FLAGS:
        raise ValueError(f"unknown flag {flag!r} (known: {', '.join(FLAGS)})")
    return PaperPolicy(flags=tuple(f == flag for f in FLAGS), **kw)
