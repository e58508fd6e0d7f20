"""Counts CSV: one row per image with the number of cells of every class, then totals and percentages.

Columns: `image`, one column per class (sorted), `total`, `review` (cells flagged for review; they are
also counted in their class). The last two rows are `TOTAL` (column sums) and `PERCENT` (each class's
share of all cells, in percent, 2 decimals; `review` as a share of all cells too).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Sequence

from bloodsmear.io import write_text_atomic
from bloodsmear.types import SlideResult

TOTAL_ROW = "TOTAL"
PERCENT_ROW = "PERCENT"


def count_table(results: Sequence[SlideResult], classes: Iterable[str] = ()) -> tuple[list[str], list[list]]:
    """(header, rows) of the counts table; `classes` adds columns even where no cell has that class."""
    cls = set(classes)
    for r in results:
        cls.update(c.label for c in r.cells)
    cols = sorted(cls)
    header = ["image", *cols, "total", "review"]
    rows: list[list] = []
    totals = [0] * (len(cols) + 2)
    for r in results:
        counts = r.class_counts()
        n_review = sum(bool(c.attributes.get("review")) for c in r.cells)
        vals = [counts.get(k, 0) for k in cols] + [len(r.cells), n_review]
        totals = [a + b for a, b in zip(totals, vals)]
        rows.append([r.name, *vals])
    grand = totals[len(cols)]
    rows.append([TOTAL_ROW, *totals])
    rows.append([PERCENT_ROW, *[round(100.0 * v / grand, 2) if grand else 0.0 for v in totals]])
    return header, rows


def counts_csv(results: Sequence[SlideResult], classes: Iterable[str] = ()) -> str:
    header, rows = count_table(results, classes)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_counts_csv(dest: str | Path, results: Sequence[SlideResult], classes: Iterable[str] = ()) -> Path:
    return write_text_atomic(dest, counts_csv(results, classes))
