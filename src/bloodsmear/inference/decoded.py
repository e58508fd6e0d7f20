"""Decoded fields kept between a run's scale pass and its analysis, so a field is decoded once.

The scale pass (`inference.scale_plan`) decodes every input to measure its red cells; the analysis then
needs the same pixels. `DecodedCache.read` decodes (`io.read_image`) and keeps the fields still to be
analysed while they fit in `budget_bytes` (earlier fields first: they are analysed first);
`DecodedCache.take` hands a kept field to the analysis once and forgets it. A field not kept is decoded
again, as without the cache. Thread-safe (the scale pass and the analysis run in worker threads).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable

import numpy as np

from bloodsmear.io import read_image

DEFAULT_BUDGET_BYTES = 256 * 1024 * 1024  # ~280 BCCD fields of 640x480, or 7 phone photos of 12 MP


class DecodedCache:
    """Decoded RGB fields of `wanted` paths, at most `budget_bytes` (default `DEFAULT_BUDGET_BYTES`) of
    pixels at once."""

    def __init__(self, wanted: Iterable[str | Path], budget_bytes: int | None = None):
        self._wanted = {Path(p) for p in wanted}
        self._budget = int(DEFAULT_BUDGET_BYTES if budget_bytes is None else budget_bytes)
        self._used = 0
        self._kept: dict[Path, np.ndarray] = {}
        self._lock = threading.Lock()
        self.hits = 0

    def read(self, path: str | Path) -> np.ndarray:
        """`read_image(path)`, kept for the analysis when it is wanted and fits (never evicting)."""
        rgb = read_image(path)
        p = Path(path)
        if p in self._wanted:
            with self._lock:
                if p not in self._kept and self._used + rgb.nbytes <= self._budget:
                    rgb.flags.writeable = False  # shared with the analysis: nobody may change it
                    self._kept[p] = rgb
                    self._used += rgb.nbytes
        return rgb

    def take(self, path: str | Path) -> np.ndarray | None:
        """The kept pixels of `path` (then forgotten), or None."""
        with self._lock:
            rgb = self._kept.pop(Path(path), None)
            if rgb is not None:
                self._used -= rgb.nbytes
                self.hits += 1
        return rgb

    def read_for_analysis(self, path: str | Path) -> np.ndarray:
        """What the analysis reads: the kept pixels, else a fresh decode."""
        rgb = self.take(path)
        return rgb if rgb is not None else read_image(path)

    def __len__(self) -> int:
        return len(self._kept)
