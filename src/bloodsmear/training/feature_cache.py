"""Train only the top of a backbone on CPU: cache the frozen lower part's feature maps once.

A classifier's backbone body (torchvision `features`, a Sequential) is split at block `at`: blocks
``[:at]`` (the *trunk*) stay frozen with ImageNet statistics, blocks ``[at:]`` + pooling + the head
train. The trunk's output for every crop - and for `views` augmented copies of each training crop
(the paper's policy, drawn once, seeded) - is computed once and stored as fp16, so an epoch costs only
the trainable top. The trained `WBCClassifier` is an ordinary full model (trunk weights untouched):
it is saved and used on raw images like any other.

    tail = TailModel(model, at=17)               # model.forward(raw) == tail.forward(model.trunk(raw))
    maps = extract_maps(tail, crops, mean, std)  # (N, C, h, w) fp16
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bloodsmear.io import atomic_path
from bloodsmear.preprocess.transforms import to_tensor
from bloodsmear.training.distributed import shard_len, shard_positions

log = logging.getLogger(__name__)


def _body(model: nn.Module) -> nn.Sequential:
    bb = getattr(model, "backbone", None)
    body = getattr(bb, "body", None)
    if not isinstance(body, nn.Sequential) or getattr(bb, "kind", "") != "torchvision_features":
        raise ValueError("a cached trunk needs a torchvision-features backbone (mobilenet_v2, tiny_cnn)")
    return body


class TailModel(nn.Module):
    """The trainable top of a `WBCClassifier`: maps of block `at` -> pooled features -> logits.

    Shares its parameters with `model` (training the tail trains the model). `trunk(x)` runs the frozen
    lower blocks on normalised images.
    """

    def __init__(self, model: nn.Module, at: int, *, freeze_bn: bool = False):
        super().__init__()
        self.freeze_bn = freeze_bn  # keep the tail's BatchNorm statistics as pretrained too
        body = _body(model)
        if not 0 <= at < len(body):
            raise ValueError(f"split point {at} outside the backbone's {len(body)} blocks")
        self.model = model
        self.at = int(at)
        for p in body[:at].parameters():
            p.requires_grad_(False)

    @property
    def body(self) -> nn.Sequential:
        return _body(self.model)

    def train(self, mode: bool = True) -> "TailModel":
        super().train(mode)
        self.body[: self.at].eval()  # frozen trunk keeps its BatchNorm statistics
        if self.freeze_bn:
            for m in self.body[self.at:].modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    @torch.no_grad()
    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        was = self.body.training
        self.body[: self.at].eval()
        out = self.body[: self.at](x)
        self.body.train(was)
        self.body[: self.at].eval()
        return out

    def forward_features(self, h: torch.Tensor) -> torch.Tensor:
        m = self.body[self.at:](h.float())
        return torch.flatten(nn.functional.adaptive_avg_pool2d(m, 1), 1)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.model.head(f)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(h))


def extract_maps(tail: TailModel, images: np.ndarray, mean: Sequence[float], std: Sequence[float], *,
                 batch_size: int = 64, progress: bool = False, desc: str = "trunk") -> torch.Tensor:
    """Trunk maps of uint8 crops (N, S, S, 3) -> fp16 (N, C, h, w)."""
    dev = next(tail.parameters()).device  # the trunk runs where the model is; maps are kept on the CPU
    outs = []
    for b in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        x = to_tensor(images[b:b + batch_size], mean, std, channels_last=False)
        outs.append(tail.trunk(x.to(dev)).to(torch.float16).cpu())
    return torch.cat(outs) if outs else torch.empty(0)


def augmented_views(images: np.ndarray, policy: Callable, views: int, seed: int) -> Iterator[np.ndarray]:
    """`views` arrays (N, S, S, 3): view 0 the crops themselves, view v>0 the policy with seed (seed, v, i)."""
    yield images
    for v in range(1, views):
        yield np.stack([policy(im, np.random.default_rng([seed, v, i])) for i, im in enumerate(images)])


def cached_views(tail: TailModel, images: np.ndarray, *, policy: Callable | None, views: int, seed: int,
                 mean: Sequence[float], std: Sequence[float], cache: str | Path | None = None,
                 progress: bool = False) -> torch.Tensor:
    """(N, V, C, h, w) fp16 trunk maps of V views per crop, read from / written to `cache` (.pt)."""
    if cache is not None and Path(cache).is_file():
        t = torch.load(cache, map_location="cpu", weights_only=True)
        if t.shape[0] == len(images) and t.shape[1] == views:
            return t
    vs = augmented_views(images, policy, views if policy is not None else 1, seed)
    maps = torch.stack([extract_maps(tail, v, mean, std, progress=progress, desc=f"view {k}")
                        for k, v in enumerate(vs)], dim=1)
    if cache is not None:
        with atomic_path(cache) as tmp:
            torch.save(maps, tmp)
    return maps


class MapLoader:
    """Batches (maps, labels) from cached views: each epoch picks one view per crop (seeded).

    Same interface as `bloodsmear.training.loaders.ArrayLoader`: iterate for `(x, y)`, `set_epoch`, `len`.
    """

    def __init__(self, maps: torch.Tensor, labels: np.ndarray | None, *, batch_size: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, balanced: bool = False, num_batches: int | None = None):
        self.maps = maps if maps.dim() == 5 else maps.unsqueeze(1)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.drop_last, self.balanced = shuffle, seed, drop_last, balanced
        self.num_batches = num_batches  # fixed number of batches per epoch (cycling), e.g. to pair domains
        self.epoch = 0
        self.shard = (0, 1)  # (rank, world): `training.distributed.shard` sets it under torchrun

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.num_batches is not None:
            return self.num_batches
        n = shard_len(len(self.maps), self.shard[1])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        n = len(self.maps)
        need = len(self) * self.batch_size * self.shard[1]  # every rank's batches
        if self.balanced and self.labels is not None:
            w = 1.0 / np.bincount(self.labels)[self.labels]
            return rng.choice(n, size=need, replace=True, p=w / w.sum())
        reps = -(-need // n)
        parts = [rng.permutation(n) if self.shuffle else np.arange(n) for _ in range(reps)]
        return np.concatenate(parts)[:need] if self.num_batches is not None else np.concatenate(parts)[:n]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = self._order(rng)
        view = rng.integers(self.maps.shape[1], size=len(order)) if self.shuffle else np.zeros(len(order), int)
        if self.shard[1] > 1:  # the same order on every rank, this rank's part of it
            pos = shard_positions(len(order), *self.shard)
            order, view = order[pos], view[pos]
        for b in range(len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx, v = order[sl], view[sl]
            if len(idx) == 0:
                break
            x = self.maps[torch.from_numpy(idx), torch.from_numpy(v)].float()
            y = torch.from_numpy(self.labels[idx]) if self.labels is not None else torch.full((len(idx),), -1)
            yield x, y
