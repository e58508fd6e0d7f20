"""Model complexity, the paper's Tables 7/8: layer counts, parameters, activation memory, file size,
train-epoch time and per-image inference time.

Everything here works on any `torch.nn.Module`; `model_complexity(name)` builds the paper's
classifier (backbone → GAP → Dense(128) → softmax) for a registered backbone name in both modes.

Counting conventions (stated so the numbers can be compared with Keras' `model.summary()`):
- conv layers: every `nn.Conv1d/2d/3d` and transposed conv (depthwise convs count as one layer each);
- dense layers: every `nn.Linear` (attention projections in a ViT count too);
- parameters: `nn.Parameter`s only; `buffers` (e.g. BatchNorm running mean/var, which Keras lists as
  non-trainable parameters) are reported separately;
- activation memory: the summed size of every leaf module's output tensors for one forward pass of
  one batch, in the model's dtype (what autograd keeps for the backward pass, to first order).
"""

from __future__ import annotations

import io
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from bloodsmear.models.classifier import build_classifier

log = logging.getLogger(__name__)

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_DENSE_TYPES = (nn.Linear,)
MODES = ("frozen", "finetune")


@dataclass
class LayerCounts:
    conv: int
    dense: int


@dataclass
class ParamCounts:
    total: int
    trainable: int
    non_trainable: int
    buffers: int

    @property
    def total_m(self) -> float:
        return self.total / 1e6

    @property
    def trainable_m(self) -> float:
        return self.trainable / 1e6

    @property
    def non_trainable_m(self) -> float:
        return self.non_trainable / 1e6


@dataclass
class Timing:
    """Mean ± std (seconds) over `repeats` runs."""

    mean_s: float
    std_s: float
    repeats: int
    runs: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, runs: list[float]) -> "Timing":
        std = statistics.stdev(runs) if len(runs) > 1 else 0.0
        return cls(mean_s=statistics.fmean(runs), std_s=std, repeats=len(runs), runs=list(runs))


@dataclass
class Complexity:
    """One model's row of the complexity table."""

    name: str
    input_size: int
    batch_size: int
    layers: LayerCounts
    params: dict[str, ParamCounts]  # mode ("frozen" / "finetune" / "as_is") -> counts
    activation_gb: float  # one forward pass of one batch
    file_mb_fp32: float
    file_mb_fp16: float
    train_epoch: Timing | None = None  # seconds per epoch over `train_images` synthetic images
    train_images: int = 0
    train_mode: str = ""
    infer_per_image: Timing | None = None  # seconds per image
    device: str = "cpu"
    threads: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        for mode, pc in self.params.items():
            d["params"][mode].update(total_m=pc.total_m, trainable_m=pc.trainable_m, non_trainable_m=pc.non_trainable_m)
        return d

    def row(self) -> dict:
        """A flat row for tables/CSV (times in ms)."""
        r: dict = {
            "model": self.name,
            "input": self.input_size,
            "conv_layers": self.layers.conv,
            "dense_layers": self.layers.dense,
        }
        first = next(iter(self.params.values()))
        r["total_params_M"] = round(first.total_m, 3)
        for mode, pc in self.params.items():
            r[f"trainable_M_{mode}"] = round(pc.trainable_m, 3)
            r[f"non_trainable_M_{mode}"] = round(pc.non_trainable_m, 3)
        r["buffers_M"] = round(first.buffers / 1e6, 3)
        r[f"activation_GB_b{self.batch_size}"] = round(self.activation_gb, 4)
        r["file_MB_fp32"] = round(self.file_mb_fp32, 2)
        r["file_MB_fp16"] = round(self.file_mb_fp16, 2)
        if self.train_epoch is not None:
            r[f"train_epoch_s_{self.train_mode}_n{self.train_images}"] = _pm(self.train_epoch, 1.0, 3)
        if self.infer_per_image is not None:
            r["infer_ms_per_image"] = _pm(self.infer_per_image, 1000.0, 2)
        return r


def _pm(t: Timing, scale: float, nd: int) -> str:
    return f"{t.mean_s * scale:.{nd}f} ± {t.std_s * scale:.{nd}f}"


# ---------------------------------------------------------------- pure counting


def count_layers(model: nn.Module) -> LayerCounts:
    conv = dense = 0
    for m in model.modules():
        if isinstance(m, _CONV_TYPES):
            conv += 1
        elif isinstance(m, _DENSE_TYPES):
            dense += 1
    return LayerCounts(conv=conv, dense=dense)


def count_params(model: nn.Module) -> ParamCounts:
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return ParamCounts(total=total, trainable=trainable, non_trainable=total - trainable, buffers=buffers)


def _tensors(obj) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Summed bytes of every leaf module's outputs for one forward pass of `x` (no grad kept).

    Outputs that share storage with one already counted (in-place ReLU, Identity, eval Dropout)
    count once; outputs are kept alive during the pass so that freed memory reused by a later
    tensor is not mistaken for sharing.
    """
    total = 0
    keep: dict[int, torch.Tensor] = {}

    def hook(_m, _inp, out):
        nonlocal total
        for t in _tensors(out):
            ptr = t.untyped_storage().data_ptr()
            if ptr in keep:
                continue
            keep[ptr] = t
            total += t.numel() * t.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        keep.clear()
    return total


def state_dict_bytes(model: nn.Module, *, half: bool = False) -> int:
    """Size of the serialised state_dict (torch.save), optionally with floating tensors in fp16."""
    sd = model.state_dict()
    if half:
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getbuffer().nbytes


def _first_logits(out) -> torch.Tensor:
    """Training-mode InceptionV3 returns (logits, aux); take the main output."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return next(iter(_tensors(out)))


def time_train_epoch(
    model: nn.Module,
    *,
    input_size: int,
    num_classes: int,
    n_images: int = 32,
    batch_size: int = 8,
    repeats: int = 3,
    lr: float = 1e-4,
    seed: int = 0,
) -> Timing:
    """Seconds for one training epoch (Adam, cross-entropy) over `n_images` synthetic images."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(n_images, 3, input_size, input_size, generator=g)
    ys = torch.randint(0, num_classes, (n_images,), generator=g)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    opt = torch.optim.Adam(params, lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, n_images, batch_size):
            xb, yb = xs[i : i + batch_size], ys[i : i + batch_size]
            if len(xb) < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
                continue  # BatchNorm cannot train on one sample
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(_first_logits(model(xb)), yb)
            loss.backward()
            opt.step()
        runs.append(time.perf_counter() - t0)
    return Timing.of(runs)


def time_inference(
    model: nn.Module, *, input_size: int, batch_size: int = 8, repeats: int = 10, warmup: int = 1, seed: int = 0
) -> Timing:
    """Seconds per image: each run times one batch forward pass (eval, no grad) and divides by its size."""
    x = torch.rand(batch_size, 3, input_size, input_size, generator=torch.Generator().manual_seed(seed))
    model.eval()
    runs = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            model(x)
            dt = (time.perf_counter() - t0) / batch_size
            if i >= warmup:
                runs.append(dt)
    return Timing.of(runs)


# ---------------------------------------------------------------- whole report


def module_complexity(
    model: nn.Module,
    *,
    name: str = "model",
    input_size: int = 224,
    batch_size: int = 8,
    num_classes: int | None = None,
    repeats: int = 3,
    train_images: int = 0,
    timing: bool = True,
    params_by_mode: dict[str, ParamCounts] | None = None,
) -> Complexity:
    """Complexity of a ready-built module (its parameters' requires_grad decides trainable)."""
    x = torch.rand(batch_size, 3, input_size, input_size)
    act = activation_bytes(model, x)
    r = Complexity(
        name=name,
        input_size=input_size,
        batch_size=batch_size,
        layers=count_layers(model),
        params=params_by_mode or {"as_is": count_params(model)},
        activation_gb=act / 1e9,
        file_mb_fp32=state_dict_bytes(model) / 1e6,
        file_mb_fp16=state_dict_bytes(model, half=True) / 1e6,
        threads=torch.get_num_threads(),
    )
    if timing:
        if num_classes is None:
            with torch.no_grad():
                model.eval()
                num_classes = int(_first_logits(model(x[:1])).shape[-1])
        n = train_images or 4 * batch_size
        if any(p.requires_grad for p in model.parameters()):
            r.train_epoch = time_train_epoch(
                model, input_size=input_size, num_classes=num_classes, n_images=n, batch_size=batch_size, repeats=repeats
            )
            r.train_images = n
            r.train_mode = "as_is"
        r.infer_per_image = time_inference(model, input_size=input_size, batch_size=batch_size, repeats=max(repeats, 3))
    return r


def model_complexity(
    name: str,
    *,
    input_size: int = 224,
    batch_size: int = 8,
    num_classes: int = 8,
    repeats: int = 3,
    train_images: int = 0,
    train_mode: str = "finetune",
    timing: bool = True,
    builder: Callable[[str, str, int], nn.Module] | None = None,
) -> Complexity:
    """Complexity of the paper's classifier on backbone `name`, in frozen and fine-tuned modes.

    `builder(name, mode, num_classes)` builds the model (default: `bloodsmear.models.classifier`,
    random weights — complexity never needs pretrained weights). Timing trains in `train_mode`.
    """
    if train_mode not in MODES:
        raise ValueError(f"train_mode must be one of {MODES}, got {train_mode!r}")
    build = builder or build_classifier_for_complexity
    model = build(name, train_mode, num_classes)
    if hasattr(model, "set_mode"):  # the paper's classifier switches modes in place: build once
        by_mode = {}
        for mode in MODES:
            model.set_mode(mode)
            by_mode[mode] = count_params(model)
        model.set_mode(train_mode)
    else:
        by_mode = {mode: count_params(build(name, mode, num_classes)) for mode in MODES}
    r = module_complexity(
        model,
        name=name,
        input_size=input_size,
        batch_size=batch_size,
        num_classes=num_classes,
        repeats=repeats,
        train_images=train_images,
        timing=timing,
        params_by_mode=by_mode,
    )
    if r.train_epoch is not None:
        r.train_mode = train_mode
    return r


def build_classifier_for_complexity(name: str, mode: str, num_classes: int) -> nn.Module:
    """The paper's classifier with random weights, via the classifier core (models/classifier.py)."""
    return build_classifier(name, num_classes, mode=mode, pretrained=False)


def complexity_rows(results: list[Complexity]) -> tuple[list[str], list[list]]:
    """Columns and rows (union of keys, in first-seen order) for print_table / CSV / Markdown."""
    rows = [r.row() for r in results]
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols, [[r.get(c, "") for c in cols] for r in rows]
