"""The one model-folder contract, for classifiers and segmenters alike (stardist style).

A model folder holds `config.json` whose `"kind"` says what it is ("classifier", "fast-unet",
"maskrcnn", or a kind registered with `segmenter_base.register_segmenter`), the weights file it names
(`"weights"`, default weights.pt), and optionally split manifests (split*.json), metrics
(metrics.json / test_metrics.json / config.json's "metrics"), history.json and card.md.

    folder = resolve_model("pbc-screen-stain", kind="classifier")          # shipped name, path, "default"
    folder = resolve_model("../models/seg", kind=SEGMENTER_KINDS, base_dir=pipeline_cfg_dir)
    card = read_card("wbc-seg-fast")      # ModelCard: kind, backbone facts, classes, thresholds, checksum ...
    list_shipped()                        # every folder under bloodsmear/zoo; list_shipped("classifier")

Classifier folders written before `kind` existed carry `"format": "bloodsmear-classifier"` instead:
they read as kind "classifier". A folder of another kind than the one asked for is one `InputError`
naming the folder, its kind and the kind expected. Loading the network is the job of
`models.artifact.load_model` (classifiers) and `models.segmenter_base.load_segmenter` (segmenters),
both on top of `resolve_model`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from bloodsmear.errors import InputError
from bloodsmear.io import read_json
from bloodsmear.models.pretrained import TIMM_ALIASES
from bloodsmear.models.registry import UnknownBackboneError, get_spec
from bloodsmear.settings import ZOO_DIR

CLASSIFIER = "classifier"
LEGACY_CLASSIFIER_FORMAT = "bloodsmear-classifier"
#: the segmenter kinds shipped with the package (more can be registered: segmenter_base.register_segmenter)
SEGMENTER_KINDS = ("fast-unet", "maskrcnn")
#: what `"default"` names, per kind asked for
DEFAULTS = {CLASSIFIER: "pbc-mobilenetv2", "segmenter": "wbc-seg-fast"}
DEFAULT_MODEL = DEFAULTS[CLASSIFIER]

Kinds = str | Collection[str] | None


class BackboneFacts(BaseModel):
    """What a folder's backbone expects, from timm's pretrained config where it is a timm model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source: str  # timm | torchvision | local | unknown
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    feature_dim: int | None = None


class ModelCard(BaseModel):
    """The typed summary of a model folder, whatever its kind (read-only: built from its files)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    path: Path
    kind: str
    backbone: BackboneFacts | None = None
    classes: list[str] = []
    input_size: int | None = None  # classifiers: network input side (px)
    normalisation: dict[str, Any] = {}  # input normalisation (mean/std, percentile, stain normalisation)
    thresholds: dict[str, Any] = {}
    rbc_diameter_px: float | None = None  # segmenters: red-cell diameter at the working scale
    split: list[str] = []  # split manifest files in the folder
    metrics: dict[str, Any] = {}  # headline test metrics
    headline: tuple[str, float] | None = None  # the one figure `models list` shows
    weights: str
    checksum: str | None = None  # sha256 of the weights file (None when it is missing)


# ------------------------------------------------------------------ kind and config


def read_folder_config(folder: str | Path) -> dict:
    """config.json of a model folder as a dict (one InputError line when missing or malformed)."""
    d = read_json(Path(folder) / "config.json")
    if not isinstance(d, dict):
        raise InputError(Path(folder) / "config.json", "model config must be a JSON object")
    return d


def config_kind(d: dict) -> str | None:
    """The kind a model config declares ("format": "bloodsmear-classifier" = a classifier of old)."""
    if d.get("kind"):
        return str(d["kind"])
    if d.get("format") == LEGACY_CLASSIFIER_FORMAT:
        return CLASSIFIER
    return None


def folder_kind(folder: str | Path) -> str | None:
    return config_kind(read_folder_config(folder))


def _expected(kind: Kinds) -> tuple[str, ...] | None:
    if kind is None:
        return None
    return (kind,) if isinstance(kind, str) else tuple(kind)


def check_kind(folder: str | Path, kind: Kinds, d: dict | None = None) -> str:
    """The folder's kind; an InputError naming the folder, its kind and the kind(s) expected otherwise."""
    actual = config_kind(read_folder_config(folder) if d is None else d)
    expected = _expected(kind)
    if expected is not None and actual not in expected:
        what = "a classifier" if expected == (CLASSIFIER,) else \
            f"a segmenter (kind {' or '.join(expected)})" if CLASSIFIER not in expected else " or ".join(expected)
        got = f"kind {actual!r}" if actual else "no kind"
        raise InputError(folder, f"is a model folder of {got} (config.json), but {what} is expected here")
    return actual or ""


# ------------------------------------------------------------------ the resolver


def _is_model_dir(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").is_file()


def list_shipped(kind: Kinds = None) -> list[str]:
    """Names of the model folders under the package's zoo/ (of `kind`, when given)."""
    expected = _expected(kind)
    out = []
    if ZOO_DIR.is_dir():
        for d in sorted(ZOO_DIR.iterdir()):
            if not _is_model_dir(d):
                continue
            try:
                k = folder_kind(d)
            except InputError:
                continue
            if expected is None or k in expected:
                out.append(d.name)
    return out


def resolve_model(ref: str | Path | None = "default", *, kind: Kinds = None,
                  base_dir: str | Path | None = None) -> Path:
    """A model folder (absolute path) from a reference, checked to be of `kind` (a kind or a collection).

    `ref`: "default" (the default model of that kind), a path to the folder or its config.json
    (relative: tried against `base_dir` - e.g. the pipeline config's folder - then the working
    directory), or a shipped model's name (bloodsmear/zoo/<name>).
    """
    ref = "default" if ref in (None, "") else ref
    expected = _expected(kind)
    if str(ref) == "default":
        ref = DEFAULTS[CLASSIFIER if expected is None or CLASSIFIER in expected else "segmenter"]
    p = Path(ref).expanduser()
    if p.is_absolute():
        cands = [p]
    else:
        cands = ([Path(base_dir) / p] if base_dir is not None else []) + [p]
        if len(p.parts) == 1:
            cands.append(ZOO_DIR / p)
    for c in cands:
        if c.is_file() and c.name == "config.json":
            c = c.parent
        if _is_model_dir(c):
            folder = c.resolve()
            check_kind(folder, kind)
            return folder
    for c in cands:
        if c.is_dir():
            raise InputError(c, "not a model folder (no config.json)")
    shipped = list_shipped(kind)
    looked = ", ".join(str(c) for c in cands)
    raise InputError(str(ref), f"no such model folder (looked for {looked}; shipped"
                               f"{'' if expected is None else ' ' + '/'.join(expected)} models: "
                               f"{', '.join(['default'] + shipped) if shipped else 'none'})")


# ------------------------------------------------------------------ the card


def backbone_facts(name: str) -> BackboneFacts:
    """Input size, mean and std a backbone's ImageNet weights expect: timm's pretrained config for a
    timm model, the backbone registry's entry otherwise."""
    try:
        spec = get_spec(name)
    except UnknownBackboneError:
        spec = None
    if spec is None or spec.source == "timm":
        import timm  # heavy (~1 s, +100 MB): only timm backbones need it, not the shipped MobileNetV2

        cfg = timm.models.get_pretrained_cfg(TIMM_ALIASES.get(name, name))
        if cfg is not None:
            return BackboneFacts(name=name, source="timm", input_size=int(cfg.input_size[-1]), mean=tuple(cfg.mean),
                                 std=tuple(cfg.std), feature_dim=spec.feature_dim if spec else None)
    if spec is None:
        return BackboneFacts(name=name, source="unknown")
    return BackboneFacts(name=name, source=spec.source, input_size=spec.input_size, mean=tuple(spec.mean),
                         std=tuple(spec.std), feature_dim=spec.feature_dim)


def file_sha256(path: str | Path) -> str | None:
    path = Path(path)
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_optional(path: Path) -> dict:
    try:
        d = read_json(path) if path.is_file() else {}
    except InputError:
        return {}
    return d if isinstance(d, dict) else {}


_CLASSIFIER_HEADLINE = ("macro_f1", "macro_precision", "macro_recall", "accuracy", "n")
_SEGMENTER_HEADLINE = ("wbc_box_ap50", "wbc_box_ap", "wbc_mask_ap", "wbc_precision", "wbc_recall", "wbc_f1",
                       "nucleus_coverage")


def _headline_metrics(folder: Path, d: dict, kind: str) -> dict:
    if kind == CLASSIFIER:
        test = _read_optional(folder / "metrics.json").get("test") or {}
        return {k: test[k] for k in _CLASSIFIER_HEADLINE if k in test}
    test = _read_optional(folder / "test_metrics.json")
    if not test:  # fast segmenter: config.json's metrics, BCCD test split at its own scale
        m = d.get("metrics") or {}
        test = m.get("bccd_test_1x_scale_auto") or m.get("bccd_test_1x") or {}
    return {k: test[k] for k in _SEGMENTER_HEADLINE if isinstance(test.get(k), (int, float))}


def read_card(ref: str | Path, *, kind: Kinds = None, base_dir: str | Path | None = None) -> ModelCard:
    """The `ModelCard` of a model folder (resolved as `resolve_model` does)."""
    folder = resolve_model(ref, kind=kind, base_dir=base_dir)
    d = read_folder_config(folder)
    k = config_kind(d) or "unknown"
    weights = str(d.get("weights") or "weights.pt")
    bb = d.get("backbone")
    metrics = _headline_metrics(folder, d, k)
    head_key = "macro_f1" if k == CLASSIFIER else "wbc_box_ap50"
    if k == CLASSIFIER:
        norm = {"mean": d.get("mean"), "std": d.get("std"), "color_normalization": d.get("color_normalization")}
        thresholds = dict(d.get("thresholds") or {})
    else:
        norm = dict(d.get("normalisation") or {})
        if "image_mean" in d:
            norm = {"mean": d["image_mean"], "std": d.get("image_std")}
        thresholds = {key: v for key, v in d.items() if key.endswith("_threshold") or key == "box_nms_thresh"}
    return ModelCard(
        name=str(d.get("name") or folder.name), path=folder, kind=k,
        backbone=backbone_facts(str(bb)) if isinstance(bb, str) else None,
        classes=[str(c) for c in d.get("classes") or []],
        input_size=d.get("input_size") if k == CLASSIFIER else None, normalisation=norm, thresholds=thresholds,
        rbc_diameter_px=d.get("rbc_diameter_px"),
        split=sorted(p.name for p in folder.glob("split*.json")), metrics=metrics,
        headline=(head_key, float(metrics[head_key])) if head_key in metrics else None,
        weights=weights, checksum=file_sha256(folder / weights))


__all__ = ["ModelCard", "BackboneFacts", "resolve_model", "read_card", "list_shipped", "check_kind", "config_kind",
           "folder_kind", "read_folder_config", "backbone_facts", "file_sha256", "CLASSIFIER", "SEGMENTER_KINDS",
           "DEFAULT_MODEL", "DEFAULTS"]
