"""Plain result tables: Markdown and CSV (atomic), for benchmark and experiment figures."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from bloodsmear.io import atomic_path


def markdown_table(columns: list[str], rows: list[list]) -> str:
    def cell(v: Any) -> str:
        return (f"{v:.4g}" if isinstance(v, float) else str(v)).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: str | Path, columns: list[str], rows: list[list]) -> Path:
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(columns)
            w.writerows(rows)
    return Path(path)


__all__ = ["markdown_table", "write_csv"]
