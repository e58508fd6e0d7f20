"""`bloodsmear data ...`: look at datasets and make split manifests."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from bloodsmear.cli.common import App, emit_json, print_table
from bloodsmear.data import load_dataset
from bloodsmear.data.splits import SCHEMES, make_split, save_manifest
from bloodsmear.data.summary import summarize
from bloodsmear.errors import BloodsmearError

app = App(help="Datasets: summaries and split manifests.", no_args_is_help=True)
log = logging.getLogger(__name__)

_FORMAT_HELP = "Dataset format: auto, pbc, lisc, folders, voc, cvat, coco."


def _load(path: Path, fmt: str, strict: bool):
    ds = load_dataset(path, fmt, strict=strict)
    if ds.skipped:
        log.warning("%s: %d entries skipped (see the summary's skipped list)", path, len(ds.skipped))
    return ds


@app.command()
def summary(
    path: Path = typer.Argument(..., help="Dataset folder or annotation file."),
    format: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),  # noqa: A002
    strict: bool = typer.Option(False, "--strict/--lenient",
                                help="Stop at the first bad file instead of skipping and reporting it."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Images, cells per class, subclasses, image sizes and skipped entries of a dataset."""
    s = summarize(_load(path, format, strict))
    print_table(f"{s.name} ({s.format}): {s.images} images, {s.cells} cells", ["class", "cells", "subclasses"],
                [(c, n, ", ".join(f"{k} {v}" for k, v in s.subclasses.get(c, {}).items()))
                 for c, n in s.cells_per_class.items()])
    if s.images_per_class and s.images_per_class != s.cells_per_class:
        print_table("image-level labels", ["label", "images"], list(s.images_per_class.items()))
    z = s.sizes
    rows = [("image sizes (min / max / most common)",
             f"{z['min']} / {z['max']} / {z['most_common']} x{z['most_common_count']}" if z["min"] else "unknown"),
            ("skipped", s.skipped)]
    rows += [(f"official split {k}", v) for k, v in s.splits.items()]
    if s.nucleus_masks:
        rows.append(("nucleus masks", s.nucleus_masks))
    rows += [(f"flagged {k}", v) for k, v in s.flagged.items()]
    print_table("details", ["", "value"], rows)
    for e in s.skipped_entries[:10]:
        log.warning("skipped: %s", e)
    if json_out:
        emit_json(s.to_dict())


@app.command()
def split(
    path: Path = typer.Argument(..., help="Dataset folder or annotation file."),
    scheme: str = typer.Option("64-16-20", "--scheme", help="64-16-20 (classification) or 80-10-10 (segmentation)."),
    seed: int = typer.Option(42, "--seed"),
    out: Path = typer.Option(..., "--out", "-o", help="Manifest JSON to write."),
    format: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),  # noqa: A002
    strict: bool = typer.Option(False, "--strict/--lenient", help="Stop at the first bad file."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Seeded stratified split (duplicates kept together), written as a manifest JSON file."""
    if scheme not in SCHEMES:
        raise BloodsmearError(f"--scheme: unknown scheme {scheme!r} (valid: {', '.join(SCHEMES)})")
    m = make_split(_load(path, format, strict), scheme, seed)
    save_manifest(m, out)
    counts = m.counts()
    classes = sorted({c for per in counts.values() for c in per})
    names = list(m.splits)
    print_table(f"{m.dataset}: split {scheme}, seed {seed} -> {out}", ["class", *names],
                [(c, *(counts[s].get(c, 0) for s in names)) for c in classes]
                + [("total", *(len(m.splits[s]) for s in names))])
    log.info("%d groups of byte-identical files kept within one split", len(m.duplicate_groups))
    if json_out:
        emit_json({"manifest": str(out), "scheme": scheme, "seed": seed,
                   "sizes": {s: len(m.splits[s]) for s in names}, "counts": counts,
                   "duplicate_groups": len(m.duplicate_groups), "label_conflicts": m.label_conflicts()})
