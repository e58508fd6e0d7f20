"""The cross-domain experiment's config (`kind: domains`): domains, runs, splits, training settings.

    cfg = load_domains_config("configs/domains/pbc_lisc.yaml", {"train": {"epochs": 2}})
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bloodsmear.classes import LISC_CLASSES, PBC_CLASSES, canonical, common_between
from bloodsmear.config import _from_dict, load_config_dict, merge
from bloodsmear.errors import InputError
from bloodsmear.experiments.domain_runs import MapSettings, RunSettings, RunSpec
from bloodsmear.inference.tta import check_tta

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
    d = load_config_dict(path)
    d.pop("kind", None)
    return _from_dict(cls, merge(d, overrides) if overrides else d, path, "")


def load_domains_config(path: str | Path, overrides: dict | None = None) -> DomainsConfig:
    cfg = load_typed_config(DomainsConfig, path, overrides)
    MapSettings(**cfg.maps), RunSettings(**cfg.train)  # unknown keys fail here, naming them
    for r in cfg.runs:
        run_spec(r)
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
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    return Path(os.environ.get("BLOODSMEAR_CACHE", Path.home() / ".cache" / "bloodsmear")) / "domains"


__all__ = ["DomainsConfig", "DomainsResult", "STANDARD_RUNS", "METRICS", "load_domains_config", "run_spec",
           "resolve_classes", "domains_cache_dir"]
