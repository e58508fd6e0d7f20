"""`bench learn`: the learning curve of `learn` on tiny synthetic LODO domains (tiny_cnn base, seconds): rows
per (domain, k, seed), mean ± sd, k capped by the train split, cells drawn from train only, resuming, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

CLASSES = ["lymphocyte", "monocyte", "neutrophil"]


def _disc_domain(root: Path, cast: tuple[int, int, int], rng, n: int = 10) -> Path:
    """Class-per-folder of small coloured discs (as tests/test_lodo.py): class = size and colour, domain = cast."""
    import cv2

    yy, xx = np.mgrid[:36, :36]
    for j, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            im = 200 + rng.integers(-20, 20, (36, 36, 3))
            colour = [40, 40, 40]
            colour[j] = 180
            im[(yy - 18) ** 2 + (xx - 18) ** 2 <= (6 + 4 * j) ** 2] = colour
            cv2.imwrite(str(root / c / f"{c[:3]}_{i}.png"), np.clip(im + np.array(cast), 0, 255).astype(np.uint8))
    return root


def _base(dest: Path) -> Path:
    """An untrained tiny_cnn model folder with one class more than the experiment (as a shipped base)."""
    from bloodsmear.models.artifact import ModelInfo, save_model
    from bloodsmear.models.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier("tiny_cnn", 4, pretrained=False)
    spec = model.backbone.spec
    save_model(model, dest, ModelInfo(backbone="tiny_cnn", classes=["ig", *CLASSES], input_size=28,
                                      mean=list(spec.mean), std=list(spec.std), name="tiny-base"))
    return dest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from bloodsmear.experiments.lodo_config import LodoConfig

    tmp = tmp_path_factory.mktemp("bench_learn")
    rng = np.random.default_rng(0)
    doms = {"a": _disc_domain(tmp / "a", (0, 0, 0), rng), "b": _disc_domain(tmp / "b", (30, -20, 10), rng)}
    cfg = LodoConfig(name="tiny", domains={k: {"name": "folder", "root": str(p)} for k, p in doms.items()},
                     classes=CLASSES, image_size=32, min_support=1, shipped=[], recipes={"source": {}}, out_dir=str(tmp / "out"),
                     cache_dir=str(tmp / "cache"))
    return cfg, str(_base(tmp / "base"))


@pytest.fixture(scope="module")
def curve(setup):
    from bloodsmear.experiments.bench_learn import bench_learn

    cfg, base = setup
    n = torch.get_num_threads()
    try:
        return bench_learn(cfg, ks=[3, 50], seeds=[0, 1], base=base, epochs=1, threads=1)
    finally:
        torch.set_num_threads(n)


def _train_test(cfg):
    from bloodsmear.experiments.domain_data import (
        DomainSpec,
        build_domain,
        split_domain,
    )

    out = {}
    for k in cfg.domains:
        dom = build_domain(DomainSpec(size=28, **cfg.domains[k]), CLASSES, cache_dir=cfg.cache_dir)
        out[k] = (dom, split_domain(dom, scheme=cfg.scheme, seed=cfg.split_seed)[0])
    return out


def test_one_row_per_domain_k_and_seed_and_mean_sd_over_seeds(curve, setup):
    cfg, _ = setup
    cells = [(r["domain"], r["k"], r["seed"]) for r in curve.seed_rows]
    assert sorted(c for c in cells if c[1]) == sorted((d, k, s) for d in ("folder_a", "folder_b") for k in (3, 50)
                                                      for s in (0, 1))
    assert sorted(c for c in cells if not c[1]) == [("folder_a", 0, None), ("folder_b", 0, None)]  # the base as is
    assert [(r["domain"], r["k"]) for r in curve.rows] == [(d, k) for d in ("folder_a", "folder_b") for k in (0, 3, 50)]
    for r in curve.rows:
        grp = [s for s in curve.seed_rows if (s["domain"], s["k"]) == (r["domain"], r["k"])]
        acc = [g["accuracy"] for g in grp]
        assert r["accuracy"] == pytest.approx(np.mean(acc))
        if r["k"]:
            assert r["seeds"] == 2 and r["accuracy_sd"] == pytest.approx(np.std(acc, ddof=1))
            assert r["learn_seconds"] > 0 and r["n"] == grp[0]["n"] > 0
        else:
            assert r["seeds"] == 0 and r["accuracy_sd"] is None
    saved = json.loads((Path(cfg.out_dir) / "learn_curve.json").read_text())
    assert len(saved["seed_rows"]) == len(curve.seed_rows) and saved["base"].endswith("base")
    md = (Path(cfg.out_dir) / "learn_curve.md").read_text()
    assert "| folder_a | 3 | 3/3/3 |" in md and " ± " in md
    assert (Path(cfg.out_dir) / "learn_curve.csv").read_text().startswith("domain,k,k_real,")


def test_k_is_capped_by_the_train_split_and_the_real_k_reported(curve, setup):
    cfg, _ = setup
    parts = _train_test(cfg)
    for r in curve.seed_rows:
        if r["k"] != 50:
            continue
        dom, split = parts[r["domain"].split("_")[1]]
        train = {c: int((dom.labels[split["train"]] == i).sum()) for i, c in enumerate(CLASSES)}
        assert r["k_real"] == train and max(train.values()) < 50
        assert r["n_labelled"] == sum(train.values())
        assert r["n"] == len(split["test"])  # scored on every test crop


def test_cells_are_drawn_seeded_from_the_train_split_only(setup, monkeypatch):
    from bloodsmear.experiments import bench_learn as bl
    from bloodsmear.experiments.domain_runs import prepare_domains

    cfg, base = setup
    seen = []
    real_learn = bl.learn

    def spy(cells, out, **kw):
        seen.append([c.copy() for c in cells.crops])
        return real_learn(cells, out, **kw)

    monkeypatch.setattr(bl, "learn", spy)
    prep = prepare_domains(cfg.domains, CLASSES, scheme=cfg.scheme, split_seed=cfg.split_seed, size=cfg.image_size,
                           cache_dir=Path(cfg.cache_dir))
    names = {"a": "folder_a", "b": "folder_b"}
    for seed in (0, 0, 1):
        bl.learn_cell(cfg, "a", 3, seed, prep, names, Path(cfg.cache_dir), base=base, epochs=1, threads=1)
    dom, split = _train_test(cfg)["a"]
    train = {dom.images[i].tobytes() for i in split["train"]}
    test = {dom.images[i].tobytes() for i in split["test"]}
    for crops in seen:
        assert len(crops) == 9 and all(c.tobytes() in train and c.tobytes() not in test for c in crops)
    key = [sorted(c.tobytes() for c in crops) for crops in seen]
    assert key[0] == key[1] and key[0] != key[2]  # same seed, same cells; another seed, others


def test_resume_skips_finished_cells(curve, setup, monkeypatch):
    from bloodsmear.experiments import bench_learn as bl

    cfg, base = setup

    def no_learn(*a, **kw):
        raise AssertionError("a finished (domain, k, seed) was learned again")

    monkeypatch.setattr(bl, "learn", no_learn)
    again = bl.bench_learn(cfg, ks=[3, 50], seeds=[0, 1], base=base, epochs=1, threads=1)
    assert again.rows == curve.rows
    with pytest.raises(AssertionError, match="learned again"):  # other settings: not the finished cell
        bl.bench_learn(cfg, ks=[3], seeds=[0], base=base, epochs=2, threads=1)


def test_bad_k_seed_and_unknown_domain_are_clear_errors(setup):
    from bloodsmear.errors import InputError
    from bloodsmear.experiments.bench_learn import bench_learn, check_ks, parse_ints

    cfg, base = setup
    with pytest.raises(InputError, match="at least 3 labelled cells per class"):
        check_ks([5, 2])
    with pytest.raises(InputError, match="whole number"):
        check_ks(["five"])
    with pytest.raises(InputError, match="--k: comma-separated whole numbers"):
        parse_ints("5,ten", "--k")
    with pytest.raises(InputError, match=r"unknown domain key 'zzz' \(valid: a, b\)"):
        bench_learn(cfg, ks=[5], domains=["zzz"], base=base)
    with pytest.raises(InputError, match="no seed"):
        bench_learn(cfg, ks=[5], seeds=[], base=base)


def test_cli_rejects_a_bad_k_and_an_unknown_domain():
    from typer.testing import CliRunner

    from bloodsmear.cli.main import app

    cfg = str(Path(__file__).resolve().parents[1] / "configs" / "lodo" / "cpu.yaml")
    r = CliRunner().invoke(app, ["bench", "learn", cfg, "--k", "1"])
    assert r.exit_code != 0 and "at least 3 labelled cells per class" in r.output
    r = CliRunner().invoke(app, ["bench", "learn", cfg, "--domains", "lisc,zzz"])
    assert r.exit_code != 0 and "unknown domain key 'zzz'" in r.output
