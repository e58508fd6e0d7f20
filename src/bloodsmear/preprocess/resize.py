"""Every image resize of the package, one function per rule (cv2 interpolation named in each).

Output sizes round with Python's `round` (half to even), at least 1 px. Inputs are never modified;
a function that may hand back its input itself says so.

    resize_by(rgb, 0.5)                     # AREA when shrinking, bilinear when enlarging
    resize_by(labels, 2.0, nearest=True)    # label maps and masks: nearest neighbour
    resize_by_to(rgb, 0.5, (w, h))          # resize_by's rule to a size given (e.g. an annotation's)
    resize_bilinear(rgb, (w, h))            # to a size given, always bilinear (drawings, not analysed)
    resize_to_scale(rgb, 1.0)               # like resize_by, but always a new array
    resize_longer_side(crop, 224)           # longer side to 224, aspect kept
    resize_square(crop, 80)                 # (80, 80): AREA shrinking, bilinear enlarging
    resize_square_bicubic(crop, 224)        # (224, 224): AREA shrinking, bicubic enlarging (domain crops)
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["resize_by", "resize_by_to", "resize_bilinear", "resize_to_scale", "resize_longer_side", "resize_square", "resize_square_bicubic"]


def _area_or_linear(shrinking: bool) -> int:
    return cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR


def resize_by(img: np.ndarray, factor: float, *, nearest: bool = False, tol: float = 1e-6) -> np.ndarray:
    """`img` with both sides multiplied by `factor`: nearest neighbour with `nearest`, else INTER_AREA when
    factor < 1 and INTER_LINEAR otherwise. `img` itself when |factor - 1| < `tol` (tol=0: always resized)."""
    if abs(factor - 1.0) < tol:
        return img
    h, w = img.shape[:2]
    return resize_by_to(img, factor, (max(1, round(w * factor)), max(1, round(h * factor))), nearest=nearest)


def resize_by_to(img: np.ndarray, factor: float, size: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """`resize_by`'s rule (nearest neighbour with `nearest`, else INTER_AREA when factor < 1 and
    INTER_LINEAR otherwise) to the (width, height) `size` given: an image rescaled by `factor` to its
    annotation's rescaled size (`evaluate --rescale`), which may round otherwise than its own pixels.
    Always a new array."""
    interp = cv2.INTER_NEAREST if nearest else _area_or_linear(factor < 1)
    return cv2.resize(img, (int(size[0]), int(size[1])), interpolation=interp)


def resize_bilinear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`img` at the (width, height) `size`, INTER_LINEAR whichever way (an image brought to its
    annotation's size to draw on, as `evaluate --errors` does). Always a new array."""
    return cv2.resize(img, (int(size[0]), int(size[1])), interpolation=cv2.INTER_LINEAR)


def resize_to_scale(img: np.ndarray, factor: float) -> np.ndarray:
    """`resize_by(img, factor)` (AREA when shrinking, bilinear when enlarging), always a new array."""
    out = resize_by(np.asarray(img), factor)
    return out.copy() if out is img else out


def resize_longer_side(img: np.ndarray, size: int) -> np.ndarray:
    """`img` with its longer side `size` and the aspect kept (INTER_AREA when shrinking, INTER_LINEAR
    when enlarging); `img` itself when it already is size x size."""
    h, w = img.shape[:2]
    if max(h, w) == size and h == w:
        return img
    scale = size / max(h, w)
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    return cv2.resize(img, (nw, nh), interpolation=_area_or_linear(scale < 1))


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """(size, size): INTER_AREA when `size` is below the longer side, else INTER_LINEAR; `img` itself when
    it already is size x size."""
    h, w = img.shape[:2]
    if h == size and w == size:
        return img
    return cv2.resize(img, (size, size), interpolation=_area_or_linear(size < max(h, w)))


def resize_square_bicubic(img: np.ndarray, size: int) -> np.ndarray:
    """(size, size): INTER_AREA when the height is above `size`, else INTER_CUBIC (the domain experiments'
    crops); always a new array."""
    if img.shape[0] == size and img.shape[1] == size:
        return np.array(img, copy=True)
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)
