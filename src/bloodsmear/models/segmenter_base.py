"""The contract every WBC instance segmenter honours (fast default and Mask R-CNN alike).

A segmenter is a model folder (config.json with `"kind": "<registered kind>"`, weights, thresholds,
`rbc_diameter_px` = the typical red-cell diameter at the segmenter's working scale). It takes an RGB
uint8 image AT ITS WORKING SCALE and returns WBC instances as `bloodsmear.types.Cell` objects with
label "wbc", `score`, `box` (x1, y1, x2, y2), `polygon` (N, 2) and `mask` (bool, covering the
integer-rounded box) in that image's pixels. Scale estimation, tiling and mapping back to original
pixels are done by `bloodsmear.inference` with `bloodsmear.preprocess.scale` / `.tiling`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from bloodsmear.errors import InputError
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


def load_segmenter(folder: str | Path) -> Segmenter:
    """Load a segmenter model folder by the `kind` in its config.json."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise InputError(folder, "not a segmenter model folder (no config.json)")
    kind = json.loads(cfg_path.read_text())["kind"]
    _import_builtin_kinds()
    if kind not in _LOADERS:
        raise KeyError(f"{folder}: unknown segmenter kind {kind!r}; known: {', '.join(sorted(_LOADERS))}")
    return _LOADERS[kind](folder)


def _import_builtin_kinds() -> None:
    for mod in ("bloodsmear.models.segmenter", "bloodsmear.models.maskrcnn"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
