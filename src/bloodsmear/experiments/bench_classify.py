"""Classifier throughput: decoded crops through fit, normalisation and the network, batched.

    bench_classify("default", n=2000)      # {"cells_per_s": ..., "threads": 2, ...}
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bloodsmear.inference.classify import CellClassifier

__all__ = ["bench_classify"]


def bench_classify(model: str | Path = "default", *, n: int = 2000, batch_size: int = 256, threads: int | None = 2,
                   crop_size: int = 224, seed: int = 0, source: Sequence[np.ndarray] | None = None) -> dict:
    """End-to-end throughput from decoded crops (fit + normalise + network), batched.

    Crops are `source` images (cycled) or random RGB uint8 crops of `crop_size`. One warm-up batch is
    not timed. Returns {"cells_per_s", "n", "seconds", "cpu_seconds", "cells_per_cpu_s_x_threads",
    "batch_size", "threads", "model", "input_size"}.
    """
    if threads:
        torch.set_num_threads(int(threads))
    clf = CellClassifier.load(model)
    if source is not None and len(source):
        crops = [source[i % len(source)] for i in range(n)]
    else:
        rng = np.random.default_rng(seed)
        base = [rng.integers(0, 256, (crop_size, crop_size, 3), dtype=np.uint8) for _ in range(min(n, 64))]
        crops = [base[i % len(base)] for i in range(n)]
    clf.predict_proba(crops[:batch_size], batch_size=batch_size)  # warm-up
    c0, t0 = time.process_time(), time.perf_counter()
    clf.predict_proba(crops, batch_size=batch_size)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    nthreads = torch.get_num_threads()
    # cells per CPU-second x threads: what `threads` otherwise idle cores would give; differs from
    # cells_per_s only when other processes compete for the CPU
    return {"cells_per_s": n / dt, "n": n, "seconds": dt, "cpu_seconds": cpu,
            "cells_per_cpu_s_x_threads": n / max(cpu, 1e-9) * nthreads, "batch_size": batch_size,
            "threads": nthreads, "model": str(clf.loaded.path), "input_size": clf.info.input_size}
