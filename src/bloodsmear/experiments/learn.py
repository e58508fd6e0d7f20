"""`bloodsmear learn`: fine-tune a classifier on a few cells a person labelled; a lab model folder out.

    cells = read_labelled(["review/annotations.xml", "my_crops/"], images="fields/")
    res = learn(cells, "models/my-lab", base="pbc-screen-stain", epochs=15, seed=0)
    res.train_after.accuracy, res.val_after, res.out_dir

Inputs (`experiments.learn_data`): CVAT XML, COCO JSON, a class-per-folder of single-cell crops, or an
analyze output folder (each mask's `class_name` as the label); field cells are cut as the pipeline cuts
them, crops used as they are. Every crop then goes through the base model's own input path
(`CellClassifier.fit_batch`, then its stain normaliser), so the lab model sees its cells as the base
sees them at inference.

Classes: each label is read with `classes.canonical` (optionally moved to a `level`: fine or group).
The model's outputs are the base's classes, in the base's order, then every labelled class the base lacks
(sorted): the head grows, a new row starting from its group's row where the base has the group
(myelocyte from ig), else from the head's initialisation. Base classes nobody labelled stay outputs (so
the folder stays a drop-in screening model for the pipeline) but are never a training target.

Training (the one engine, `trainer.fit`, objective "supervised" with label smoothing 0.1): the base's
backbone below `train_from` stays frozen and is run once per crop and per augmented view (`feature_cache`,
augment preset `augment`, default "light": flips, quarter turns, colour jitter); the last block(s) and the
head train with Adam + cosine, class-balanced batches, BatchNorm statistics kept as the base's (few cells
make poor batch statistics). With at least `VAL_MIN_PER_CLASS` cells in every class a seeded
`VAL_FRACTION` of each class is held out (the epoch with the best validation macro F1 is kept), else all
cells train, the last epoch is kept, and the card says so.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bloodsmear.classes import canonical, group_of, is_known
from bloodsmear.errors import InputError
from bloodsmear.experiments.learn_data import LabelledCells, read_labelled
from bloodsmear.inference.classify import CellClassifier
from bloodsmear.io import write_json_atomic
from bloodsmear.metrics.classification import ClassificationReport
from bloodsmear.models.artifact import ModelInfo, load_model, save_model
from bloodsmear.models.card import (
    card_footer,
    card_header,
    command_line,
    metrics_section,
    split_table,
)
from bloodsmear.models.classifier import WBCClassifier
from bloodsmear.models.folder import file_sha256
from bloodsmear.models.registry import create_backbone
from bloodsmear.preprocess.augment import get_augment
from bloodsmear.training.engine import evaluate
from bloodsmear.training.feature_cache import MapLoader, TailModel, cached_views
from bloodsmear.training.objectives import build_objective
from bloodsmear.training.trainer import fit

log = logging.getLogger(__name__)

DEFAULT_BASE = "pbc-screen-stain"  # the pipeline's screening model
MIN_PER_CLASS = 3  # fewer labelled cells in a class: an error
VAL_MIN_PER_CLASS = 5  # every class this large: a validation part is held out
VAL_FRACTION = 0.2


@dataclass
class LearnResult:
    out_dir: Path
    classes: list[str]
    new_classes: list[str]
    counts: dict[str, dict[str, int]]  # {"train"|"val": {class: n}}
    train_before: ClassificationReport
    train_after: ClassificationReport
    val_before: ClassificationReport | None
    val_after: ClassificationReport | None
    train_seconds: float
    skipped: list[str]

    def to_dict(self) -> dict:
        def h(r):
            return None if r is None else r.headline()

        return {"out_dir": str(self.out_dir), "classes": self.classes, "new_classes": self.new_classes,
                "counts": self.counts, "train_before": h(self.train_before), "train_after": h(self.train_after),
                "val_before": h(self.val_before), "val_after": h(self.val_after),
                "train_seconds": round(self.train_seconds, 1), "skipped": len(self.skipped)}


# ---------------------------------------------------------------------------------------------- model


def output_classes(base_classes: Sequence[str], labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the lab model's classes: the base's then the new ones sorted, the new ones)."""
    new = sorted(set(labels) - set(base_classes))
    return list(base_classes) + new, new


def grown_model(base: WBCClassifier, info: ModelInfo, classes: Sequence[str]) -> WBCClassifier:
    """A copy of `base` whose head answers `classes` (the base's first): base rows kept, a new class's
    row copied from its group's row when the base has that group, else as initialised."""
    model = WBCClassifier(create_backbone(info.backbone, pretrained=False), len(classes), hidden=info.hidden,
                          dropout=info.dropout, mode=info.mode)
    sd = {k: v.clone() for k, v in base.state_dict().items()}
    last = [k for k in sd if k.startswith("classifier.")][-2:]  # the final Linear: weight, bias
    fresh = model.state_dict()
    w, b = fresh[last[0]].clone(), fresh[last[1]].clone()
    base_cls = list(info.classes)
    for i, c in enumerate(classes):
        src = c if c in base_cls else group_of(c) if is_known(c) and group_of(c) in base_cls else None
        if src is not None:
            w[i], b[i] = sd[last[0]][base_cls.index(src)], sd[last[1]][base_cls.index(src)]
    sd[last[0]], sd[last[1]] = w, b
    model.load_state_dict(sd)
    return model


def _policy(name: str):
    """An augment preset (a batch function) as a per-image policy (uint8 image, numpy rng) -> uint8 image."""
    aug = get_augment(name)

    def policy(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        g = torch.Generator().manual_seed(int(rng.integers(2**31 - 1)))
        x = aug(torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float(), g)
        return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

    return policy


def holdout(labels: Sequence[str], seed: int) -> np.ndarray:
    """Indices held out for validation: a seeded `VAL_FRACTION` (>= 1) of each class when every class has
    at least `VAL_MIN_PER_CLASS` cells, else none."""
    counts = Counter(labels)
    if not counts or min(counts.values()) < VAL_MIN_PER_CLASS:
        return np.zeros(0, int)
    rng = np.random.default_rng(seed)
    lab = np.asarray(labels)
    val = [rng.permutation(np.flatnonzero(lab == c))[:max(1, int(round(VAL_FRACTION * n)))]
           for c, n in sorted(counts.items())]
    return np.sort(np.concatenate(val))


def _check_counts(cells: LabelledCells, want: list[str] | None, where: str) -> None:
    if not cells.labels:
        raise InputError(where, "no labelled WBC cells found")
    counts = cells.counts()
    if want is not None:
        missing = [c for c in want if c not in counts]
        if missing:
            raise InputError(where, f"class(es) asked for with --classes have no labelled cells: {', '.join(missing)} "
                                    f"(labelled: {', '.join(counts)})")
    few = {c: n for c, n in counts.items() if n < MIN_PER_CLASS}
    if few:
        raise InputError(where, "too few labelled cells: " + ", ".join(f"{c} {n}" for c, n in few.items())
                         + f" (at least {MIN_PER_CLASS} per class needed)")


def learn(cells: LabelledCells | Sequence[str | Path], out: str | Path, *, base: str | Path = DEFAULT_BASE,
          classes: Sequence[str] | None = None, epochs: int = 15, seed: int = 0, lr: float = 1e-3,
          batch_size: int = 32, views: int = 8, augment: str = "light", train_from: int | None = None,
          images: str | Path | None = None, pipeline: str | Path | None = None, level: str | None = None,
          threads: int | None = None, command: str | None = None, progress: bool = False) -> LearnResult:
    """Fine-tune `base` on labelled `cells` (a `LabelledCells`, or inputs for `read_labelled`) and write the
    lab model folder `out` (see the module doc). `classes`: learn only these labels (each must have
    cells). `train_from`: first trainable backbone block (default: the last two blocks train)."""
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if not isinstance(cells, LabelledCells):
        cells = read_labelled(cells, images=images, pipeline=pipeline, level=level)
    where = ", ".join(i["path"] for i in cells.inputs) or "labelled cells"
    want = None if classes is None else [canonical(c) for c in classes]
    if want is not None:
        _check_counts(cells, want, where)
        keep = [i for i, lab in enumerate(cells.labels) if lab in want]
        cells = LabelledCells([cells.crops[i] for i in keep], [cells.labels[i] for i in keep],
                              [cells.sources[i] for i in keep], cells.inputs, cells.skipped)
    _check_counts(cells, want, where)

    loaded = load_model(base)
    info = loaded.info
    out_cls, new = output_classes(info.classes, sorted(set(cells.labels)))
    model = grown_model(loaded.model, info, out_cls)
    clf = CellClassifier(loaded, optimize=False)  # the base's own input path: framing, then stain
    x = clf.normalize_stain(clf.fit_batch(cells.crops))
    y = np.array([out_cls.index(lab) for lab in cells.labels], dtype=np.int64)
    val_idx = holdout(cells.labels, seed)
    tr_idx = np.setdiff1d(np.arange(len(y)), val_idx)
    try:
        n_blocks = len(model.backbone.body)
        at = max(1, n_blocks - 2) if train_from is None else int(train_from)
        tail = TailModel(model, at, freeze_bn=True)
    except (ValueError, TypeError) as e:
        raise InputError(loaded.path, f"cannot fine-tune this base ({info.backbone}): {e}") from e
    mk = dict(mean=info.mean, std=info.std)
    tr_maps = cached_views(tail, x[tr_idx], policy=_policy(augment), views=views, seed=seed, progress=progress, **mk)
    all_loader = MapLoader(cached_views(tail, x, policy=None, views=1, seed=0, **mk), y, batch_size=256, shuffle=False)
    val_loader = MapLoader(cached_views(tail, x[val_idx], policy=None, views=1, seed=0, **mk), y[val_idx],
                           batch_size=256, shuffle=False) if len(val_idx) else None
    tr_all = MapLoader(all_loader.maps[tr_idx], y[tr_idx], batch_size=256, shuffle=False)
    before_tr = evaluate(tail, tr_all, out_cls).report
    before_val = evaluate(tail, val_loader, out_cls).report if val_loader is not None else None

    bs = min(batch_size, len(tr_idx))
    steps = max(4, -(-len(tr_idx) // bs))
    loader = MapLoader(tr_maps, y[tr_idx], batch_size=bs, shuffle=True, balanced=True, seed=seed, num_batches=steps)
    objective = build_objective("supervised", label_smoothing=0.1)
    opt = torch.optim.Adam([p for p in tail.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps))
    t0 = time.perf_counter()
    fr = fit(tail, objective, loader, val_loader, opt, epochs=epochs, classes=out_cls, scheduler=sched,
             progress=progress)
    secs = time.perf_counter() - t0
    after_tr = evaluate(tail, tr_all, out_cls).report
    after_val = evaluate(tail, val_loader, out_cls).report if val_loader is not None else None
    tail.to("cpu")

    parts = {"train": Counter(cells.labels[i] for i in tr_idx), "val": Counter(cells.labels[i] for i in val_idx)}
    counts = {p: {c: int(n) for c, n in sorted(v.items())} for p, v in parts.items()}
    base_ref = str(base)
    training = {"kind": "learn", "base_model": base_ref, "base_path": str(loaded.path),
                "base_checksum": file_sha256(loaded.path / info.weights), "base_classes": list(info.classes),
                "new_classes": new, "sources": cells.inputs, "counts": counts, "seed": seed, "epochs": epochs,
                "lr": lr, "batch_size": bs, "steps_per_epoch": steps, "views": views, "augment": augment,
                "train_from": at, "level": level, "classes_asked": want, "validation": len(val_idx) > 0,
                "best_epoch": fr.best_epoch, "command": command or "learn(...)",
                "base_training": info.training}
    name = out.resolve().name
    new_info = info.updated(classes=out_cls, name=name, seed=seed, training=training, bloodsmear_version="")
    metrics = {"train_before": before_tr.to_dict(), "train_after": after_tr.to_dict(),
               "val_before": before_val.to_dict() if before_val else None,
               "val": after_val.to_dict() if after_val else None, "train_seconds": round(secs, 1),
               "epochs_run": fr.epochs_run, "n_train": int(len(tr_idx)), "n_val": int(len(val_idx))}
    card = _card(new_info, training, metrics, before_tr, after_tr, before_val, after_val, secs)
    save_model(model, out, new_info, history=fr.history, metrics=metrics, card=card)
    write_json_atomic(out / "labelled_cells.json", {
        "cells": [{"source": s, "label": lab, "part": "val" if i in set(val_idx.tolist()) else "train"}
                  for i, (s, lab) in enumerate(zip(cells.sources, cells.labels))], "skipped": cells.skipped})
    log.info("learned %s from %d labelled cells (%s) in %.0f s", out, len(y), json.dumps(cells.counts()), secs)
    return LearnResult(out, out_cls, new, counts, before_tr, after_tr, before_val, after_val, secs, cells.skipped)


def _card(info, t, metrics, before_tr, after_tr, before_val, after_val, secs) -> str:
    shown = [c for c in info.classes if c in t["counts"]["train"] or c in t["counts"]["val"]]
    lines = card_header(info.name, f"Lab model: `{t['base_model']}` (base model, {info.backbone}, "
                                   f"{info.input_size} px) fine-tuned on {metrics['n_train'] + metrics['n_val']} "
                                   f"cells labelled by a person, with `bloodsmear learn`.")
    lines += [f"- Base model: `{t['base_model']}` ({t['base_path']}, weights sha256 {t['base_checksum']}).",
              f"- Classes (index order): {', '.join(info.classes)}; new outputs (the head grew): "
              f"{', '.join(t['new_classes']) or 'none'}. Base classes without labelled cells stay outputs but were "
              "not trained on.",
              f"- Input: as the base: {info.input_size} px, crop fraction {info.crop_fraction:g}, stain normalisation "
              f"{'as the base (' + info.color_normalization.get('method', '?') + ')' if info.color_normalization else 'none'}.",
              "- Data: " + "; ".join(f"`{s['path']}` ({s['format']}, {s['cells']} cells)" for s in t["sources"]) + ".",
              ""]
    lines += split_table({p: v for p, v in t["counts"].items() if v or p == "train"}, shown, title="## Labelled cells")
    if t["validation"]:
        lines += [f"Validation: a seeded {VAL_FRACTION:.0%} of each class held out (seed {t['seed']}); the epoch "
                  f"with the best validation macro F1 ({t['best_epoch']}) is kept.", ""]
    else:
        lines += [f"**No validation part**: a class has fewer than {VAL_MIN_PER_CLASS} cells, so every cell trained "
                  "and the last epoch is kept; the figures below are on the training cells themselves.", ""]
    lines += ["## Training", "",
              f"- Backbone blocks from {t['train_from']} and the head trained (BatchNorm statistics kept), "
              f"{metrics['epochs_run']} epochs x {t['steps_per_epoch']} class-balanced batches of {t['batch_size']}, "
              f"Adam lr {t['lr']} cosine, label smoothing 0.1, augment `{t['augment']}` ({t['views']} views per "
              f"cell), seed {t['seed']}; {secs:.0f} s.", command_line(t["command"]), "",
              "## Before -> after", "",
              f"- Training cells: accuracy {before_tr.accuracy:.4f} -> {after_tr.accuracy:.4f}, macro F1 "
              f"{before_tr.macro_f1:.4f} -> {after_tr.macro_f1:.4f} (n = {after_tr.n})."]
    if after_val is not None:
        lines += [f"- Validation cells: accuracy {before_val.accuracy:.4f} -> {after_val.accuracy:.4f}, macro F1 "
                  f"{before_val.macro_f1:.4f} -> {after_val.macro_f1:.4f} (n = {after_val.n}).", ""]
        lines += metrics_section(after_val, title="Validation metrics", what="held-out labelled cells")
    return "\n".join(lines + [""] + card_footer())


__all__ = ["learn", "read_labelled", "LabelledCells", "LearnResult", "grown_model", "output_classes", "holdout", "DEFAULT_BASE", "MIN_PER_CLASS", "VAL_MIN_PER_CLASS"]
