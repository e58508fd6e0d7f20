"""`bloodsmear adapt`: adapt a trained classifier to a lab's own unlabelled images with DANN.

    res = adapt_model("pbc-mobilenetv2", "my_lab_crops/", "runs/adapted", fields=False)

Source = the model's own training data (its split manifest / training config, found under the data
root `BLOODSMEAR_DATA`), or `source=` a class-per-folder of labelled crops. Target = a folder of
single-WBC crops, or (`fields=True`) of smear fields, whose WBCs are cut by the pipeline's own
segmenter and crop stage (`inference.export.field_crops`: what `analyze` feeds the classifiers).
Target images carry no labels and none are needed. A model that carries a stain normaliser
(`color_normalization`) sees source and target crops normalised as at inference. The model starts from
its own weights; the blocks from `train_from` on and the head train with the `dann` objective in the
one engine (`trainer.fit`), lower blocks stay frozen (their maps are cached).

Keeping the source: after every epoch the source validation split is scored; the epoch kept is the
latest whose source-validation macro F1 is at most `max_source_drop` below the unadapted model's
(none such: the best one), so adaptation does not buy the target at the source's expense. The new
folder holds the adapted model, its card, the source test metrics before and after, and the predicted
class mix of the target images before and after.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bloodsmear.data.splits import SplitManifest, per_class_sample
from bloodsmear.errors import InputError
from bloodsmear.experiments.domain_data import DomainSpec, build_domain, split_domain
from bloodsmear.inference.export import field_crops, segmenting_pipeline
from bloodsmear.io import list_images, read_image, read_json, write_json_atomic, write_text_atomic
from bloodsmear.models.artifact import load_model, save_model
from bloodsmear.models.card import card_footer, card_header, command_line, metrics_section
from bloodsmear.preprocess.augment_paper import PaperPolicy
from bloodsmear.preprocess.color import ReinhardNormalizer
from bloodsmear.preprocess.transforms import fit_image
from bloodsmear.settings import cache_dir, data_root
from bloodsmear.training.engine import evaluate, predict, resolve_device
from bloodsmear.training.feature_cache import MapLoader, TailModel, cached_views
from bloodsmear.training.objectives import build_objective
from bloodsmear.training.trainer import fit

log = logging.getLogger(__name__)


@dataclass
class AdaptResult:
    out_dir: Path
    n_source_train: int
    n_target: int
    skipped: list[str]
    source_test_before: dict
    source_test_after: dict
    target_mix_before: dict
    target_mix_after: dict
    train_seconds: float
    kept_epoch: int = 0  # the epoch whose weights were kept (0: none, the unadapted model)

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "n_source_train": self.n_source_train, "n_target": self.n_target,
                "skipped": len(self.skipped), "source_test_before": self.source_test_before,
                "source_test_after": self.source_test_after, "target_mix_before": self.target_mix_before,
                "target_mix_after": self.target_mix_after, "train_seconds": round(self.train_seconds, 1),
                "kept_epoch": self.kept_epoch}


def read_target(folder: str | Path, size: int, *, fields: bool = False, pipeline: str | Path | None = None,
                crop_fraction: float = 1.0) -> tuple[np.ndarray, list[str], list[str]]:
    """(crops (N, size, size, 3), relative paths, skipped messages) of every image below `folder`.

    `fields`: the images are fields; every WBC the segmenter of `pipeline` (None: the shipped default)
    finds is one crop (path `<image>#<k>`)."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(folder, "no such target folder")
    crops, paths, skipped = [], [], []
    pipe = None
    if fields:
        pipe = segmenting_pipeline(pipeline)
    for p in list_images(folder):
        rel = p.relative_to(folder).as_posix() if p != folder else p.name
        if any(part.startswith(".") for part in Path(rel).parts):
            skipped.append(f"{rel}: hidden file")
            continue
        try:
            rgb = read_image(p)
        except InputError as e:
            skipped.append(str(e))
            continue
        if pipe is not None:
            try:
                _, _, cut, _ = field_crops(pipe, rgb, name=rel, path=p)
            except InputError as e:
                skipped.append(str(e))
                continue
            if not cut:
                skipped.append(f"{rel}: no WBC found")
            for k, c in enumerate(cut):
                crops.append(fit_image(c, size, crop_fraction))
                paths.append(f"{rel}#{k}")
        else:
            crops.append(fit_image(rgb, size, crop_fraction))
            paths.append(rel)
    for s in skipped:
        log.warning("target: skipped %s", s)
    if not crops:
        raise InputError(folder, f"no usable target images ({len(skipped)} skipped)")
    return np.stack(crops), paths, skipped


def _manifest_for(folder: Path, info) -> dict | None:
    """The source split manifest recorded in a model folder (a plain one, or the source's in domain_splits)."""
    t = info.training or {}
    ds = folder / "domain_splits.json"
    if t.get("kind") == "domains" and ds.is_file():
        return read_json(ds)["domains"].get(t["run"]["train"][0])
    sp = folder / "split.json"
    if t.get("kind") != "domains" and sp.is_file():
        d = read_json(sp)
        return d if "splits" in d else None
    return None


def source_data(info, folder: Path, source: str | Path | None = None, *, max_per_class: int | None = None,
                seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train"|"val"|"test": (crops, labels)} of the model's own labelled source domain.

    The model's recorded split manifest decides the parts (so the source val/test images are ones it never
    trained on); without one, a seeded 64-16-20 split. `max_per_class` subsamples all (val, test: half).
    """
    t = info.training or {}
    classes = list(info.classes)
    manifest = None
    # crops at input_size / crop_fraction, so the model's centre fraction is then cut and area-resized once
    size = int(round(info.input_size / max(info.crop_fraction, 1e-3)))
    if source is not None:
        spec = DomainSpec(name="folder", root=str(Path(source).resolve()), size=size)
    elif t.get("kind") == "domains":
        key = t["run"]["train"][0]
        d = (t.get("domain_specs") or {}).get(key) or {"name": t["domains"][key]}
        spec = DomainSpec(**{**d, "size": size})
        manifest = _manifest_for(folder, info)
    else:  # a classifier trained by `bloodsmear train` (TrainConfig): class-per-folder dataset
        d = t.get("data") or {}
        if not d.get("dataset"):
            raise InputError(folder, "the model records no training dataset; pass --source FOLDER")
        name = {"pbc": "pbc", "lisc": "lisc"}.get(d.get("format", ""), "folder")
        spec = DomainSpec(name=name, root=d["dataset"], size=size)
        manifest = _manifest_for(folder, info)
    root = Path(spec.root) if Path(spec.root).is_absolute() else data_root() / (spec.root or spec.name)
    if not root.exists():
        raise InputError(root, "the model's source data is not here; set BLOODSMEAR_DATA or pass --source FOLDER")
    dom = build_domain(spec, classes, cache_dir=cache_dir("domains") if source is None else None)
    if manifest is not None:
        m = SplitManifest(**{k: v for k, v in manifest.items() if k in SplitManifest.__dataclass_fields__})
        member = {s: set(m.paths(s)) if s in m.splits else set() for s in ("train", "val", "test")}
        parts = {s: np.array([i for i, g in enumerate(dom.groups) if g in member[s]], dtype=int) for s in member}
    else:
        parts, _m = split_domain(dom, scheme="64-16-20", seed=42)
    if any(len(parts.get(s, ())) == 0 for s in ("train", "val", "test")):
        raise InputError(root, "the model's split manifest leaves a source part (train/val/test) empty here")
    out = {}
    for s in ("train", "val", "test"):
        idx = parts[s]
        if max_per_class:
            cap = max_per_class if s == "train" else max(1, max_per_class // 2)
            idx = np.sort(idx[per_class_sample(list(dom.labels[idx]), cap, seed, stream="permutation")])
        out[s] = (np.stack([fit_image(im, info.input_size, info.crop_fraction) for im in dom.images[idx]]),
                  dom.labels[idx])  # the model's framing
    return out


def _mix(tail, maps: torch.Tensor, classes: list[str], device=None) -> dict:
    probs, _ = predict(tail, MapLoader(maps, None, batch_size=256, shuffle=False), device=device)
    counts = np.bincount(probs.argmax(1), minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, counts)}


def adapt_model(model_ref: str | Path, target: str | Path, out: str | Path, *, fields: bool = False,
                pipeline: str | Path | None = None, source: str | Path | None = None, epochs: int = 15,
                batch_size: int = 32, lr: float = 3e-4, train_from: int = 17, views: int = 4, seed: int = 0,
                threads: int = 1, max_per_class: int | None = None, max_source_drop: float | None = 0.01,
                dann: dict | None = None, device: str = "cpu", progress: bool = True) -> AdaptResult:
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    loaded = load_model(model_ref)
    info, model = copy.deepcopy(loaded.info), loaded.model
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    xt, tpaths, skipped = read_target(target, info.input_size, fields=fields, pipeline=pipeline,
                                      crop_fraction=info.crop_fraction)
    parts = source_data(info, loaded.path, source, max_per_class=max_per_class, seed=seed)
    if info.color_normalization:  # what the model sees at inference (`CellClassifier`)

        norm = ReinhardNormalizer.from_dict(info.color_normalization)
        xt = np.stack([norm(x) for x in xt])
        parts = {k: (np.stack([norm(x) for x in v[0]]), v[1]) for k, v in parts.items()}
    (xs, ys), (xva, yva), (xte, yte) = parts["train"], parts["val"], parts["test"]
    log.info("adapting %s: %d labelled source crops, %d unlabelled target crops (%d skipped)", loaded.path,
             len(ys), len(xt), len(skipped))
    dev = resolve_device(device)
    tail = TailModel(model, train_from).to(dev)
    mk = dict(mean=info.mean, std=info.std)
    pol = PaperPolicy()
    src = cached_views(tail, xs, policy=pol, views=views, seed=seed, progress=progress, **mk)
    tgt = cached_views(tail, xt, policy=pol, views=views, seed=seed + 1, progress=progress, **mk)
    val_loader = MapLoader(cached_views(tail, xva, policy=None, views=1, seed=0, **mk), yva, batch_size=256,
                           shuffle=False)
    test_loader = MapLoader(cached_views(tail, xte, policy=None, views=1, seed=0, **mk), yte, batch_size=256,
                            shuffle=False)
    before = evaluate(tail, test_loader, info.classes, device=dev).report
    val_before = evaluate(tail, val_loader, info.classes, device=dev).report.macro_f1
    mix_before = _mix(tail, tgt[:, :1], info.classes, dev)

    bs = min(batch_size, len(ys), len(xt))
    train_loader = MapLoader(src, ys, batch_size=bs, shuffle=True, seed=seed, drop_last=True)
    target_loader = MapLoader(tgt, None, batch_size=bs, shuffle=True, seed=seed + 1, drop_last=True)
    objective = build_objective("dann", feature_dim=model.backbone.feature_dim, steps_per_epoch=len(train_loader),
                                **(dann or {})).to(dev)
    params = [p for p in tail.parameters() if p.requires_grad] + list(objective.parameters())
    opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-4)
    keeper = _SourceKeeper(tail, val_loader, info.classes, val_before, max_source_drop, dev)
    # a checkpoint in `out` is resumed only when written with these (threads and the device may change)
    resume = {"model": str(Path(loaded.path).resolve()), "target": str(Path(target).resolve()), "fields": fields,
              "pipeline": None if pipeline is None else str(pipeline),
              "source": None if source is None else str(Path(source).resolve()), "epochs": epochs,
              "batch_size": bs, "lr": lr, "train_from": train_from, "views": views, "seed": seed,
              "max_per_class": max_per_class, "max_source_drop": max_source_drop, "dann": dann or {}}
    t0 = time.perf_counter()
    fr = fit(tail, objective, train_loader, None, opt, epochs=epochs, classes=list(info.classes),
             target_loader=target_loader, checkpoint=out / "checkpoint.pt", progress=progress,
             on_epoch_end=keeper, device=dev, config=resume)
    secs = time.perf_counter() - t0
    kept = keeper.restore()
    after = evaluate(tail, test_loader, info.classes, device=dev).report
    mix_after = _mix(tail, tgt[:, :1], info.classes, dev)
    tail.to("cpu")

    info.name = f"{info.name or Path(loaded.path).name}-adapted-{Path(target).name}"
    info.training = {"kind": "adapt", "adapted_from": str(loaded.path), "base_training": info.training,
                     "target_folder": str(Path(target).resolve()), "fields": fields,
                     "pipeline": None if pipeline is None else str(pipeline), "n_target": len(xt), "epochs": epochs,
                     "batch_size": bs, "lr": lr, "train_from": train_from, "views": views, "seed": seed,
                     "max_per_class": max_per_class, "max_source_drop": max_source_drop, "kept_epoch": kept,
                     "source_val_f1_before": val_before, "dann": dann or {}, "device": str(dev)}
    metrics = {"test": after.to_dict(), "source_test_before": before.to_dict(), "target_mix_before": mix_before,
               "target_mix_after": mix_after, "train_seconds": round(secs, 1), "epochs_run": fr.epochs_run,
               "kept_epoch": kept, "source_val_f1": keeper.scores}
    save_model(model, out, info, history=fr.history, metrics=metrics)
    write_json_atomic(out / "target_files.json", {"paths": tpaths, "skipped": skipped})
    write_text_atomic(out / "card.md", _card(info, before, after, mix_before, mix_after, len(ys), len(xt),
                                             len(skipped), secs, loaded.path, target))
    (out / "checkpoint.pt").unlink(missing_ok=True)
    return AdaptResult(out, len(ys), len(xt), skipped, before.headline(), after.headline(), mix_before, mix_after, secs,
                       kept)


class _SourceKeeper:
    """`fit`'s epoch callback: scores the source validation split and remembers the weights of the latest
    epoch within `max_drop` of the unadapted model's macro F1; `restore()` loads them and returns that
    epoch, or keeps the unadapted weights and returns 0 when no epoch was within the limit."""

    def __init__(self, tail, val_loader, classes, f1_before: float, max_drop: float | None, device):
        self.tail, self.val_loader, self.classes, self.device = tail, val_loader, list(classes), device
        self.f1_before, self.max_drop = float(f1_before), max_drop
        self.scores: list[float] = []
        self.state, self.epoch = None, 0
        self.original = {k: v.detach().clone() for k, v in tail.state_dict().items()}

    def __call__(self, row: dict) -> None:
        f1 = evaluate(self.tail, self.val_loader, self.classes, device=self.device).report.macro_f1
        row["source_val_f1"] = f1
        self.scores.append(f1)
        if self.max_drop is None or f1 >= self.f1_before - self.max_drop:
            self.state = {k: v.detach().clone() for k, v in self.tail.state_dict().items()}
            self.epoch = int(row["epoch"])

    def restore(self) -> int:
        if self.state is None:
            log.warning("no epoch kept the source validation macro F1 within %.3f of %.4f (epochs: %s); keeping the "
                        "unadapted weights: try a lower --lr or fewer --epochs", self.max_drop or 0.0, self.f1_before,
                        ", ".join(f"{f:.4f}" for f in self.scores))
        self.tail.load_state_dict(self.state if self.state is not None else self.original)
        return self.epoch


def _card(info, before, after, mix_b, mix_a, n_src, n_tgt, n_skip, secs, base, target) -> str:
    t = info.training
    lines = card_header(info.name, f"`{base}` adapted with DANN (gradient reversal, Ganin & Lempitsky 2015) to the "
                                   f"unlabelled images of `{target}` ({n_tgt} used, {n_skip} skipped). Source: the "
                                   f"model's own labelled training data ({n_src} crops).")
    lines += [f"- Classes: {', '.join(info.classes)}. Input: {info.input_size} px, mean {info.mean}, std {info.std}.",
              command_line(f"bloodsmear adapt --model {base} --target {target} --out <this folder>")
              + f"; {secs:.0f} s on {t.get('device', 'cpu')}.",
              f"- Epoch kept: {t.get('kept_epoch')} (the latest within {t.get('max_source_drop')} of the source "
              f"validation macro F1 before adaptation, {t.get('source_val_f1_before', 0.0):.4f}).", "",
              "## Source test split (labelled), before -> after", "",
              f"Macro F1 {before.macro_f1:.4f} -> {after.macro_f1:.4f}; accuracy {before.accuracy:.4f} -> "
              f"{after.accuracy:.4f} (n = {after.n}).", ""]
    lines += metrics_section(after, title="Source test split after adaptation", what="source test crops")
    lines += ["## Target images: predicted classes, before -> after (no labels: a sanity check, not a score)", "",
              "| class | before | after |", "|---|---|---|"]
    lines += [f"| {c} | {mix_b[c]} | {mix_a[c]} |" for c in info.classes]
    return "\n".join(lines + [""] + card_footer())


__all__ = ["adapt_model", "AdaptResult", "read_target", "source_data"]
