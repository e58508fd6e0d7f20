"""Score the saved models of a domains experiment again, with test-time augmentation, without training.

    cfg = load_domains_config("configs/domains/pbc_lisc_gpu.yaml")
    res = rescore_domains(cfg, "d8")   # -> out_dir/tta_d8/{table5,table6,stain}.{csv,md}, results.json

Every run's model folder under ``out_dir/runs[/seed<k>]/<run>/model`` is loaded as an ordinary
classifier (`inference.classify.CellClassifier`, with `tta`) and scored on each domain's test split
as the run was trained: the test splits come from ``out_dir/splits.json`` (the manifests the runs were
made with, not a fresh split), the crops from the domain cache. Stain runs whose folder predates the
stored normaliser get the one fitted on the reference domain's training crops, as in training. Runs
whose weights are missing (e.g. not copied back from another machine) are left out with a warning:
the tables say how many seeds every mean row holds.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from bloodsmear.errors import InputError
from bloodsmear.experiments.domain_data import DomainSpec, build_domain
from bloodsmear.experiments.domain_tables import domain_names, mean_rows, table_rows, write_tables
from bloodsmear.experiments.domains_config import DomainsConfig, DomainsResult, domains_cache_dir, resolve_classes, run_spec
from bloodsmear.inference.classify import CellClassifier
from bloodsmear.inference.tta import check_tta
from bloodsmear.io import read_json, write_json_atomic
from bloodsmear.metrics.classification import classification_report_arrays
from bloodsmear.preprocess.color import ReinhardNormalizer

log = logging.getLogger(__name__)


def _test_crops(cfg: DomainsConfig, classes: list[str], manifests: dict) -> tuple[dict, dict, object]:
    """key -> (test images, labels) by the saved manifests, and the reference stain normaliser."""
    tests, names, stain = {}, {}, None
    for key, d in cfg.domains.items():
        dom = build_domain(DomainSpec(**{"size": cfg.image_size, **d}), classes, cache_dir=domains_cache_dir(cfg))
        names[key] = dom.name
        if key not in manifests:
            raise InputError(Path(cfg.out_dir) / "splits.json", f"no split manifest for domain {key}")
        parts = {p: {e["path"] for e in v} for p, v in manifests[key]["splits"].items()}
        idx = np.array([i for i, g in enumerate(dom.groups) if g in parts["test"]], dtype=int)
        if len(idx) == 0:
            raise InputError(Path(cfg.out_dir) / "splits.json", f"none of domain {key}'s test images are in its crops")
        tests[key] = (dom.images[idx], dom.labels[idx])
        if key == cfg.stain_reference:
            tr = [i for i, g in enumerate(dom.groups) if g in parts["train"]]
            stain = ReinhardNormalizer(per_image=True).fit(list(dom.images[tr]))
    return tests, domain_names(names), stain


def score_run(model_dir: Path, tests: dict, classes: list[str], *, tta: str, stain=None) -> dict:
    """One saved run model scored on every domain's test crops: key -> ClassificationReport dict.

    `stain`: a normaliser applied to the crops first when the folder does not carry its own."""
    clf = CellClassifier.load(model_dir, tta=tta)
    if list(clf.classes) != list(classes):
        raise ValueError(f"{model_dir}: classes {clf.classes}, the experiment has {classes}")
    out = {}
    for key, (images, labels) in tests.items():
        batch = clf.fit_batch(list(images))
        if stain is not None and not clf.info.color_normalization:
            batch = np.stack([stain(im) for im in batch])
        probs = np.concatenate([clf.predict_fitted(batch[b:b + 128]) for b in range(0, len(batch), 128)])
        out[key] = classification_report_arrays(labels, probs.argmax(1), classes).to_dict()
    return out


def rescore_domains(cfg: DomainsConfig, tta: str = "d8", *, only: list[str] | None = None) -> DomainsResult:
    """Tables of the saved run models scored with test-time augmentation `tta` (see the module doc)."""
    tta = check_tta(tta)
    torch.set_num_threads(max(1, cfg.threads))
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    sp = out / "splits.json"
    if not sp.is_file():
        raise InputError(sp, "no split manifests: train the experiment first (bloodsmear bench domains CONFIG)")
    classes = resolve_classes(cfg)
    tests, names, stain = _test_crops(cfg, classes, read_json(sp))
    rows, missing = [], []
    for seed in (cfg.seeds or [None]):
        run_dir = out / "runs" if seed is None else out / "runs" / f"seed{seed}"
        results = {}
        for rid in cfg.runs:
            if only is not None and rid not in only:
                continue
            model_dir = run_dir / rid / "model"
            if not any(model_dir.glob("*.safetensors")):
                missing.append(f"{rid} (seed {seed})" if seed is not None else rid)
                continue
            prev = read_json(run_dir / rid / "result.json") if (run_dir / rid / "result.json").is_file() else {}
            test = score_run(model_dir, tests, classes, tta=tta, stain=stain if run_spec(rid).stain else None)
            results[rid] = {"test": test, "epochs_run": prev.get("epochs_run", ""),
                            "train_seconds": prev.get("train_seconds", "")}
            log.info("%s%s with tta %s: %s", rid, "" if seed is None else f" (seed {seed})", tta,
                     {names[k]: round(100 * v["macro_f1"], 2) for k, v in test.items()})
        rows += [{**row, "seed": seed if seed is not None else ""} for row in table_rows(results, names)]
    if missing:
        log.warning("no weights, left out: %s", ", ".join(missing))
    if cfg.seeds and len(cfg.seeds) > 1:
        rows += mean_rows([{**r, "train_seconds": r["train_seconds"] or 0.0} for r in rows])
    dest = out / f"tta_{tta}"
    dest.mkdir(parents=True, exist_ok=True)
    files = write_tables(rows, dest, names)
    write_json_atomic(dest / "results.json", {"rows": rows, "domains": names, "classes": classes, "tta": tta,
                                              "missing": missing, "splits": str(sp)})
    return DomainsResult(rows=rows, out_dir=dest, seconds=time.perf_counter() - t0, files=files)


__all__ = ["rescore_domains", "score_run"]
