"""Figures of metrics: confusion matrices and training curves (loss / accuracy / precision per epoch,
the paper's DANN curves), written atomically as PNG.

    plot_confusion(report, "confusion.png"); plot_history(history, "curves.png")
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bloodsmear.io import atomic_path  # noqa: E402
from bloodsmear.metrics.classification import ClassificationReport  # noqa: E402


def plot_confusion(report: ClassificationReport, dest: str | Path, *, normalized: bool = True,
                   title: str = "Confusion matrix") -> Path:
    """Confusion matrix PNG with class names; cells show counts (and the row fraction when normalized)."""
    cm = np.asarray(report.confusion)
    shown = np.asarray(report.confusion_normalized) if normalized else cm
    k = len(report.classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * k, 0.8 + 0.7 * k), dpi=110)
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalized else max(1, cm.max()))
    ax.set_xticks(range(k), report.classes, rotation=45, ha="right")
    ax.set_yticks(range(k), report.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} (n={report.n}, acc={report.accuracy:.4f})", fontsize=9)
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                txt = f"{cm[i, j]}" + (f"\n{shown[i, j]:.2f}" if normalized and i == j else "")
                ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                        color="white" if (shown[i, j] > 0.6 if normalized else cm[i, j] > cm.max() * 0.6) else "black")
    return save_png(fig, dest)


def save_png(fig, dest: str | Path) -> Path:
    """tight_layout + atomic PNG write + close, for any matplotlib figure."""
    fig.tight_layout()
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return dest


def plot_history(history: list[dict], dest: str | Path, *, title: str = "") -> Path | None:
    """Loss, accuracy and precision per epoch, train vs validation (the paper's Figs. 12-13)."""
    if not history:
        return None
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=100)
    for ax, key, name in zip(axes, ("loss", "accuracy", "precision"), ("loss", "accuracy", "macro precision")):
        for split, style in (("train", "-o"), ("val", "-s")):
            ys = [h.get(f"{split}_{key}") for h in history]
            if any(v is not None for v in ys):
                ax.plot(ep, [np.nan if v is None else v for v in ys], style, ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, dest)


def plot_dann_curves(history: list[dict], dest: Path, *, title: str = "") -> Path:
    """The paper's DANN curves per epoch: source accuracy, label loss, domain loss (+ domain acc, lambda)."""
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=100)
    panels = ((("train_accuracy", "source train acc"), ("val_accuracy", "source val acc")),
              (("train_label_loss", "label loss"),),
              (("train_domain_loss", "domain loss"), ("train_domain_acc", "domain acc"), ("train_lambda", "lambda")))
    for ax, keys in zip(axes, panels):
        for k, lab in keys:
            ys = [h.get(k) for h in history]
            if any(v is not None for v in ys):
                ax.plot(ep, [float("nan") if v is None else v for v in ys], "-o", ms=3, label=lab)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, dest)


__all__ = ["plot_confusion", "save_png", "plot_history", "plot_dann_curves"]
