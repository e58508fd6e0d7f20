"""`bloodsmear train CONFIG` for `kind: dann` configs: one domain-adaptation run -> one model folder.

    kind: dann
    source: {name: pbc, root: pbc224, max_per_class: 300}   # labelled
    target: {name: lisc, root: lisc, crop_side: 160}        # its labels are never used for training
    objective: dann            # or supervised (the source-only baseline of the same setting)
    stain: false               # Reinhard-normalise both domains to the source's stain first
    maps: {...}  train: {...}  # as in configs/domains/*.yaml (`bloodsmear.experiments.domains`)

The run is the `dann_A_B` (or `src_A`, `stain_*`) run of a two-domain `DomainsConfig` (A = source,
B = target), trained by the one engine (`trainer.fit`) with the `dann` objective; the model folder is
``out_dir/runs/<run>/model`` and it is scored on the held-out test split of both domains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationInfo, field_validator

from bloodsmear.config import StrictConfig, load_config
from bloodsmear.experiments.domains import run_domains
from bloodsmear.experiments.domain_runs import MapSettings, RunSettings
from bloodsmear.experiments.domains_config import DomainsConfig, check_domain


class DannConfig(StrictConfig):
    name: str = "dann"
    source: dict = {"name": "pbc", "max_per_class": 300}  # a domain (as under `domains:` of a domains config)
    target: dict = {"name": "lisc"}
    classes: list[str] | None = None
    image_size: int = 96
    scheme: str = "64-16-20"
    split_seed: int = 42
    objective: Literal["dann", "supervised"] = "dann"
    stain: bool = False
    maps: MapSettings = MapSettings()
    train: RunSettings = RunSettings()
    threads: int = 1
    device: str = "cpu"  # cpu | cuda | auto
    out_dir: str = "runs/dann"
    cache_dir: str | None = None

    @field_validator("source", "target")
    @classmethod
    def _known_domain_keys(cls, d: dict, info: ValidationInfo) -> dict:
        check_domain(d, info.field_name)
        return d


@dataclass
class DannTrainResult:
    run: str
    model_dir: Path
    test: dict  # domain name -> headline metrics
    train_seconds: float

    def to_dict(self) -> dict:
        return {"run": self.run, "model_dir": str(self.model_dir), "train_seconds": self.train_seconds,
                **{f"test_{dom}": m for dom, m in self.test.items()}}


def load_dann_config(path: str | Path, overrides: dict | list[str] | None = None) -> DannConfig:
    return load_config(DannConfig, path, overrides)


def run_id(cfg: DannConfig) -> str:
    base = "dann_A_B" if cfg.objective == "dann" else "A"
    if cfg.objective == "dann":
        return ("stain_" if cfg.stain else "") + base
    return "stain_A" if cfg.stain else "src_A"


def train_dann(cfg: DannConfig, *, progress: bool = True) -> DannTrainResult:
    rid = run_id(cfg)
    dc = DomainsConfig(name=cfg.name, domains={"A": cfg.source, "B": cfg.target}, classes=cfg.classes,
                       image_size=cfg.image_size, scheme=cfg.scheme, split_seed=cfg.split_seed, runs=[rid],
                       maps=cfg.maps, train=cfg.train, stain_reference="A", threads=cfg.threads, device=cfg.device,
                       out_dir=cfg.out_dir, cache_dir=cfg.cache_dir)
    res = run_domains(dc, progress=progress)
    test = {r["tested_on"]: {k: r[k] for k in ("macro_f1", "macro_precision", "macro_recall", "accuracy", "n")}
            for r in res.rows}
    secs = res.rows[0]["train_seconds"] if res.rows else 0.0
    return DannTrainResult(run=rid, model_dir=Path(cfg.out_dir) / "runs" / rid / "model", test=test, train_seconds=secs)
