"""Counts CSV: at both class levels, one row per image with the number of cells of every class, then
totals and percentages.

Columns: `level` (group, then fine), `image`, one column per class (sorted, both levels' classes),
`total`, `review` (cells flagged for review; they are also counted in their class). Each level's rows
are the images, then `TOTAL` (column sums) and `PERCENT` (each class's share of all cells, in percent,
2 decimals; `review` as a share of all cells too). A class that does not exist at a level is left
empty there (band_cell at group level). At fine level a cell the classifier answered with a group only
(ig, neutrophil from a grouped model) is counted under its group's name: that column, at fine level,
holds the cells whose fine class is unknown. A grouped model's two levels are the same table.

`count_table(results, classes, level=...)` is one level's table (`level=None`: the labels as they are).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Sequence

from bloodsmear.classes import label_at
from bloodsmear.io import write_text_atomic
from bloodsmear.types import SlideResult

TOTAL_ROW = "TOTAL"
PERCENT_ROW = "PERCENT"


def count_table(results: Sequence[SlideResult], classes: Iterable[str] = (), *, level: str | None = None
                ) -> tuple[list[str], list[list]]:
    """(header, rows) of the counts table at one `level` ("fine", "group"; None: the cells' labels as they
    are); `classes` adds columns even where no cell has that class."""
    def name(label: str) -> str:
        return label if level is None else label_at(label, level)

    cls = {name(c) for c in classes}
    for r in results:
        cls.update(name(c.label) for c in r.cells)
    cols = sorted(cls)
    header = ["image", *cols, "total", "review"]
    rows: list[list] = []
    totals = [0] * (len(cols) + 2)
    for r in results:
        counts: dict[str, int] = {}
        for c in r.cells:
            counts[name(c.label)] = counts.get(name(c.label), 0) + 1
        n_review = sum(bool(c.attributes.get("review")) for c in r.cells)
        vals = [counts.get(k, 0) for k in cols] + [len(r.cells), n_review]
        totals = [a + b for a, b in zip(totals, vals)]
        rows.append([r.name, *vals])
    grand = totals[len(cols)]
    rows.append([TOTAL_ROW, *totals])
    rows.append([PERCENT_ROW, *[round(100.0 * v / grand, 2) if grand else 0.0 for v in totals]])
    return header, rows


def levels_table(results: Sequence[SlideResult], classes: Iterable[str] = ()) -> tuple[list[str], list[list]]:
    """(header, rows) of the counts at both levels: `level` first, the union of both levels' classes as
    columns (empty where a class does not exist at a row's level); group rows, then fine rows."""
    classes = list(classes)
    tables = {lv: count_table(results, classes, level=lv) for lv in ("group", "fine")}
    cols = sorted({c for h, _ in tables.values() for c in h[1:-2]})
    rows: list[list] = []
    for lv in ("group", "fine"):
        h, body = tables[lv]
        at = {c: i for i, c in enumerate(h)}
        rows += [[lv, row[0], *(row[at[c]] if c in at else "" for c in cols), row[-2], row[-1]] for row in body]
    return ["level", "image", *cols, "total", "review"], rows



def counts_csv(results: Sequence[SlideResult], classes: Iterable[str] = ()) -> str:
    header, rows = levels_table(results, classes)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_counts_csv(dest: str | Path, results: Sequence[SlideResult], classes: Iterable[str] = ()) -> Path:
    return write_text_atomic(dest, counts_csv(results, classes))
