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

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bloodsmear.errors import InputError
from bloodsmear.experiments.domains import run_domains
from bloodsmear.experiments.domains_config import DomainsConfig, load_typed_config
from bloodsmear.training.trainer import register_train_kind


@dataclass
class DannConfig:
    name: str = "dann"
    source: dict = field(default_factory=lambda: {"name": "pbc", "max_per_class": 300})
    target: dict = field(default_factory=lambda: {"name": "lisc"})
    classes: list[str] | None = None
    image_size: int = 96
    scheme: str = "64-16-20"
    split_seed: int = 42
    objective: str = "dann"  # dann | supervised
    stain: bool = False
    maps: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    threads: int = 1
    device: str = "cpu"  # cpu | cuda | auto
    out_dir: str = "runs/dann"
    cache_dir: str | None = None


@dataclass
class DannTrainResult:
    run: str
    model_dir: Path
    test: dict  # domain name -> headline metrics
    train_seconds: float

    def to_dict(self) -> dict:
        return {"run": self.run, "model_dir": str(self.model_dir), "train_seconds": self.train_seconds,
                **{f"test_{dom}": m for dom, m in self.test.items()}}


def load_dann_config(path: str | Path, overrides: dict | None = None) -> DannConfig:
    cfg = load_typed_config(DannConfig, path, overrides)
    if cfg.objective not in ("dann", "supervised"):
        raise InputError(path, f"objective must be dann or supervised, got {cfg.objective!r}")
    return cfg


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


@register_train_kind("dann")
def _train_dann_file(path, overrides: dict | None = None, *, restart: bool = False, progress: bool = True):
    over = dict(overrides or {})  # `bloodsmear train` options: --epochs, --pretrained, --out-dir
    train = {}
    if "epochs" in over:
        train["epochs"] = over.pop("epochs")
    if "pretrained" in (over.get("model") or {}):
        train["pretrained"] = over.pop("model")["pretrained"]
    if train:
        over["train"] = train
    cfg = load_dann_config(path, over)
    if restart:
        shutil.rmtree(Path(cfg.out_dir) / "runs" / run_id(cfg), ignore_errors=True)
    return train_dann(cfg, progress=progress)
