"""Shared fixtures. Real-data tests use `data_root` and skip cleanly where ../shared/data is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def data_root() -> Path:
    from bloodsmear.settings import data_root as _root

    root = _root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set BLOODSMEAR_DATA)")
    return root


def need(root: Path, *parts: str) -> Path:
    p = root.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data {p} not present")
    return p


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def torch_one_thread():
    """Tiny nets run fastest on one thread (OpenMP threads spin badly on a loaded machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=["sqlite", "postgresql"])
def review_db(request, tmp_path):
    """A fresh review database URL: an SQLite file, and a new database on the PostgreSQL server named by
    BLOODSMEAR_TEST_PG (`.ci/run` starts one with .ci/start_postgres.sh; skipped where it is not set)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'review-test.sqlite'}"
        return
    import os
    import uuid

    base = os.environ.get("BLOODSMEAR_TEST_PG")
    if not base:
        pytest.skip("no PostgreSQL for the review-store tests (set BLOODSMEAR_TEST_PG; CI starts one)")
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield base.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
