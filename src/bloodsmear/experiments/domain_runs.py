"""One cross-domain training run (supervised or DANN, with or without stain normalisation) on cached maps.

Used by `bloodsmear.experiments.domains` (the paper's Tables 5/6). A run trains the top of a registered
backbone (blocks from `train_from` on, pooling, Dense(128) head; the frozen lower blocks' maps are
cached once per crop and augmented view, see `feature_cache`) with the one training engine
(`trainer.fit` -> `engine.train_one_epoch`) and the objective named in the run ("supervised" or
"dann"; DANN gets the target domain's *unlabelled* training crops as a second loader with the same
batch size). The result is an ordinary model folder, scored on every domain's test split.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bloodsmear.config import StrictConfig
from bloodsmear.experiments.domain_data import DomainCrops, DomainSpec, build_domain, split_domain
from bloodsmear.io import atomic_path, read_json, write_json_atomic
from bloodsmear.models.artifact import ModelInfo, load_model, save_model
from bloodsmear.models.card import card_header, command_line, metrics_section
from bloodsmear.models.classifier import build_classifier
from bloodsmear.preprocess.augment import image_policy
from bloodsmear.preprocess.color import ReinhardNormalizer
from bloodsmear.training.distributed import (agree, broadcast_object, describe, describe_text, is_main, local_device,
                                             main_first, resume_config, shard)
from bloodsmear.training.engine import evaluate, resolve_device, to_device
from bloodsmear.training.feature_cache import MapLoader, TailModel, cached_views
from bloodsmear.training.objectives import build_objective
from bloodsmear.training.trainer import fit

log = logging.getLogger(__name__)


@dataclass
class RunSpec:
    """What one run trains on: labelled `train` domains, objective, unlabelled `target`, stain normalisation."""

    id: str
    train: list[str]  # domain keys with labels used for training, e.g. ["A"] or ["A", "B"]
    objective: str = "supervised"  # supervised | dann
    target: str | None = None  # dann: the domain whose unlabelled train crops are the target
    stain: bool = False  # Reinhard-normalise every crop to the stain reference first


@dataclass
class Prepared:
    """Each domain's crops and split (indices into the crops) and the stain normaliser."""

    crops: dict[str, DomainCrops]
    splits: dict[str, dict[str, np.ndarray]]
    manifests: dict[str, dict]
    classes: list[str]
    stain: object | None = None  # ReinhardNormalizer fitted on the reference domain's train crops
    normalized: dict[str, np.ndarray] = field(default_factory=dict)  # key -> normalised crops (lazy)
    specs: dict[str, dict] = field(default_factory=dict)  # key -> DomainSpec as a dict
    scheme: str = "64-16-20"
    split_seed: int = 42

    def images(self, key: str, stain: bool) -> np.ndarray:
        if not stain:
            return self.crops[key].images
        if key not in self.normalized:
            self.normalized[key] = np.stack([self.stain(im) for im in self.crops[key].images])
        return self.normalized[key]


def prepare_domains(domains: dict[str, dict], classes: list[str], *, scheme: str, split_seed: int, size: int,
                    cache_dir: Path, stain_reference: str | None = None) -> Prepared:
    crops, splits, manifests = {}, {}, {}
    for key, d in domains.items():
        spec = DomainSpec(**{"size": size, **d})
        crops[key] = build_domain(spec, classes, cache_dir=cache_dir)
        splits[key], m = split_domain(crops[key], scheme=scheme, seed=split_seed)
        manifests[key] = m.to_dict()
        log.info("domain %s (%s): %s", key, spec.name, {s: len(v) for s, v in splits[key].items()})
    stain = None
    if stain_reference:
        ref = crops[stain_reference].images[splits[stain_reference]["train"]]
        stain = ReinhardNormalizer(per_image=True).fit(list(ref))
    return Prepared(crops, splits, manifests, list(classes), stain,
                    specs={k: DomainSpec(**{"size": size, **d}).to_dict() for k, d in domains.items()},
                    scheme=scheme, split_seed=split_seed)


# ------------------------------------------------------------------------------------------- map cache
class MapSettings(StrictConfig):
    """The `maps:` section of a domains / DANN config: the frozen lower blocks and their cached views."""

    backbone: str = "mobilenet_v2"
    train_from: int = 17
    views: int = 4  # per training crop: the crop itself + views-1 augmented copies
    augment: str = "paper_dann"
    aug_seed: int = 0
    init_from: str | None = None  # start the backbone from a trained classifier folder (e.g. "pbc-mobilenetv2")


def _maps(prep: Prepared, tail, key: str, part: str, stain: bool, ms: MapSettings, cache_dir: Path,
          mean, std) -> torch.Tensor:
    idx = prep.splits[key][part]
    dom = prep.crops[key]
    views = ms.views if part == "train" else 1
    msd = {k: v for k, v in ms.to_dict().items() if not (k == "init_from" and v is None)}  # older caches stay valid
    # class-per-folder domains share relative paths ("lymphocyte/x.png"): their root tells them apart
    # (not added for the named datasets, so their existing caches keep their names)
    where = [dom.root] if dom.name == "folder" else []
    h = hashlib.sha1(json.dumps([dom.paths[i] for i in idx] + [msd, stain, views, part,
                                (prep.stain.to_dict() if stain else None)] + where, default=str).encode()).hexdigest()[:12]
    cache = cache_dir / f"maps_{dom.name}_{part}_{h}.pt"
    policy = image_policy(ms.augment)  # None for batch-only presets: the crop itself, one view
    return cached_views(tail, prep.images(key, stain)[idx], policy=policy, views=views, seed=ms.aug_seed,
                        mean=mean, std=std, cache=cache, progress=True)


def domain_maps(prep: Prepared, tail, key: str, part: str, stain: bool, ms: MapSettings, cache_dir: Path
                ) -> torch.Tensor:
    """A domain split's cached trunk maps as a run uses them (`views` for train, 1 otherwise; computed
    with `tail`'s trunk and cached when missing)."""
    spec = tail.model.backbone.spec
    return _maps(prep, tail, key, part, stain, ms, cache_dir, spec.mean, spec.std)


# ------------------------------------------------------------------------------------------------- run
class RunSettings(StrictConfig):
    """The `train:` section of a domains / DANN config: how each run trains its top blocks."""

    epochs: int = 15
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    hidden: int = 128
    dropout: float = 0.2
    pretrained: bool = True
    seed: int = 0
    dann: dict = {}  # DANNObjective options (lambda_schedule, gamma, max_lambda, ...)
    select_best_supervised: bool = True  # supervised runs keep the best source-val epoch; DANN runs the last
    freeze_bn: bool = False  # keep the trainable blocks' BatchNorm statistics as pretrained


def train_run(run: RunSpec, prep: Prepared, ms: MapSettings, rs: RunSettings, out_dir: Path, cache_dir: Path,
              *, progress: bool = True, device: str = "cpu") -> dict:
    """Train one run (resumable), save its model folder, score it on every domain's test split.

    `device`: where the model trains ("cpu", "cuda", "auto"); crops and cached maps stay on the CPU.
    """
    out = out_dir / run.id
    settings = {"run": asdict(run), "maps": ms.to_dict(), "train": rs.to_dict(), "classes": prep.classes}
    done = out / "result.json"
    prev = read_json(done) if done.is_file() else None
    if agree(prev is not None and prev.get("settings") == json.loads(json.dumps(settings)), f"whether {done} is done"):
        log.info("run %s: done already (%s)", run.id, done)
        return prev
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(rs.seed)
    model = build_classifier(ms.backbone, len(prep.classes), mode="finetune", pretrained=rs.pretrained,
                             hidden=rs.hidden, dropout=rs.dropout)
    if ms.init_from:  # a trained classifier's backbone (its head is not reused: the classes may differ)

        base = load_model(ms.init_from)
        if base.info.backbone != ms.backbone:
            raise ValueError(f"init_from {ms.init_from}: backbone {base.info.backbone}, not {ms.backbone}")
        model.backbone.load_state_dict(base.model.backbone.state_dict())
    tail = TailModel(model, ms.train_from, freeze_bn=rs.freeze_bn)
    spec = model.backbone.spec
    dev = local_device(resolve_device(device))  # torchrun: cuda -> this process's GPU
    tail.to(dev)

    def maps(key: str, part: str) -> torch.Tensor:
        return _maps(prep, tail, key, part, run.stain, ms, cache_dir, spec.mean, spec.std)

    def labels(key: str, part: str) -> np.ndarray:
        return prep.crops[key].labels[prep.splits[key][part]]

    with main_first():  # torchrun: rank 0 fills the map caches, the others read them
        tr_x = torch.cat([maps(k, "train") for k in run.train])
        va_x = torch.cat([maps(k, "val") for k in run.train])
        tg_x = maps(run.target, "train") if run.objective == "dann" and run.target else None
    tr_y = np.concatenate([labels(k, "train") for k in run.train])
    va_y = np.concatenate([labels(k, "val") for k in run.train])
    train_loader = shard(MapLoader(tr_x, tr_y, batch_size=rs.batch_size, shuffle=True, seed=rs.seed, drop_last=True))
    val_loader = MapLoader(va_x, va_y, batch_size=256, shuffle=False)
    target_loader = None
    kw: dict = {}
    if run.objective == "dann":
        if not run.target:
            raise ValueError(f"run {run.id}: the dann objective needs a target domain")
        # unlabelled: the target loader carries no labels at all
        target_loader = shard(MapLoader(tg_x, None, batch_size=rs.batch_size, shuffle=True, seed=rs.seed + 1,
                                        drop_last=True))
        kw = dict(feature_dim=model.backbone.feature_dim, steps_per_epoch=len(train_loader), **rs.dann)
    objective = build_objective(run.objective, **kw).to(dev)
    params = [p for p in tail.parameters() if p.requires_grad] + list(objective.parameters())
    optimizer = torch.optim.Adam(params, lr=rs.lr, weight_decay=rs.weight_decay)
    select = rs.select_best_supervised and run.objective == "supervised"
    fr = fit(tail, objective, train_loader, val_loader if select else None, optimizer, epochs=rs.epochs,
             classes=prep.classes, checkpoint=out / "checkpoint.pt", progress=progress, target_loader=target_loader,
             on_epoch_end=None if select else _log_val(tail, val_loader, prep.classes, dev), device=dev,
             config=resume_config(_resume_config(settings)))
    if not is_main():  # torchrun: rank 0 scores and writes the run, the others return its result
        return broadcast_object(None)
    results, feats = {}, {}
    for key in prep.crops:
        te = MapLoader(maps(key, "test"), labels(key, "test"), batch_size=256, shuffle=False)
        rep = evaluate(tail, te, prep.classes, device=dev).report
        results[key] = rep.to_dict()
        feats[key] = _features(tail, te, dev)
    tail.to("cpu")
    _save(model, run, prep, ms, rs, fr, results, out, settings, device=str(dev))
    with atomic_path(out / "test_features.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **{f"{k}_x": v for k, v in feats.items()}, **{f"{k}_y": labels(k, "test") for k in feats})
    res = {"settings": settings, "test": results, "history": fr.history, "epochs_run": fr.epochs_run,
           "train_seconds": round(fr.train_seconds, 1), "model_dir": str(out / "model")}
    write_json_atomic(done, res)
    return broadcast_object(res)


def _resume_config(settings: dict) -> dict:
    """What a run's checkpoint must have been written with to be resumed: the run, its maps, its classes
    and every training setting (one top-level key each, so a refusal names the one that changed, e.g.
    `lr`); the device may change (it is not a setting)."""
    return {**{k: v for k, v in settings.items() if k != "train"}, **settings["train"]}


def _log_val(tail, val_loader, classes, device=None):
    """Source-validation figures for runs that do not select an epoch on them (history only)."""
    def cb(row: dict) -> None:
        ev = evaluate(tail, val_loader, classes, device=device)
        row.update(val_loss=ev.loss, val_accuracy=ev.report.accuracy, val_f1=ev.report.macro_f1)

    return cb


@torch.no_grad()
def _features(tail, loader, device=None) -> np.ndarray:
    tail.eval()
    return np.concatenate([tail.forward_features(to_device(x, device)).cpu().numpy()
                           for x, _y in loader]).astype(np.float32)


def _save(model, run: RunSpec, prep: Prepared, ms: MapSettings, rs: RunSettings, fr, results: dict, out: Path,
          settings: dict, device: str = "cpu") -> Path:
    spec = model.backbone.spec
    size = int(next(iter(prep.crops.values())).images.shape[1])
    training = {"kind": "domains", **settings, "domains": {k: c.name for k, c in prep.crops.items()},
                "domain_specs": prep.specs, "scheme": prep.scheme, "split_seed": prep.split_seed,
                "color_normalization": prep.stain.to_dict() if run.stain and prep.stain is not None else None,
                "device": device, **({"distributed": describe()} if describe() else {})}
    info = ModelInfo(backbone=ms.backbone, classes=list(prep.classes), input_size=size, mean=list(spec.mean),
                     std=list(spec.std), crop_fraction=1.0, mode="finetune", hidden=rs.hidden, dropout=rs.dropout,
                     name=run.id, seed=rs.seed, training=training,
                     color_normalization=training["color_normalization"])
    metrics = {"test_by_domain": results, "epochs_run": fr.epochs_run, "train_seconds": round(fr.train_seconds, 1),
               "best_epoch": fr.best_epoch, "stopped": fr.stopped}
    # headline: the target domain's test split for DANN (what the model was adapted to), else the first
    # labelled training domain's
    metrics["test"] = results[run.target if run.target else run.train[0]]

    card = run_card(info, run, prep, metrics, fr.history)
    # split.json: the headline domain's manifest (a plain SplitManifest); every domain's in domain_splits.json
    folder = save_model(model, out / "model", info, history=fr.history, metrics=metrics,
                        manifest=prep.manifests[run.target or run.train[0]], card=card)
    write_json_atomic(folder / "domain_splits.json", {"domains": prep.manifests}, indent=1)
    return folder


def run_card(info, run: RunSpec, prep: Prepared, metrics: dict, history: list[dict], *, command: str = "") -> str:
    """card.md of a domain run's model folder: what it was trained on, per-domain test metrics, history."""
    names = {k: c.name for k, c in prep.crops.items()}
    t = info.training
    how = {"supervised": "supervised (cross-entropy on the labelled crops)",
           "dann": f"DANN: labelled {'+'.join(names[k] for k in run.train)} + unlabelled {names.get(run.target, '')} "
                   "training crops (gradient reversal, domain classifier; target labels never used)"}[run.objective]
    counts = "; ".join(f"{names[k]} " + "/".join(str(len(prep.splits[k][p])) for p in ("train", "val", "test"))
                       for k in prep.crops)
    lines = card_header(info.name, f"WBC classifier over {len(info.classes)} classes ({', '.join(info.classes)}): "
                        f"`{info.backbone}` (ImageNet) -> global average pooling -> Dense({info.hidden}) -> softmax. "
                        f"Trained {how}"
                        f"{', every crop Reinhard-normalised to ' + names.get(t.get('stain_reference', 'A'), 'the reference stain') if run.stain else ''}.")
    lines += ["## Input", "",
             f"A single-WBC crop, square, resized to {info.input_size} px (PBC: the whole 224 px image; LISC: "
             + (f"a {prep.specs.get('B', {}).get('crop_side', 160)} px square around the WBC of a 720x576 field"
                if prep.specs.get('B', {}).get('crops', 'locate') == 'locate' else
                "the largest WBC the pipeline's segmenter finds in a 720x576 field, cut by its crop stage")
             + (", Reinhard-normalised to the reference stain" if run.stain else "") + "), RGB "
             f"normalised with mean {info.mean} / std {info.std} (x/255).", "",
             "## Data and training", "",
             f"- Domains (train/val/test crops, seeded {prep.scheme} split seed {prep.split_seed}; manifests in "
             f"`split.json`): {counts}.",
             (f"- Backbone blocks before {t['maps']['train_from']} frozen (ImageNet), their maps cached for "
              if t['maps']['train_from'] else "- The whole backbone trained (from ImageNet) on ")
             + f"{t['maps']['views']} views per training crop (the crop + the paper's augmentation policy "
             f"`{t['maps']['augment']}`); {'later blocks + head' if t['maps']['train_from'] else 'backbone + head'} trained with "
             f"Adam lr {t['train']['lr']}, batch {t['train']['batch_size']}, {metrics['epochs_run']} epochs, "
             f"{metrics['train_seconds']} s on {t.get('device', 'cpu')}{describe_text(t.get('distributed'))}.",
             f"- DANN options: {t['train'].get('dann') or 'defaults'} (lambda = 2/(1+exp(-10 p)) - 1 by default)."
             if run.objective == "dann" else "- Epoch kept: best source validation macro F1.",
             command_line(command or "bloodsmear bench domains configs/domains/<pair>.yaml"), "",
             "## Test metrics per domain (held-out test splits, never seen in training)", ""]
    for key, rep in metrics["test_by_domain"].items():
        lines += metrics_section(rep, title=names[key], level=3, what="test crops")
    if history:
        keys = [k for k in ("train_loss", "train_label_loss", "train_domain_loss", "train_domain_acc", "train_lambda",
                            "train_accuracy", "val_accuracy", "val_f1") if any(k in h for h in history)]
        lines += ["## History", "", "| epoch | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += ["| " + " | ".join([str(h["epoch"])] + [f"{h[k]:.4f}" if isinstance(h.get(k), float) else "" for k in keys])
                  + " |" for h in history]
    return "\n".join(lines) + "\n"
