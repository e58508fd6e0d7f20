"""`bloodsmear crop ...`: C-PBC crops of single-cell images, and cell crops from annotated fields."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import typer

from bloodsmear.cli.common import App, SCALE_HELP, emit_json, print_table
from bloodsmear.data import load_dataset
from bloodsmear.inference.export import export_cell_crops
from bloodsmear.preprocess.cells import crop_dataset_cells
from bloodsmear.preprocess.crop_batch import crop_pbc_folder

app = App(help="Crop single-cell images (C-PBC) or annotated cells out of fields.", no_args_is_help=True)
log = logging.getLogger(__name__)


@app.command("pbc")
def crop_pbc_cmd(
    src: Path = typer.Argument(..., help="PBC-style folder: one sub-folder per class."),
    dst: Path = typer.Argument(..., help="Output folder (same class folders and file names)."),
    method: Literal["fast", "paper"] = typer.Option("fast", "--method", "-m",
                                                    help="fast or paper (the paper's exact pipeline)."),
    size: int = typer.Option(None, "--size", help="Resize every crop to SIZE x SIZE."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Crop every image around its white cell (the paper's C-PBC); re-runs skip files already done."""
    s = crop_pbc_folder(src, dst, method=method, size=size, progress=progress)
    for msg in s.failed:
        typer.echo(f"skipped: {msg}", err=True)
    print_table(f"crop pbc ({method}) -> {dst}", ["", "files"],
                [("images found", s.total), ("written", s.written), ("already done", s.existing),
                 ("no stained segment (kept whole)", s.not_found), ("skipped (bad files)", s.skipped)])
    typer.echo(f"{s.written} written, {s.existing} already done, {s.skipped} skipped", err=True)
    if json_out:
        emit_json(s.to_dict())


@app.command("cells")
def crop_cells_cmd(
    dataset: Path = typer.Argument(..., help="Dataset folder or annotation file (BCCD, CVAT XML, COCO, ...)."),
    dst: Path = typer.Argument(..., help="Output folder: one sub-folder per class."),
    format: str = typer.Option("auto", "--format", "-f",  # noqa: A002
                               help="Dataset format: auto, voc, cvat, coco, pbc, lisc, folders."),
    pad: float = typer.Option(0.15, "--pad", help="Margin on each side, as a fraction of the box's longest side."),
    mask_background: bool = typer.Option(False, "--mask-background/--no-mask-background",
                                         help="Fill pixels outside the cell's polygon with the background colour."),
    size: int = typer.Option(None, "--size", help="Resize every crop to SIZE x SIZE."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Crop every annotated WBC into DST/<class>/<image>_<index>.jpg (BCCD: the WBC subtype is the class)."""
    ds = load_dataset(dataset, format)
    s = crop_dataset_cells(ds, dst, pad=pad, mask_background=mask_background, size=size, progress=progress)
    for msg in s.failed_images + s.failed_cells:
        typer.echo(f"skipped: {msg}", err=True)
    rows = [(c, n) for c, n in sorted(s.per_class.items())]
    rows += [("(already done)", s.existing), ("(WBC without a subtype, not cropped)", s.no_class),
             ("(other kinds: rbc, platelet)", s.other_kinds), ("(images skipped)", len(s.failed_images)),
             ("(cells skipped)", len(s.failed_cells))]
    print_table(f"crop cells {ds.name} ({ds.format}) -> {dst}", ["class", "crops"], rows)
    typer.echo(f"{s.written} crops written, {s.existing} already done, {len(s.failed_images)} image(s) and "
               f"{len(s.failed_cells)} cell(s) skipped, {s.no_class} WBC(s) without a subtype", err=True)
    if json_out:
        emit_json(s.to_dict())


@app.command("fields")
def crop_fields_cmd(
    inputs: list[Path] = typer.Argument(..., help="Field images or folders (walked recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: crops keep the inputs' relative paths."),
    pipeline: str = typer.Option(None, "--pipeline", help="Pipeline config (its segmenter and crop framing); "
                                                          "default: the shipped one."),
    one_per_image: bool = typer.Option(False, "--one-per-image/--all-cells",
                                       help="Keep only the largest cell of each field (one WBC per field)."),
    size: int = typer.Option(None, "--size", help="Resize every crop to SIZE x SIZE."),
    ext: Literal["png", "jpg"] = typer.Option("png", "--ext", help="png or jpg."),
    scale: str = typer.Option(None, "--scale", help=SCALE_HELP + " Default: the pipeline config's."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Crop every WBC the pipeline's segmenter finds in fields, framed as `analyze` frames them.

    For a DANN target domain, say. Writes OUT/<relative path>[_k].png and OUT/crops.csv; re-runs resume."""
    r = export_cell_crops(inputs, out, pipeline=pipeline, one_per_image=one_per_image, size=size, ext=ext,
                          scale=scale, progress=progress)
    for p, why in r.skipped:
        typer.echo(f"skipped: {why}", err=True)
    print_table(f"crop fields -> {out}", ["", "n"],
                [("images", r.n_images), ("crops written", r.n_crops), ("already done", r.n_resumed),
                 ("no cell found", len(r.no_cell)), ("skipped (bad files)", len(r.skipped))])
    if json_out:
        emit_json(r.to_dict())
