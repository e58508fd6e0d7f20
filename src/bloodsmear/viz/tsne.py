"""t-SNE of feature vectors, coloured by class and (optionally) by domain.

The one API, shared by the classifier insight command and the domain-adaptation before/after plots:

    emb = tsne_plot(features, labels, domains=None, out="tsne.png", class_names=[...], domain_names=[...])

`features` (N, D), `labels` (N,) ints (or strings), `domains` (N,) ints/strings or None. With domains
the figure has two panels: points coloured by class (marker = domain) and coloured by domain.
Returns the (N, 2) embedding so callers can reuse it.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from bloodsmear.data import load_dataset
from bloodsmear.errors import InputError
from bloodsmear.io import atomic_path
from bloodsmear.metrics.plots import plt  # pyplot on the Agg backend (files only)
from bloodsmear.models.artifact import load_model
from bloodsmear.preprocess.transforms import to_tensor
from bloodsmear.training.loaders import decode_images
from bloodsmear.viz.insight import penultimate_features

log = logging.getLogger(__name__)

_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")


def tsne_embed(features: np.ndarray, *, perplexity: float = 30.0, seed: int = 0, pca_dims: int = 50) -> np.ndarray:
    """(N, 2) t-SNE embedding (PCA to `pca_dims` first when D is larger); perplexity is clamped below N."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"t-SNE needs an (N, D) array with N >= 3, got shape {x.shape}")
    if x.shape[1] > pca_dims and len(x) > pca_dims:
        x = PCA(n_components=pca_dims, random_state=seed).fit_transform(x)
    perp = float(min(perplexity, max(1.0, (len(x) - 1) / 3)))
    method = "exact" if len(x) <= 200 else "barnes_hut"  # exact is faster for a few points
    tsne = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed, method=method)
    return tsne.fit_transform(x).astype(np.float32)


def _codes(values: Sequence, names: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        uniq = sorted(set(arr.tolist()))
        nm = [str(names[i]) if names is not None and i < len(names) else str(i) for i in uniq]
        remap = {v: k for k, v in enumerate(uniq)}
        return np.array([remap[v] for v in arr.tolist()]), nm
    uniq = list(dict.fromkeys(arr.tolist()))
    remap = {v: k for k, v in enumerate(uniq)}
    return np.array([remap[v] for v in arr.tolist()]), [str(u) for u in uniq]


def tsne_plot(
    features: np.ndarray,
    labels: Sequence,
    domains: Sequence | None = None,
    out: str | Path = "tsne.png",
    *,
    class_names: Sequence[str] | None = None,
    domain_names: Sequence[str] | None = None,
    title: str | None = None,
    embedding: np.ndarray | None = None,
    perplexity: float = 30.0,
    seed: int = 0,
    dpi: int = 120,
) -> np.ndarray:
    """Write a t-SNE scatter PNG to `out` and return the (N, 2) embedding (see module doc)."""
    feats = np.asarray(features)
    if len(labels) != len(feats):
        raise ValueError(f"{len(feats)} feature rows but {len(labels)} labels")
    if domains is not None and len(domains) != len(feats):
        raise ValueError(f"{len(feats)} feature rows but {len(domains)} domain labels")
    emb = embedding if embedding is not None else tsne_embed(feats, perplexity=perplexity, seed=seed)
    cls, cnames = _codes(labels, class_names)
    cmap = plt.get_cmap("tab10" if len(cnames) <= 10 else "tab20")
    panels = 1 if domains is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 5.5), squeeze=False)
    ax = axes[0, 0]
    if domains is None:
        for k, name in enumerate(cnames):
            m = cls == k
            ax.scatter(emb[m, 0], emb[m, 1], s=8, color=cmap(k % cmap.N), label=f"{name} ({m.sum()})", alpha=0.8)
        ax.set_title("by class")
    else:
        dom, dnames = _codes(domains, domain_names)
        for k, name in enumerate(cnames):
            for d in range(len(dnames)):
                m = (cls == k) & (dom == d)
                if m.any():
                    ax.scatter(emb[m, 0], emb[m, 1], s=9, color=cmap(k % cmap.N), marker=_MARKERS[d % len(_MARKERS)],
                               label=name if d == 0 or not ((cls == k) & (dom == 0)).any() else None, alpha=0.75)
        ax.set_title("by class (marker = domain: " + ", ".join(f"{_MARKERS[i % 8]} {n}" for i, n in enumerate(dnames)) + ")")
        ax2 = axes[0, 1]
        dmap = plt.get_cmap("Set1")
        for d, name in enumerate(dnames):
            m = dom == d
            ax2.scatter(emb[m, 0], emb[m, 1], s=8, color=dmap(d % dmap.N), label=f"{name} ({m.sum()})", alpha=0.7)
        ax2.set_title("by domain")
        ax2.legend(loc="best", fontsize=8, markerscale=2)
        ax2.set_xticks([]), ax2.set_yticks([])
    ax.legend(loc="best", fontsize=8, markerscale=2)
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    log.info("t-SNE of %d points -> %s", len(feats), out)
    return emb


def tsne_model(ref: str | Path, dataset: str | Path, out: str | Path, *, n: int = 500, fmt: str = "auto",
               seed: int = 0, batch_size: int = 64, perplexity: float = 30.0) -> dict:
    """t-SNE of a model's penultimate (Dense(128)) features over a seeded, class-stratified sample of
    `n` images of a class-per-folder dataset, coloured by the true class. Returns a summary dict."""
    lm = load_model(ref)
    ds = load_dataset(dataset, fmt)
    by_class: dict[str, list] = {}
    for im in ds.images:
        if im.label:
            by_class.setdefault(im.label, []).append(im.path)
    if not by_class:
        raise InputError(dataset, "no labelled single-cell images")
    total = sum(len(v) for v in by_class.values())
    rnd = random.Random(seed)
    paths, labels = [], []
    for lab in sorted(by_class):  # proportional, at least one per class
        k = min(len(by_class[lab]), max(1, round(n * len(by_class[lab]) / total)))
        for p in rnd.sample(sorted(by_class[lab]), k):
            paths.append(p)
            labels.append(lab)
    info = lm.info
    arr, good, bad = decode_images(paths, info.input_size, info.crop_fraction, skip_bad=True)
    labels = [labels[i] for i in good]
    names = sorted(set(labels))
    y = np.array([names.index(v) for v in labels])
    batches = ((to_tensor(arr[i:i + batch_size], info.mean, info.std, channels_last=False), y[i:i + batch_size])
               for i in range(0, len(arr), batch_size))
    feats, _ = penultimate_features(lm.model, batches)
    tsne_plot(feats, y, out=out, class_names=names, perplexity=perplexity, seed=seed,
              title=f"{info.name or lm.path.name}: penultimate features, {len(feats)} images of {Path(dataset).name}")
    return {"model": str(lm.path), "dataset": str(dataset), "out": str(out), "n_images": int(len(feats)),
            "feature_dim": int(feats.shape[1]), "n_skipped": len(bad), "skipped": bad,
            "per_class": {c: labels.count(c) for c in names}}
