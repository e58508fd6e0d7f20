"""In-memory image arrays for fast CPU training: decode + resize every image once, cache as .npy.

    arr = load_arrays(paths, size=96, crop_fraction=0.85)       # (N, 96, 96, 3) uint8, cached
    loader = ArrayLoader(arr, labels, batch_size=64, shuffle=True, augment="flips", seed=0)
    for x, y in loader: ...                                     # x float normalised (B, 3, S, S)

The cache key is a hash of the file list (paths, sizes, mtimes) and the preprocessing, so a changed
dataset or size never reuses a stale cache. The cache lives in ~/.cache/bloodsmear/arrays (or
`cache_dir`), never in the repository. Unreadable images raise `InputError` naming the file unless
`skip_bad=True`, where they are reported and left out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from bloodsmear.errors import InputError
from bloodsmear.io import atomic_path, read_image
from bloodsmear.preprocess.augment import get_augment
from bloodsmear.preprocess.transforms import fit_image, normalizer, to_float
from bloodsmear.settings import cache_dir as settings_cache_dir
from bloodsmear.training.distributed import shard_len, shard_positions

log = logging.getLogger(__name__)
CACHE_VERSION = 1


def _cache_key(paths: Sequence[Path], size: int, crop_fraction: float) -> str:
    h = hashlib.sha1()
    h.update(json.dumps({"v": CACHE_VERSION, "size": size, "crop": crop_fraction}).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{int(st.st_mtime)}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()[:16]


def decode_images(paths: Sequence[Path], size: int, crop_fraction: float = 1.0, *, skip_bad: bool = False,
                  progress: bool = False) -> tuple[np.ndarray, list[int], list[str]]:
    """Decode + fit every image. Returns (array of the good ones, their indices, messages for bad ones)."""
    out = np.empty((len(paths), size, size, 3), np.uint8)
    good, bad = [], []
    for i, p in enumerate(tqdm(paths, desc=f"decode {size}px", disable=not progress, leave=False)):
        try:
            img = read_image(p)
        except InputError as e:
            if not skip_bad:
                raise
            bad.append(str(e))
            continue
        out[len(good)] = fit_image(img, size, crop_fraction)
        good.append(i)
    return out[:len(good)], good, bad


def load_arrays(paths: Sequence[str | Path], size: int, crop_fraction: float = 1.0, *,
                cache_dir: str | Path | None = None, progress: bool = True) -> np.ndarray:
    """All images as one (N, size, size, 3) uint8 array, from the cache when present."""
    paths = [Path(p) for p in paths]
    cdir = Path(cache_dir) if cache_dir else settings_cache_dir("arrays")
    cfile = cdir / f"img_{_cache_key(paths, size, crop_fraction)}_{len(paths)}_{size}.npy"
    if cfile.is_file():
        arr = np.load(cfile, mmap_mode=None)
        if arr.shape == (len(paths), size, size, 3):
            log.debug("array cache hit %s", cfile)
            return arr
    arr, _good, _bad = decode_images(paths, size, crop_fraction, progress=progress)
    try:
        cdir.mkdir(parents=True, exist_ok=True)
        with atomic_path(cfile) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr)
        log.info("cached %d decoded images (%d px) at %s", len(arr), size, cfile)
    except OSError as e:  # a read-only cache is not fatal
        log.warning("could not write array cache %s: %s", cfile, e)
    return arr


class ArrayLoader:
    """Batches from an in-memory uint8 array: shuffling or class-balanced sampling, tensor augmentation.

    Yields `(x, y)`: x normalised float (B, 3, S, S), y int64 labels. Deterministic for a seed and epoch
    (`set_epoch`). `balanced=True` draws each epoch's len(images) indices with per-class equal weight.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, *, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], shuffle: bool = False, augment: str | None = None, balanced: bool = False,
                 seed: int = 0, drop_last: bool = False, channels_last: bool = True):
        self.images = images
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        if self.labels is not None and len(self.labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.labels)} labels")
        self.batch_size = int(batch_size)
        self.mean, self.std = normalizer(mean, std)
        self.shuffle = shuffle
        self.augment = get_augment(augment) if augment else None
        self.balanced = balanced
        self.seed = seed
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.epoch = 0
        self.shard = (0, 1)  # (rank, world): `training.distributed.shard` sets it under torchrun

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = shard_len(len(self.images), self.shard[1])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self) -> np.ndarray:
        """The epoch's order (the same on every rank), this rank's shard of it."""
        n = len(self.images)
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.balanced and self.labels is not None:
            counts = np.bincount(self.labels)
            w = 1.0 / counts[self.labels]
            order = rng.choice(n, size=n, replace=True, p=w / w.sum())
        else:
            order = rng.permutation(n) if self.shuffle else np.arange(n)
        return order[shard_positions(n, *self.shard)] if self.shard[1] > 1 else order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        g = torch.Generator().manual_seed(int(self.seed) * 100003 + self.epoch)
        n_batches = len(self)
        for b in range(n_batches):
            idx = np.sort(order[b * self.batch_size:(b + 1) * self.batch_size]) if not self.shuffle and not \
                self.balanced else order[b * self.batch_size:(b + 1) * self.batch_size]
            x = to_float(self.images[idx])
            if self.augment is not None:
                x = self.augment(x, g)
            x = (x - self.mean) / self.std
            x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()
            y = torch.from_numpy(self.labels[idx]) if self.labels is not None else torch.full((len(idx),), -1)
            yield x, y


__all__ = ["decode_images", "load_arrays", "ArrayLoader"]
