"""`bloodsmear bench risk-coverage`: how correct a classifier's answers are against the share of cells sent to
review, on every LODO domain's test cells (issue 12 item 6: "the card shows accuracy against the share flagged").

For each domain of a LODO config (PBC, LISC, BCCD: the same test crops `bench lodo` scores the shipped models
on, 5 classes), the model's answers ranked by confidence (`metrics.calibration.risk_coverage`): accuracy of the
answers kept at 100 / 90 / 80 / 70 / 50 % coverage, the share flagged and the accuracy of the unflagged at the
model's review threshold (the pipeline's 0.5 by default), and the area under the risk–coverage curve. The
curves go to one PNG; the table to markdown (and, with `card=True`, into the model folder's card.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bloodsmear.experiments.domain_runs import prepare_domains
from bloodsmear.experiments.domain_tables import domain_names
from bloodsmear.experiments.domains_config import domains_cache_dir
from bloodsmear.experiments.lodo import seen_in_training, test_probs
from bloodsmear.experiments.lodo_config import load_lodo_config
from bloodsmear.inference.classify import CellClassifier
from bloodsmear.io import write_text_atomic
from bloodsmear.metrics.calibration import risk_coverage
from bloodsmear.metrics.plots import save_png
from bloodsmear.models.folder import resolve_model
from bloodsmear.outputs.tables import markdown_table

log = logging.getLogger(__name__)

COVERAGES = (1.0, 0.9, 0.8, 0.7, 0.5)
CARD_HEADING = "## Risk–coverage on every LODO domain"


def _acc_at(curve, coverage: float) -> float:
    i = max(0, int(np.ceil(coverage * len(curve.accuracy))) - 1)
    return float(curve.accuracy[i])


def bench_risk_coverage(config: str | Path, *, model: str = "pbc-screen-stain", threshold: float = 0.5,
                        out: str | Path | None = None, card: bool = False) -> dict:
    cfg = load_lodo_config(config)
    clf = CellClassifier.load(model)
    idx = [clf.classes.index(c) for c in cfg.classes]
    cache = domains_cache_dir(cfg)
    prep = prepare_domains(cfg.domains, cfg.classes, scheme=cfg.scheme, split_seed=cfg.split_seed,
                           size=cfg.image_size, cache_dir=cache)
    names = domain_names({k: c.name for k, c in prep.crops.items()})
    seen = seen_in_training(clf.info)
    rows, curves = [], {}
    for k in cfg.domains:
        probs, labels = test_probs(cfg, prep, clf, k, cache, idx)
        curve = risk_coverage(probs, labels)
        conf, correct = probs.max(1), probs.argmax(1) == labels
        kept = conf >= threshold
        held = cfg.domains[k]["name"] not in seen
        curves[names[k]] = curve
        rows.append({"domain": names[k], "held_out": held, "n": int(len(labels)),
                     **{f"acc_at_{round(c * 100)}": _acc_at(curve, c) for c in COVERAGES},
                     "flagged_share": float(1 - kept.mean()),
                     "unflagged_accuracy": float(correct[kept].mean()) if kept.any() else None,
                     "aurc": curve.aurc})
        log.info("%s: accuracy %.3f, %.0f %% flagged at %.2f", names[k], rows[-1]["acc_at_100"],
                 100 * rows[-1]["flagged_share"], threshold)
    md = markdown(rows, model, threshold, config)
    result = {"model": model, "threshold": threshold, "classes": list(cfg.classes), "rows": rows, "markdown": md}
    if out is not None:
        out = Path(out)
        result["png"] = str(plot(curves, out / "risk-coverage.png", model))
        write_text_atomic(out / "risk-coverage.md", md + "\n")
    if card:
        result["card"] = str(write_card_section(resolve_model(model), md))
    return result


def markdown(rows: list[dict], model: str, threshold: float, config: str | Path) -> str:
    cols = ["domain", "n", *[f"acc @ {round(c * 100)} %" for c in COVERAGES], f"flagged at {threshold}",
            "unflagged acc", "AURC"]
    body = [[r["domain"] + ("" if r["held_out"] else " (seen in training)"), r["n"],
             *[f"{r[f'acc_at_{round(c * 100)}']:.3f}" for c in COVERAGES], f"{100 * r['flagged_share']:.0f} %",
             "-" if r["unflagged_accuracy"] is None else f"{r['unflagged_accuracy']:.3f}", f"{r['aurc']:.3f}"]
            for r in rows]
    return "\n".join([
        f"{CARD_HEADING}", "",
        f"`bloodsmear bench risk-coverage {config} --model {model}`: the 5 common classes, each domain's test cells "
        "(the crops `bench lodo` scores shipped models on); accuracy of the most confident answers at each coverage, "
        f"and at the review threshold {threshold} the share flagged and the accuracy of the cells not flagged.", "",
        markdown_table(cols, body)])


def plot(curves: dict, dest: Path, model: str) -> Path:
    import matplotlib  # lazy: plotting only (the project's one exception for matplotlib)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, c in curves.items():
        ax.plot(c.coverage, c.accuracy, label=f"{name} (AURC {c.aurc:.3f})")
    ax.set(xlabel="coverage (share of cells answered, most confident first)", ylabel="accuracy of the answered",
           title=f"{model}: risk–coverage", xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return save_png(fig, dest)


def write_card_section(folder: Path, md: str) -> Path:
    """Put `md` into the folder's card.md, replacing an earlier copy of the section."""
    path = folder / "card.md"
    text = path.read_text(encoding="utf-8")
    if CARD_HEADING in text:
        head, rest = text.split(CARD_HEADING, 1)
        nxt = rest.find("\n## ")
        text = head + md + (rest[nxt:] if nxt >= 0 else "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + md + "\n"
    return write_text_atomic(path, text)
