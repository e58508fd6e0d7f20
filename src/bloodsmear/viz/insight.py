"""Model insight on any torch classifier: activation maximisation (the paper's Fig. 10) and Grad-CAM.

Both work on a plain `nn.Module` whose input is a normalised (N, 3, H, W) batch; layers are named as
in `model.named_modules()`. Images handed in and out are float RGB in [0, 1] (H, W, 3) unless noted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bloodsmear.errors import BloodsmearError, UnknownLabelError
from bloodsmear.io import list_images, read_image, write_image_atomic
from bloodsmear.models.artifact import load_model
from bloodsmear.preprocess.transforms import IMAGENET_MEAN, IMAGENET_STD, fit_image, to_tensor

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- layer lookup


def conv_layer_names(model: nn.Module) -> list[str]:
    """Names of every Conv2d, in forward-definition order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


class UnknownLayerError(BloodsmearError, KeyError):
    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class FilterRangeError(BloodsmearError, IndexError):
    pass


class LayerError(BloodsmearError, ValueError):
    """A layer (named or looked for) that cannot serve: no spatial output, not run by the forward pass,
    no gradient reaching it, or no layer of the kind needed."""


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called `name`; an unknown name lists (some of) the valid conv layer names."""
    mods = dict(model.named_modules())
    if name in mods and name != "":
        return mods[name]
    convs = conv_layer_names(model)
    shown = convs if len(convs) <= 12 else convs[:6] + ["..."] + convs[-6:]
    raise UnknownLayerError(f"no layer named {name!r}; conv layers: {', '.join(shown)} ({len(convs)} in all)")


def last_conv_layer(model: nn.Module) -> str:
    convs = conv_layer_names(model)
    if not convs:
        raise LayerError("the model has no Conv2d layer: name a target layer with --layer")
    return convs[-1]


def default_cam_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The module whose output is the network's last spatial feature map (what Grad-CAM explains).

    Found by one forward pass: the last module to finish with a 4-D output larger than 1x1 (for a
    MobileNetV2 that is the whole `features` block, after its final activation; for a timm ResNet,
    `layer4`). A network without one (a ViT) gets its last module with a (N, tokens, C) output.
    """
    order: list[tuple[str, int]] = []
    names = {id(m): n for n, m in model.named_modules() if n}
    hooks = []
    for m in model.modules():
        if id(m) in names:
            def hook(mod, _i, out, _n=names[id(m)]):
                t = out if isinstance(out, torch.Tensor) else None
                if t is not None and ((t.ndim == 4 and t.shape[-1] * t.shape[-2] > 1) or t.ndim == 3):
                    order.append((_n, t.ndim))
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    four = [n for n, d in order if d == 4]
    if four:
        return four[-1]
    if order:
        return order[-1][0]
    raise LayerError("no layer of the model has a spatial output: name a target layer with --layer")


def _as_4d(out: torch.Tensor, layer: str) -> torch.Tensor:
    """(N, C, H, W) from a conv output, or from ViT tokens (N, T, C) with a square patch grid."""
    if out.ndim == 4:
        return out
    if out.ndim == 3:
        n, t, c = out.shape
        side = int(np.sqrt(t))  # class/register tokens (at most 8) come before the patch grid
        if side > 0 and t - side * side <= 8:
            grid = out[:, t - side * side :, :]
            return grid.transpose(1, 2).reshape(n, c, side, side)
    raise LayerError(f"layer {layer!r} has no spatial map (its output is {tuple(out.shape)}): name a conv layer "
                     "(`bloodsmear insight actmax MODEL --list-layers`)")


def _captured(store: dict, key: str, layer: str) -> torch.Tensor:
    """What a hook on `layer` stored under `key` ("out"/"act": its output; "grad": the gradient reaching it)."""
    if key not in store:
        why = "gets no gradient from the class score" if key == "grad" else "is not run by the model's forward pass"
        raise LayerError(f"layer {layer!r} {why}: name another layer (`bloodsmear insight actmax MODEL --list-layers`)")
    return store[key]


def _normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


# ---------------------------------------------------------------- activation maximisation


@dataclass
class ActMaxResult:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    layer: str
    filter: int
    activations: list[float] = field(default_factory=list)  # mean filter activation per step (0 = the noise)

    @property
    def start_activation(self) -> float:
        return self.activations[0]

    @property
    def final_activation(self) -> float:
        return self.activations[-1]


def activation_maximisation(
    model: nn.Module,
    layer: str,
    filter: int,  # noqa: A002 - the paper's word
    *,
    size: int = 128,
    steps: int = 80,
    lr: float = 0.05,
    jitter: int = 4,
    l2: float = 1e-4,
    blur_every: int = 10,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int = 0,
) -> ActMaxResult:
    """The input image that most excites filter `filter` of layer `layer`.

    Starts from low-amplitude noise around grey and runs `steps` of Adam gradient ascent on the
    filter's mean activation, with mild regularisation: random jitter (roll) each step, L2 decay,
    a light Gaussian blur every `blur_every` steps, and clamping to [0, 1].
    """
    target = get_layer(model, layer)
    captured: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        captured["out"] = out if isinstance(out, torch.Tensor) else out[0]

    g = torch.Generator().manual_seed(seed)
    img = (0.5 + 0.05 * torch.randn(1, 3, size, size, generator=g)).clamp(0, 1).requires_grad_(True)
    opt = torch.optim.Adam([img], lr=lr)
    was_training = model.training
    req = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    handle = target.register_forward_hook(hook)

    def act_of(x: torch.Tensor) -> torch.Tensor:
        model(_normalise(x, mean, std))
        out = _as_4d(_captured(captured, "out", layer), layer)
        if not 0 <= filter < out.shape[1]:
            raise FilterRangeError(f"layer {layer!r} has {out.shape[1]} filters; filter {filter} is out of range")
        return out[:, filter].mean()

    acts: list[float] = []
    try:
        with torch.no_grad():
            acts.append(float(act_of(img)))
        for step in range(steps):
            dx, dy = (torch.randint(-jitter, jitter + 1, (2,), generator=g).tolist() if jitter else (0, 0))
            x = torch.roll(img, shifts=(dy, dx), dims=(2, 3))
            opt.zero_grad()
            loss = -act_of(x) + l2 * (img - 0.5).pow(2).sum()
            loss.backward()
            opt.step()
            with torch.no_grad():
                if blur_every and (step + 1) % blur_every == 0 and step + 1 < steps:
                    img.copy_(_blur(img))
                img.clamp_(0, 1)
        with torch.no_grad():
            acts.append(float(act_of(img)))
    finally:
        handle.remove()
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)
        model.train(was_training)
    out_img = img.detach()[0].permute(1, 2, 0).numpy().astype(np.float32)
    log.debug("actmax %s[%d]: %.4f -> %.4f", layer, filter, acts[0], acts[-1])
    return ActMaxResult(image=out_img, layer=layer, filter=filter, activations=acts)


def _blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype)
    k2 = (k[:, None] * k[None, :]) / 16.0
    w = k2.expand(x.shape[1], 1, 3, 3).contiguous()
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, groups=x.shape[1])


def actmax_grid(results: Sequence[ActMaxResult], *, cols: int = 4, pad: int = 4) -> np.ndarray:
    """Tile several actmax images into one uint8 RGB picture (each contrast-stretched)."""
    if not results:
        raise ValueError("no images to tile")
    h, w = results[0].image.shape[:2]
    rows = (len(results) + cols - 1) // cols
    ncol = min(cols, len(results))
    canvas = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(results):
        im = r.image
        lo, hi = np.percentile(im, 1), np.percentile(im, 99)
        im = np.clip((im - lo) / max(hi - lo, 1e-6), 0, 1)
        y, x = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        canvas[y : y + h, x : x + w] = (im * 255).round().astype(np.uint8)
    return canvas


# ---------------------------------------------------------------- Grad-CAM


@dataclass
class GradCamResult:
    maps: np.ndarray  # (N, H, W) float32 in [0, 1], at the input's size
    classes: list[int]  # the class index each map explains
    probs: np.ndarray  # (N, num_classes) softmax of the logits
    layer: str


def grad_cam(model: nn.Module, x: torch.Tensor, *, layer: str | None = None, target: Sequence[int] | int | None = None) -> GradCamResult:
    """Grad-CAM (Selvaraju et al. 2017) for a normalised batch `x` (N, 3, H, W).

    `layer` defaults to `default_cam_layer` (the last spatial feature map); `target` defaults to each image's predicted class.
    Each map is ReLU(sum_k alpha_k A_k), upsampled bilinearly to (H, W) and scaled to [0, 1].
    """
    layer = layer or default_cam_layer(model, x)
    mod = get_layer(model, layer)
    store: dict[str, torch.Tensor] = {}

    def fwd(_m, _i, out):
        out = out if isinstance(out, torch.Tensor) else out[0]
        store["act"] = out
        if out.requires_grad:  # else no gradient reaches it (_captured says so)
            out.register_hook(lambda g: store.__setitem__("grad", g))

    was_training = model.training
    model.eval()
    h = mod.register_forward_hook(fwd)
    try:
        with torch.enable_grad():
            xin = x.detach().clone().requires_grad_(True)  # so frozen backbones still carry a graph
            logits = model(xin)
            logits = logits if isinstance(logits, torch.Tensor) else logits[0]
            if target is None:
                cls = logits.argmax(1).tolist()
            elif isinstance(target, int):
                cls = [target] * len(x)
            else:
                cls = list(target)
            model.zero_grad(set_to_none=True)
            sel = logits.gather(1, torch.tensor(cls).view(-1, 1)).sum()
            sel.backward()
    finally:
        h.remove()
        model.train(was_training)
    act = _as_4d(_captured(store, "act", layer).detach(), layer)
    grad = _as_4d(_captured(store, "grad", layer).detach(), layer)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.view(len(cam), -1)
    lo, hi = flat.min(1)[0].view(-1, 1, 1), flat.max(1)[0].view(-1, 1, 1)
    cam = torch.where(hi - lo > 1e-12, (cam - lo) / (hi - lo + 1e-12), torch.zeros_like(cam))
    probs = torch.softmax(logits.detach(), 1).numpy()
    return GradCamResult(maps=cam.clamp(0, 1).numpy().astype(np.float32), classes=cls, probs=probs, layer=layer)


def overlay_heatmap(rgb: np.ndarray, cam: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] heat map (JET colours) over an RGB uint8 image; the image is not modified."""
    if cam.shape[:2] != rgb.shape[:2]:
        cam = cv2.resize(cam.astype(np.float32), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return (rgb.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).round().clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------- penultimate features


def penultimate_features(model: nn.Module, batches, *, layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features entering the final `nn.Linear` (the 128-d head output for the paper's classifier).

    `batches` yields (x, y) pairs of normalised image tensors and integer labels. Returns
    (features (N, D) float32, labels (N,) int64). `layer` names another module whose *input* to take.
    """
    if layer is None:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise LayerError("the model has no nn.Linear layer: name the feature layer explicitly")
        layer = linears[-1]
    mod = get_layer(model, layer)
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    h = mod.register_forward_hook(lambda _m, inp, _o: feats.append(inp[0].detach().flatten(1)))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for x, y in batches:
                model(x)
                labels.append(torch.as_tensor(y).view(-1))
    finally:
        h.remove()
        model.train(was_training)
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return torch.cat(feats).float().numpy(), torch.cat(labels).long().numpy()


# ---------------------------------------------------------------- on a model folder (the CLI's work)


def actmax_model(ref: str | Path, layer: str | None, filters: Sequence[int], out: str | Path, *, steps: int = 80,
                 size: int | None = None, seed: int = 0) -> dict:
    """Activation maximisation of `filters` of `layer` (default: the last conv) of a model folder or
    shipped name; one PNG tiling every filter's image. Returns a summary dict."""
    lm = load_model(ref)
    model = lm.model
    layer = layer or last_conv_layer(model)
    results = [activation_maximisation(model, layer, int(k), size=size or lm.info.input_size, steps=steps,
                                       mean=lm.info.mean, std=lm.info.std, seed=seed + i) for i, k in enumerate(filters)]
    write_image_atomic(out, actmax_grid(results), quality=95)
    return {"model": str(lm.path), "layer": layer, "out": str(out), "steps": steps,
            "filters": [{"filter": r.filter, "start_activation": r.start_activation,
                         "final_activation": r.final_activation} for r in results]}


def gradcam_model(ref: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, *, layer: str | None = None,
                  target: str | None = None, batch_size: int = 16, display_size: int = 224) -> dict:
    """Grad-CAM over single-cell images (files or folders): `<stem>_gradcam.png` per image (the cell |
    the heat map over it, at least `display_size` px), the predicted class and probability per image.
    Bad files are skipped and counted."""
    lm = load_model(ref)
    info, model = lm.info, lm.model
    tgt = None
    if target is not None:
        if target not in info.classes:
            raise UnknownLabelError(target, list(info.classes))
        tgt = info.classes.index(target)
    paths = [p for i in inputs for p in list_images(Path(i), include_hidden=False)]
    out_dir = Path(out_dir)
    rows, skipped = [], []
    for b in range(0, len(paths), batch_size):
        imgs, shown, ok = [], [], []
        for p in paths[b:b + batch_size]:
            try:
                rgb = read_image(p)
                imgs.append(fit_image(rgb, info.input_size, info.crop_fraction))
                shown.append(fit_image(rgb, max(info.input_size, display_size), info.crop_fraction))
                ok.append(p)
            except Exception as e:  # noqa: BLE001 - InputError and decoder errors: report, go on
                skipped.append(f"{p}: {e}")
                log.warning("skipped %s: %s", p, e)
        if not imgs:
            continue
        x = to_tensor(np.stack(imgs), info.mean, info.std, channels_last=False)
        r = grad_cam(model, x, layer=layer, target=tgt)
        for p, img, cam, cls, pr in zip(ok, shown, r.maps, r.classes, r.probs):
            dest = out_dir / f"{p.stem}_gradcam.png"
            write_image_atomic(dest, np.concatenate([img, overlay_heatmap(img, cam)], axis=1))
            rows.append({"image": str(p), "out": str(dest), "class": info.classes[cls],
                         "probability": float(pr[cls]), "predicted": info.classes[int(pr.argmax())]})
        layer = r.layer
    return {"model": str(lm.path), "layer": layer, "out_dir": str(out_dir), "n_images": len(rows),
            "n_skipped": len(skipped), "skipped": skipped, "images": rows}
