"""`bench domains` runs resume their checkpoint only when it was written with the same settings."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from test_tta import _domain_folder

from bloodsmear.errors import InputError


def test_a_domains_run_resumes_only_a_checkpoint_of_the_same_settings(tmp_path, monkeypatch, caplog):
    from bloodsmear.experiments import domain_runs
    from bloodsmear.experiments.domains import run_domains
    from bloodsmear.experiments.domains_config import DomainsConfig

    rng = np.random.default_rng(0)

    def config(**train):
        return DomainsConfig(
            name="tiny", domains={"A": {"name": "folder", "root": str(tmp_path / "a")},
                                  "B": {"name": "folder", "root": str(tmp_path / "b")}},
            classes=["lymphocyte", "neutrophil"], image_size=32, runs=["src_A"], seeds=[0],
            maps={"backbone": "tiny_cnn", "train_from": 0, "views": 1},
            train={"epochs": 2, "batch_size": 4, "pretrained": False, **train}, tsne_max_per_domain=20,
            out_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))

    _domain_folder(tmp_path / "a", 0, rng)
    _domain_folder(tmp_path / "b", 60, rng)
    save = domain_runs._save
    monkeypatch.setattr(domain_runs, "_save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):  # interrupted after training: its checkpoint stays
        run_domains(config(), progress=False)
    assert list((tmp_path / "out").rglob("checkpoint.pt"))
    monkeypatch.setattr(domain_runs, "_save", save)
    with pytest.raises(InputError, match=r"different config \(differs in: lr\)") as e:
        run_domains(config(lr=1e-3), progress=False)
    assert "\n" not in str(e.value)
    with caplog.at_level(logging.INFO, logger="bloodsmear.training.trainer"):
        run_domains(config(), progress=False)
    assert "resumed from" in caplog.text
