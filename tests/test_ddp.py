"""Data-parallel training (torchrun / DDP): 2 CPU processes with gloo, tiny synthetic configs.

Each test launches 2 ranks with `torch.multiprocessing.spawn`, torchrun's env vars set by hand, through
`run_config_file` (what `torchrun -m bloodsmear train CONFIG` runs). The workers record which rank
wrote what and save their final weights, so the test can check every rank ends with the same model and
only rank 0 wrote.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_classifier import tiny_config
from test_tta import _domain_folder

from bloodsmear.training.feature_cache import MapLoader
from bloodsmear.training.loaders import ArrayLoader

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, stages: list, rec: str) -> None:
    """One rank: every (name, config, MASTER_PORT, kill_at_epoch) stage in turn, each its own torchrun-like run."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    from bloodsmear.experiments import domain_runs, runner
    from bloodsmear.training import trainer

    calls: list[str] = []
    state: dict = {"dir": Path(rec), "kill_at": None}

    def logged(name, fn):
        def f(*a, **k):
            calls.append(name)
            return fn(*a, **k)
        return f

    def keep_weights(fit):
        def f(model, objective, *a, **k):
            fr = fit(model, objective, *a, **k)
            w = {**dict(model.named_parameters()), **{f"objective.{n}": p for n, p in objective.named_parameters()}}
            torch.save({n: p.detach().cpu() for n, p in w.items()}, state["dir"] / f"weights{rank}.pt")
            return fr
        return f

    def load_logged(*a, **k):
        ck = load(*a, **k)
        calls.append("resumed" if ck is not None else "fresh")
        return ck

    def train_one_epoch(*a, epoch=0, **k):
        if epoch == state["kill_at"]:
            raise RuntimeError("killed")
        return real_epoch(*a, epoch=epoch, **k)

    load, real_epoch = trainer.load_checkpoint, trainer.train_one_epoch
    trainer.load_checkpoint, trainer.train_one_epoch = load_logged, train_one_epoch
    trainer.save_checkpoint = logged("save_checkpoint", trainer.save_checkpoint)
    trainer.save_model = logged("save_model", trainer.save_model)
    domain_runs.save_model = logged("save_model", domain_runs.save_model)
    trainer.fit = keep_weights(trainer.fit)
    domain_runs.fit = keep_weights(domain_runs.fit)
    for name, config, port, kill_at in stages:
        state["dir"] = Path(rec) / name
        state["dir"].mkdir(parents=True, exist_ok=True)
        state["kill_at"] = kill_at
        os.environ["MASTER_PORT"] = str(port)
        calls.clear()
        try:
            runner.run_config_file(config, progress=False)
        except RuntimeError as e:
            calls.append(f"error: {e}")
        (state["dir"] / f"calls{rank}.json").write_text(json.dumps(calls))


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One 2-process launch (the processes' start-up is most of the cost) running every stage."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = tiny_config(tmp, epochs=2, batch_size=4)
    clf = tmp / "clf.json"
    clf.write_text(json.dumps({"kind": "classifier", **cfg.to_dict()}))
    rng = np.random.default_rng(0)
    _domain_folder(tmp / "a", 0, rng)
    _domain_folder(tmp / "b", 60, rng)
    dann = tmp / "dann.json"
    dann.write_text(json.dumps({
        "kind": "dann", "name": "tiny", "source": {"name": "folder", "root": str(tmp / "a")},
        "target": {"name": "folder", "root": str(tmp / "b")}, "classes": ["lymphocyte", "neutrophil"],
        "image_size": 32, "maps": {"backbone": "tiny_cnn", "train_from": 0, "views": 1},
        "train": {"epochs": 1, "batch_size": 4, "pretrained": False}, "out_dir": str(tmp / "out"),
        "cache_dir": str(tmp / "cache")}))
    stages = [("killed", str(clf), _free_port(), 1),  # killed in epoch 2: rank 0's checkpoint of epoch 1 stays
              ("resumed", str(clf), _free_port(), None), ("dann", str(dann), _free_port(), None)]
    rec = tmp / "rec"
    mp.spawn(_worker, args=(stages, str(rec)), nprocs=WORLD, join=True)
    calls = {name: [json.loads((rec / name / f"calls{r}.json").read_text()) for r in range(WORLD)]
             for name, *_ in stages}
    return tmp, rec, calls, cfg


def _same_weights(rec: Path) -> dict:
    w0, w1 = (torch.load(rec / f"weights{r}.pt") for r in range(WORLD))
    assert w0.keys() == w1.keys() and w0
    for n in w0:
        assert torch.equal(w0[n], w1[n]), n
    return w0


# ------------------------------------------------------------------------------------------ sharding
def test_array_loader_shards_cover_every_sample_once_per_epoch():
    n, bs = 24, 4
    x = np.zeros((n, 8, 8, 3), np.uint8)
    y = np.arange(n)  # the label names the sample
    kw = dict(batch_size=bs, mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True, seed=3, drop_last=True)
    single = ArrayLoader(x, y, **kw)
    single.set_epoch(2)
    ranks = []
    for r in range(WORLD):
        lo = ArrayLoader(x, y, **kw)
        lo.shard = (r, WORLD)
        lo.set_epoch(2)
        ranks.append(np.concatenate([yy.numpy() for _, yy in lo]))
        assert len(lo) == n // bs // WORLD
    seen = np.concatenate(ranks)
    assert sorted(seen) == list(range(n))  # every sample once, across ranks
    assert sorted(seen) == sorted(np.concatenate([yy.numpy() for _, yy in single]))
    # a global step's batch across ranks is the single process's batch of twice the size
    assert set(ranks[0][:bs]) | set(ranks[1][:bs]) == set(single._order()[:2 * bs])


def test_map_loader_shards_are_disjoint_and_equal_in_length():
    n = 21  # not a multiple of the world: padded, every rank the same number of batches
    maps = torch.zeros((n, 1, 2, 2, 2))
    y = np.arange(n)
    parts = []
    for r in range(WORLD):
        lo = MapLoader(maps, y, batch_size=1, shuffle=True, seed=0)
        lo.shard = (r, WORLD)
        parts.append(np.concatenate([yy.numpy() for _, yy in lo]))
    assert len(parts[0]) == len(parts[1]) == 11
    assert set(np.concatenate(parts)) == set(range(n))


# --------------------------------------------------------------------------------------- end to end
def test_classifier_trains_data_parallel_and_resumes_under_torchrun(launched):
    tmp, rec, calls, cfg = launched
    assert calls["killed"][0][-1] == calls["killed"][1][-1] == "error: killed"
    resumed = calls["resumed"]
    assert resumed[0].count("resumed") == resumed[1].count("resumed") == 1  # both ranks resumed the one checkpoint
    assert "save_model" in resumed[0] and "save_checkpoint" in resumed[0]
    assert not {"save_model", "save_checkpoint"} & set(resumed[1] + calls["killed"][1])  # only rank 0 writes
    _same_weights(rec / "resumed")
    model = Path(cfg.out_dir) / "model"
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["distributed"]["world_size"] == WORLD and metrics["epochs_run"] == 2
    assert "data-parallel on 2 processes" in (model / "card.md").read_text()


def test_dann_trains_data_parallel_with_the_domain_classifier_averaged(launched):
    tmp, rec, calls, _ = launched
    assert "save_model" in calls["dann"][0] and not {"save_model", "save_checkpoint"} & set(calls["dann"][1])
    w = _same_weights(rec / "dann")  # the model and the domain classifier behind the gradient reversal
    assert any(n.startswith("objective.domain_classifier.") for n in w)
    model = tmp / "out" / "runs" / "dann_A_B" / "model"
    assert "data-parallel on 2 processes" in (model / "card.md").read_text()
