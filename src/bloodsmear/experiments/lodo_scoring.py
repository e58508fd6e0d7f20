"""Scoring of one finished LODO run beyond its accuracy: calibration, review routing, batch-norm adaptation.

    sc = score_run(res["model_dir"], prep, ms, run, held_out="lisc", classes=..., cache_dir=cache)
    sc["calibration"]   # temperature, held-out NLL before/after, review threshold and what it reaches

Calibration (issue 12, item 6), chosen on the *source* side only: the temperature is fitted on the
training domains' validation crops (log-probabilities, `metrics.calibration.fit_temperature`), and the
review threshold is the lowest calibrated top probability at which the source validation crops not
flagged are >= `target` correct (`threshold_for_accuracy`). Both are then applied, unchanged, to the
held-out domain's test crops: the NLL before/after scaling, the accuracy of the crops not flagged and
the share flagged there are the honest figures (nothing of the held-out domain chose them).

Batch-norm adaptation (item 4, `bn_adapt`): the trained model's BatchNorm statistics of its trainable
part are re-estimated on the held-out domain's own test crops (their cached maps; labels never used,
`training.bn_adapt.adapt_batchnorm`) before the test crops are scored. The temperature and threshold
stay those of the unadapted model on the source validation crops.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import log_softmax

from bloodsmear.experiments.domain_runs import MapSettings, Prepared, RunSpec, domain_maps
from bloodsmear.metrics.calibration import fit_temperature, nll, softmax_t, threshold_for_accuracy
from bloodsmear.metrics.classification import classification_report_arrays
from bloodsmear.models.artifact import load_model
from bloodsmear.training.bn_adapt import adapt_batchnorm
from bloodsmear.training.feature_cache import MapLoader, TailModel

CAL_COLUMNS = ("temperature", "nll_before", "nll_after", "threshold", "val_flagged", "unflagged_accuracy",
               "flagged")


@torch.no_grad()
def _logits(model, maps: torch.Tensor) -> np.ndarray:
    model.eval()
    loader = MapLoader(maps, None, batch_size=256, shuffle=False)
    return np.concatenate([model(x).float().numpy() for x, _y in loader]).astype(np.float64)


def review_figures(val_logits: np.ndarray, val_y: np.ndarray, test_logits: np.ndarray, test_y: np.ndarray,
                   target: float = 0.97) -> dict:
    """Temperature and review threshold chosen on (val_logits, val_y), applied to the test logits (module doc).

    unflagged_accuracy is None when the threshold flags every test crop."""
    fit = fit_temperature(log_softmax(val_logits, axis=1), val_y)
    t = fit.temperature
    thr = threshold_for_accuracy(softmax_t(val_logits, t), val_y, target)
    pv = softmax_t(val_logits, t)
    pt = softmax_t(test_logits, t)
    kept = pt.max(1) >= thr
    correct = pt.argmax(1) == test_y
    return {"temperature": t, "val_nll_before": fit.nll_before, "val_nll_after": fit.nll_after,
            "nll_before": nll(test_logits, test_y, 1.0), "nll_after": nll(test_logits, test_y, t),
            "threshold": thr, "target": target, "val_flagged": float(np.mean(pv.max(1) < thr)),
            "unflagged_accuracy": float(correct[kept].mean()) if kept.any() else None,
            "flagged": float(1.0 - kept.mean()), "accuracy": float(correct.mean()), "n": len(test_y)}


def score_run(model_dir, prep: Prepared, ms: MapSettings, run: RunSpec, held_out: str, cache_dir, *,
              bn_adapt: bool = False, target: float = 0.97) -> dict:
    """Calibration figures of a finished run (and, with `bn_adapt`, its held-out test report after
    re-estimating batch norm on the held-out test maps): {"calibration": {...}, "report": dict | None}."""
    loaded = load_model(model_dir)
    tail = TailModel(loaded.model, ms.train_from)

    def maps(key: str, part: str) -> torch.Tensor:
        return domain_maps(prep, tail, key, part, run.stain, ms, cache_dir)

    def labels(key: str, part: str) -> np.ndarray:
        return prep.crops[key].labels[prep.splits[key][part]]

    va_x = torch.cat([maps(k, "val")[:, :1] for k in run.train])
    va_y = np.concatenate([labels(k, "val") for k in run.train])
    te_x, te_y = maps(held_out, "test")[:, :1], labels(held_out, "test")
    scorer, report = tail, None
    if bn_adapt:  # the held-out crops' maps only; no label reaches the adaptation
        scorer = adapt_batchnorm(tail, MapLoader(te_x, None, batch_size=256, shuffle=False))
    test_logits = _logits(scorer, te_x)
    if bn_adapt:
        report = classification_report_arrays(te_y, test_logits.argmax(1), prep.classes).to_dict()
    cal = review_figures(_logits(tail, va_x), va_y, test_logits, te_y, target)
    return {"calibration": cal, "report": report}


def calibration_rows(seed_rows: list[dict]) -> list[dict]:
    """Mean over the seeds of each (held-out domain, recipe)'s calibration figures (NaN-aware)."""
    groups: dict[tuple, list[dict]] = {}
    for r in seed_rows:
        if r.get("calibration"):
            groups.setdefault((r["held_out"], r["recipe"]), []).append(r["calibration"])
    out = []
    for (held, recipe), cals in groups.items():
        row = {"held_out": held, "recipe": recipe, "seeds": len(cals)}
        for c in CAL_COLUMNS + ("accuracy",):
            v = np.array([np.nan if x[c] is None else x[c] for x in cals], dtype=float)
            ok = v[~np.isnan(v)]
            row[c] = float(ok.mean()) if len(ok) else float("nan")
            row[c + "_sd"] = float(ok.std(ddof=1)) if len(ok) > 1 else 0.0
        out.append(row)
    return out


def calibration_markdown(rows: list[dict], names: list[str], target: float = 0.97) -> list[str]:
    """The "calibration" table of lodo.md (lines)."""
    def f(r, c):
        v, sd = r[c], r[c + "_sd"]
        return "–" if np.isnan(v) else f"{v:.3f} ± {sd:.3f}"

    md = ["", "## Calibration and review routing (chosen on the source validation crops, applied to the held-out test)",
          "",
          f"Temperature T fitted on the training domains' validation crops; review threshold: the lowest calibrated "
          f"top probability at which those validation crops not flagged are >= {target:.0%} correct. On the held-out "
          "test crops: NLL at T = 1 and at T, the accuracy of the crops not flagged and the share flagged (the "
          "honest figures: nothing of the held-out domain chose T or the threshold). Mean ± sd over the seeds.", "",
          "| held out | recipe | T | NLL before | NLL after | threshold | flagged (source val) | unflagged accuracy "
          "| flagged (held out) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: names.index(r["held_out"]) if r["held_out"] in names else 99):  # stable
        md.append(f"| {r['held_out']} | {r['recipe']} | {f(r, 'temperature')} | {f(r, 'nll_before')} | "
                  f"{f(r, 'nll_after')} | {f(r, 'threshold')} | {f(r, 'val_flagged')} | "
                  f"{f(r, 'unflagged_accuracy')} | {f(r, 'flagged')} |")
    return md


__all__ = ["CAL_COLUMNS", "calibration_markdown", "calibration_rows", "review_figures", "score_run"]
