"""Leave-one-domain-out (LODO): for each labelled domain, train on all the others, test on it.

    cfg = load_lodo_config("configs/lodo/cpu.yaml")
    res = run_lodo(cfg)     # out_dir/lodo.md, lodo.csv, results.json; res.rows

For every seed, held-out domain k and recipe r, one run `<r>_wo_<k>` (`domain_runs.train_run`: the top
of a backbone trained on cached maps, supervised on the labelled training crops of every domain but k)
under ``out_dir/runs/seed<s>/``, tested on k's test split. Nothing of k is seen in training, labelled
or not: stain recipes normalise to a training domain's stain. Finished runs are skipped (a run whose
domains, split or stain reference changed is trained again); the tables are rewritten after every
run, so an interrupted experiment leaves its finished rows.

Next to them, the shipped models ("shipped today" rows) are scored on the same held-out test crops,
cut at their own input size: probabilities restricted to the experiment's classes and renormalised.
Their card says what they saw in training; rows of a domain they saw are marked (not held-out figures).

Macro F1 counts the classes with at least `min_support` test crops in the held-out domain (the
others are listed as absent); accuracy counts every test crop of the experiment's classes.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bloodsmear.errors import InputError
from bloodsmear.experiments.domain_data import DomainSpec, build_domain
from bloodsmear.experiments.domain_runs import Prepared, RunSpec, prepare_domains, train_run
from bloodsmear.experiments.domain_tables import domain_names
from bloodsmear.experiments.domains_config import domains_cache_dir
from bloodsmear.experiments.lodo_config import LodoConfig
from bloodsmear.experiments.lodo_scoring import calibration_markdown, calibration_rows, score_run
from bloodsmear.inference.classify import CellClassifier
from bloodsmear.io import read_json, write_json_atomic, write_text_atomic
from bloodsmear.metrics.classification import classification_report_arrays
from bloodsmear.preprocess.color import ReinhardNormalizer

log = logging.getLogger(__name__)

COLUMNS = ("held_out", "recipe", "trained_on", "n", "accuracy", "accuracy_sd", "macro_f1", "macro_f1_sd", "seeds",
           "absent", "held_out_ok", "train_seconds")


@dataclass
class LodoResult:
    rows: list[dict]  # one per (held-out domain, recipe) over the seeds, then the shipped models' rows
    seed_rows: list[dict]  # one per (seed, held-out domain, recipe)
    out_dir: Path
    seconds: float
    files: list[str]

    def to_dict(self) -> dict:
        return {"rows": self.rows, "out_dir": str(self.out_dir), "seconds": round(self.seconds, 1), "files": self.files}


# ---------------------------------------------------------------------------------------------- scores
def present_scores(rep: dict, classes: list[str], min_support: int) -> dict:
    """n, accuracy, and macro F1 over the classes with >= min_support test crops (the others: absent)."""
    present = [c for c in classes if rep["per_class"][c]["support"] >= min_support]
    absent = [c for c in classes if c not in present]
    f1 = float(np.mean([rep["per_class"][c]["f1"] for c in present])) if present else float("nan")
    return {"n": int(rep["n"]), "accuracy": float(rep["accuracy"]), "macro_f1": f1, "absent": absent}


def mean_sd(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def mean_rows(seed_rows: list[dict]) -> list[dict]:
    """One row per (held-out domain, recipe): accuracy and macro F1 mean and sample sd over its seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in seed_rows:
        groups.setdefault((r["held_out"], r["recipe"]), []).append(r)
    out = []
    for grp in groups.values():
        acc, acc_sd = mean_sd([g["accuracy"] for g in grp])
        f1, f1_sd = mean_sd([g["macro_f1"] for g in grp])
        out.append({"held_out": grp[0]["held_out"], "recipe": grp[0]["recipe"], "trained_on": grp[0]["trained_on"],
                    "n": grp[0]["n"], "accuracy": acc, "accuracy_sd": acc_sd, "macro_f1": f1, "macro_f1_sd": f1_sd,
                    "seeds": len(grp), "absent": grp[0]["absent"], "held_out_ok": True,
                    "train_seconds": round(float(np.mean([g["train_seconds"] for g in grp])), 1)})
    return out


# ----------------------------------------------------------------------------------------------- runs
def with_stain(prep: Prepared, reference: str | None) -> Prepared:
    """`prep` normalising to `reference`'s training-crop stain (a new Prepared; None: no normaliser)."""
    if reference is None:
        return replace(prep, stain=None, normalized={})
    ref = prep.crops[reference].images[prep.splits[reference]["train"]]
    return replace(prep, stain=ReinhardNormalizer(per_image=True).fit(list(ref)), normalized={})


def _same_identity(run_dir: Path, identity: dict) -> None:
    """Write the run's identity (domains, split, stain reference); a finished or half-trained run with another
    identity is cleared, so it trains again (train_run's own check covers run, maps, train and classes)."""
    f = run_dir / "lodo_identity.json"
    if f.is_file() and read_json(f) != identity:
        log.warning("%s: domains, split or stain reference changed; training it again", run_dir)
        for name in ("result.json", "checkpoint.pt"):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "model", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(f, identity)


def run_lodo(cfg: LodoConfig, *, progress: bool = True, recipes: list[str] | None = None,
             held_out: list[str] | None = None) -> LodoResult:
    """Train every (seed, held-out domain, recipe) run not done yet and write the LODO table (module doc).

    `recipes` / `held_out`: only these recipe names / domain keys (InputError naming the valid ones)."""
    torch.set_num_threads(max(1, cfg.threads))
    t0 = time.perf_counter()
    for r in recipes or []:
        cfg.recipe(r)  # InputError naming the valid recipes
    names_sel = list(recipes) if recipes else list(cfg.recipes)
    keys = cfg.held_out_keys()
    for k in held_out or []:
        if k not in cfg.domains:
            raise InputError(None, f"unknown domain key {k!r} (valid: {', '.join(cfg.domains)})")
    keys = [k for k in keys if k in held_out] if held_out else keys
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = domains_cache_dir(cfg)  # the crop and map cache `bench domains` uses too
    cache.mkdir(parents=True, exist_ok=True)

    base: dict[int, Prepared] = {}

    def prep_at(size: int) -> Prepared:
        if size not in base:
            base[size] = prepare_domains(cfg.domains, cfg.classes, scheme=cfg.scheme, split_seed=cfg.split_seed,
                                         size=size, cache_dir=cache)
        return base[size]

    stained: dict[tuple[int, str | None], Prepared] = {}

    def prep_for(size: int, ref: str | None) -> Prepared:  # one normaliser (and normalised crops) per reference
        if (size, ref) not in stained:
            stained[(size, ref)] = with_stain(prep_at(size), ref)
        return stained[(size, ref)]

    first = prep_at(cfg.image_size)
    names = domain_names({k: c.name for k, c in first.crops.items()})
    write_json_atomic(out / "splits.json", first.manifests, indent=1)
    shipped = shipped_rows(cfg, first, keys, names, cache)
    seed_rows: list[dict] = []
    files: list[str] = []
    for seed in cfg.seeds:
        run_dir = out / "runs" / f"seed{seed}"
        for k in keys:
            train_keys = [d for d in cfg.domains if d != k]
            for rname in names_sel:
                ms, rs, size = cfg.recipe_settings(rname)
                ref = cfg.stain_reference(rname, k)
                prep = prep_for(size, ref)
                run = RunSpec(f"{cfg.trained_as(rname)}_wo_{k}", train=train_keys, stain=ref is not None)
                _same_identity(run_dir / run.id, {"domains": prep.specs, "scheme": cfg.scheme, "size": size,
                                                  "split_seed": cfg.split_seed, "stain_reference": ref})
                log.info("run %s (seed %d): train on %s%s", run.id, seed, "+".join(train_keys),
                         f", stain-normalised to {ref}" if ref else "")
                res = train_run(run, prep, ms, rs.updated(seed=int(seed)), run_dir, cache,
                                progress=progress, device=cfg.device)
                bn = cfg.recipe(rname).bn_adapt
                sc = score_run(res["model_dir"], prep, ms, run, k, cache, bn_adapt=bn)
                s = present_scores(sc["report"] if bn else res["test"][k], cfg.classes, cfg.min_support)
                seed_rows.append({"held_out": names[k], "recipe": rname, "seed": seed,
                                  "trained_on": "+".join(names[t] for t in train_keys), **s,
                                  "train_seconds": float(res.get("train_seconds") or 0.0),
                                  "calibration": sc["calibration"]})
                files = write_lodo(cfg, out, mean_rows(seed_rows) + shipped, seed_rows, names, first,
                                   time.perf_counter() - t0)
    rows = mean_rows(seed_rows) + shipped
    files = write_lodo(cfg, out, rows, seed_rows, names, first, time.perf_counter() - t0)
    return LodoResult(rows=rows, seed_rows=seed_rows, out_dir=out, seconds=time.perf_counter() - t0, files=files)


# ----------------------------------------------------------------------------------------- shipped rows
def seen_in_training(info) -> dict[str, str]:
    """Dataset name -> "labelled" / "unlabelled" for the domains a model folder's training used."""
    t = info.training or {}
    specs = t.get("domain_specs") or {}
    run = t.get("run") or {}
    if specs and run:
        seen = {specs[k]["name"]: "labelled" for k in run.get("train", []) if k in specs}
        if run.get("target") in specs:
            seen.setdefault(specs[run["target"]]["name"], "unlabelled")
        return seen
    return {"(not recorded)": "?"}  # a folder without a domains run's record: treated as seen everywhere


def test_probs(cfg: LodoConfig, prep: Prepared, clf: CellClassifier, key: str, cache: Path,
               idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities over `cfg.classes` - the model's columns `idx`, renormalised -, labels) of domain `key`'s
    test crops, cut at the model's own input size."""
    test_groups = {prep.crops[key].groups[i] for i in prep.splits[key]["test"]}
    dom = build_domain(DomainSpec(**{"size": int(clf.info.input_size), **cfg.domains[key]}), cfg.classes,
                       cache_dir=cache)
    sel = np.array([i for i, g in enumerate(dom.groups) if g in test_groups], dtype=int)
    probs = clf.predict_proba(list(dom.images[sel]))[:, idx]
    return probs / np.clip(probs.sum(1, keepdims=True), 1e-12, None), dom.labels[sel]


def shipped_rows(cfg: LodoConfig, prep: Prepared, keys: list[str], names: dict[str, str], cache: Path) -> list[dict]:
    """The shipped models scored on each held-out domain's test crops (cut at the model's input size)."""
    rows = []
    for ref in cfg.shipped:
        clf = CellClassifier.load(ref)
        missing = [c for c in cfg.classes if c not in clf.classes]
        if missing:
            raise InputError(ref, f"shipped model has no class {', '.join(missing)} (it has {', '.join(clf.classes)})")
        idx = [clf.classes.index(c) for c in cfg.classes]
        seen = seen_in_training(clf.info)
        label = clf.info.name or Path(str(ref)).name
        for k in keys:
            probs, labels = test_probs(cfg, prep, clf, k, cache, idx)
            rep = classification_report_arrays(labels, probs.argmax(1), cfg.classes).to_dict()
            s = present_scores(rep, cfg.classes, cfg.min_support)
            held = cfg.domains[k]["name"] not in seen and "(not recorded)" not in seen
            rows.append({"held_out": names[k], "recipe": f"shipped: {label}",
                         "trained_on": " + ".join(f"{n} ({how})" for n, how in seen.items()),
                         "n": s["n"], "accuracy": s["accuracy"], "accuracy_sd": None, "macro_f1": s["macro_f1"],
                         "macro_f1_sd": None, "seeds": 0, "absent": s["absent"], "held_out_ok": held,
                         "train_seconds": None})
            log.info("%s on %s: accuracy %.3f, macro F1 %.3f%s", label, names[k], s["accuracy"], s["macro_f1"],
                     "" if held else " (seen in training)")
    return rows


# ---------------------------------------------------------------------------------------------- tables
def mean_sd_text(mean, sd) -> str:
    """"0.912 ± 0.011" ("0.912" without an sd, "–" for no figure)."""
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "–"
    return f"{mean:.3f}" if sd is None else f"{mean:.3f} ± {sd:.3f}"


def markdown(cfg: LodoConfig, rows: list[dict], names: dict[str, str], prep: Prepared, seconds: float,
             seed_rows: list[dict] | None = None) -> str:
    counts = "; ".join(f"{names[k]} " + "/".join(str(len(prep.splits[k][p])) for p in ("train", "val", "test"))
                       for k in prep.crops)
    md = [f"# Leave-one-domain-out: {cfg.name}", "",
          f"Classes: {', '.join(cfg.classes)}. Each held-out domain's test split (seeded {cfg.scheme} split, seed "
          f"{cfg.split_seed}; train/val/test crops: {counts}); the runs trained on the other domains only.",
          f"Accuracy over every test crop of these classes; macro F1 over the classes with at least "
          f"{cfg.min_support} test crops in the held-out domain (the others listed as absent). Mean ± sample sd over "
          f"the seeds {cfg.seeds} (the seeds column: how many finished).",
          "Shipped rows: the model folder as shipped, on the same test images cut at its own input size, "
          "probabilities restricted to these classes and renormalised; 'trained on' is what its card records. "
          "Rows marked * are on a domain the model saw in training (labelled or unlabelled; its PBC split is not "
          "this experiment's): not held-out figures.", "",
          "| held out | recipe | trained on | n | accuracy | macro F1 | seeds | absent |",
          "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (list(names.values()).index(r["held_out"]), r["seeds"] == 0)):
        star = "" if r["held_out_ok"] else " *"
        md.append(f"| {r['held_out']} | {r['recipe']}{star} | {r['trained_on']} | {r['n']} | "
                  f"{mean_sd_text(r['accuracy'], r['accuracy_sd'])} | "
                  f"{mean_sd_text(r['macro_f1'], r['macro_f1_sd'])} | "
                  f"{r['seeds'] or '–'} | {', '.join(r['absent']) or '–'} |")
    md += ["", "Recipes: " + "; ".join(f"`{n}`: {r.description or ('stain' if r.stain else 'supervised')}"
                                        for n, r in cfg.recipes.items()) + ".",
           *calibration_markdown(calibration_rows(seed_rows or []), list(names.values())), "",
           f"Wall time of this `bench lodo` call: {seconds / 60:.1f} min (a resumed call skips the finished runs)."]
    return "\n".join(md) + "\n"


def write_lodo(cfg: LodoConfig, out: Path, rows: list[dict], seed_rows: list[dict], names: dict[str, str],
               prep: Prepared, seconds: float) -> list[str]:
    """lodo.md, lodo.csv and results.json in `out` (each written atomically)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
    w.writeheader()
    w.writerows([{**r, "absent": " ".join(r["absent"])} for r in rows])
    write_text_atomic(out / "lodo.csv", buf.getvalue())
    write_text_atomic(out / "lodo.md", markdown(cfg, rows, names, prep, seconds, seed_rows))
    write_json_atomic(out / "results.json", {"rows": rows, "seed_rows": seed_rows,
                                             "calibration": calibration_rows(seed_rows), "domains": names,
                                             "classes": cfg.classes, "config": cfg.to_dict(),
                                             "seconds": round(seconds, 1)})
    return [str(out / f) for f in ("lodo.md", "lodo.csv", "results.json")]


__all__ = ["LodoResult", "test_probs", "mean_rows", "mean_sd_text", "present_scores", "run_lodo", "seen_in_training", "shipped_rows",
           "write_lodo"]
