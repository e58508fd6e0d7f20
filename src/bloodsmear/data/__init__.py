"""Readers that all produce the canonical `bloodsmear.types.Dataset`.

`load_dataset(path, format="auto")` is the one entry point: formats are `pbc`, `lisc`, `folders`
(generic class-per-folder), `voc` (BCCD), `cvat` (RV-PBS), `coco`.
"""

from __future__ import annotations

from pathlib import Path

from bloodsmear.data.registry import FORMATS, load
from bloodsmear.types import Dataset

__all__ = ["FORMATS", "load_dataset"]


def load_dataset(path: str | Path, format: str = "auto", **kwargs) -> Dataset:  # noqa: A002
    """Read any supported dataset into the canonical model. Implemented in `bloodsmear.data.registry`."""
    return load(Path(path), format, **kwargs)
