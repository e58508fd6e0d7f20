"""`bloodsmear models ...`: the shipped model folders."""

from __future__ import annotations

import typer

from bloodsmear.cli.common import emit_json, print_table
from bloodsmear.models.artifact import DEFAULT_MODEL, list_shipped, read_card_metrics, read_info, resolve_model

app = typer.Typer(help="Shipped models (src/bloodsmear/zoo).", no_args_is_help=True)


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line.")) -> None:
    """Shipped classifier models with their card metrics (test split)."""
    rows, out = [], []
    for name in list_shipped():
        folder = resolve_model(name)
        info = read_info(folder)
        m = read_card_metrics(folder)
        size_mb = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 1e6
        entry = {"name": name, "default": name == DEFAULT_MODEL, "backbone": info.backbone,
                 "input_size": info.input_size, "classes": info.classes, "mode": info.mode,
                 "folder_mb": round(size_mb, 2), **m}
        out.append(entry)
        rows.append((name + (" (default)" if entry["default"] else ""), info.backbone, info.input_size,
                     len(info.classes), m.get("macro_f1", ""), m.get("accuracy", ""), m.get("n", ""),
                     f"{size_mb:.1f}"))
    print_table("Shipped models", ["name", "backbone", "px", "classes", "test macro F1", "test acc", "n test", "MB"],
                rows)
    if as_json:
        emit_json({"models": out})
