"""The paper's Tables 3/4 as one config: backbones × modes (frozen / fine-tuned) × datasets.

    cfg = load_grid_config("configs/grid/small-cpu.yaml")
    result = run_grid(cfg)            # trains every row not done yet, writes results.csv / results.md

Each dataset is first *prepared* into a class-per-folder directory under the grid's cache:
- ``kind: folder`` — a class-per-folder dataset (PBC, LISC, ...), optionally a seeded subset of
  `per_class` images per class (symbolic links, nothing copied);
- ``kind: cpbc`` — C-PBC: the same seeded subset of a PBC folder, each image cropped around its WBC
  by `bloodsmear.preprocess.crop` (method fast or paper), written as JPEG;
- ``kind: cells`` — single-WBC crops cut from a multi-cell dataset's boxes (e.g. BCCD), via
  `bloodsmear.preprocess.cells`.
Then every row trains with the one training engine (`bloodsmear.training.trainer.train`) on its
prepared folder with the grid's shared settings, and its metrics (macro P/R/F1, accuracy, train time)
are saved as ``rows/<row id>.json``. A row whose JSON exists with the same settings is skipped, so an
interrupted grid resumes where it stopped (and each row's own training resumes from its checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import field_validator, model_validator

from bloodsmear.config import StrictConfig, TrainConfig, load_config, merge, validate_config
from bloodsmear.data import load_dataset
from bloodsmear.data.splits import per_class_sample
from bloodsmear.errors import InputError
from bloodsmear.io import list_images, read_image, read_json, write_image_atomic, write_json_atomic, write_text_atomic
from bloodsmear.outputs.tables import markdown_table, write_csv
from bloodsmear.preprocess.cells import crop_dataset_cells
from bloodsmear.preprocess.crop import crop, crop_box
from bloodsmear.settings import data_root
from bloodsmear.training.trainer import train

log = logging.getLogger(__name__)

MODES = ("frozen", "finetune")
DATASET_KINDS = ("folder", "cpbc", "cells")
METRIC_COLUMNS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")


class GridBackbone(StrictConfig):
    name: str
    pretrained: bool = False
    image_size: int | None = None  # overrides the grid's image_size (e.g. a ViT fixed at 224)


class GridDataset(StrictConfig):
    name: str  # the table's label: "PBC", "C-PBC", "BCCD-WBC"
    source: str  # a folder; relative paths are taken below the data root (BLOODSMEAR_DATA)
    kind: str = "folder"
    format: str = "auto"
    method: str = "fast"  # cpbc crop method
    per_class: int | None = None  # overrides the grid's per_class
    min_per_class: int = 5  # classes with fewer images are left out (a stratified split needs some)
    classes: list[str] | None = None  # keep only these canonical classes
    margin: float = 0.15  # cells: box margin (fraction of the box side)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in DATASET_KINDS:
            raise ValueError(f"unknown kind {kind!r} (valid: {', '.join(DATASET_KINDS)})")
        return kind

    def source_path(self) -> Path:
        p = Path(self.source).expanduser()
        return p if p.is_absolute() else data_root() / p


class GridConfig(StrictConfig):
    name: str
    backbones: list[GridBackbone]  # entries: a mapping, or just the backbone's name
    datasets: list[GridDataset]
    modes: list[str] = list(MODES)
    per_class: int | None = None  # None = every image
    image_size: int = 224
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    seed: int = 42
    split: str = "64-16-20"
    threads: int = 2
    out: str = ""  # default runs/grid/<name>
    cache: str = ""  # default <out>/cache
    train: dict = {}  # extra TrainConfig fields, passed through (checked against TrainConfig on load)

    @field_validator("backbones", mode="before")
    @classmethod
    def _names_are_backbones(cls, v: Any) -> Any:
        return [{"name": str(b)} if isinstance(b, str) else b for b in v] if isinstance(v, list) else v

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, modes: list[str]) -> list[str]:
        bad = [m for m in modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown mode(s) {bad} (valid: {', '.join(MODES)})")
        return modes

    @model_validator(mode="after")
    def _unique_names(self) -> "GridConfig":
        for what, names in (("dataset", [x.name for x in self.datasets]), ("backbone", [x.name for x in self.backbones])):
            if len(set(names)) != len(names):
                raise ValueError(f"{what} names must be unique: {names}")
        return self

    def out_dir(self) -> Path:
        return Path(self.out or f"runs/grid/{self.name}")

    def cache_dir(self) -> Path:
        return Path(self.cache) if self.cache else self.out_dir() / "cache"


@dataclass
class GridRow:
    backbone: str
    pretrained: bool
    mode: str
    dataset: str

    @property
    def id(self) -> str:
        return f"{self.dataset}__{self.backbone}__{self.mode}".replace("/", "_").replace(" ", "_")


@dataclass
class RowResult:
    row: GridRow
    settings: dict
    metrics: dict  # accuracy, macro_precision, macro_recall, macro_f1 (fractions)
    train_time_s: float
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    epochs_run: int = 0
    run_dir: str = ""
    settings_hash: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RowResult":
        d = dict(d)
        d["row"] = GridRow(**d["row"])
        return cls(**d)


@dataclass
class GridResult:
    config: GridConfig
    rows: list[RowResult]
    skipped: list[str]  # row ids not run (done before / failed: message)
    csv_path: Path
    md_path: Path

    def to_dict(self) -> dict:
        return {"name": self.config.name, "rows": len(self.rows), "skipped": self.skipped,
                "csv": str(self.csv_path), "md": str(self.md_path)}


# ---------------------------------------------------------------- config


def grid_config_from_dict(d: dict, *, where: str = "<dict>") -> GridConfig:
    """Validate a grid config mapping (its `train:` pass-through against `TrainConfig` too)."""
    cfg = validate_config(GridConfig, d, where)
    validate_config(TrainConfig, cfg.train, where, prefix="train.")
    return cfg


def load_grid_config(path: str | Path, overrides: dict | list[str] | None = None) -> GridConfig:
    """A grid config file (YAML/JSON, optional `kind: grid` tag); `overrides` win."""
    cfg = load_config(GridConfig, path, overrides)
    validate_config(TrainConfig, cfg.train, path, prefix="train.")
    return cfg


def grid_rows(cfg: GridConfig) -> list[GridRow]:
    """Rows in table order: dataset, then backbone, then mode."""
    return [
        GridRow(b.name, b.pretrained, m, ds.name) for ds in cfg.datasets for b in cfg.backbones for m in cfg.modes
    ]


def row_settings(cfg: GridConfig, row: GridRow) -> dict:
    ds = next(d for d in cfg.datasets if d.name == row.dataset)
    bb = next(b for b in cfg.backbones if b.name == row.backbone)
    return {
        "backbone": row.backbone,
        "pretrained": row.pretrained,
        "mode": row.mode,
        "dataset": row.dataset,
        "dataset_source": ds.source,
        "dataset_kind": ds.kind + (f"/{ds.method}" if ds.kind == "cpbc" else ""),
        "per_class": ds.per_class if ds.per_class is not None else cfg.per_class,
        "image_size": bb.image_size or cfg.image_size,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "split": cfg.split,
        "train": dict(sorted(cfg.train.items())),
    }


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- dataset preparation


def select_subset(paths_by_class: dict[str, list[Path]], per_class: int | None, seed: int) -> dict[str, list[Path]]:
    """A seeded sample of at most `per_class` paths per class (sorted input → reproducible)."""
    flat = [(label, p) for label in sorted(paths_by_class) for p in sorted(paths_by_class[label])]
    keep = per_class_sample([label for label, _ in flat], per_class, seed, stream="per-label")
    out: dict[str, list[Path]] = {label: [] for label in sorted(paths_by_class)}
    for i in keep:
        out[flat[i][0]].append(flat[i][1])
    return out


def _filter_classes(by_class: dict[str, list], ds: GridDataset) -> dict[str, list]:
    out = {}
    for label, items in by_class.items():
        if ds.classes is not None and label not in ds.classes:
            continue
        if len(items) < ds.min_per_class:
            log.warning("%s: class %s has %d images (< %d), left out", ds.name, label, len(items), ds.min_per_class)
            continue
        out[label] = items
    return out


def prepare_dataset(ds: GridDataset, *, per_class: int | None, seed: int, cache: Path) -> tuple[Path, dict[str, int]]:
    """A class-per-folder directory for `ds` (see module doc) and its images per class."""
    src = ds.source_path()
    if not src.exists():
        raise InputError(src, f"dataset {ds.name!r}: source not found")
    key = _hash([ds.to_dict(), str(src.resolve()), per_class, seed])
    dest = cache / f"{ds.name.replace('/', '_')}-{key}"
    done = dest / ".done.json"
    if done.is_file():
        return dest, read_json(done)["counts"]
    if ds.kind == "cells":
        by_class = export_cell_crops(load_dataset(src, ds.format), dest.with_name(dest.name + "-all"), margin=ds.margin)
    else:
        dataset = load_dataset(src, ds.format)
        by_class = {}
        for im in dataset.images:
            if im.label:
                by_class.setdefault(im.label, []).append(im.path)
    chosen = select_subset(_filter_classes(by_class, ds), per_class, seed)
    if not chosen:
        raise InputError(src, f"dataset {ds.name!r}: no class with at least {ds.min_per_class} images")
    counts: dict[str, int] = {}
    skipped = 0
    for label, paths in chosen.items():
        (dest / label).mkdir(parents=True, exist_ok=True)
        n = 0
        for p in paths:
            target = dest / label / p.name
            try:
                if ds.kind == "cpbc":
                    _write_crop(p, target.with_suffix(".jpg"), ds.method)
                elif not target.exists():
                    target.symlink_to(p.resolve())
                n += 1
            except InputError as e:
                skipped += 1
                log.warning("%s: %s (skipped)", ds.name, e)
        counts[label] = n
    if skipped:
        log.warning("%s: %d image(s) skipped", ds.name, skipped)
    write_json_atomic(done, {"dataset": ds.to_dict(), "counts": counts, "skipped": skipped})
    log.info("prepared %s at %s: %s", ds.name, dest, counts)
    return dest, counts


def export_cell_crops(dataset, dest: Path, *, margin: float = 0.15) -> dict[str, list[Path]]:
    """Every labelled WBC of a multi-cell dataset as a crop `dest/<class>/<stem>_<k>.jpg`
    (`bloodsmear crop cells`: `preprocess.cells.crop_dataset_cells`); returns {class: [crop paths]}."""
    s = crop_dataset_cells(dataset, dest, pad=margin, progress=False)
    if s.skipped:
        log.warning("%s: %d image(s)/cell(s) skipped while cropping cells", dataset.name, s.skipped)
    return {d.name: list_images(d) for d in sorted(Path(dest).iterdir()) if d.is_dir()} if Path(dest).is_dir() else {}


def _write_crop(src: Path, dest: Path, method: str) -> None:
    if dest.exists():
        return
    rgb = read_image(src)
    write_image_atomic(dest, crop(rgb, crop_box(rgb, method)), quality=95)


# ---------------------------------------------------------------- running


Runner = Callable[..., RowResult]  # (cfg, row, data_dir, run_dir, *, restart: bool) -> RowResult


def row_train_config(cfg: GridConfig, row: GridRow, data_dir: Path, run_dir: Path):
    """The `TrainConfig` of one row: the grid's shared settings, then its `train:` pass-through keys."""
    ds = next(d for d in cfg.datasets if d.name == row.dataset)
    s = row_settings(cfg, row)
    base = {
        "name": f"{cfg.name}/{row.id}",
        "data": {"dataset": str(Path(data_dir).resolve()), "format": "pbc" if ds.format == "pbc" else "folders",
                 "scheme": cfg.split, "split_seed": cfg.seed, "image_size": s["image_size"]},
        "model": {"backbone": row.backbone, "mode": row.mode, "pretrained": row.pretrained},
        "optim": {"lr": cfg.lr},
        "batch_size": cfg.batch_size,
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "threads": cfg.threads or 2,
        "out_dir": str(run_dir),
    }
    return TrainConfig.from_dict(merge(base, cfg.train), source=f"grid {cfg.name}, row {row.id}")


def train_row(cfg: GridConfig, row: GridRow, data_dir: Path, run_dir: Path, *, restart: bool = False) -> RowResult:
    """Train and test one row with the one training engine (`bloodsmear.training.trainer.train`);
    an interrupted row resumes from its checkpoint in `run_dir` unless `restart`."""
    tr = train(row_train_config(cfg, row, data_dir, run_dir), restart=restart, progress=False, write_card=False)
    if tr.test is None:
        raise InputError(data_dir, "the split left no test images: raise per_class")
    n = read_json(Path(run_dir) / "result.json")
    return RowResult(row=row, settings={}, metrics=tr.test.headline(), train_time_s=tr.train_seconds,
                     n_train=n.get("n_train", 0), n_val=n.get("n_val", 0), n_test=n.get("n_test", 0),
                     epochs_run=tr.epochs_run, run_dir=str(run_dir))


def run_grid(
    cfg: GridConfig,
    *,
    runner: Runner | None = None,
    only: list[str] | None = None,
    rerun: bool = False,
) -> GridResult:
    """Run every row not yet done (or all with `rerun`), then write results CSV + Markdown.

    `only`: row ids (or substrings of them) to run; the table still lists every finished row.
    A failing row is logged and recorded in `skipped`; the grid goes on with the next row.
    """
    runner = runner or train_row
    out = cfg.out_dir()
    (out / "rows").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "grid_config.json", cfg.to_dict())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    prepared: dict[str, tuple[Path, dict[str, int]]] = {}
    skipped: list[str] = []
    rows = grid_rows(cfg)
    for i, row in enumerate(rows, 1):
        settings = row_settings(cfg, row)
        h = _hash(settings)
        rec = out / "rows" / f"{row.id}.json"
        if only and not any(o in row.id for o in only):
            continue
        restart = rerun
        if rec.is_file() and not rerun:
            old = read_json(rec)
            if old.get("settings_hash") == h:
                log.info("[%d/%d] %s: done before, skipped", i, len(rows), row.id)
                skipped.append(f"{row.id}: done before")
                continue
            log.info("[%d/%d] %s: settings changed, run again", i, len(rows), row.id)
            restart = True  # its checkpoint belongs to the old settings
        ds = next(d for d in cfg.datasets if d.name == row.dataset)
        try:
            if ds.name not in prepared:
                pc = ds.per_class if ds.per_class is not None else cfg.per_class
                prepared[ds.name] = prepare_dataset(ds, per_class=pc, seed=cfg.seed, cache=cfg.cache_dir())
            data_dir, _ = prepared[ds.name]
            log.info("[%d/%d] %s: training", i, len(rows), row.id)
            t0 = time.perf_counter()
            res = runner(cfg, row, data_dir, out / "runs" / row.id, restart=restart)
            if not res.train_time_s:
                res.train_time_s = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - one failed row must not stop the grid
            log.error("[%d/%d] %s failed: %s: %s", i, len(rows), row.id, type(e).__name__, e)
            skipped.append(f"{row.id}: failed: {type(e).__name__}: {e}")
            continue
        res.settings, res.settings_hash = settings, h
        write_json_atomic(rec, res.to_dict())
        log.info("[%d/%d] %s: macro F1 %.4f, acc %.4f, %.0f s", i, len(rows), row.id,
                 res.metrics.get("macro_f1", float("nan")), res.metrics.get("accuracy", float("nan")), res.train_time_s)
    results = collect_results(cfg)
    csv_path, md_path = write_results(cfg, results)
    return GridResult(config=cfg, rows=results, skipped=skipped, csv_path=csv_path, md_path=md_path)


def collect_results(cfg: GridConfig) -> list[RowResult]:
    """Finished rows (current settings only) in table order."""
    out = []
    for row in grid_rows(cfg):
        rec = cfg.out_dir() / "rows" / f"{row.id}.json"
        if rec.is_file():
            r = RowResult.from_dict(read_json(rec))
            if r.settings_hash == _hash(row_settings(cfg, row)):
                out.append(r)
    return out


# ---------------------------------------------------------------- tables

TABLE_COLUMNS = (
    "dataset", "backbone", "weights", "mode", "accuracy", "macro_precision", "macro_recall", "macro_f1",
    "train_time_s", "epochs", "image_size", "per_class", "n_train", "n_val", "n_test", "batch_size", "lr", "seed",
)


def result_table(results: list[RowResult]) -> tuple[list[str], list[list]]:
    """Columns and rows: metrics in percent (2 decimals), every row's settings."""
    rows = []
    for r in results:
        s = r.settings
        m = {k: round(100 * float(r.metrics[k]), 2) if k in r.metrics else "" for k in METRIC_COLUMNS}
        rows.append([
            r.row.dataset, r.row.backbone, "imagenet" if r.row.pretrained else "random init", r.row.mode,
            m["accuracy"], m["macro_precision"], m["macro_recall"], m["macro_f1"],
            round(r.train_time_s, 1), r.epochs_run or s.get("epochs"), s.get("image_size"),
            s.get("per_class") if s.get("per_class") is not None else "all",
            r.n_train, r.n_val, r.n_test, s.get("batch_size"), s.get("lr"), s.get("seed"),
        ])
    return list(TABLE_COLUMNS), rows


def write_results(cfg: GridConfig, results: list[RowResult]) -> tuple[Path, Path]:
    cols, rows = result_table(results)
    out = cfg.out_dir()
    csv_path = write_csv(out / "results.csv", cols, rows)
    shared = (f"Grid `{cfg.name}`: split {cfg.split} (seed {cfg.seed}), metrics on the test part in %, "
              f"{cfg.image_size} px, {cfg.epochs} epoch(s), batch {cfg.batch_size}, lr {cfg.lr}; "
              f"`random init` rows had no pretrained weights available here.\n\n")
    md_path = write_text_atomic(out / "results.md", f"# {cfg.name}\n\n" + shared + markdown_table(cols, rows))
    return csv_path, md_path
