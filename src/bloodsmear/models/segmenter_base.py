"""The contract every WBC instance segmenter honours (fast default and Mask R-CNN alike).

A segmenter is a model folder (`bloodsmear.models.folder`: config.json with `"kind": "<registered kind>"`,
weights, thresholds,
`rbc_diameter_px` = the typical red-cell diameter at the segmenter's working scale). It takes an RGB
uint8 image AT ITS WORKING SCALE and returns WBC instances as `bloodsmear.types.Cell` objects with
label "wbc", `score`, `box` (x1, y1, x2, y2), `polygon` (N, 2) and `mask` (bool, covering the
integer-rounded box) in that image's pixels. Scale estimation, tiling and mapping back to original
pixels are done by `bloodsmear.inference` with `bloodsmear.preprocess.scale` / `.tiling`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from bloodsmear.models.folder import check_kind, resolve_model
from bloodsmear.types import Cell


@runtime_checkable
class Segmenter(Protocol):
    kind: str
    rbc_diameter_px: float  # typical RBC diameter (px) at the working scale the model was trained at

    def predict(self, rgb: np.ndarray) -> list[Cell]:
        """WBC instances in `rgb` (working scale). Must not modify `rgb`."""
        ...


_LOADERS: dict[str, Callable[[Path], Segmenter]] = {}


def register_segmenter(kind: str) -> Callable[[Callable[[Path], Segmenter]], Callable[[Path], Segmenter]]:
    """Decorator: register a loader `folder -> Segmenter` under `kind` (config.json's "kind")."""

    def deco(fn: Callable[[Path], Segmenter]) -> Callable[[Path], Segmenter]:
        _LOADERS[kind] = fn
        return fn

    return deco


def segmenter_kinds() -> tuple[str, ...]:
    """Every registered segmenter kind (the built-in ones imported first)."""
    _import_builtin_kinds()
    return tuple(sorted(_LOADERS))


def load_segmenter(ref: str | Path, *, base_dir: str | Path | None = None) -> Segmenter:
    """Load a segmenter model folder (a path, relative to `base_dir` or the working directory, or a shipped
    name; `models.folder.resolve_model`) by the `kind` in its config.json. A folder of another kind (a
    classifier) is one InputError naming the folder, its kind and the segmenter kinds."""
    kinds = segmenter_kinds()
    folder = resolve_model(ref, kind=kinds, base_dir=base_dir)
    return _LOADERS[check_kind(folder, kinds)](folder)


def _import_builtin_kinds() -> None:
    for mod in ("bloodsmear.models.segmenter", "bloodsmear.models.maskrcnn"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
