"""`analyze --engine ray` (inference.ray_engine) on a local Ray of 2 CPUs: the local engine's outputs, resume,
an actor killed mid-run. Skipped where Ray (the optional extra) is not installed."""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from conftest import need
from pipeline_fakes import ONE, TWO, make_pipeline, write_field
from typer.testing import CliRunner

from bloodsmear.errors import BloodsmearError
from bloodsmear.inference.batch import analyze
from bloodsmear.inference.run_folder import record_path
from bloodsmear.outputs import paper_json

TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray of 2 CPUs for the module; its workers import the fakes from tests/."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    path = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


@pytest.fixture
def fields(tmp_path):
    root = tmp_path / "in"
    for k in range(5):
        write_field(root / f"f{k}.png", 400, 300, TWO if k % 2 else ONE)
    write_field(root / "sub" / "g.jpg", 400, 300, TWO)
    (root / "bad.jpg").write_text("not an image")
    return root


def _records(out: Path) -> dict[str, dict]:
    doc = json.loads((out / "results.json").read_text())
    recs = {}
    for r in paper_json.document_records(doc):
        r = dict(r)
        r.pop("timings_s", None)
        recs[r["filename"]] = r
    return recs


def _counts(out: Path) -> list[list[str]]:
    with open(out / "counts.csv", newline="") as f:
        return list(csv.reader(f))


def _close(a, b, tol: float = 1e-6) -> bool:
    """JSON values equal, numbers within `tol`."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= tol
    return a == b


def _ray_analyze(inputs, out, factory, **kw):
    from bloodsmear.inference.ray_engine import analyze_ray

    return analyze_ray(inputs, out, factory(), factory=factory, workers=2, progress=False, **kw)


def test_ray_engine_writes_what_the_local_engine_writes(ray_local, fields, tmp_path):
    factory = partial(make_pipeline)  # scale "auto": the scale pass runs on the workers too
    loc = analyze([fields], tmp_path / "local", make_pipeline(), progress=False, workers=1, batch_images=2)
    s = _ray_analyze([fields], tmp_path / "ray", factory, batch_images=2)
    assert (s.n_images, s.n_analysed, s.n_skipped, s.n_cells) == (7, 6, 1, loc.n_cells)
    assert s.counts == loc.counts and s.skipped[0][0].endswith("bad.jpg")
    assert _close(_records(tmp_path / "ray"), _records(tmp_path / "local"))
    assert _counts(tmp_path / "ray") == _counts(tmp_path / "local")
    for f in ("coco.json", "annotations.xml", "skipped.csv", "_run.json", "overlays/sub/g.jpg.png"):
        assert (tmp_path / "ray" / f).read_bytes() == (tmp_path / "local" / f).read_bytes(), f


def test_ray_engine_resumes_from_the_same_records(ray_local, fields, tmp_path):
    out = tmp_path / "out"
    analyze([fields], out, make_pipeline(), progress=False, workers=1, scale=20)  # a local run ...
    record_path(out, "f3.png").unlink()
    s = _ray_analyze([fields], out, partial(make_pipeline), scale=20)  # ... finished by the ray engine
    assert (s.n_resumed, s.n_analysed) == (5, 1)
    s = _ray_analyze([fields], out, partial(make_pipeline), scale=20)  # nothing left: no actor even starts
    assert (s.n_resumed, s.n_analysed, s.n_skipped) == (6, 0, 1)
    assert len(_records(out)) == 6


def _dying_pipeline(marker: str, victim: str):
    """A fake pipeline whose process dies (os._exit) on `victim`, once (the marker file says it did)."""
    pipe = make_pipeline()
    real = pipe.detect

    def detect(rgb, **kw):
        if kw.get("name") == victim and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)
        return real(rgb, **kw)

    pipe.detect = detect
    return pipe


def test_an_actor_killed_mid_run_loses_no_image_and_counts_none_twice(ray_local, fields, tmp_path):
    marker = tmp_path / "died"
    factory = partial(_dying_pipeline, str(marker), "f3.png")
    s = _ray_analyze([fields], tmp_path / "out", factory, batch_images=3, scale=20)
    assert marker.is_file()  # an actor did die on f3.png (mid-group: f2.png before it was analysed)
    assert (s.n_analysed, s.n_skipped) == (6, 1)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    names = [r["filename"] for r in paper_json.document_records(doc)]
    assert sorted(names) == sorted(set(names)) == ["f0.png", "f1.png", "f2.png", "f3.png", "f4.png", "sub/g.jpg"]


def _marking_pipeline(folder: str):
    """A fake pipeline whose red-cell estimate leaves a file behind: an actor measured a field."""
    pipe = make_pipeline()
    real = pipe.estimate_rbc

    def estimate(rgb):
        Path(folder, f"{os.getpid()}-{time.monotonic_ns()}").touch()
        return real(rgb)

    pipe.estimate_rbc = estimate
    return pipe


def test_the_scale_pass_is_shared_by_the_driver_and_the_actors(ray_local, fields, tmp_path, monkeypatch):
    from bloodsmear.inference import ray_engine

    monkeypatch.setattr(ray_engine, "SCALE_CHUNK", 1)  # one field per piece (the driver cuts them)
    marks = tmp_path / "marks"
    marks.mkdir()
    driver = make_pipeline()
    calls = []
    real = driver.estimate_rbc

    def slow(rgb):  # the driver's first field waits (at most 2 min) until the actor, once up, measured one
        calls.append(1)
        t_end = time.monotonic() + 120
        while len(calls) == 1 and not any(marks.iterdir()) and time.monotonic() < t_end:
            time.sleep(0.1)
        return real(rgb)

    driver.estimate_rbc = slow
    stats: dict = {}
    s = ray_engine.analyze_ray([fields], tmp_path / "ray", driver, factory=partial(_marking_pipeline, str(marks)),
                               workers=1, progress=False, batch_images=2, stats=stats)  # 1 driver thread, 1 actor
    assert 0 < len(calls) < 6 and any(marks.iterdir())  # the actor measured some of the 6 readable fields
    loc = analyze([fields], tmp_path / "local", make_pipeline(), progress=False, workers=1, batch_images=2)
    assert s.n_analysed == 6 and loc.n_cells == s.n_cells
    assert _close(_records(tmp_path / "ray"), _records(tmp_path / "local"))  # the same plan, the same results
    assert sum(a[2] for a in stats["actor_spans"].values()) == 7
    rate, startup = ray_engine.steady_rate(stats)
    assert rate > 0 and 0 < startup < stats["analyse_s"] and stats["scale_s"] > 0


class _Call:
    def __init__(self, fn):
        self.remote = fn


def test_pieces_of_the_scale_pass_not_returned_are_measured_by_the_driver():
    from types import SimpleNamespace

    from bloodsmear.inference import ray_engine

    paths = [Path(f"p{i}") for i in range(ray_engine.SCALE_CHUNK * 2 + 3)]  # 3 pieces
    theirs = {1: [[float(i), [3, 4]] for i in range(ray_engine.SCALE_CHUNK)]}  # an actor returned piece 1 only
    holder = SimpleNamespace(offer=_Call(lambda pieces: None), claim=_Call(lambda: None),  # all claimed
                             measured=_Call(lambda: theirs))
    got = ray_engine._shared_map(SimpleNamespace(get=lambda x: x), holder, 2)(lambda p: ("mine", p), paths)
    n = ray_engine.SCALE_CHUNK
    assert got[:n] == [("mine", p) for p in paths[:n]] and got[2 * n:] == [("mine", p) for p in paths[2 * n:]]
    assert got[n:2 * n] == [(float(i), (3, 4)) for i in range(n)]


def test_a_failing_scale_pass_fails_the_run_with_its_own_error(ray_local, fields, tmp_path, monkeypatch):
    from bloodsmear.inference import ray_engine

    def boom(*a, **kw):
        raise BloodsmearError("scale pass boom")

    monkeypatch.setattr(ray_engine, "plan_for", boom)
    with pytest.raises(BloodsmearError, match="scale pass boom"):  # and the actors do not wait for ever
        _ray_analyze([fields], tmp_path / "out", partial(make_pipeline))


def _threads_pipeline(folder: str):
    """A fake pipeline that notes the torch threads its process computes with."""
    import torch

    Path(folder, f"{os.getpid()}.txt").write_text(str(torch.get_num_threads()))
    return make_pipeline()


def test_actors_compute_with_as_many_threads_as_their_cpus(ray_local, fields, tmp_path):
    (tmp_path / "threads").mkdir()
    from bloodsmear.inference.ray_engine import analyze_ray

    factory = partial(_threads_pipeline, str(tmp_path / "threads"))  # 1 actor on a 2-core machine: still 1 thread
    analyze_ray([fields], tmp_path / "out", factory(), factory=factory, workers=1, progress=False, scale=20)
    seen = [p.read_text() for p in (tmp_path / "threads").glob("*.txt") if p.stem != str(os.getpid())]
    assert seen and set(seen) == {"1"}  # 1 Ray CPU each (the default): 1 thread, not the machine's cores


def test_steady_rate_and_the_run_size_within_15_percent():
    from bloodsmear.experiments.bench_analyze import fields_within
    from bloodsmear.inference.ray_engine import steady_rate

    rate, startup = steady_rate({"wall_start": 95.0, "actor_spans": {1: [100.0, 110.0, 80], 2: [102.0, 110.0, 80]}})
    assert rate == pytest.approx(18.0) and startup == pytest.approx(5.0)
    assert steady_rate({"wall_start": 0.0, "actor_spans": {}}) == (None, None)
    # 10 s fixed + 200 fields at 20/s against a local 20/s: within 15 % from 10 / (1.15/20 - 1/20) fields
    assert fields_within(20.0, 20.0, 200, 20.0) == pytest.approx(10 / 0.0075)
    assert fields_within(20.0, 20.0, 200, 17.0) is None  # steady more than 15 % slower: never


def test_engine_ray_without_ray_names_the_extra(monkeypatch, fields, tmp_path):
    from bloodsmear.cli.main import app
    from bloodsmear.inference import ray_engine

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(BloodsmearError, match=r"pip install 'bloodsmear\[ray\]'"):
        ray_engine.import_ray()
    res = CliRunner().invoke(app, ["analyze", str(fields), "--out", str(tmp_path / "o"), "--engine", "ray"])
    assert res.exit_code != 0 and "pip install 'bloodsmear[ray]'" in res.output
    assert not (tmp_path / "o").exists()
    res = CliRunner().invoke(app, ["analyze", str(fields), "--out", str(tmp_path / "o"), "--address", "auto"])
    assert res.exit_code != 0 and "--address" in res.output


@pytest.mark.realdata
def test_cli_engine_ray_matches_local_on_bccd_fields(ray_local, data_root, tmp_path):
    """The default pipeline on 6 BCCD fields: `analyze --engine ray` (the CLI) gives the local engine's
    masks, classes and counts."""
    from bloodsmear.cli.main import app
    from bloodsmear.inference.pipeline import Pipeline

    src = need(data_root, "bccd", "JPEGImages")
    inp = tmp_path / "in"
    inp.mkdir()
    for p in sorted(src.glob("*.jpg"))[:6]:
        (inp / p.name).symlink_to(p)
    analyze([inp], tmp_path / "local", Pipeline.from_config("default"), progress=False, workers=2)
    res = CliRunner().invoke(app, ["analyze", str(inp), "--out", str(tmp_path / "ray"), "--engine", "ray",
                                   "--workers", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["n_analysed"] == 6
    assert _close(_records(tmp_path / "ray"), _records(tmp_path / "local"))
    assert _counts(tmp_path / "ray") == _counts(tmp_path / "local")
