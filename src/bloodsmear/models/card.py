"""Model cards (card.md): the shared pieces every card is built of - header, data/split table, metrics
table, command, footer - and the card of a trained classifier folder (`render_card`). Domain runs
(`experiments.domain_runs.run_card`) and adapted models (`experiments.adapt`) compose the same pieces.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from typing import Sequence

import torch

from bloodsmear.metrics.classification import ClassificationReport, report_markdown


def card_header(name: str, summary: str) -> list[str]:
    """`# name` and the one-paragraph summary of what the model is."""
    return [f"# {name}", "", summary, ""]


def split_table(counts: dict[str, dict[str, int]], classes: Sequence[str], *, title: str = "") -> list[str]:
    """Images per class and split part ({part: {label: n}}) as a Markdown table with a total row."""
    parts = [p for p in ("train", "val", "test") if p in counts] + [p for p in counts if p not in ("train", "val", "test")]
    lines = [title, ""] if title else []
    lines += ["| class | " + " | ".join(parts) + " |", "|---" * (len(parts) + 1) + "|"]
    lines += [f"| {c} | " + " | ".join(str(counts[p].get(c, 0)) for p in parts) + " |" for c in classes]
    lines += ["| total | " + " | ".join(str(sum(counts[p].values())) for p in parts) + " |", ""]
    return lines


def metrics_section(rep: ClassificationReport | dict, *, title: str | None = "Test metrics", level: int = 2,
                    what: str = "test images") -> list[str]:
    """Headline line (macro P/R/F1, accuracy, n) and the per-class table of a classification report."""
    r = rep if isinstance(rep, ClassificationReport) else ClassificationReport.from_dict(rep)
    lines = [f"{'#' * level} {title}", ""] if title else []
    return lines + [f"Macro precision {r.macro_precision:.4f}, macro recall {r.macro_recall:.4f}, "
                    f"**macro F1 {r.macro_f1:.4f}**, accuracy {r.accuracy:.4f} on {r.n} {what}.", "",
                    report_markdown(r), ""]


def command_line(command: str) -> str:
    return f"- Command: `{command}`"


def card_footer() -> list[str]:
    return [f"_Card written {datetime.now(timezone.utc).isoformat(timespec='seconds')}._", ""]


def render_card(info, metrics: dict, history: list[dict], data=None, *, command: str | None = None,
                extra: str = "", counts: dict[str, dict[str, int]] | None = None) -> str:
    t = info.training or {}
    d = t.get("data", {})
    m = t.get("model", {})
    split = f"manifest {d['split']}" if d.get("split") else f"{d.get('scheme')} seed {d.get('split_seed')}"
    lines = card_header(info.name or "classifier",
                        f"WBC classifier: `{info.backbone}` ({info.mode}, "
                        f"{'ImageNet-pretrained' if m.get('pretrained', True) else 'random init'}) -> global average "
                        f"pooling -> Dense({info.hidden}) ReLU dropout {info.dropout} -> softmax over "
                        f"{len(info.classes)} classes.")
    lines += ["## Input", "",
             f"- RGB single-cell image; centre square of {info.crop_fraction:g} x the short side, resized to "
             f"{info.input_size}x{info.input_size} px (area interpolation), normalised with mean {info.mean} / std "
             f"{info.std} (x/255).",
             f"- Classes (index order): {', '.join(info.classes)}.", "",
             "## Data", "",
             f"- Dataset: `{d.get('dataset')}` (format `{d.get('format')}`), split "
             f"{split}; "
             "the split manifest is `split.json` in this folder (paths relative to the dataset root).",
             f"- Images: train {metrics.get('n_train')}, val {metrics.get('n_val')}, test {metrics.get('n_test')}."]
    counts = data.counts() if data is not None else counts
    if counts:
        lines += [""] + split_table(counts, info.classes)
    lines += ["", "## Training", "",
              f"- Optimiser {t.get('optim', {}).get('name')} lr {t.get('optim', {}).get('lr')} weight decay "
              f"{t.get('optim', {}).get('weight_decay')}, schedule {t.get('schedule', {}).get('name')}, batch "
              f"{t.get('batch_size')}, label smoothing {t.get('label_smoothing')}, augment `{t.get('augment')}`, "
              f"balanced sampling {t.get('balanced_sampling')}, seed {t.get('seed')}.",
              f"- Epochs run {metrics.get('epochs_run')} of {t.get('epochs')} ({metrics.get('stopped')}); best "
              f"validation macro-F1 at epoch {metrics.get('best_epoch')} (weights shipped).",
              f"- Training time: {metrics.get('train_seconds')} s wall clock (training + per-epoch validation), "
              f"{t.get('threads')} torch threads, {platform.processor() or platform.machine()}, torch {torch.__version__}.",
              command_line(command or "bloodsmear train <config>"), "",
              "Full config: `config.json` (`training`). History: `history.json`, `history.png`.", ""]
    if history:
        lines += ["| epoch | train loss | train acc | val loss | val acc | val macro-F1 | s |", "|---|---|---|---|---|---|---|"]
        for h in history:
            lines.append(f"| {h['epoch']} | {h.get('train_loss', float('nan')):.4f} | {h.get('train_accuracy', float('nan')):.4f} | "
                         f"{h.get('val_loss', float('nan')):.4f} | {h.get('val_accuracy', float('nan')):.4f} | "
                         f"{h.get('val_f1', float('nan')):.4f} | {h.get('train_seconds')} |")
        lines.append("")
    test = metrics.get("test")
    if test:
        lines += metrics_section(test) + ["![confusion](confusion_test.png)", ""]
    if extra:
        lines += [extra, ""]
    return "\n".join(lines + card_footer())
