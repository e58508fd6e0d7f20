"""The cross-domain experiment's config (`kind: domains`): domains, runs, splits, training settings.

    cfg = load_domains_config("configs/domains/pbc_lisc.yaml", {"train": {"epochs": 2}})
    cfg.train.epochs, cfg.maps.backbone     # typed sections (`domain_runs.RunSettings` / `MapSettings`)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import field_validator

from bloodsmear.classes import LISC_CLASSES, PBC_CLASSES, canonical, common_between
from bloodsmear.config import StrictConfig, load_config, validate_config
from bloodsmear.errors import InputError
from bloodsmear.experiments.domain_data import DOMAINS, DomainSpec
from bloodsmear.experiments.domain_runs import MapSettings, RunSettings, RunSpec
from bloodsmear.inference.tta import check_tta
from bloodsmear.settings import cache_dir

log = logging.getLogger(__name__)

STANDARD_RUNS = ("src_A", "src_B", "mix", "dann_A_B", "dann_B_A", "stain_A", "stain_dann_A_B", "stain_B",
                 "stain_dann_B_A")
METRICS = ("macro_precision", "macro_recall", "macro_f1", "accuracy")


class DomainsConfig(StrictConfig):
    name: str = "pbc_lisc"
    domains: dict[str, dict] = {"A": {"name": "pbc", "max_per_class": 300}, "B": {"name": "lisc"}}
    classes: list[str] | None = None  # None -> classes common to both domains' vocabularies
    image_size: int = 96
    scheme: str = "64-16-20"
    split_seed: int = 42
    runs: list[str] = list(STANDARD_RUNS)
    maps: MapSettings = MapSettings()  # backbone, train_from, views, augment, aug_seed, init_from
    train: RunSettings = RunSettings()  # epochs, batch_size, lr, dann {...}, ...
    stain_reference: str = "A"  # the domain whose stain statistics the stain runs normalise to
    tsne_max_per_domain: int = 300
    threads: int = 1
    device: str = "cpu"  # where runs train: cpu | cuda | auto (crops and cached maps stay on the CPU)
    seeds: list[int] | None = None  # repeat every run with these training seeds (runs/seed<k>/); tables add mean/sd
    eval_tta: list[str] = []  # also score the runs with these test-time augmentations
    #                           (none | flip | d8) -> out_dir/tta_<mode>/ tables
    out_dir: str = "runs/domains/pbc_lisc"
    cache_dir: str | None = None  # None -> ~/.cache/bloodsmear/domains

    @field_validator("domains")
    @classmethod
    def _known_domain_keys(cls, domains: dict[str, dict]) -> dict[str, dict]:
        for key, d in domains.items():
            check_domain(d, f"domains.{key}")
        return domains

    @field_validator("runs")
    @classmethod
    def _known_runs(cls, runs: list[str]) -> list[str]:
        for r in runs:
            run_spec(r)
        return runs

    @field_validator("eval_tta")
    @classmethod
    def _known_tta(cls, modes: list[str]) -> list[str]:
        for mode in modes:
            check_tta(mode)
        return modes


def check_domain(d: dict, where: str) -> None:
    """ValueError naming the dotted key unless `d` is a valid `DomainSpec` (a name and known settings)."""
    try:
        validate_config(DomainSpec, d, prefix=f"{where}.")
    except InputError as e:
        problem = e.problem
        if "name" not in d and not problem.startswith("unknown key"):
            problem = f"{where} needs a name ({', '.join(DOMAINS)})"
        raise ValueError(problem) from None


def load_domains_config(path: str | Path, overrides: dict | list[str] | None = None) -> DomainsConfig:
    """A `kind: domains` config file; `overrides` (nested dict or `["train.epochs=2"]`) win."""
    return load_config(DomainsConfig, path, overrides)


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
    return Path(cfg.cache_dir) if cfg.cache_dir else cache_dir("domains")


__all__ = ["DomainsConfig", "DomainsResult", "STANDARD_RUNS", "METRICS", "load_domains_config", "run_spec",
           "resolve_classes", "domains_cache_dir"]
