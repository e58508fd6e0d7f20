"""Calibrated confidence: temperature scaling (Guo et al. 2017) and risk–coverage, as pure functions.

    t = fit_temperature(val_logits, val_labels)          # T > 0 minimising the validation NLL
    probs = softmax_t(test_logits, t.temperature)
    rc = risk_coverage(probs, test_labels)               # accuracy of the cells kept vs the share flagged
    thr = threshold_for_accuracy(probs, labels, 0.97)    # the lowest score threshold keeping >= 97 % correct

Temperature scaling divides the logits by one scalar T: the predicted class never changes (accuracy is
the same), only how confident each answer is. Inputs are never modified.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax


@dataclass(frozen=True)
class TemperatureFit:
    temperature: float
    nll_before: float  # mean negative log-likelihood at T = 1
    nll_after: float  # at the fitted T
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RiskCoverage:
    """Cells sorted by confidence, most confident first: at each coverage (share of cells kept, not
    flagged), the accuracy of the kept cells and the score threshold that keeps exactly them."""

    coverage: np.ndarray  # (N,) in (0, 1]
    accuracy: np.ndarray  # (N,) accuracy of the kept cells
    threshold: np.ndarray  # (N,) the score of the last kept cell
    aurc: float  # area under the risk (1 - accuracy) - coverage curve; lower is better

    def at_coverage(self, c: float) -> float:
        """Accuracy of the kept cells when a share `c` of the cells is kept."""
        i = int(np.clip(np.ceil(c * len(self.coverage)) - 1, 0, len(self.coverage) - 1))
        return float(self.accuracy[i])

    def to_dict(self, points: int = 21) -> dict:
        cs = np.linspace(0.05, 1.0, points - 1) if points > 1 else np.array([1.0])
        return {"aurc": self.aurc, "n": int(len(self.coverage)),
                "curve": [{"coverage": round(float(c), 4), "accuracy": round(self.at_coverage(c), 4)} for c in cs]}


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"logits (N, C) and labels (N,) expected, got {z.shape} and {y.shape}")
    if len(y) == 0:
        raise ValueError("no samples to calibrate on")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must lie in 0..{z.shape[1] - 1}")
    return z, y


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / T)."""
    z, y = _check(logits, labels)
    return float(-log_softmax(z / float(temperature), axis=1)[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = (0.05, 20.0)
                    ) -> TemperatureFit:
    """The temperature minimising the NLL of `labels` (bounded scalar search on log T)."""
    z, y = _check(logits, labels)
    res = minimize_scalar(lambda lt: nll(z, y, float(np.exp(lt))), bounds=tuple(np.log(bounds)), method="bounded",
                          options={"xatol": 1e-5})
    t = float(np.exp(res.x))
    before, after = nll(z, y, 1.0), nll(z, y, t)
    if after > before:  # the search never does worse than no scaling
        t, after = 1.0, before
    return TemperatureFit(temperature=t, nll_before=before, nll_after=after, n=int(len(y)))


def softmax_t(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) as a new float64 array."""
    return softmax(np.asarray(logits, dtype=np.float64) / float(temperature), axis=1)


def logits_from_probs(probs: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Log-probabilities: logits up to a per-row constant (enough for temperature scaling)."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0))


def risk_coverage(probs: np.ndarray, labels: np.ndarray) -> RiskCoverage:
    """The risk–coverage curve of answers ranked by their top probability."""
    p, y = _check(probs, labels)
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    kept_correct = np.cumsum(correct[order])
    k = np.arange(1, len(y) + 1)
    acc = kept_correct / k
    return RiskCoverage(coverage=k / len(y), accuracy=acc, threshold=conf[order],
                        aurc=float(np.mean(1.0 - acc)))


def threshold_for_accuracy(probs: np.ndarray, labels: np.ndarray, target: float = 0.97) -> float:
    """The lowest top-probability threshold such that the answers at or above it are >= `target` correct
    (cells below are flagged for review); 1.0 + tiny when even the most confident answers miss it."""
    rc = risk_coverage(probs, labels)
    ok = np.nonzero(rc.accuracy >= target)[0]
    if len(ok) == 0:
        return float(np.nextafter(1.0, 2.0))
    return float(rc.threshold[ok[-1]])


__all__ = ["TemperatureFit", "RiskCoverage", "fit_temperature", "nll", "softmax_t", "logits_from_probs",
           "risk_coverage", "threshold_for_accuracy"]
