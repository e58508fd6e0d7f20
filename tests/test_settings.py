"""bloodsmear.settings.cache_dir: the one cache-folder setting."""

from __future__ import annotations

from pathlib import Path

from bloodsmear.settings import cache_dir


def test_cache_dir_env_default_and_sub(monkeypatch, tmp_path):
    monkeypatch.setenv("BLOODSMEAR_CACHE", str(tmp_path))
    assert cache_dir("arrays") == tmp_path / "arrays" and cache_dir() == tmp_path
    monkeypatch.setenv("BLOODSMEAR_CACHE", "")  # empty: the default, not the working folder
    assert cache_dir("domains") == Path.home() / ".cache" / "bloodsmear" / "domains"
    monkeypatch.delenv("BLOODSMEAR_CACHE")
    assert cache_dir("seg_fields") == Path.home() / ".cache" / "bloodsmear" / "seg_fields"


def test_every_cache_resolver_uses_it(monkeypatch, tmp_path):
    from bloodsmear.experiments.domains_config import DomainsConfig, domains_cache_dir
    from bloodsmear.models.pretrained import weight_dirs
    from bloodsmear.training.seg_data import FieldDataConfig, cache_root

    monkeypatch.setenv("BLOODSMEAR_CACHE", str(tmp_path))
    assert cache_root(FieldDataConfig()) == tmp_path / "seg_fields"
    assert cache_root(FieldDataConfig(cache_dir=str(tmp_path / "x"))) == tmp_path / "x"
    assert domains_cache_dir(DomainsConfig.model_construct(cache_dir=None)) == tmp_path / "domains"
    monkeypatch.delenv("BLOODSMEAR_WEIGHTS", raising=False)
    assert weight_dirs()[0] == tmp_path / "weights"
