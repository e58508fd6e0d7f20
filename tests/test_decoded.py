"""`inference.decoded.DecodedCache`: a field decoded by the scale pass is not decoded again by the analysis."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from pipeline_fakes import make_pipeline, write_field

from bloodsmear.inference import decoded as decoded_mod
from bloodsmear.inference.batch import analyze, record_path
from bloodsmear.inference.decoded import DecodedCache

DISCS = [(60, 60, 20, "lymphocyte")]


@pytest.fixture
def fields(tmp_path):
    root = tmp_path / "in"
    for k in range(6):
        write_field(root / f"f{k}.png", 160, 120, [(50 + 5 * k, 60, 20, "lymphocyte")])
    return root


def test_cache_keeps_wanted_fields_within_its_budget_and_hands_each_over_once(fields):
    paths = sorted(fields.glob("*.png"))
    one = 160 * 120 * 3
    cache = DecodedCache(paths[:4], budget_bytes=2 * one + 10)
    got = [cache.read(p) for p in paths]
    assert len(cache) == 2  # the budget holds two fields; wanted ones only, never evicting
    kept = cache.take(paths[0])
    assert kept is got[0] and not kept.flags.writeable  # the same pixels, read-only while shared
    assert cache.take(paths[0]) is None and len(cache) == 1  # handed over once
    assert cache.take(paths[3]) is None  # wanted but over the budget: decoded again by the analysis
    fresh = cache.read_for_analysis(paths[3])
    assert np.array_equal(fresh, got[3]) and fresh.flags.writeable
    assert cache.take(paths[5]) is None and cache.hits == 1  # not wanted


def test_cache_is_safe_across_threads(fields):
    paths = sorted(fields.glob("*.png")) * 5
    cache = DecodedCache(paths)
    threads = [threading.Thread(target=lambda: [cache.read(p) for p in paths]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 6 and cache._used == 6 * 160 * 120 * 3


@pytest.mark.parametrize("budget", [0, decoded_mod.DEFAULT_BUDGET_BYTES])
def test_analyze_decodes_each_field_once_and_answers_the_same(fields, tmp_path, monkeypatch, budget):
    calls = []
    real = decoded_mod.read_image
    monkeypatch.setattr(decoded_mod, "read_image", lambda p, **kw: calls.append(p) or real(p, **kw))
    monkeypatch.setattr(decoded_mod, "DEFAULT_BUDGET_BYTES", budget)
    out = tmp_path / f"out{budget}"
    s = analyze([fields], out, make_pipeline(rbc_px=20.0), scale="auto", progress=False, workers=2,
                batch_images=2)
    assert s.n_analysed == 6
    assert len(calls) == (6 if budget else 12)  # scale pass + analysis: one decode each with the cache
    recs = {p.name: json.loads(record_path(out, p.name).read_text()) for p in fields.glob("*.png")}
    ref = tmp_path / "ref"
    analyze([fields], ref, make_pipeline(rbc_px=20.0), scale="auto", progress=False, workers=1, overlays=False)
    for name, rec in recs.items():
        want = json.loads(record_path(ref, name).read_text())
        assert {k: v for k, v in rec.items() if k != "timings_s"} == {k: v for k, v in want.items() if k != "timings_s"}
