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

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from bloodsmear.experiments.domain_runs import prepare_domains, train_run
from bloodsmear.experiments.domain_tables import domain_names, mean_rows, table_rows, write_tables
from bloodsmear.experiments.domains_config import DomainsConfig, DomainsResult, domains_cache_dir, resolve_classes, run_spec
from bloodsmear.experiments.rescore import rescore_domains
from bloodsmear.io import write_json_atomic, write_text_atomic
from bloodsmear.metrics.classification import ClassificationReport
from bloodsmear.metrics.plots import plot_confusion, plot_dann_curves
from bloodsmear.training.distributed import is_main, main_first
from bloodsmear.viz.tsne import tsne_plot

log = logging.getLogger(__name__)

def run_domains(cfg: DomainsConfig, *, progress: bool = True, only: list[str] | None = None) -> DomainsResult:
    torch.set_num_threads(max(1, cfg.threads))
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = domains_cache_dir(cfg)
    cache.mkdir(parents=True, exist_ok=True)
    classes = resolve_classes(cfg)
    runs = [run_spec(r) for r in cfg.runs if only is None or r in only]
    need_stain = any(r.stain for r in runs)
    with main_first():  # torchrun (a dann run): rank 0 fills the crop caches, the others read them
        prep = prepare_domains(cfg.domains, classes, scheme=cfg.scheme, split_seed=cfg.split_seed,
                               size=cfg.image_size, cache_dir=cache,
                               stain_reference=cfg.stain_reference if need_stain else None)
    ms, rs = cfg.maps, cfg.train

    if is_main():
        write_json_atomic(out / "domains_config.json", cfg.to_dict())
        write_json_atomic(out / "splits.json", prep.manifests, indent=1)
    names = domain_names({k: c.name for k, c in prep.crops.items()})
    rows, first = [], None
    for seed in (cfg.seeds or [rs.seed]):
        rs_seed = rs.updated(seed=int(seed))
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
    if not is_main():  # torchrun: rank 0 writes the tables and figures
        return DomainsResult(rows=rows, out_dir=out, seconds=time.perf_counter() - t0, files=[])
    files = write_tables(rows, out, names)
    files += figures(first, out, names, classes, cfg.tsne_max_per_domain)
    write_json_atomic(out / "results.json", {"rows": rows, "domains": names, "classes": classes})
    if cfg.eval_tta:
        for mode in cfg.eval_tta:
            files += rescore_domains(cfg, mode, only=only).files
    return DomainsResult(rows=rows, out_dir=out, seconds=time.perf_counter() - t0, files=files)


# -------------------------------------------------------------------------------------------- figures
def figures(results: dict[str, dict], out: Path, names: dict[str, str], classes: list[str], tsne_max: int) -> list[str]:
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
                write_text_atomic(stamp, key)
            if not (dest.is_file() and stamp.is_file() and stamp.read_text() == key):  # t-SNE is slow on CPU
                tsne_plot(feats, ys, ds, dest, title=f"t-SNE of test features, {when} adaptation ({rid})")
                write_text_atomic(stamp, key)
            files.append(str(dest))
    return files


__all__ = ["run_domains", "figures"]
