"""`bloodsmear adapt`: DANN adaptation of a model folder to an unlabelled folder, on a tiny synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny trained classifier folder, its labelled source folder, and a colour-shifted target folder."""
    import cv2
    from test_classifier import tiny_config

    from bloodsmear.training.trainer import train

    tmp = tmp_path_factory.mktemp("adapt")
    cfg = tiny_config(tmp)
    res = train(cfg, progress=False)
    src = Path(cfg.data.dataset)
    tgt = tmp / "target"
    tgt.mkdir()
    for i, f in enumerate(sorted(src.rglob("*.png"))):  # another "lab": the same cells in a warmer stain
        im = cv2.imread(str(f)).astype(np.int16)
        im[..., 2] += 40
        cv2.imwrite(str(tgt / f"t{i}.png"), np.clip(im, 0, 255).astype(np.uint8))
    return res.model_dir, src, tgt


def _adapt(base, out, **kw):
    from bloodsmear.experiments.adapt import adapt_model

    model_dir, src, tgt = base
    return adapt_model(model_dir, tgt, out, source=src, epochs=3, batch_size=8, train_from=1, views=2,
                       progress=False, **kw)


def test_adapt_writes_a_model_folder_and_keeps_the_source(base, tmp_path):
    from bloodsmear.models.artifact import load_model

    res = _adapt(base, tmp_path / "adapted")
    folder = res.out_dir
    assert {"config.json", "weights.safetensors", "card.md", "metrics.json", "target_files.json"} <= \
        {p.name for p in folder.iterdir()}
    assert not (folder / "checkpoint.pt").exists()
    info = load_model(folder).info
    t = info.training
    assert t["kind"] == "adapt" and t["max_source_drop"] == 0.01 and t["kept_epoch"] == res.kept_epoch
    m = json.loads((folder / "metrics.json").read_text())
    scores = m["source_val_f1"]
    assert len(scores) == 3
    ok = [e for e in range(1, 4) if scores[e - 1] >= t["source_val_f1_before"] - 0.01]
    assert res.kept_epoch == (ok[-1] if ok else 0)  # the latest epoch within the limit, else the unadapted model
    assert res.n_target == 42 and sum(res.target_mix_after.values()) == 42
    assert "Epoch kept" in (folder / "card.md").read_text()


def test_adapt_without_a_source_limit_keeps_the_last_epoch(base, tmp_path):
    res = _adapt(base, tmp_path / "last", max_source_drop=None)
    assert res.kept_epoch == 3


def test_adapt_target_folder_errors_name_the_folder(base, tmp_path):
    from bloodsmear.errors import InputError
    from bloodsmear.experiments.adapt import adapt_model

    model_dir, src, _ = base
    with pytest.raises(InputError, match="no such target folder"):
        adapt_model(model_dir, tmp_path / "nope", tmp_path / "o", source=src, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="no usable target images"):
        adapt_model(model_dir, empty, tmp_path / "o2", source=src, progress=False)


def test_adapt_resumes_only_a_checkpoint_of_the_same_settings(base, tmp_path, monkeypatch, caplog):
    """An interrupted adaptation leaves OUT/checkpoint.pt: a rerun with another lr is refused (one line
    naming the setting), an unchanged rerun resumes it."""
    import logging

    from bloodsmear.errors import InputError
    from bloodsmear.experiments import adapt

    save = adapt.save_model
    monkeypatch.setattr(adapt, "save_model", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        _adapt(base, tmp_path / "a")
    assert (tmp_path / "a" / "checkpoint.pt").is_file()
    monkeypatch.setattr(adapt, "save_model", save)
    with pytest.raises(InputError, match=r"different config \(differs in: lr\)") as e:
        _adapt(base, tmp_path / "a", lr=1e-3)
    assert "\n" not in str(e.value)
    with caplog.at_level(logging.INFO, logger="bloodsmear.training.trainer"):
        res = _adapt(base, tmp_path / "a", threads=2)  # threads may change
    assert "resumed from" in caplog.text and res.out_dir == tmp_path / "a"
