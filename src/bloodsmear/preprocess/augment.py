"""Named augmentation presets that act on batches of image tensors.

    aug = get_augment("flips")
    x = aug(x, generator)      # x: float (B, 3, H, W) in 0..255 (before normalisation); returns a new tensor

Every preset is a pure function of (batch, torch.Generator): the input is never modified, and the same
generator state gives the same result. Square inputs keep their shape (rot90 of a square is a square).
Add a preset with `@register_augment("name")`.

Presets: "none"; "flips" (horizontal/vertical flips and 90-degree rotations, per image - a cell has
no orientation); "light" (flips + small brightness/contrast/saturation/hue-free colour jitter);
"paper_dann" (the paper's policy, `augment_paper`); "stain_wide" (flips/rot90, HED stain jitter, hue,
saturation, brightness, contrast, gamma, white balance, defocus, down-up sampling, noise, JPEG:
`augment_wide.WidePolicy`); "stain_colour" (the same without blur, resampling, noise and JPEG).

The per-image presets also exist as numpy policies `policy(uint8 HWC, numpy Generator)` for the cached
views of `feature_cache` (`image_policy(name)`; None for the batch-only presets).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from bloodsmear.preprocess.augment_paper import PaperPolicy
from bloodsmear.preprocess.augment_wide import WidePolicy

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
_PRESETS: dict[str, Augment] = {}


def register_augment(name: str) -> Callable[[Augment], Augment]:
    def deco(fn: Augment) -> Augment:
        _PRESETS[name] = fn
        return fn

    return deco


def list_augments() -> list[str]:
    return sorted(_PRESETS)


def get_augment(name: str | None) -> Augment:
    if name is None:
        name = "none"
    if name not in _PRESETS:
        raise KeyError(f"unknown augment preset {name!r} (valid: {', '.join(list_augments())})")
    return _PRESETS[name]


def _rand(g: torch.Generator, n: int) -> torch.Tensor:
    return torch.rand(n, generator=g)


@register_augment("none")
def no_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x.clone()


def flips_rot90(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per image: horizontal flip (p=.5), vertical flip (p=.5), rotation by k*90 degrees (k uniform)."""
    n = x.shape[0]
    hf = (_rand(g, n) < 0.5).view(n, 1, 1, 1)
    vf = (_rand(g, n) < 0.5).view(n, 1, 1, 1)
    out = torch.where(hf, x.flip(3), x)
    out = torch.where(vf, out.flip(2), out)
    if x.shape[2] == x.shape[3]:
        t = (_rand(g, n) < 0.5).view(n, 1, 1, 1)  # transpose + flips = all 8 dihedral symmetries
        out = torch.where(t, out.transpose(2, 3), out)
    return out.contiguous()


register_augment("flips")(flips_rot90)


def color_jitter(x: torch.Tensor, g: torch.Generator, *, brightness: float = 0.1, contrast: float = 0.1,
                 saturation: float = 0.1) -> torch.Tensor:
    """Per image multiplicative brightness, contrast around the image mean, saturation around the grey."""
    n = x.shape[0]

    def factor(s: float) -> torch.Tensor:
        return (1.0 + (2 * _rand(g, n) - 1) * s).view(n, 1, 1, 1).to(x.dtype)

    out = x * factor(brightness)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * factor(contrast) + mean
    grey = out.mean(dim=1, keepdim=True)
    out = (out - grey) * factor(saturation) + grey
    return out.clamp(0, 255)


@register_augment("light")
def light(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return color_jitter(flips_rot90(x, g), g)


__all__ = ["register_augment", "get_augment", "list_augments", "flips_rot90", "color_jitter", "image_policy",
           "per_image_batch"]


def colour_only() -> WidePolicy:
    """`stain_colour`: the wide preset's geometry, stain and colour jitter, no blur, resampling, noise or JPEG."""
    return WidePolicy(p_blur=0.0, p_down=0.0, p_noise=0.0, p_jpeg=0.0)


_IMAGE_POLICIES: dict[str, Callable[[], Callable]] = {"paper_dann": PaperPolicy, "stain_wide": WidePolicy,
                                                      "stain_colour": colour_only}


def image_policy(name: str | None) -> Callable | None:
    """The per-image numpy policy of a preset (`policy(rgb_uint8, rng)`), None for batch-only presets."""
    get_augment(name)  # KeyError naming the valid presets
    make = _IMAGE_POLICIES.get(name or "none")
    return make() if make is not None else None


def per_image_batch(policy: Callable, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A per-image numpy policy over a float (B, 3, H, W) batch in 0..255.

    Each image gets its own numpy generator seeded from the torch generator, so the batch result is a
    pure function of (x, generator state). Returns a new float tensor.
    """
    seeds = torch.randint(0, 2**31 - 1, (x.shape[0],), generator=g).tolist()
    imgs = x.detach().permute(0, 2, 3, 1).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
    out = np.stack([policy(im, np.random.default_rng(s)) for im, s in zip(imgs, seeds)])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.dtype).contiguous()


@register_augment("paper_dann")
def paper_dann_batch(x, g):
    """`augment: paper_dann`: the paper's policy per image (`per_image_batch`)."""
    return per_image_batch(PaperPolicy(), x, g)


@register_augment("stain_wide")
def stain_wide_batch(x, g):
    """`augment: stain_wide`: `augment_wide.WidePolicy` per image (`per_image_batch`)."""
    return per_image_batch(WidePolicy(), x, g)


@register_augment("stain_colour")
def stain_colour_batch(x, g):
    """`augment: stain_colour`: `colour_only()` per image (`per_image_batch`)."""
    return per_image_batch(colour_only(), x, g)
