"""`bloodsmear models ...`: the shipped model folders and pipelines."""

from __future__ import annotations

from pathlib import Path

import typer

from bloodsmear.cli.common import App, emit_json, print_table
from bloodsmear.inference.pipeline_config import PIPELINES_DIR, PipelineConfig
from bloodsmear.models.folder import DEFAULTS, ModelCard, list_shipped, read_card

app = App(help="Shipped models and pipelines (src/bloodsmear/zoo).", no_args_is_help=True)

_HEADLINE = {"macro_f1": "test macro F1", "wbc_box_ap50": "BCCD test box AP50"}


def _model_entry(card: ModelCard) -> dict:
    size_mb = sum(f.stat().st_size for f in card.path.iterdir() if f.is_file()) / 1e6
    return {"name": card.path.name, "kind": card.kind, "default": card.path.name in DEFAULTS.values(),
            "backbone": card.backbone.name if card.backbone else None, "input_size": card.input_size,
            "classes": card.classes, "headline": card.headline, "metrics": card.metrics,
            "folder_mb": round(size_mb, 2), "checksum": card.checksum}


def _pipeline_entry(path: Path) -> dict:
    cfg = PipelineConfig.load(path)
    return {"name": path.stem, "kind": "pipeline", "default": False, "segmenter": cfg.segmenter,
            "screening": cfg.screening, "refine": cfg.refine}


def _describe(e: dict) -> tuple[str, str]:
    if e["kind"] == "pipeline":
        stages = [f"segmenter {e['segmenter']}", f"screening {e['screening']}"]
        return "", ", ".join(stages + ([f"refine {e['refine']}"] if e["refine"] else []))
    head = f"{_HEADLINE.get(e['headline'][0], e['headline'][0])} {e['headline'][1]:.4f}" if e["headline"] else ""
    parts = [e["backbone"] or ""] + ([f"{e['input_size']} px"] if e["input_size"] else [])
    parts += [f"{len(e['classes'])} classes"] if e["kind"] == "classifier" else []
    return head, ", ".join([p for p in parts if p] + [f"{e['folder_mb']:.1f} MB"])


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line.")) -> None:
    """Every shipped model (classifiers and segmenters) and pipeline, with its kind and headline metric."""
    models = [_model_entry(read_card(name)) for name in list_shipped()]
    pipelines = [_pipeline_entry(p) for p in sorted(PIPELINES_DIR.glob("*.yaml"))]
    rows = [(e["name"] + (" (default)" if e["default"] else ""), e["kind"], *_describe(e)) for e in models + pipelines]
    print_table("Shipped models and pipelines", ["name", "kind", "headline", "details"], rows, keep=(0, 1))
    if as_json:
        emit_json({"models": models, "pipelines": pipelines})
