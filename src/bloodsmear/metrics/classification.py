"""Classification metrics as pure functions of label arrays (scikit-learn), returned as a typed result.

    r = classification_report_arrays(y_true, y_pred, classes)
    r.macro_f1, r.accuracy, r.per_class["basophil"].recall, r.confusion, r.to_dict()

Labels are class indices into `classes` (or class-name strings, mapped through `classes`). Every
class in `classes` is reported, present or not (zero-support classes get 0 precision/recall/F1 and are
left out of the macro averages only if they have neither support nor predictions).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


@dataclass
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class ClassificationReport:
    classes: list[str]
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float
    n: int
    per_class: dict[str, ClassMetrics] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)  # rows = true, cols = predicted
    confusion_normalized: list[list[float]] = field(default_factory=list)  # rows sum to 1 (recall)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClassificationReport":
        d = dict(d)
        d["per_class"] = {k: ClassMetrics(**v) for k, v in d.get("per_class", {}).items()}
        return cls(**d)

    def headline(self) -> dict[str, float]:
        return {"macro_f1": self.macro_f1, "macro_precision": self.macro_precision,
                "macro_recall": self.macro_recall, "accuracy": self.accuracy}


def _as_indices(y: Sequence, classes: Sequence[str]) -> np.ndarray:
    a = np.asarray(y)
    if a.dtype.kind in "UO":
        index = {c: i for i, c in enumerate(classes)}
        try:
            return np.array([index[str(v)] for v in a], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"label {e.args[0]!r} not in classes {list(classes)}") from None
    return a.astype(np.int64)


def classification_report_arrays(y_true: Sequence, y_pred: Sequence, classes: Sequence[str]) -> ClassificationReport:
    """Per-class and averaged precision / recall / F1, accuracy and confusion matrices."""
    classes = [str(c) for c in classes]
    t = _as_indices(y_true, classes)
    p = _as_indices(y_pred, classes)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.shape[0]} labels, y_pred {p.shape[0]}")
    labels = list(range(len(classes)))
    n = int(t.shape[0])
    if n == 0:
        raise ValueError("no samples to score")
    pr, rc, f1, sup = precision_recall_fscore_support(t, p, labels=labels, zero_division=0)
    cm = confusion_matrix(t, p, labels=labels)
    present = [i for i in labels if sup[i] > 0 or cm[:, i].sum() > 0]
    w = sup / sup.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        cmn = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    return ClassificationReport(
        classes=classes,
        accuracy=float((t == p).mean()),
        macro_precision=float(np.mean(pr[present])),
        macro_recall=float(np.mean(rc[present])),
        macro_f1=float(np.mean(f1[present])),
        weighted_precision=float(np.sum(pr * w)),
        weighted_recall=float(np.sum(rc * w)),
        weighted_f1=float(np.sum(f1 * w)),
        n=n,
        per_class={c: ClassMetrics(float(pr[i]), float(rc[i]), float(f1[i]), int(sup[i])) for i, c in enumerate(classes)},
        confusion=cm.astype(int).tolist(),
        confusion_normalized=[[float(v) for v in row] for row in cmn],
    )


def report_markdown(report: ClassificationReport) -> str:
    """Per-class table + averages + confusion counts, as Markdown."""
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c, m in report.per_class.items():
        lines.append(f"| {c} | {m.precision:.4f} | {m.recall:.4f} | {m.f1:.4f} | {m.support} |")
    lines.append(f"| **macro** | {report.macro_precision:.4f} | {report.macro_recall:.4f} | {report.macro_f1:.4f} | {report.n} |")
    lines.append(f"| weighted | {report.weighted_precision:.4f} | {report.weighted_recall:.4f} | "
                 f"{report.weighted_f1:.4f} | {report.n} |")
    lines += ["", f"Accuracy: {report.accuracy:.4f} (n = {report.n})", "",
              "Confusion matrix (rows = true, columns = predicted):", "",
              "| true \\ pred | " + " | ".join(report.classes) + " |", "|---" * (len(report.classes) + 1) + "|"]
    for c, row in zip(report.classes, report.confusion):
        lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["ClassMetrics", "ClassificationReport", "classification_report_arrays", "report_markdown"]
