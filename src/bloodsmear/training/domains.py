"""Cross-domain experiments (the paper's Tables 5 and 6, and stain normalisation), from one config.

    cfg = load_domains_config("configs/domains/pbc_lisc.yaml")
    result = run_domains(cfg)     # trains every run not done yet; writes tables, confusions, t-SNE, curves

Two domains A and B (e.g. PBC and LISC) restricted to their common classes, each split by a seeded
manifest. The runs (each an ordinary model folder under ``out_dir/runs/<id>/model``):

- ``src_A`` / ``src_B``: supervised on one domain          -> Table 5: A->A, A->B, B->B, B->A
- ``mix``: supervised on A+B                                -> Table 5: A+B->A, A+B->B
- ``dann_A_B`` / ``dann_B_A``: DANN, labelled source + unlabelled target train crops -> Table 6
- ``stain_A`` / ``stain_dann_A_B`` (and the B versions): every crop Reinhard-normalised to the
  reference domain's stain first, alone and with DANN.

Every run is tested on the test split of both domains (target test images are never seen in training,
labelled or not). Outputs in ``out_dir``: ``table5.csv/.md``, ``table6.csv/.md``, ``stain.csv/.md``,
``results.json``, a confusion PNG per row, t-SNE plots of both domains' test features before
(``src_A``) and after (``dann_A_B``) adaptation, and DANN training curves (source accuracy, label
loss, domain loss, lambda). Interrupted runs resume (each run checkpoints per epoch; finished runs are
skipped).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from bloodsmear.training.domain_runs import MapSettings, RunSettings, RunSpec, prepare_domains, train_run

log = logging.getLogger(__name__)

STANDARD_RUNS = ("src_A", "src_B", "mix", "dann_A_B", "dann_B_A", "stain_A", "stain_dann_A_B", "stain_B",
                 "stain_dann_B_A")
METRICS = ("macro_precision", "macro_recall", "macro_f1", "accuracy")


@dataclass
class DomainsConfig:
    name: str = "pbc_lisc"
    domains: dict = field(default_factory=lambda: {"A": {"name": "pbc", "max_per_class": 300},
                                                   "B": {"name": "lisc"}})
    classes: list[str] | None = None  # None -> classes common to both domains' vocabularies
    image_size: int = 96
    scheme: str = "64-16-20"
    split_seed: int = 42
    runs: list[str] = field(default_factory=lambda: list(STANDARD_RUNS))
    maps: dict = field(default_factory=dict)  # MapSettings: backbone, train_from, views, augment, aug_seed
    train: dict = field(default_factory=dict)  # RunSettings: epochs, batch_size, lr, dann {...}, ...
    stain_reference: str = "A"  # the domain whose stain statistics the stain runs normalise to
    tsne_max_per_domain: int = 300
    threads: int = 1
    device: str = "cpu"  # where runs train: cpu | cuda | auto (crops and cached maps stay on the CPU)
    seeds: list[int] | None = None  # repeat every run with these training seeds (runs/seed<k>/); tables add mean/sd
    eval_tta: list[str] = field(default_factory=list)  # also score the runs with these test-time augmentations
    #                                                    (none | flip | d8) -> out_dir/tta_<mode>/ tables
    out_dir: str = "runs/domains/pbc_lisc"
    cache_dir: str | None = None  # None -> ~/.cache/bloodsmear/domains

    def to_dict(self) -> dict:
        return asdict(self)


def load_typed_config(cls: type, path: str | Path, overrides: dict | None = None):
    """A config file (YAML/JSON, optional `kind:` tag) as dataclass `cls`; unknown keys are an error."""
    from bloodsmear.config import _from_dict, load_config_dict, merge

    d = load_config_dict(path)
    d.pop("kind", None)
    return _from_dict(cls, merge(d, overrides) if overrides else d, path, "")


def load_domains_config(path: str | Path, overrides: dict | None = None) -> DomainsConfig:
    cfg = load_typed_config(DomainsConfig, path, overrides)
    MapSettings(**cfg.maps), RunSettings(**cfg.train)  # unknown keys fail here, naming them
    for r in cfg.runs:
        run_spec(r)
    from bloodsmear.errors import InputError
    from bloodsmear.inference.tta import check_tta

    for mode in cfg.eval_tta:
        try:
            check_tta(mode)
        except ValueError as e:
            raise InputError(path, f"eval_tta: {e}") from None
    return cfg


def run_spec(rid: str) -> RunSpec:
    """The RunSpec behind a standard run id (see the module doc)."""
    table = {
        "src_A": RunSpec("src_A", ["A"]), "src_B": RunSpec("src_B", ["B"]), "mix": RunSpec("mix", ["A", "B"]),
        "dann_A_B": RunSpec("dann_A_B", ["A"], "dann", "B"), "dann_B_A": RunSpec("dann_B_A", ["B"], "dann", "A"),
        "stain_A": RunSpec("stain_A", ["A"], stain=True), "stain_B": RunSpec("stain_B", ["B"], stain=True),
        "stain_dann_A_B": RunSpec("stain_dann_A_B", ["A"], "dann", "B", stain=True),
        "stain_dann_B_A": RunSpec("stain_dann_B_A", ["B"], "dann", "A", stain=True),
    }
    if rid not in table:
        raise ValueError(f"unknown run {rid!r} (valid: {', '.join(table)})")
    return table[rid]


def resolve_classes(cfg: DomainsConfig) -> list[str]:
    from bloodsmear.classes import LISC_CLASSES, PBC_CLASSES, canonical, common_between

    if cfg.classes:
        return [canonical(c) for c in cfg.classes]
    vocab = {"pbc": PBC_CLASSES, "lisc": LISC_CLASSES, "bccd": LISC_CLASSES}
    names = [d["name"] for d in cfg.domains.values()]
    out = list(vocab.get(names[0], LISC_CLASSES))
    for n in names[1:]:
        out = common_between(out, vocab.get(n, LISC_CLASSES))
    return out


@dataclass
class DomainsResult:
    rows: list[dict]
    out_dir: Path
    seconds: float
    files: list[str]

    def to_dict(self) -> dict:
        return {"rows": self.rows, "out_dir": str(self.out_dir), "seconds": round(self.seconds, 1), "files": self.files}


def domains_cache_dir(cfg: DomainsConfig) -> Path:
    """Where crops and cached maps live: `cache_dir`, else $BLOODSMEAR_CACHE (default ~/.cache/bloodsmear)/domains."""
    import os

    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    return Path(os.environ.get("BLOODSMEAR_CACHE", Path.home() / ".cache" / "bloodsmear")) / "domains"


def run_domains(cfg: DomainsConfig, *, progress: bool = True, only: list[str] | None = None) -> DomainsResult:
    import torch

    torch.set_num_threads(max(1, cfg.threads))
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = domains_cache_dir(cfg)
    cache.mkdir(parents=True, exist_ok=True)
    classes = resolve_classes(cfg)
    runs = [run_spec(r) for r in cfg.runs if only is None or r in only]
    need_stain = any(r.stain for r in runs)
    prep = prepare_domains(cfg.domains, classes, scheme=cfg.scheme, split_seed=cfg.split_seed, size=cfg.image_size,
                           cache_dir=cache, stain_reference=cfg.stain_reference if need_stain else None)
    ms, rs = MapSettings(**cfg.maps), RunSettings(**cfg.train)
    from bloodsmear.io import write_json_atomic

    write_json_atomic(out / "domains_config.json", cfg.to_dict())
    write_json_atomic(out / "splits.json", prep.manifests, indent=1)
    names = domain_names({k: c.name for k, c in prep.crops.items()})
    rows, first = [], None
    for seed in (cfg.seeds or [rs.seed]):
        rs_seed = replace(rs, seed=int(seed))
        run_dir = out / "runs" if not cfg.seeds else out / "runs" / f"seed{seed}"
        results = {}
        for r in runs:
            log.info("run %s (seed %d): train on %s, %s%s%s", r.id, seed, "+".join(r.train), r.objective,
                     f", target {r.target}" if r.target else "", ", stain-normalised" if r.stain else "")
            results[r.id] = train_run(r, prep, ms, rs_seed, run_dir, cache, progress=progress, device=cfg.device)
        rows += [{**row, "seed": seed} for row in table_rows(results, names)]
        first = first or results
    if cfg.seeds and len(cfg.seeds) > 1:
        rows += mean_rows(rows)
    files = write_tables(rows, out, names)
    files += figures(first, out, names, classes, cfg.tsne_max_per_domain)
    write_json_atomic(out / "results.json", {"rows": rows, "domains": names, "classes": classes})
    if cfg.eval_tta:
        from bloodsmear.training.domain_rescore import rescore_domains

        for mode in cfg.eval_tta:
            files += rescore_domains(cfg, mode, only=only).files
    return DomainsResult(rows=rows, out_dir=out, seconds=time.perf_counter() - t0, files=files)


# --------------------------------------------------------------------------------------------- tables
def domain_names(names: dict[str, str]) -> dict[str, str]:
    """Domain key -> the name tables use: the dataset name, made unique with the key where two domains
    share one (e.g. two class-per-folder sets: "folder_A", "folder_B")."""
    vals = list(names.values())
    return {k: f"{v}_{k}" if vals.count(v) > 1 else v for k, v in names.items()}


def _table_of(rid: str) -> str:
    r = run_spec(rid)
    if r.stain:
        return "stain"
    return "table6" if r.objective == "dann" else "table5"


def table_rows(results: dict[str, dict], names: dict[str, str]) -> list[dict]:
    rows = []
    for rid, res in results.items():
        r = run_spec(rid)
        train = "+".join(names[k] for k in r.train)
        for key, rep in res["test"].items():
            method = ("stain+" if r.stain else "") + ("DANN" if r.objective == "dann" else "supervised")
            row = {"table": _table_of(rid), "run": rid, "method": method, "trained_on": train,
                   "target": names[r.target] if r.target else "", "tested_on": names[key],
                   "n": rep["n"], **{m: round(float(rep[m]) * 100, 2) for m in METRICS},
                   "epochs": res["epochs_run"], "train_seconds": res["train_seconds"]}
            rows.append(row)
    return rows


COLUMNS = ("run", "method", "trained_on", "target", "tested_on", "seed", "n", "macro_precision", "macro_recall",
           "macro_f1", "macro_f1_sd", "accuracy", "epochs", "train_seconds")


def mean_rows(rows: list[dict]) -> list[dict]:
    """One row per (run, tested_on) over several seeds: metrics averaged, `macro_f1_sd` their sample sd."""
    import numpy as np

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["run"], r["tested_on"]), []).append(r)
    out = []
    for grp in groups.values():
        f1 = np.array([g["macro_f1"] for g in grp], dtype=float)
        out.append({**grp[0], "seed": f"mean of {len(grp)}",
                    **{m: round(float(np.mean([g[m] for g in grp])), 2) for m in METRICS},
                    "macro_f1_sd": round(float(f1.std(ddof=1)), 2) if len(grp) > 1 else 0.0,
                    "train_seconds": round(float(np.mean([g["train_seconds"] for g in grp])), 1)})
    return out


def write_tables(rows: list[dict], out: Path, names: dict[str, str]) -> list[str]:
    from bloodsmear.io import write_text_atomic

    titles = {"table5": "Table 5: trained on one domain (or both), tested on each",
              "table6": "Table 6: DANN (labelled source, unlabelled target), tested on each",
              "stain": "Stain normalisation (Reinhard to the reference domain), alone and with DANN"}
    files = []
    for t, title in titles.items():
        sel = [r for r in rows if r["table"] == t]
        if not sel:
            continue
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        w.writerows(sel)
        write_text_atomic(out / f"{t}.csv", buf.getvalue())
        md = [f"# {title}", "", f"Domains: {', '.join(f'{k} = {v}' for k, v in names.items())}. "
              "Metrics in %, macro averages over the common classes, on each domain's held-out test split.", "",
              "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        md += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in sel]
        write_text_atomic(out / f"{t}.md", "\n".join(md) + "\n")
        files += [str(out / f"{t}.csv"), str(out / f"{t}.md")]
    return files


# -------------------------------------------------------------------------------------------- figures
def figures(results: dict[str, dict], out: Path, names: dict[str, str], classes: list[str], tsne_max: int) -> list[str]:
    import numpy as np

    from bloodsmear.evaluation.metrics import ClassificationReport, plot_confusion

    files = []
    cdir = out / "confusion"
    for rid, res in results.items():
        for key, rep in res["test"].items():
            dest = cdir / f"{rid}_on_{names[key]}.png"
            plot_confusion(ClassificationReport.from_dict(rep), dest, title=f"{rid} on {names[key]}")
            files.append(str(dest))
    for rid, res in results.items():
        if run_spec(rid).objective == "dann":
            files.append(str(plot_dann_curves(res["history"], out / f"curves_{rid}.png", title=rid)))
    pairs = [("src_A", "dann_A_B"), ("src_B", "dann_B_A"), ("stain_A", "stain_dann_A_B")]
    from bloodsmear.viz.tsne import tsne_plot

    for before, after in pairs:
        for rid, when in ((before, "before"), (after, "after")):
            if rid not in results:
                continue
            f = np.load(Path(results[rid]["model_dir"]).parent / "test_features.npz")
            xs, ys, ds = [], [], []
            rng = np.random.default_rng(0)
            for key in names:
                x, y = f[f"{key}_x"], f[f"{key}_y"]
                keep = np.sort(rng.permutation(len(x))[:tsne_max])
                xs.append(x[keep])
                ys += [classes[i] for i in y[keep]]
                ds += [names[key]] * len(keep)
            dest = out / "tsne" / f"{after}_{when}.png"
            feats = np.concatenate(xs)
            key = hashlib.sha1(feats.tobytes() + json.dumps([ys, ds]).encode()).hexdigest()
            stamp = dest.with_suffix(".sha1")
            if dest.is_file() and not stamp.is_file():  # a plot from before stamps existed: keep it
                stamp.write_text(key)
            if not (dest.is_file() and stamp.is_file() and stamp.read_text() == key):  # t-SNE is slow on CPU
                tsne_plot(feats, ys, ds, dest, title=f"t-SNE of test features, {when} adaptation ({rid})")
                stamp.write_text(key)
            files.append(str(dest))
    return files


def plot_dann_curves(history: list[dict], dest: Path, *, title: str = "") -> Path:
    """The paper's DANN curves per epoch: source accuracy, label loss, domain loss (+ domain acc, lambda)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bloodsmear.evaluation.metrics import save_png

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


def summary(rows: list[dict]) -> dict:
    """Headline figures for `--json`: macro F1 per run and tested domain."""
    seeds = {r.get("seed") for r in rows}
    if len(seeds) > 1:  # several seeds: the mean rows
        return {f"{r['run']}@{r['tested_on']}": r["macro_f1"] for r in rows if str(r.get("seed", "")).startswith("mean")}
    return {f"{r['run']}@{r['tested_on']}": r["macro_f1"] for r in rows}


__all__ = ["DomainsConfig", "load_domains_config", "run_domains", "run_spec", "DomainsResult", "STANDARD_RUNS",
           "domain_names",
           "table_rows", "write_tables", "plot_dann_curves", "summary"]


def _register_train_kind() -> None:
    """`bloodsmear train configs/domains/x.yaml` (kind: domains) runs the whole experiment set."""
    from bloodsmear.training.trainer import register_train_kind

    @register_train_kind("domains")
    def _run(path, overrides=None, *, restart: bool = False, progress: bool = True):
        if restart:
            import shutil

            shutil.rmtree(Path(load_domains_config(path, overrides).out_dir) / "runs", ignore_errors=True)
        return run_domains(load_domains_config(path, overrides), progress=progress)


_register_train_kind()


def ship_run(run_dir: str | Path, dest: str | Path, *, command: str = "") -> Path:
    """Copy a run's model folder (config, fp16 weights, split, history, metrics, card, PNGs) to `dest`
    (e.g. src/bloodsmear/zoo/<name>), recording the command in the card."""
    import shutil

    src = Path(run_dir) / "model" if (Path(run_dir) / "model").is_dir() else Path(run_dir)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".md", ".png"):
            shutil.copyfile(f, dest / f.name)
    info = json.loads((dest / "config.json").read_text())
    dc = src.parent.parent.parent / "domains_config.json"  # out_dir/runs/<id>/model -> out_dir
    if "domain_specs" not in info["training"] and dc.is_file():  # older runs: make the folder self-describing
        d = json.loads(dc.read_text())
        size = int(info["input_size"])
        info["training"].update(domain_specs={k: {"size": size, **v} for k, v in d["domains"].items()},
                                scheme=d["scheme"], split_seed=d["split_seed"])
        (dest / "config.json").write_text(json.dumps(info, indent=2) + "\n")
    sp = json.loads((dest / "split.json").read_text()) if (dest / "split.json").is_file() else {}
    if "domains" in sp:  # older layout: every domain's manifest in split.json
        run = info["training"]["run"]
        (dest / "domain_splits.json").write_text(json.dumps(sp, indent=1) + "\n")
        (dest / "split.json").write_text(json.dumps(sp["domains"][run["target"] or run["train"][0]], indent=1) + "\n")
    if command and (dest / "card.md").is_file():
        text = (dest / "card.md").read_text(encoding="utf-8")
        (dest / "card.md").write_text(text.replace("bloodsmear bench domains configs/domains/<pair>.yaml", command),
                                      encoding="utf-8")
    return dest
