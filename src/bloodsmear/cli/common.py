"""Shared CLI helpers: logging setup, `--json` output (one JSON object as the last line), tables."""

from __future__ import annotations

import json
import logging
from typing import Any, Iterable, Sequence

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from bloodsmear.inference.tta import check_tta
from bloodsmear.io import _json_default

console = Console(stderr=False)
err_console = Console(stderr=True)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(str(c))
    for r in rows:
        t.add_row(*[_fmt(v) for v in r])
    console.print(t)


def emit_json(obj: Any) -> None:
    """Print one JSON object as the last line of output (the `--json` contract)."""
    print(json.dumps(obj, default=_json_default), flush=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def tta_option(value: str) -> str:
    """Typer callback of `--tta`: the mode name, or a usage error listing the valid ones."""
    try:
        return check_tta(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


SCALE_HELP = ("Red-cell scale: auto (each field's own estimate; one that is far off its folder's median, or "
              "missing, takes the median), field (each field alone), folder (the median of the folder's fields "
              "of that pixel size) or the red-cell diameter in pixels.")
TTA_HELP = "Test-time augmentation: none | flip | d8 (class probabilities averaged over the crop's mirror images / quarter turns)."
