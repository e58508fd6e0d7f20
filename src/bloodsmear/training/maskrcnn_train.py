"""Training and evaluation of the Mask R-CNN WBC segmenter (torchvision detection-references style).

- Data: BCCD fields of an official split, WBC boxes as annotated; whole-cell masks made inside each
  WBC box classically (`MASK_RECIPES`: the colour rule `classical_wbc_mask` by default, or GrabCut
  from `bloodsmear.training.seg_masks`). Fields are resized
  to the working scale (`rbc_diameter_px` / BCCD's median red-cell box size).
- Transforms take `(image, target)` together; category ids start at 1 (1 = wbc).
- Engine: `train_one_epoch` / `evaluate`; `train_maskrcnn(config_path)` runs "heads first, then all"
  as in the paper (SGD lr 0.001, momentum 0.9; the pretrained MobileNetV2 body frozen for the first
  `epochs_heads` epochs), checkpoints every epoch (resumable), keeps the best epoch by validation box AP
  and exports a model folder (`bloodsmear.models.maskrcnn`).
- `evaluate_model_folder`: a saved model on a BCCD split in ORIGINAL pixels (box / mask AP, P/R/F1,
  counting error, nucleus-mask coverage, ms per field).

Run: ``python -m bloodsmear.training.maskrcnn_train train configs/segmenter/maskrcnn.yaml`` and
``python -m bloodsmear.training.maskrcnn_train eval MODEL_DIR --split test --threads 2``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml
from tqdm import tqdm

from bloodsmear.cli.common import emit_json, setup_logging
from bloodsmear.io import atomic_path, read_image, write_json_atomic, write_text_atomic
from bloodsmear.metrics.detection import DetectionReport, coco_ap, evaluate_detection
from bloodsmear.models.maskrcnn import (
    MaskRCNNConfig,
    backbone_parameters,
    build_maskrcnn,
    detections_to_cells,
    load_maskrcnn,
    save_maskrcnn,
    set_score_threshold,
)
from bloodsmear.training.maskrcnn_data import (
    MASK_RECIPES,
    FieldDataset,
    bccd_split,
    collate,
    resize_rgb,
    to_tensors,
    train_transforms,
    with_wbc_masks,
)
from bloodsmear.types import AnnotatedImage, Cell

log = logging.getLogger("bloodsmear.training.maskrcnn_train")  # also under `python -m`

@dataclass
class MaskRCNNTrainConfig:
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
    model: dict[str, Any] = field(default_factory=dict)  # overrides of MaskRCNNConfig
    export_dir: str | None = None  # default: <out_dir>/model
    limit_fields: int | None = None  # use only the first N fields of each split (smoke runs)
    val_limit: int | None = None  # validate (model selection) on the first N val fields only

    @classmethod
    def load(cls, path: str | Path) -> "MaskRCNNTrainConfig":
        d = yaml.safe_load(Path(path).read_text()) or {}
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{path}: unknown Mask R-CNN training keys {unknown}")
        return cls(**d)


# --------------------------------------------------------------------------- engine


def train_one_epoch(model, optimizer, loader, device, epoch: int, *, warmup_iters: int = 0,
                    base_lr: float | None = None, global_step: int = 0) -> dict[str, float]:
    """One pass over `loader`; returns the mean of each loss term (and "loss")."""
    model.train()
    sums: dict[str, float] = {}
    n = 0
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, mininterval=5)
    for images, targets in bar:
        step = global_step + n
        if base_lr is not None and warmup_iters and step < warmup_iters:
            for g in optimizer.param_groups:
                g["lr"] = base_lr * (0.1 + 0.9 * step / warmup_iters)
        images = [im.to(device) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, step {n}: {losses}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        sums["loss"] = sums.get("loss", 0.0) + loss.item()
        n += 1
        bar.set_postfix(loss=f"{sums['loss'] / n:.3f}")
    if base_lr is not None:
        for g in optimizer.param_groups:
            g["lr"] = base_lr
    return {k: v / max(1, n) for k, v in sums.items()}


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


def train_maskrcnn(config_path: str | Path) -> Path:
    """Train per the YAML config; returns the exported model folder. Resumes from <out_dir>/checkpoint.pt."""
    cfg = MaskRCNNTrainConfig.load(config_path)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(out / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("bloodsmear").addHandler(fh)
    logging.getLogger("bloodsmear").setLevel(logging.INFO)
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
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
    g = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate,
                                         generator=g, num_workers=0)

    mcfg = MaskRCNNConfig.from_dict({**asdict(MaskRCNNConfig()), **cfg.model, "rbc_diameter_px": cfg.rbc_diameter_px})
    model = build_maskrcnn(mcfg, pretrained_backbone=cfg.pretrained_backbone)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    history: list[dict] = []
    best = {"epoch": -1, "box_ap": -1.0}
    start = 0
    ckpt_path = out / "checkpoint.pt"
    if cfg.resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        history, best, start = ck["history"], ck["best"], ck["epoch"] + 1
        log.info("resumed from %s after epoch %d", ckpt_path, ck["epoch"])

    total = cfg.epochs_heads + cfg.epochs_all
    for epoch in range(start, total):
        phase = "heads" if epoch < cfg.epochs_heads else "all"
        _set_phase(model, phase)
        lr = cfg.lr if phase == "heads" else cfg.lr_all
        te = time.time()
        losses = train_one_epoch(model, optimizer, loader, "cpu", epoch, warmup_iters=cfg.warmup_iters,
                                 base_lr=lr, global_step=epoch * len(loader))
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
        with atomic_path(ckpt_path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                        "history": history, "best": best, "config": asdict(cfg)}, tmp)
        write_json_atomic(out / "history.json", history)
        if cfg.max_minutes is not None and (time.time() - t0) / 60 > cfg.max_minutes and epoch + 1 < total:
            log.warning("stopping after epoch %d: past max_minutes=%s (resume to continue)", epoch, cfg.max_minutes)
            break

    export = export_best(cfg, model, mcfg, history, best)
    log.info("exported %s (best epoch %d) in %.1f min", export, best["epoch"], (time.time() - t0) / 60)
    return export


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
        ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
        history, best = ck["history"], ck["best"]
    if mcfg is None:
        mcfg = MaskRCNNConfig.from_dict({**asdict(MaskRCNNConfig()), **cfg.model, "rbc_diameter_px": cfg.rbc_diameter_px})
    if model is None:
        model = build_maskrcnn(mcfg)
    model.load_state_dict(torch.load(out / "best.pt", map_location="cpu", weights_only=True))
    train_ims, val_ims, rbc_px = _splits(cfg)
    mcfg.trained_with = {
        "config": asdict(cfg), "data": "BCCD (VOC) official split", "train_split": cfg.train_split,
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
    seg = load_maskrcnn(folder)
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
        cells = [_to_original(c, factor) for c in seg.predict(resize_rgb(rgb, factor))]
        ms.append(1000 * (time.perf_counter() - t))
        preds_all.append(AnnotatedImage(path=im.path, width=im.width, height=im.height, cells=cells))
    seg.score_threshold = thr
    rep = _report(gts, preds_all, thr, nucleus_masks=[g.nucleus_mask_path for g in gts])
    # timing at the shipped threshold (masks only for kept boxes)
    ms_thr = []
    for im in ims[: min(len(ims), 20)]:
        small = resize_rgb(read_image(im.path), factor)
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
    cfg = json.loads((folder / "config.json").read_text())
    tw = cfg.get("trained_with", {})
    tc = tw.get("config", {})
    hist_path = folder / "history.json"
    history = json.loads(hist_path.read_text()) if hist_path.is_file() else []
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


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bloodsmear.training.maskrcnn_train")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("config")
    x = sub.add_parser("export", help="write the model folder from best.pt of a stopped training")
    x.add_argument("config")
    x.add_argument("--to", default=None, help="model folder (default: the config's export_dir)")
    e = sub.add_parser("eval")
    e.add_argument("model")
    e.add_argument("--split", default="test")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--data", default=None)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--masks", default="classical", choices=sorted(MASK_RECIPES))
    e.add_argument("--cache-dir", default=None, help="cache of the GT masks (.npz per field)")
    e.add_argument("--out", default=None, help="also write the figures JSON here")
    c = sub.add_parser("card")
    c.add_argument("model")
    c.add_argument("--test-json", default=None, help="figures written by `eval --out`")
    c.add_argument("--notes", default="", help="a markdown file appended to the card")
    a = ap.parse_args(argv)

    setup_logging()
    if a.cmd == "train":
        emit_json({"model": str(train_maskrcnn(a.config))})
    elif a.cmd == "export":
        cfg = MaskRCNNTrainConfig.load(a.config)
        if a.to:
            cfg.export_dir = a.to
        emit_json({"model": str(export_best(cfg))})
    elif a.cmd == "card":
        test = json.loads(Path(a.test_json).read_text()) if a.test_json else None
        notes = Path(a.notes).read_text() if a.notes else ""
        cmds = {"train": "python -m bloodsmear.training.maskrcnn_train train configs/segmenter/maskrcnn.yaml",
                "test": f"python -m bloodsmear.training.maskrcnn_train eval {a.model} --split test --threads 2"}
        write_text_atomic(Path(a.model) / "card.md", render_card(a.model, test, commands=cmds, notes=notes))
        emit_json({"card": str(Path(a.model) / "card.md")})
    else:
        res = evaluate_model_folder(a.model, data=a.data, split=a.split, threads=a.threads, limit=a.limit,
                                    masks=a.masks, cache_dir=a.cache_dir)
        if a.out:
            write_json_atomic(a.out, res)
        emit_json({k: v for k, v in res.items() if k != "report"})


if __name__ == "__main__":  # pragma: no cover
    main()
