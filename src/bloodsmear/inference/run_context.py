"""What a run of `analyze` sets around its worker threads: torch's intra-op threads, logging above the bars."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Iterator

from tqdm.contrib.logging import logging_redirect_tqdm


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Intra-op threads per worker while the batch runs (restored afterwards)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def is_console_handler(h: logging.Handler) -> bool:
    return isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stdout, sys.stderr)


@contextmanager
def log_above_bars() -> Iterator[None]:
    """While the progress bars run, a plain console handler of the root logger writes through tqdm
    (above the bars). The CLI's one handler (`cli.common.TqdmHandler`) does so already: left as it is,
    and no second handler is added (every line once)."""
    if any(is_console_handler(h) for h in logging.root.handlers):
        with logging_redirect_tqdm():
            yield
    else:
        yield
