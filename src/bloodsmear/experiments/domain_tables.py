"""Tables of the cross-domain experiment: rows per run and tested domain, means over seeds, CSV/Markdown."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from bloodsmear.experiments.domains_config import METRICS, run_spec
from bloodsmear.io import write_text_atomic

log = logging.getLogger(__name__)


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


def summary(rows: list[dict]) -> dict:
    """Headline figures for `--json`: macro F1 per run and tested domain."""
    seeds = {r.get("seed") for r in rows}
    if len(seeds) > 1:  # several seeds: the mean rows
        return {f"{r['run']}@{r['tested_on']}": r["macro_f1"] for r in rows if str(r.get("seed", "")).startswith("mean")}
    return {f"{r['run']}@{r['tested_on']}": r["macro_f1"] for r in rows}


__all__ = ["domain_names", "table_rows", "mean_rows", "write_tables", "summary", "COLUMNS"]
