"""Learning curve of `bloodsmear learn`: k labelled cells per class of a LODO domain -> accuracy on its test split.

    cfg = load_lodo_config("configs/lodo/cpu.yaml")
    res = bench_learn(cfg, ks=[5, 10, 25, 50], seeds=[0, 1, 2], domains=["lisc", "bccd"])
    res.rows     # one per (domain, k) over the seeds, k = 0 first: the base as shipped

The domains, classes and split (scheme, split_seed, min_support) are the LODO config's, so the test crops
are exactly `bench lodo`'s. For each seed, domain d and k: k cells per class are drawn (seeded,
`data.splits.per_class_sample`) from d's *train* split, crops cut at the base's input size (the
pipeline's crops: `domain_data.build_domain`); a class with fewer train cells gives all of them (the
row reports the real k per class) and one with fewer than `learn.MIN_PER_CLASS` is left out of the
labelled set (listed under `not_learned`). `learn(...)` fine-tunes the base on them through the base's
own input path (framing, then its stain normaliser: `CellClassifier.fit_batch` / `normalize_stain`,
as at inference), and the lab model is scored on d's *test* split by `lodo.shipped_rows` (probabilities
restricted to the classes and renormalised), the function that scores the k = 0 row (the base as shipped).

Each finished (domain, k, seed) is one JSON under `out_dir/learn_curve/` (skipped when run again with the
same settings); the lab model folders are temporary. learn_curve.{md,csv,json} in out_dir are rewritten
(atomically) after every cell, so an interrupted run leaves its finished rows.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bloodsmear.data.splits import per_class_sample
from bloodsmear.errors import InputError
from bloodsmear.experiments.domain_data import DomainSpec, build_domain
from bloodsmear.experiments.domain_runs import Prepared, prepare_domains
from bloodsmear.experiments.domain_tables import domain_names
from bloodsmear.experiments.domains_config import domains_cache_dir
from bloodsmear.experiments.learn import DEFAULT_BASE, MIN_PER_CLASS, learn
from bloodsmear.experiments.learn_data import LabelledCells
from bloodsmear.experiments.lodo import mean_sd, mean_sd_text, shipped_rows
from bloodsmear.experiments.lodo_config import LodoConfig
from bloodsmear.io import read_json, write_json_atomic, write_text_atomic
from bloodsmear.models.artifact import load_model

log = logging.getLogger(__name__)

DEFAULT_KS = (5, 10, 25, 50)
COLUMNS = ("domain", "k", "k_real", "n", "accuracy", "accuracy_sd", "macro_f1", "macro_f1_sd", "seeds", "absent",
           "learn_seconds")


@dataclass
class BenchLearnResult:
    rows: list[dict]  # per (domain, k) over the seeds; k = 0: the base as shipped
    seed_rows: list[dict]  # per (domain, k, seed)
    out_dir: Path
    seconds: float
    files: list[str]

    def to_dict(self) -> dict:
        return {"rows": self.rows, "seed_rows": self.seed_rows, "out_dir": str(self.out_dir),
                "seconds": round(self.seconds, 1), "files": self.files}


def parse_ints(text: str, what: str) -> list[int]:
    """"5,10,25" -> [5, 10, 25] (an `InputError` naming `what` for anything else)."""
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise InputError(None, f"{what}: comma-separated whole numbers, got {text!r}") from None


def check_ks(ks: Sequence[int]) -> list[int]:
    """The k values as ints, each >= `MIN_PER_CLASS` (an `InputError` naming the bad one)."""
    out = []
    for k in ks:
        try:
            v = int(k)
        except (TypeError, ValueError):
            raise InputError(None, f"k must be a whole number of cells per class, got {k!r}") from None
        if v < MIN_PER_CLASS or v != float(k):
            raise InputError(None, f"k = {k!r}: learn needs at least {MIN_PER_CLASS} labelled cells per class")
        out.append(v)
    if not out:
        raise InputError(None, "no k given")
    return list(dict.fromkeys(out))


def draw(labels: Sequence[str], k: int, seed: int) -> list[int]:
    """Seeded k per class of `labels` (positions; all of a class with fewer): `per_class_sample`."""
    return per_class_sample(list(labels), k, seed)


def _model_crops(cfg: LodoConfig, key: str, prep: Prepared, size: int, cache: Path):
    """d's crops at the base's input size and the positions of its train / test crops (the split of `prep`,
    matched by source image, as `shipped_rows` matches the test crops)."""
    dom = build_domain(DomainSpec(**{"size": int(size), **cfg.domains[key]}), cfg.classes, cache_dir=cache)
    parts = {}
    for p in ("train", "test"):
        groups = {prep.crops[key].groups[i] for i in prep.splits[key][p]}
        parts[p] = np.array([i for i, g in enumerate(dom.groups) if g in groups], dtype=int)
    return dom, parts


def learn_cell(cfg: LodoConfig, key: str, k: int, seed: int, prep: Prepared, names: dict[str, str], cache: Path, *,
               base: str, epochs: int, threads: int | None) -> dict:
    """One (domain, k, seed): draw, learn, score on the test split (module doc); the seed row."""
    size = load_model(base).info.input_size
    dom, parts = _model_crops(cfg, key, prep, size, cache)
    tr = parts["train"]
    labels = [cfg.classes[int(y)] for y in dom.labels[tr]]
    pick = tr[draw(labels, k, seed)]
    picked = [cfg.classes[int(y)] for y in dom.labels[pick]]
    got = Counter(picked)
    real = {c: int(got.get(c, 0)) for c in cfg.classes}
    not_learned = sorted(c for c in cfg.classes if real.get(c, 0) < MIN_PER_CLASS)
    keep = [i for i, lab in zip(pick, picked) if lab not in not_learned]
    cells = LabelledCells.from_arrays([dom.images[i] for i in keep], [cfg.classes[int(dom.labels[i])] for i in keep],
                                      name=f"{key}-train-k{k}-seed{seed}")
    with tempfile.TemporaryDirectory(prefix="bench-learn-") as tmp:
        t0 = time.perf_counter()
        res = learn(cells, Path(tmp) / "lab", base=base, epochs=epochs, seed=seed, threads=threads)
        secs = time.perf_counter() - t0
        row = shipped_rows(cfg.updated(shipped=[str(res.out_dir)]), prep, [key], names, cache)[0]
    log.info("%s k=%d seed %d: accuracy %.3f, macro F1 %.3f (%d labelled cells, learn %.0f s)", names[key], k, seed,
             row["accuracy"], row["macro_f1"], len(keep), secs)
    return {"domain": names[key], "k": k, "seed": seed, "k_real": real, "not_learned": not_learned,
            "n_labelled": len(keep), "n": row["n"], "accuracy": row["accuracy"], "macro_f1": row["macro_f1"],
            "absent": row["absent"], "learn_seconds": round(secs, 3), "train_seconds": round(res.train_seconds, 1)}


def mean_rows(seed_rows: list[dict]) -> list[dict]:
    """One row per (domain, k): accuracy and macro F1 mean and sample sd over its seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in seed_rows:
        groups.setdefault((r["domain"], r["k"]), []).append(r)
    out = []
    for (d, k), grp in groups.items():
        acc, acc_sd = mean_sd([g["accuracy"] for g in grp])
        f1, f1_sd = mean_sd([g["macro_f1"] for g in grp])
        real = "/".join(str(v) for v in grp[0]["k_real"].values()) or "–"  # per class, in the classes' order
        out.append({"domain": d, "k": k, "k_real": real,
                    "n": grp[0]["n"], "accuracy": acc, "accuracy_sd": acc_sd if k else None, "macro_f1": f1,
                    "macro_f1_sd": f1_sd if k else None, "seeds": len(grp) if k else 0, "absent": grp[0]["absent"],
                    "not_learned": grp[0].get("not_learned", []),
                    "learn_seconds": round(float(np.mean([g["learn_seconds"] for g in grp])), 3) if k else None})
    return sorted(out, key=lambda r: (r["domain"], r["k"]))


def markdown(cfg: LodoConfig, rows: list[dict], base: str, epochs: int, seconds: float) -> str:
    md = [f"# Learning curve of `bloodsmear learn` on the LODO domains ({cfg.name})", "",
          (f"Base `{base}`, fine-tuned ({epochs} epochs) on k labelled cells per class drawn (seeded) from each "
          f"domain's train split; scored on its test split (seeded {cfg.scheme} split, seed {cfg.split_seed}: the "
          f"crops of `bench lodo`). Classes: {', '.join(cfg.classes)}; probabilities restricted to them and "
          f"renormalised. Macro F1 over the classes with at least {cfg.min_support} test crops. k = 0: the base as "
          "shipped. Mean ± sample sd over the seeds. k real: cells per class actually drawn (class order "
          "as the classes; fewer than k where the train split has fewer)."), "",
          "| domain | k | k real | n test | accuracy | macro F1 | seeds | absent | learn s |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        nl = f" (not learned: {', '.join(r['not_learned'])})" if r.get("not_learned") else ""
        md.append(f"| {r['domain']} | {r['k']} | {r['k_real']}{nl} | {r['n']} | "
                  f"{mean_sd_text(r['accuracy'], r['accuracy_sd'])} | {mean_sd_text(r['macro_f1'], r['macro_f1_sd'])} | "
                  f"{r['seeds'] or '–'} | {', '.join(r['absent']) or '–'} | "
                  f"{'–' if r['learn_seconds'] is None else r['learn_seconds']} |")
    md += ["", f"Wall time of this `bench learn` call: {seconds / 60:.1f} min (a resumed call skips finished cells)."]
    return "\n".join(md) + "\n"


def write_curve(cfg: LodoConfig, out: Path, rows: list[dict], seed_rows: list[dict], base: str, epochs: int,
                seconds: float) -> list[str]:
    """learn_curve.md, .csv and .json in `out` (each written atomically)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
    w.writeheader()
    w.writerows([{**r, "absent": " ".join(r["absent"])} for r in rows])
    write_text_atomic(out / "learn_curve.csv", buf.getvalue())
    write_text_atomic(out / "learn_curve.md", markdown(cfg, rows, base, epochs, seconds))
    write_json_atomic(out / "learn_curve.json", {"rows": rows, "seed_rows": seed_rows, "base": base, "epochs": epochs,
                                                 "classes": cfg.classes, "config": cfg.to_dict(),
                                                 "seconds": round(seconds, 1)})
    return [str(out / f"learn_curve.{e}") for e in ("md", "csv", "json")]


def bench_learn(cfg: LodoConfig, *, ks: Sequence[int] = DEFAULT_KS, seeds: Sequence[int] = (0, 1, 2),
                domains: Sequence[str] | None = None, base: str = DEFAULT_BASE, epochs: int = 15,
                threads: int | None = None) -> BenchLearnResult:
    """The learning curve (module doc): every (seed, domain, k) not done yet, seed by seed (a partial result
    covers the whole curve), then the tables."""
    t0 = time.perf_counter()
    ks = check_ks(ks)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise InputError(None, "no seed given")
    keys = list(domains) if domains else cfg.held_out_keys()
    for k in keys:
        if k not in cfg.domains:
            raise InputError(None, f"unknown domain key {k!r} (valid: {', '.join(cfg.domains)})")
    threads = threads or cfg.threads
    torch.set_num_threads(max(1, threads))
    out = Path(cfg.out_dir)
    cells_dir = out / "learn_curve"
    cells_dir.mkdir(parents=True, exist_ok=True)
    cache = domains_cache_dir(cfg)
    cache.mkdir(parents=True, exist_ok=True)
    prep = prepare_domains({k: cfg.domains[k] for k in keys}, cfg.classes, scheme=cfg.scheme,
                           split_seed=cfg.split_seed, size=cfg.image_size, cache_dir=cache)
    names = domain_names({k: c.name for k, c in prep.crops.items()})
    shipped = shipped_rows(cfg.updated(shipped=[base]), prep, keys, names, cache)
    seed_rows = [{"domain": r["held_out"], "k": 0, "seed": None, "k_real": {}, "n": r["n"], "accuracy": r["accuracy"],
                  "macro_f1": r["macro_f1"], "absent": r["absent"], "learn_seconds": 0.0} for r in shipped]
    files: list[str] = []
    for seed in seeds:
        for key in keys:
            for k in ks:
                f = cells_dir / f"{key}_k{k}_seed{seed}.json"
                ident = {"domain": cfg.domains[key], "classes": cfg.classes, "scheme": cfg.scheme,
                         "split_seed": cfg.split_seed, "image_size": cfg.image_size, "min_support": cfg.min_support,
                         "base": str(base), "epochs": epochs}
                done = read_json(f) if f.is_file() else None
                if done is not None and done.get("identity") == ident:
                    log.info("%s k=%d seed %d: done, skipped", key, k, seed)
                    row = done["row"]
                else:
                    row = learn_cell(cfg, key, k, seed, prep, names, cache, base=base, epochs=epochs, threads=threads)
                    write_json_atomic(f, {"identity": ident, "row": row})
                seed_rows.append(row)
                files = write_curve(cfg, out, mean_rows(seed_rows), seed_rows, str(base), epochs,
                                    time.perf_counter() - t0)
    rows = mean_rows(seed_rows)
    files = write_curve(cfg, out, rows, seed_rows, str(base), epochs, time.perf_counter() - t0)
    return BenchLearnResult(rows, seed_rows, out, time.perf_counter() - t0, files)


__all__ = [
    "DEFAULT_KS",
    "BenchLearnResult",
    "bench_learn",
    "check_ks",
    "draw",
    "learn_cell",
    "mean_rows",
    "parse_ints",
    "write_curve",
]
