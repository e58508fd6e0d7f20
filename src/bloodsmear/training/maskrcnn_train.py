"""Training and evaluation of the Mask R-CNN WBC segmenter (torchvision detection-references style).

- Data: BCCD fields of an official split, WBC boxes as annotated; whole-cell masks made inside each
  WBC box classically (`MASK_RECIPES`: the colour rule `classical_wbc_mask` by default, or GrabCut
  from `bloodsmear.training.seg_masks`). Fields are resized
  to the working scale (`rbc_diameter_px` / BCCD's median red-cell box size).
- Transforms take `(image, target)` together; category ids start at 1 (1 = wbc).
- Training runs through the one engine (`engine.train_one_epoch` with the "maskrcnn" objective: the sum
  of torchvision's loss dict); `train_maskrcnn(config_path)` runs "heads first, then all" as in the paper
  (SGD lr 0.001, momentum 0.9; the pretrained MobileNetV2 body frozen for the first `epochs_heads`
  epochs; linear warm-up with torch's LinearLR), checkpoints every epoch (`training.checkpoint`,
  resumable), keeps the best epoch by validation box AP and exports a model folder
  (`bloodsmear.models.maskrcnn`). `evaluate` scores a model on working-scale fields.
- `evaluate_model_folder`: a saved model on a BCCD split in ORIGINAL pixels (box / mask AP, P/R/F1,
  counting error, nucleus-mask coverage, ms per field).

Run: ``bloodsmear segment train configs/segmenter/maskrcnn.yaml`` (``segment export`` after a stopped
training, ``segment eval MODEL --split test --threads 2``, ``segment card MODEL``).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from tqdm import tqdm

from bloodsmear.config import StrictConfig, load_config
from bloodsmear.io import atomic_path, read_image, read_json, write_json_atomic
from bloodsmear.metrics.detection import DetectionReport, coco_ap, evaluate_detection
from bloodsmear.models.maskrcnn import (
    MaskRCNNConfig,
    backbone_parameters,
    build_maskrcnn,
    detections_to_cells,
    save_maskrcnn,
    set_score_threshold,
)
from bloodsmear.models.segmenter_base import load_segmenter
from bloodsmear.preprocess.resize import resize_by
from bloodsmear.training.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from bloodsmear.training.engine import train_one_epoch
from bloodsmear.training.maskrcnn_data import (
    MASK_RECIPES,
    FieldDataset,
    bccd_split,
    collate,
    to_tensors,
    train_transforms,
    with_wbc_masks,
)
from bloodsmear.training.objectives import build_objective
from bloodsmear.types import AnnotatedImage, Cell

log = logging.getLogger(__name__)
RESUMABLE_KEYS = ("max_minutes", "threads", "resume", "export_dir", "epochs_all", "out_dir")  # may change


class MaskRCNNTrainConfig(StrictConfig):
    kind: Literal["maskrcnn"] = "maskrcnn"
    name: str = "wbc-maskrcnn"
    out_dir: str = "runs/maskrcnn"
    data: str | None = None  # BCCD root (VOC layout); default: <data_root>/bccd
    train_split: str = "train"
    val_split: str = "val"
    rbc_diameter_px: float = 50.0  # working scale: typical RBC diameter the model sees
    epochs_heads: int = 2
    epochs_all: int = 8
    lr: float = 0.001
    lr_all: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    batch_size: int = 2
    threads: int = 1
    seed: int = 0
    max_minutes: float | None = None  # stop (after a checkpointed epoch) once past this wall time
    hflip: float = 0.5
    vflip: float = 0.5
    scale_jitter: float = 0.2  # random rescale in [1 - j, 1 + j]
    color_jitter: float = 0.1
    masks: str = "classical"  # how WBC whole-cell masks are made: "grabcut" | "classical" (MASK_RECIPES)
    mask_b_minus_r: float = 5.0
    pretrained_backbone: bool = True
    resume: bool = True
    model: dict[str, Any] = Field(default_factory=dict)  # overrides of MaskRCNNConfig
    export_dir: str | None = None  # default: <out_dir>/model
    limit_fields: int | None = None  # use only the first N fields of each split (smoke runs)
    val_limit: int | None = None  # validate (model selection) on the first N val fields only

    @classmethod
    def load(cls, path: str | Path, overrides: dict | list[str] | None = None) -> "MaskRCNNTrainConfig":
        cfg = load_config(cls, path, overrides)
        MaskRCNNConfig.from_dict(cfg.model, source=f"{path}: model")  # a misspelt model key fails here
        return cfg

    def segmenter_config(self) -> MaskRCNNConfig:
        """The model's config: MaskRCNNConfig defaults, the `model` overrides, the working scale."""
        return MaskRCNNConfig.from_dict({**self.model, "rbc_diameter_px": self.rbc_diameter_px})


# --------------------------------------------------------------------------- engine


def build_maskrcnn_scheduler(optimizer: torch.optim.Optimizer, cfg: MaskRCNNTrainConfig, steps_per_epoch: int):
    """Per-step LR of the optimizer built at `lr`: linear warm-up from 0.1 x over `warmup_iters` steps,
    then `lr_all` from the first "all" epoch on (torch LinearLR / MultiStepLR in a SequentialLR)."""
    sch = torch.optim.lr_scheduler
    heads_steps = cfg.epochs_heads * steps_per_epoch
    warm = max(0, cfg.warmup_iters)
    switch = sch.MultiStepLR(optimizer, milestones=[max(1, heads_steps - warm)] if heads_steps else [],
                             gamma=cfg.lr_all / cfg.lr)
    if not warm:
        return switch
    linear = sch.LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=warm)
    return sch.SequentialLR(optimizer, [linear, switch], milestones=[warm])


@torch.inference_mode()
def evaluate(model, dataset: FieldDataset, cfg: MaskRCNNConfig, device="cpu") -> DetectionReport:
    """Box / mask AP over all detections (score >= 0.05) and P/R/F1 / counting at the model's threshold,
    at the working scale against the dataset's classical-mask ground truth."""
    model.eval()
    set_score_threshold(model, 0.05)
    gts, preds_all = [], []
    for i in tqdm(range(len(dataset)), desc="eval", leave=False, mininterval=5):
        img, t = dataset.items[i]
        x, _ = to_tensors(img, t, i)
        out = model([x.to(device)])[0]
        h, w = img.shape[:2]
        name = dataset.gts[i].path
        gts.append(AnnotatedImage(path=name, width=w, height=h, cells=[
            Cell(label="wbc", box=tuple(b), mask=m.astype(bool), mask_full=True)
            for b, m in zip(t["boxes"].tolist(), t["masks"])]))
        preds_all.append(AnnotatedImage(path=name, width=w, height=h, cells=detections_to_cells(out, cfg, 0.05)))
    set_score_threshold(model, cfg.score_threshold)
    return _report(gts, preds_all, cfg.score_threshold)


def _report(gts, preds_all, thr: float, nucleus_masks=None) -> DetectionReport:
    preds = [AnnotatedImage(path=p.path, width=p.width, height=p.height,
                            cells=[c for c in p.cells if (c.score or 0) >= thr]) for p in preds_all]
    rep = evaluate_detection(gts, preds, nucleus_masks=nucleus_masks)
    rep.box = coco_ap(gts, preds_all, iou_type="bbox", labels=["wbc"])
    rep.mask = coco_ap(gts, preds_all, iou_type="segm", labels=["wbc"])
    return rep


# --------------------------------------------------------------------------- fit


def _set_phase(model, phase: str) -> None:
    for p in backbone_parameters(model):
        p.requires_grad_(phase == "all")


def train_maskrcnn(config_path: str | Path | MaskRCNNTrainConfig) -> Path:
    """Train per the YAML config; returns the exported model folder. Resumes from <out_dir>/checkpoint.pt."""
    cfg = config_path if isinstance(config_path, MaskRCNNTrainConfig) else MaskRCNNTrainConfig.load(config_path)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(out / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root_log = logging.getLogger("bloodsmear")
    root_log.addHandler(fh)
    root_log.setLevel(logging.INFO)
    try:
        t0 = time.time()
        train_ims, val_ims, rbc_px = _splits(cfg)
        factor = cfg.rbc_diameter_px / rbc_px
        log.info("BCCD median RBC %.1f px -> working-scale factor %.3f; %d train, %d val fields",
                 rbc_px, factor, len(train_ims), len(val_ims))
        kw = {"masks": cfg.masks, "b_minus_r": cfg.mask_b_minus_r}
        cache = out / "mask_cache" / f"{cfg.masks}-{cfg.mask_b_minus_r:g}"
        aug = train_transforms(cfg.hflip, cfg.vflip, cfg.scale_jitter, cfg.color_jitter)
        train_ds = FieldDataset(train_ims, factor, aug, cache_dir=cache, **kw)
        val_ds = FieldDataset(val_ims, factor, None, cache_dir=cache, **kw)
        model, mcfg, history, best = fit_maskrcnn(cfg, train_ds, val_ds)
        export = export_best(cfg, model, mcfg, history, best)
        log.info("exported %s (best epoch %d) in %.1f min", export, best["epoch"], (time.time() - t0) / 60)
        return export
    finally:
        root_log.removeHandler(fh)
        fh.close()


def fit_maskrcnn(cfg: MaskRCNNTrainConfig, train_ds, val_ds: FieldDataset, *, progress: bool = False):
    """The epoch loop on ready datasets: (model with the last epoch's weights, its config, history, best).

    OUT/best.pt holds the best epoch's weights (validation box AP); OUT/checkpoint.pt the whole state after
    every epoch (resumed when `cfg.resume`; refused when written for another config)."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    g = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate,
                                         generator=g, num_workers=0)
    mcfg = cfg.segmenter_config()
    model = build_maskrcnn(mcfg, pretrained_backbone=cfg.pretrained_backbone)
    objective = build_objective("maskrcnn")
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr if cfg.epochs_heads else cfg.lr_all,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = build_maskrcnn_scheduler(optimizer, cfg, len(loader))
    history: list[dict] = []
    best = {"epoch": -1, "box_ap": -1.0}
    start = 0
    ckpt_path = out / "checkpoint.pt"
    ck = load_checkpoint(ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler, objective=objective,
                         config=cfg.to_dict(), ignore=RESUMABLE_KEYS) if cfg.resume else None
    if ck is not None:
        history, best, start = ck.extra["history"], ck.extra["best"], ck.epoch
        g.set_state(ck.extra["loader_rng"])
        log.info("resumed from %s after epoch %d", ckpt_path, start - 1)

    total = cfg.epochs_heads + cfg.epochs_all
    for epoch in range(start, total):
        phase = "heads" if epoch < cfg.epochs_heads else "all"
        _set_phase(model, phase)
        te = time.time()
        logs = train_one_epoch(model, objective, loader, optimizer, scheduler=scheduler, epoch=epoch,
                               progress=progress)
        lr = cfg.lr if phase == "heads" else cfg.lr_all
        losses = {k: v for k, v in logs.items() if k != "lr"}
        rep = evaluate(model, val_ds, mcfg)
        row = {"epoch": epoch, "phase": phase, "lr": lr, "masks": cfg.masks, **losses, "val": rep.figures(),
               "seconds": round(time.time() - te, 1)}
        history.append(row)
        log.info("epoch %d (%s): loss %.3f  val box AP %.3f AP50 %.3f mask AP %.3f  (%.0f s)", epoch, phase,
                 losses["loss"], rep.box.ap, rep.box.ap50, rep.mask.ap if rep.mask else float("nan"), row["seconds"])
        if rep.box.ap > best["box_ap"]:
            best = {"epoch": epoch, "box_ap": rep.box.ap, "val": rep.figures()}
            with atomic_path(out / "best.pt") as tmp:
                torch.save(model.state_dict(), tmp)
        save_checkpoint(ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler, objective=objective,
                        epoch=epoch + 1, iteration=(epoch + 1) * len(loader), config=cfg.to_dict(),
                        ignore=RESUMABLE_KEYS, extra={"history": history, "best": best, "loader_rng": g.get_state()})
        write_json_atomic(out / "history.json", history)
        if cfg.max_minutes is not None and (time.time() - t0) / 60 > cfg.max_minutes and epoch + 1 < total:
            log.warning("stopping after epoch %d: past max_minutes=%s (resume to continue)", epoch, cfg.max_minutes)
            break
    return model, mcfg, history, best


def _splits(cfg: MaskRCNNTrainConfig) -> tuple[list[AnnotatedImage], list[AnnotatedImage], float]:
    train_ims, rbc_px = bccd_split(cfg.data, cfg.train_split)
    val_ims, _ = bccd_split(cfg.data, cfg.val_split)
    if cfg.limit_fields:
        train_ims, val_ims = train_ims[: cfg.limit_fields], val_ims[: cfg.limit_fields]
    if cfg.val_limit:
        val_ims = val_ims[: cfg.val_limit]
    return train_ims, val_ims, rbc_px


def export_best(cfg: MaskRCNNTrainConfig, model=None, mcfg: MaskRCNNConfig | None = None,
                history: list[dict] | None = None, best: dict | None = None) -> Path:
    """Write the model folder from <out_dir>/best.pt (history and best epoch from the checkpoint when not
    given): also what to run after stopping a training early."""
    out = Path(cfg.out_dir)
    if history is None or best is None:
        ck = read_checkpoint(out / "checkpoint.pt")
        history, best = ck["history"], ck["best"]
    if mcfg is None:
        mcfg = cfg.segmenter_config()
    if model is None:
        model = build_maskrcnn(mcfg)
    model.load_state_dict(torch.load(out / "best.pt", map_location="cpu", weights_only=True))
    train_ims, val_ims, rbc_px = _splits(cfg)
    mcfg.trained_with = {
        "config": cfg.to_dict(), "data": "BCCD (VOC) official split", "train_split": cfg.train_split,
        "val_split": cfg.val_split, "n_train_fields": len(train_ims), "n_val_fields": len(val_ims),
        "bccd_rbc_diameter_px": rbc_px, "scale_factor": cfg.rbc_diameter_px / rbc_px,
        "masks": MASK_RECIPES[cfg.masks].format(t=cfg.mask_b_minus_r), "best_epoch": best["epoch"],
        "epochs_run": len(history), "val": best.get("val", {}),
    }
    export = Path(cfg.export_dir) if cfg.export_dir else out / "model"
    split = {"dataset": "bccd", "format": "voc", "official_split": True,
             cfg.train_split: [im.path.stem for im in train_ims], cfg.val_split: [im.path.stem for im in val_ims]}
    save_maskrcnn(model, mcfg, export, extra_files={"history.json": history, "split.json": split})
    return export


# --------------------------------------------------------------------------- model folder on a BCCD split


def _to_original(c: Cell, factor: float) -> Cell:
    poly = None if c.polygon is None else c.polygon / factor
    box = tuple(v / factor for v in c.box) if c.box is not None else None
    return Cell(label=c.label, polygon=poly, box=box, score=c.score)


def evaluate_model_folder(folder: str | Path, *, data: str | Path | None = None, split: str = "test",
                          threads: int = 2, limit: int | None = None, masks: str = "classical",
                          cache_dir: str | Path | None = None) -> dict:
    """A saved segmenter on a BCCD split, in ORIGINAL pixels: figures + ms per field (resize + predict).

    Ground truth: BCCD WBC boxes with whole-cell masks made by `masks` (MASK_RECIPES); predictions' masks are their
    polygons mapped back; nucleus coverage uses BCCD's nucleus_masks."""
    torch.set_num_threads(threads)
    seg = load_segmenter(folder)  # a model folder or a shipped name; Mask R-CNN or fast U-Net
    ims, rbc_px = bccd_split(data, split)
    ims = ims[:limit] if limit else ims
    factor = seg.rbc_diameter_px / rbc_px
    gts, preds_all, ms = [], [], []
    thr = seg.score_threshold
    seg.score_threshold = 0.05
    for im in tqdm(ims, desc=f"bccd {split}", mininterval=5):
        rgb = read_image(im.path)
        cache = None if cache_dir is None else Path(cache_dir) / f"{im.path.stem}.npz"
        gts.append(with_wbc_masks(im, rgb, masks, cache=cache))
        t = time.perf_counter()
        cells = [_to_original(c, factor) for c in seg.predict(resize_by(rgb, factor))]
        ms.append(1000 * (time.perf_counter() - t))
        preds_all.append(AnnotatedImage(path=im.path, width=im.width, height=im.height, cells=cells))
    seg.score_threshold = thr
    rep = _report(gts, preds_all, thr, nucleus_masks=[g.nucleus_mask_path for g in gts])
    # timing at the shipped threshold (masks only for kept boxes)
    ms_thr = []
    for im in ims[: min(len(ims), 20)]:
        small = resize_by(read_image(im.path), factor)
        t = time.perf_counter()
        seg.predict(small)
        ms_thr.append(1000 * (time.perf_counter() - t))
    return {"split": split, "n_fields": len(ims), "scale_factor": factor, "threads": threads,
            "score_threshold": thr, **rep.figures(), "ms_per_field": float(np.median(ms_thr)),
            "ms_per_field_eval_threshold_0.05": float(np.median(ms)), "report": rep.to_dict()}


def render_card(folder: str | Path, test: dict | None = None, *, commands: dict[str, str] | None = None,
                notes: str = "") -> str:
    """card.md of a Mask R-CNN model folder from its config.json, history.json and test figures."""
    folder = Path(folder)
    cfg = read_json(folder / "config.json")
    tw = cfg.get("trained_with", {})
    tc = tw.get("config", {})
    hist_path = folder / "history.json"
    history = read_json(hist_path) if hist_path.is_file() else []
    lines = [
        "# wbc-maskrcnn: the paper's Mask R-CNN WBC instance segmenter", "",
        f"torchvision Mask R-CNN, backbone `{cfg['backbone']}` (ImageNet weights, BatchNorm frozen) + 1x1 neck to "
        f"{cfg['neck_channels']} channels, one stride-32 feature map, anchors {cfg['anchor_sizes']} x "
        f"{cfg['aspect_ratios']}, RoIAlign 7 (box) / 14 (mask), box head {cfg['representation_size']}, mask head "
        f"{cfg['mask_layers']}; classes {cfg['classes']}. Detection threshold {cfg['score_threshold']}, mask "
        f"threshold {cfg['mask_threshold']}. Weights fp16 (`{cfg['weights']}`).", "",
        "## Input", "",
        f"RGB uint8 at the working scale: red cells ~{cfg['rbc_diameter_px']:g} px across (no resizing inside the "
        "model); the pipeline estimates the scale and rescales/tiles. Output: WBC instances (box, mask, polygon, "
        "score) per `bloodsmear.models.segmenter_base`.", "",
        "## Data and masks", "",
        f"- {tw.get('data', '?')}: train split `{tw.get('train_split')}` ({tw.get('n_train_fields')} fields), model "
        f"selection on `{tw.get('val_split')}` ({tw.get('n_val_fields')} fields); test split never seen.",
        f"- Scale: BCCD median RBC box {tw.get('bccd_rbc_diameter_px', float('nan')):.1f} px -> factor "
        f"{tw.get('scale_factor', float('nan')):.3f}.",
        f"- Boxes: as annotated. Whole-cell masks: {tw.get('masks', '?')}.", "",
        "## Training", "",
        f"- Paper's schedule: heads first ({tc.get('epochs_heads')} epoch(s), MobileNetV2 body frozen), then all "
        f"({tc.get('epochs_all')} planned); SGD lr {tc.get('lr')} / {tc.get('lr_all')}, momentum {tc.get('momentum')}, "
        f"weight decay {tc.get('weight_decay')}, batch {tc.get('batch_size')}, warm-up {tc.get('warmup_iters')} "
        f"iterations; flips, scale jitter {tc.get('scale_jitter')}, colour jitter {tc.get('color_jitter')}; "
        f"{tc.get('threads')} torch thread(s) on a shared 2-core CPU, wall-clock budget {tc.get('max_minutes')} min.",
        f"- Epochs run: {tw.get('epochs_run')}; best validation box AP at epoch {tw.get('best_epoch')} (shipped).", "",
    ]
    if history:
        lines += ["| epoch | phase | masks | loss | val box AP | val AP50 | val mask AP | s |", "|---|---|---|---|---|---|---|---|"]
        for h in history:
            v = h.get("val", {})
            lines.append(f"| {h['epoch']} | {h['phase']} | {h.get('masks', 'classical')} | {h['loss']:.3f} | "
                         f"{v.get('wbc_box_ap', float('nan')):.3f} | {v.get('wbc_box_ap50', float('nan')):.3f} | "
                         f"{v.get('wbc_mask_ap', float('nan')):.3f} | {h.get('seconds')} |")
        lines.append("")
    if test:
        keys = ["wbc_box_ap50", "wbc_box_ap", "wbc_box_ap75", "wbc_mask_ap", "wbc_mask_ap50", "wbc_precision",
                "wbc_recall", "wbc_f1", "count_mae", "nucleus_coverage", "ms_per_field"]
        lines += [f"## BCCD {test.get('split')} split ({test.get('n_fields')} fields, original pixels)", "",
                  "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {test[k]:.4g} |" for k in keys if isinstance(test.get(k), (int, float))]
        lines += ["", f"P/R/F1 and counting at the {test.get('score_threshold')} threshold; AP over detections >= 0.05; "
                  f"ms per field = resize + predict, median of 20 fields, {test.get('threads')} torch threads, "
                  "as timed by `eval` (niced) on the shared CPU.", ""]
    if commands:
        lines += ["## Commands", ""] + [f"- {k}: `{v}`" for k, v in commands.items()] + [""]
    if notes:
        lines += [notes, ""]
    return "\n".join(lines)
