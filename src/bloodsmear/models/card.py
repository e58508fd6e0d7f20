"""Model card (card.md) for a trained classifier folder, rendered from its config, metrics and history."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone

import torch

from bloodsmear.metrics.classification import ClassificationReport, report_markdown


def manifest_counts(manifest: dict) -> dict[str, dict[str, int]]:
    """{split: {label: images}} from a split manifest dict."""
    out: dict[str, dict[str, int]] = {}
    for s, entries in manifest.get("splits", {}).items():
        c: dict[str, int] = {}
        for e in entries:
            c[str(e.get("label"))] = c.get(str(e.get("label")), 0) + 1
        out[s] = c
    return out


def render_card(info, metrics: dict, history: list[dict], data=None, *, command: str | None = None,
                extra: str = "", counts: dict[str, dict[str, int]] | None = None) -> str:
    t = info.training or {}
    d = t.get("data", {})
    m = t.get("model", {})
    lines = [f"# {info.name or 'classifier'}", "",
             f"WBC classifier: `{info.backbone}` ({info.mode}, "
             f"{'ImageNet-pretrained' if m.get('pretrained', True) else 'random init'}) -> global average pooling -> "
             f"Dense({info.hidden}) ReLU dropout {info.dropout} -> softmax over {len(info.classes)} classes.", "",
             "## Input", "",
             f"- RGB single-cell image; centre square of {info.crop_fraction:g} x the short side, resized to "
             f"{info.input_size}x{info.input_size} px (area interpolation), normalised with mean {info.mean} / std "
             f"{info.std} (x/255).",
             f"- Classes (index order): {', '.join(info.classes)}.", "",
             "## Data", "",
             f"- Dataset: `{d.get('dataset')}` (format `{d.get('format')}`), split "
             f"{'manifest ' + str(d.get('split')) if d.get('split') else d.get('scheme') + ' seed ' + str(d.get('split_seed'))}; "
             "the split manifest is `split.json` in this folder (paths relative to the dataset root).",
             f"- Images: train {metrics.get('n_train')}, val {metrics.get('n_val')}, test {metrics.get('n_test')}."]
    counts = data.counts() if data is not None else counts
    if counts:
        lines.append("- Per class (train/val/test): " + "; ".join(
            f"{c} {counts.get('train', {}).get(c, 0)}/{counts.get('val', {}).get(c, 0)}/{counts.get('test', {}).get(c, 0)}"
            for c in info.classes))
    lines += ["", "## Training", "",
              f"- Optimiser {t.get('optim', {}).get('name')} lr {t.get('optim', {}).get('lr')} weight decay "
              f"{t.get('optim', {}).get('weight_decay')}, schedule {t.get('schedule', {}).get('name')}, batch "
              f"{t.get('batch_size')}, label smoothing {t.get('label_smoothing')}, augment `{t.get('augment')}`, "
              f"balanced sampling {t.get('balanced_sampling')}, seed {t.get('seed')}.",
              f"- Epochs run {metrics.get('epochs_run')} of {t.get('epochs')} ({metrics.get('stopped')}); best "
              f"validation macro-F1 at epoch {metrics.get('best_epoch')} (weights shipped).",
              f"- Training time: {metrics.get('train_seconds')} s wall clock (training + per-epoch validation), "
              f"{t.get('threads')} torch threads, {platform.processor() or platform.machine()}, torch {torch.__version__}.",
              f"- Command: `{command or 'bloodsmear train <config>'}`", "",
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
        rep = ClassificationReport.from_dict(test)
        lines += ["## Test metrics", "",
                  f"Macro precision {rep.macro_precision:.4f}, macro recall {rep.macro_recall:.4f}, "
                  f"**macro F1 {rep.macro_f1:.4f}**, accuracy {rep.accuracy:.4f} on {rep.n} test images.", "",
                  report_markdown(rep), "![confusion](confusion_test.png)", ""]
    if extra:
        lines += [extra, ""]
    lines += [f"_Card written {datetime.now(timezone.utc).isoformat(timespec='seconds')}._", ""]
    return "\n".join(lines)


def card_json(metrics: dict) -> str:
    return json.dumps(metrics, indent=2)
