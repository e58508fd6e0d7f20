"""An `analyze` output folder: its layout, and the identity of the run that wrote it.

    results.json coco.json annotations.xml counts.csv   the aggregate files (`AGGREGATES`)
    skipped.csv                                         images that could not be analysed
    overlays/<name>.png                                 `overlay_path`
    _per_image/<name>.json                              `record_path`: the resume state
    _run.json                                           `RUN_FILE`: `run_identity` of the run the records belong to

A run resumes into a folder only when its identity (pipeline config, model checksums, scale setting) is
the one recorded there (`check_run`, else `RunMismatchError`); `remove_run` clears a folder to start over.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bloodsmear.errors import BloodsmearError
from bloodsmear.inference.pipeline_config import parse_scale, scale_mode
from bloodsmear.io import json_default
from bloodsmear.models.folder import CLASSIFIER, SEGMENTER_KINDS, file_sha256, read_folder_config, resolve_model

PER_IMAGE_DIR = "_per_image"
OVERLAY_DIR = "overlays"
AGGREGATES = ("results.json", "coco.json", "annotations.xml", "counts.csv")
RUN_FILE = "_run.json"  # the identity of the run whose per-image records the folder holds


class RunMismatchError(BloodsmearError):
    """An output folder that holds the results of another run (another pipeline, other models, another
    scale setting): resuming into it would put its old records under the new run's header."""


def record_path(out_dir: Path, name: str) -> Path:
    return out_dir / PER_IMAGE_DIR / f"{name}.json"


def overlay_path(out_dir: Path, name: str) -> Path:
    return out_dir / OVERLAY_DIR / f"{name}.png"


def clean_temp_files(out_dir: Path) -> int:
    """Remove the temp files (`.<name>.<random>.part<suffix>`) a killed run left behind."""
    n = 0
    if out_dir.is_dir():
        for p in out_dir.rglob(".*.part*"):
            if p.is_file():
                p.unlink()
                n += 1
    return n


_checksums: dict[tuple, str | None] = {}


def _sha256(path: Path) -> str | None:
    """`file_sha256`, remembered per (path, size, mtime)."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _checksums:
        _checksums[key] = file_sha256(path)
    return _checksums[key]


#: the kind(s) of model folder each pipeline stage names
STAGE_KINDS = {"segmenter": SEGMENTER_KINDS, "screening": CLASSIFIER, "refine": CLASSIFIER}


def _model_checksums(stage: str, ref: str | None, base_dir: str | None) -> dict | None:
    """sha256 of a stage's model folder files (weights, config.json); None for a stage without a model
    ("none": a segmenter-only pipeline's screening stage). A reference that names no model folder of the
    stage's kind is the loader's InputError (a run's identity never leaves a model out)."""
    if ref is None or str(ref).strip().lower() in ("", "none"):
        return None
    folder = resolve_model(ref, kind=STAGE_KINDS[stage], base_dir=base_dir)
    weights = str(read_folder_config(folder).get("weights") or "weights.pt")
    return {"weights": _sha256(folder / weights), "config": _sha256(folder / "config.json")}


def run_identity(pipeline, scale: str | float | None = None) -> dict:
    """What a run's per-image records depend on: the pipeline's description (its config: stages, routing,
    thresholds, crops, TTA; not its name or folder), the checksums of its model folders, and the scale
    setting (`scale`, None: the config's). JSON-normalised (it is compared with the one read back)."""
    cfg = getattr(pipeline, "config", None)
    desc = dict(pipeline.describe()) if hasattr(pipeline, "describe") else {"class": type(pipeline).__name__}
    for k in ("name", "base_dir"):
        desc.pop(k, None)
    models = {stage: _model_checksums(stage, ref, getattr(cfg, "base_dir", None))
              for stage in ("segmenter", "screening", "refine") if (ref := getattr(cfg, stage, None))}
    value = getattr(cfg, "scale", "auto") if scale is None else scale
    mode = scale_mode(value)
    ident = {"pipeline": desc, "models": models, "scale": mode if mode is not None else parse_scale(value, "scale")}
    return json.loads(json.dumps(ident, default=json_default, sort_keys=True))


def _differences(old: object, new: object, where: str = "") -> list[str]:
    """The paths where two JSON values differ ("pipeline.refine", "models.segmenter.weights", ...)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))]
    return [] if old == new else [where or "(all)"]


def check_run(out_dir: Path, identity: dict) -> None:
    """`RunMismatchError` unless `out_dir` is new, holds no results yet, or holds those of this run."""
    run_file = out_dir / RUN_FILE
    if not out_dir.is_dir():
        return
    hint = "start over with --fresh, or choose another --out"
    if not run_file.is_file():
        if any((out_dir / PER_IMAGE_DIR).rglob("*.json")):
            raise RunMismatchError(f"{out_dir}: holds results of an unknown run (no {RUN_FILE}, written by an "
                                   f"older bloodsmear): {hint}")
        return
    try:
        old = json.loads(run_file.read_text(encoding="utf-8")).get("identity")
    except (OSError, ValueError, AttributeError):
        old = None
    if old is None:
        raise RunMismatchError(f"{run_file}: unreadable record of the earlier run: {hint}")
    diff = _differences(old, identity)
    if diff:
        shown = ", ".join(diff[:4]) + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise RunMismatchError(f"{out_dir}: holds results of another run (differs in {shown}): {hint}")


def remove_run(out_dir: Path) -> int:
    """Remove what a run wrote into `out_dir` (per-image records, overlays, aggregate files, skipped.csv,
    the run record); other files are left. The number of files removed."""
    n = 0
    for d in (PER_IMAGE_DIR, OVERLAY_DIR):
        if (out_dir / d).is_dir():
            n += sum(1 for p in (out_dir / d).rglob("*") if p.is_file())
            shutil.rmtree(out_dir / d)
    for f in (*AGGREGATES, "skipped.csv", RUN_FILE):
        if (out_dir / f).is_file():
            (out_dir / f).unlink()
            n += 1
    return n
