"""Training of the fast WBC segmenter (`bloodsmear.models.segmenter`): time-budgeted, checkpointed,
resumable (`bloodsmear segment train configs/segmenter/fast.yaml`). `train_segmenter(config)` builds
the fields (seg_data), trains on random crops at random working scales through the one engine
(`engine.train_one_epoch` with the "segmentation" objective, stock torch LR schedulers, checkpoints
of `training.checkpoint`), keeps the best model on the validation split and writes the model folder.

Targets per crop: foreground = any WBC instance; centredness = per instance distance to its border
divided by its maximum (computed on a margin-padded window so cells cut by the crop keep their true
centre). Scale augmentation: red cells log-uniform in [scale_min, scale_max] x the working size.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from pydantic import Field
from scipy import ndimage as ndi

from bloodsmear.config import StrictConfig, load_config
from bloodsmear.errors import InputError
from bloodsmear.io import write_json_atomic
from bloodsmear.metrics.detection import matched_prf
from bloodsmear.models.segmenter import FastSegConfig, FastSegmenter, build_net, normalise
from bloodsmear.settings import data_root as default_root
from bloodsmear.training.checkpoint import load_checkpoint, save_checkpoint
from bloodsmear.training.engine import train_one_epoch
from bloodsmear.training.objectives import build_objective
from bloodsmear.training.seg_data import FieldDataConfig, SegField, build_field_dataset
from bloodsmear.training.seg_objectives import seg_loss  # noqa: F401 - the loss lives with its objective
from bloodsmear.types import AnnotatedImage, Cell

log = logging.getLogger(__name__)
RESUMABLE_KEYS = ("budget_minutes", "max_wall_minutes", "threads", "out_dir", "max_iters")  # may change when resuming
#   (a new max_iters re-plans the schedule at the iteration reached: `replan_scheduler`, the card's training legs)


class SegTrainConfig(StrictConfig):
    kind: Literal["fast-unet"] = "fast-unet"
    out_dir: str = "runs/wbc-seg-fast"
    data_root: str | None = None
    data: dict = Field(default_factory=dict)  # FieldDataConfig fields
    model: FastSegConfig = Field(default_factory=FastSegConfig)
    crop: int = 128
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_iters: int = 6000
    budget_minutes: float = 30.0  # CPU time of this process (both threads count), not wall-clock
    max_wall_minutes: float = 90.0
    threads: int = 2
    scale_min: float = 0.6
    scale_max: float = 1.7
    source_weights: dict[str, float] = Field(default_factory=lambda: {"bccd": 1.0, "lisc": 1.0, "composite": 1.0})
    val_every: int = 250
    val_per_source: int | None = None  # validate on at most this many fields per source (speed)
    ckpt_every: int = 100  # budgets are checked after every gcd(val_every, ckpt_every) iterations
    seed: int = 0

    @classmethod
    def load(cls, path: str | Path, overrides: dict | list[str] | None = None) -> "SegTrainConfig":
        cfg = load_config(cls, path, overrides)
        known = sorted(f.name for f in fields(FieldDataConfig))
        unknown = sorted(set(cfg.data) - set(known))
        if unknown:
            raise InputError(path, f"unknown key 'data.{unknown[0]}' (valid: {', '.join(known)})")
        return cfg

    def field_data_config(self) -> FieldDataConfig:
        d = self.data
        return FieldDataConfig(**{**d, **({"sources": tuple(d["sources"])} if "sources" in d else {})})


# ------------------------------------------------------------------ targets and sampling


def instance_targets(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, centredness) float32 maps of an instance label image."""
    fg = (lab > 0).astype(np.float32)
    cen = np.zeros(lab.shape, np.float32)
    for i, sl in enumerate(ndi.find_objects(lab)):
        if sl is None:
            continue
        ys = slice(max(0, sl[0].start - 1), sl[0].stop + 1)
        xs = slice(max(0, sl[1].start - 1), sl[1].stop + 1)
        m = (lab[ys, xs] == i + 1).astype(np.uint8)
        d = cv2.distanceTransform(np.pad(m, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
        if d.max() > 0:
            cen[ys, xs] = np.where(m > 0, d / d.max(), cen[ys, xs])
    return fg, cen


def colour_jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-8, 8)) % 180
    hsv[..., 1] *= rng.uniform(0.7, 1.3)
    hsv[..., 2] *= rng.uniform(0.85, 1.15)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.0))
    return out


def sample_crop(fld: SegField, cfg: SegTrainConfig, work_rbc: float, store_rbc: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented (image CHW, fg, centre) training crop of `cfg.crop` px at a random working scale."""
    rbc = work_rbc * np.exp(rng.uniform(np.log(cfg.scale_min), np.log(cfg.scale_max)))
    f = rbc / store_rbc
    margin = 12
    win = int(np.ceil((cfg.crop + 2 * margin) / f))
    H, W = fld.labels.shape
    # bias half the crops to contain a WBC
    if fld.labels.max() > 0 and rng.random() < 0.6:
        ys, xs = np.nonzero(fld.labels[::4, ::4])
        j = int(rng.integers(len(ys)))
        cy, cx = ys[j] * 4 + int(rng.integers(-win // 3, win // 3 + 1)), xs[j] * 4 + int(rng.integers(-win // 3, win // 3 + 1))
        y0, x0 = cy - win // 2, cx - win // 2
    else:
        y0, x0 = int(rng.integers(-win // 4, max(1, H - 3 * win // 4))), int(rng.integers(-win // 4, max(1, W - 3 * win // 4)))
    pad = win
    img = cv2.copyMakeBorder(fld.image, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    lab = cv2.copyMakeBorder(fld.labels.astype(np.int32), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    y0 = int(np.clip(y0, -pad, H)) + pad
    x0 = int(np.clip(x0, -pad, W)) + pad
    img, lab = img[y0:y0 + win, x0:x0 + win], lab[y0:y0 + win, x0:x0 + win]
    size = cfg.crop + 2 * margin
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    lab = cv2.resize(lab, (size, size), interpolation=cv2.INTER_NEAREST)
    fg, cen = instance_targets(lab)
    sl = slice(margin, margin + cfg.crop)
    img, fg, cen = img[sl, sl], fg[sl, sl], cen[sl, sl]
    k = int(rng.integers(4))
    img, fg, cen = np.rot90(img, k), np.rot90(fg, k), np.rot90(cen, k)
    if rng.random() < 0.5:
        img, fg, cen = img[:, ::-1], fg[:, ::-1], cen[:, ::-1]
    img = colour_jitter(np.ascontiguousarray(img), rng)
    return normalise(img, {"type": "percentile", "low": 1.0, "high": 99.0, "subsample": 2}), \
        np.ascontiguousarray(fg), np.ascontiguousarray(cen)


def make_batch(fields_by_src: dict[str, list[SegField]], cfg: SegTrainConfig, work_rbc: float, store_rbc: float,
               rng: np.random.Generator):
    srcs = [s for s in fields_by_src if fields_by_src[s] and cfg.source_weights.get(s, 0) > 0]
    p = np.array([cfg.source_weights[s] for s in srcs], float)
    p /= p.sum()
    xs, fgs, cens = [], [], []
    for _ in range(cfg.batch_size):
        s = srcs[int(rng.choice(len(srcs), p=p))]
        fl = fields_by_src[s][int(rng.integers(len(fields_by_src[s])))]
        x, fg, c = sample_crop(fl, cfg, work_rbc, store_rbc, rng)
        xs.append(x)
        fgs.append(fg)
        cens.append(c)
    return (torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(fgs))[:, None],
            torch.from_numpy(np.stack(cens))[:, None])


class CropStream:
    """`n` batches of `make_batch` crops drawn from `rng` (one engine "epoch" of the iteration loop)."""

    def __init__(self, fields_by_src: dict[str, list[SegField]], cfg: SegTrainConfig, work_rbc: float,
                 store_rbc: float, rng: np.random.Generator, n: int):
        self.fields_by_src, self.cfg, self.work_rbc, self.store_rbc, self.rng, self.n = \
            fields_by_src, cfg, work_rbc, store_rbc, rng, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield make_batch(self.fields_by_src, self.cfg, self.work_rbc, self.store_rbc, self.rng)


# ------------------------------------------------------------------ validation


def label_cells(lab: np.ndarray) -> list[Cell]:
    """One box-only "wbc" Cell per instance of a label image, listed last label first: `match_cells`
    gives an exact IoU tie to the later GT cell, so a tie goes to the lower label (the rule every
    recorded validation history was computed with)."""
    boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndi.find_objects(lab) if s is not None]
    return [Cell(label="wbc", box=b) for b in reversed(boxes)]


def validate(seg: FastSegmenter, fields: list[SegField], store_rbc: float) -> dict:
    """Box P/R/F1 at IoU 0.5 (`metrics.detection.matched_prf`, class-agnostic, predictions greedily in
    score order) on validation fields brought to the working scale."""
    f = seg.rbc_diameter_px / store_rbc
    gt, pred = [], []
    for i, fl in enumerate(fields):
        img = cv2.resize(fl.image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        lab = cv2.resize(fl.labels.astype(np.int32), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
        name, (h, w) = Path(f"field-{i}"), img.shape[:2]  # unique: fields pair by position
        gt.append(AnnotatedImage(path=name, width=w, height=h, cells=label_cells(lab)))
        pred.append(AnnotatedImage(path=name, width=w, height=h, cells=seg.predict(img)))
    prf = matched_prf(gt, pred, class_agnostic=True)
    m = next(iter(prf.values()), None)
    if m is None:  # no cell on either side
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 0}
    return {"precision": m.precision, "recall": m.recall, "f1": m.f1, "tp": m.tp, "fp": m.fp, "fn": m.fn}


# ------------------------------------------------------------------ the loop


def cap_per_source(fields: list[SegField], n: int) -> list[SegField]:
    """The first `n` fields of each source, in order."""
    seen: dict[str, int] = {}
    out = []
    for fl in fields:
        if seen.get(fl.source, 0) < n:
            seen[fl.source] = seen.get(fl.source, 0) + 1
            out.append(fl)
    return out


def build_seg_scheduler(optimizer: torch.optim.Optimizer, cfg: SegTrainConfig):
    """Per-iteration LR: linear warm-up over 3 % of `max_iters` ((it + 1) / warm x lr), then cosine decay
    to 2 % of `lr` at `max_iters` (stock torch schedulers; their state is checkpointed)."""
    sch = torch.optim.lr_scheduler
    warm = max(1, int(0.03 * cfg.max_iters))
    linear = sch.LinearLR(optimizer, start_factor=1.0 / warm, end_factor=1.0, total_iters=max(1, warm - 1))
    cosine = sch.CosineAnnealingLR(optimizer, T_max=max(1, cfg.max_iters - warm), eta_min=0.02 * cfg.lr)
    return sch.SequentialLR(optimizer, [linear, cosine], milestones=[warm])


def replan_scheduler(optimizer: torch.optim.Optimizer, cfg: SegTrainConfig, iteration: int):
    """The schedule of `cfg.max_iters`, at `iteration`: resuming with a raised (or lowered) `max_iters`
    continues on the new plan from where the run is, as a pure function of (iteration, max_iters)."""
    for g in optimizer.param_groups:
        g["lr"] = g.get("initial_lr", cfg.lr)
    sched = build_seg_scheduler(optimizer, cfg)
    with warnings.catch_warnings():  # stepping the schedule alone, no optimizer step: torch warns, on purpose here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(iteration):
            sched.step()
    return sched


def train_segmenter(config_path: str | Path | SegTrainConfig, *, out_dir: str | Path | None = None,
                    progress: bool = False) -> dict:
    """Train (or resume) the fast segmenter from a config; returns the summary written to the run folder."""
    cfg = config_path if isinstance(config_path, SegTrainConfig) else SegTrainConfig.load(config_path)
    root = Path(cfg.data_root) if cfg.data_root else default_root()
    dcfg = cfg.field_data_config()
    train_f, train_stats = build_field_dataset(root, "train", dcfg)
    val_f, val_stats = build_field_dataset(root, "val", dcfg)
    if cfg.val_per_source:
        val_f = cap_per_source(val_f, cfg.val_per_source)
    data = {"train": [asdict(s) | {"skipped": len(s.skipped)} for s in train_stats],
            "val": [asdict(s) | {"skipped": len(s.skipped)} for s in val_stats]}
    return fit_segmenter(cfg, train_f, val_f, dcfg.store_rbc_px, out_dir=out_dir, data=data, progress=progress)


def fit_segmenter(cfg: SegTrainConfig, train_f: list[SegField], val_f: list[SegField], store_rbc: float, *,
                  out_dir: str | Path | None = None, data: dict | None = None, progress: bool = False) -> dict:
    """The iteration loop on ready fields (stored with red cells `store_rbc` px wide): engine epochs of
    gcd(val_every, ckpt_every) iterations, validation (best model -> OUT/best), checkpoints
    (`training.checkpoint`, resumed from OUT/checkpoint.pt), CPU and wall-clock budgets."""
    out = Path(out_dir or cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, cfg.threads))
    torch.manual_seed(cfg.seed)
    by_src: dict[str, list[SegField]] = {}
    for fl in train_f:
        by_src.setdefault(fl.source, []).append(fl)
    mcfg = cfg.model
    net = build_net(mcfg).to(memory_format=torch.channels_last)  # as FastSegmenter runs it (resume-exact)
    objective = build_objective("segmentation")
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = build_seg_scheduler(opt, cfg)
    rng = np.random.default_rng(cfg.seed)
    ckpt = out / "checkpoint.pt"
    state = {"best_f1": -1.0, "history": [], "elapsed": 0.0, "cpu": 0.0}
    it = 0
    ck = load_checkpoint(ckpt, model=net, optimizer=opt, scheduler=sched, objective=objective,
                         config=cfg.to_dict(), ignore=RESUMABLE_KEYS)
    if ck is not None:
        it, state = ck.iteration, ck.extra["state"]
        rng.bit_generator.state = ck.extra["data_rng"]
        log.info("resumed from %s at iteration %d", ckpt, it)
        if ck.config is not None and ck.config.get("max_iters") != cfg.max_iters:
            log.info("max_iters %s -> %d: the schedule is re-planned at iteration %d",
                     ck.config.get("max_iters"), cfg.max_iters, it)
            sched = replan_scheduler(opt, cfg, it)
    chunk = math.gcd(cfg.val_every, cfg.ckpt_every)
    t_start = time.time() - state["elapsed"]
    cpu_start = time.process_time() - state["cpu"]

    def within_budget() -> bool:
        return ((time.process_time() - cpu_start) < cfg.budget_minutes * 60
                and (time.time() - t_start) < cfg.max_wall_minutes * 60)

    go = it < cfg.max_iters  # each call trains at least one chunk: re-running a budget-stopped run continues it
    while go:
        n = min(chunk, cfg.max_iters - it)
        logs = train_one_epoch(net, objective, CropStream(by_src, cfg, mcfg.rbc_diameter_px, store_rbc, rng, n),
                               opt, scheduler=sched, epoch=it // chunk, progress=progress)
        it += n
        go = it < cfg.max_iters and within_budget()
        if it % cfg.val_every == 0 or it == cfg.max_iters:
            seg = FastSegmenter(net.eval(), mcfg)
            v = validate(seg, val_f, store_rbc)
            state["history"].append({"iter": it, "loss": logs["loss"], "minutes": (time.time() - t_start) / 60,
                                     "cpu_minutes": (time.process_time() - cpu_start) / 60, **v})
            log.info("iter %d loss %.4f val P %.3f R %.3f F1 %.3f", it, logs["loss"], v["precision"], v["recall"],
                     v["f1"])
            if v["f1"] > state["best_f1"]:
                state["best_f1"], state["best_iter"] = v["f1"], it
                seg.save(out / "best")
        if it % cfg.ckpt_every == 0 or not go:
            state["elapsed"], state["cpu"] = time.time() - t_start, time.process_time() - cpu_start
            save_checkpoint(ckpt, model=net, optimizer=opt, scheduler=sched, objective=objective, iteration=it,
                            config=cfg.to_dict(), ignore=RESUMABLE_KEYS,
                            extra={"state": state, "data_rng": rng.bit_generator.state})
            log.info("iter %d loss %.4f (%.1f min)", it, logs["loss"], state["elapsed"] / 60)
    state["elapsed"], state["cpu"] = time.time() - t_start, time.process_time() - cpu_start
    if not (out / "best" / "config.json").is_file():
        FastSegmenter(net.eval(), mcfg).save(out / "best")
    summary = {"config": cfg.to_dict(), "iterations": it, "minutes": state["elapsed"] / 60,
               "cpu_minutes": state["cpu"] / 60, "best_iter": state.get("best_iter"),
               "best_val": max(state["history"], key=lambda h: h["f1"]) if state["history"] else None,
               "history": state["history"], "data": data or {}}
    write_json_atomic(out / "summary.json", summary)
    return summary
