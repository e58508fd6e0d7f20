"""Leave-one-domain-out (`bench lodo`): runs per held-out domain, recipe and seed on three tiny synthetic
domains, the table (mean ± sd, absent classes, shipped rows), resuming, and the config's errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

CLASSES = ["lymphocyte", "monocyte", "neutrophil"]


def _disc_domain(root: Path, cast: tuple[int, int, int], rng, classes=CLASSES, n: int = 10) -> Path:
    """Class-per-folder of small coloured discs: the class is the disc's size and colour, the domain a cast."""
    import cv2

    yy, xx = np.mgrid[:36, :36]
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            im = 200 + rng.integers(-20, 20, (36, 36, 3))
            colour = [40, 40, 40]
            colour[CLASSES.index(c)] = 180
            im[(yy - 18) ** 2 + (xx - 18) ** 2 <= (6 + 4 * CLASSES.index(c)) ** 2] = colour
            im += np.array(cast)
            cv2.imwrite(str(root / c / f"{c[:3]}_{i}.png"), np.clip(im, 0, 255).astype(np.uint8))
    return root


def _shipped_folder(dest: Path) -> Path:
    """A tiny model folder with one class more than the experiment, recorded as trained on domain a."""
    from bloodsmear.models.artifact import ModelInfo, save_model
    from bloodsmear.models.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier("tiny_cnn", 4, pretrained=False)
    spec = model.backbone.spec
    training = {"kind": "domains", "run": {"id": "src_A", "train": ["A"], "objective": "supervised", "target": None},
                "domain_specs": {"A": {"name": "folder", "root": "a"}}}
    save_model(model, dest, ModelInfo(backbone="tiny_cnn", classes=["ig", *CLASSES], input_size=28,
                                      mean=list(spec.mean), std=list(spec.std), name="tiny-shipped",
                                      training=training))
    return dest


def _config(tmp: Path, **kw):
    from bloodsmear.experiments.lodo_config import LodoConfig

    rng = np.random.default_rng(0)
    doms = {"a": _disc_domain(tmp / "a", (0, 0, 0), rng), "b": _disc_domain(tmp / "b", (30, -20, 10), rng),
            "c": _disc_domain(tmp / "c", (-30, 10, 40), rng, classes=["lymphocyte", "neutrophil"])}
    d = dict(name="tiny", domains={k: {"name": "folder", "root": str(p)} for k, p in doms.items()},
             classes=CLASSES, image_size=32, min_support=1, seeds=[0, 1],
             recipes={"source": {"description": "mixed"}, "stain": {"stain": True, "stain_reference": "a"}},
             maps={"backbone": "tiny_cnn", "train_from": 0, "views": 2},
             train={"epochs": 1, "batch_size": 4, "pretrained": False},
             shipped=[str(_shipped_folder(tmp / "shipped"))], out_dir=str(tmp / "out"), cache_dir=str(tmp / "cache"))
    d.update(kw)
    return LodoConfig(**d)


@pytest.fixture(scope="module")
def tiny_lodo(tmp_path_factory):
    from bloodsmear.experiments.lodo import run_lodo

    cfg = _config(tmp_path_factory.mktemp("lodo"))
    n = torch.get_num_threads()
    try:
        return cfg, run_lodo(cfg, progress=False)
    finally:
        torch.set_num_threads(n)


def test_lodo_trains_one_run_per_seed_held_out_domain_and_recipe(tiny_lodo):
    cfg, res = tiny_lodo
    out = Path(cfg.out_dir)
    for seed in (0, 1):
        for k in "abc":
            for r in ("source", "stain"):
                run = out / "runs" / f"seed{seed}" / f"{r}_wo_{k}"
                assert (run / "model" / "weights.safetensors").is_file()
                got = json.loads((run / "result.json").read_text())["settings"]["run"]
                assert got["train"] == [x for x in "abc" if x != k] and got["stain"] == (r == "stain")
    assert len(res.seed_rows) == 2 * 3 * 2
    # every domain's test maps cached apart (two class-per-folder domains share relative paths), per stain:
    # none, a's (holding out b or c) and b's (holding out a)
    assert len(list(Path(cfg.cache_dir).glob("maps_folder_test_*.pt"))) == 3 * 3
    # the stain recipe never normalises to the held-out domain: holding out a, it uses b's stain
    ident = json.loads((out / "runs" / "seed0" / "stain_wo_a" / "lodo_identity.json").read_text())
    assert ident["stain_reference"] == "b"
    assert json.loads((out / "runs" / "seed0" / "stain_wo_b" / "lodo_identity.json").read_text())[
        "stain_reference"] == "a"


def test_lodo_rows_are_means_and_sds_over_the_seeds(tiny_lodo):
    _, res = tiny_lodo
    trained = [r for r in res.rows if r["seeds"]]
    assert {(r["held_out"], r["recipe"]) for r in trained} == {
        (f"folder_{k}", r) for k in "abc" for r in ("source", "stain")}
    for row in trained:
        seeds = [s for s in res.seed_rows if (s["held_out"], s["recipe"]) == (row["held_out"], row["recipe"])]
        assert len(seeds) == row["seeds"] == 2
        acc = [s["accuracy"] for s in seeds]
        assert row["accuracy"] == pytest.approx(np.mean(acc))
        assert row["accuracy_sd"] == pytest.approx(np.std(acc, ddof=1))
        f1 = [s["macro_f1"] for s in seeds]
        assert row["macro_f1"] == pytest.approx(np.mean(f1)) and row["macro_f1_sd"] == pytest.approx(np.std(f1, ddof=1))
        assert row["trained_on"] == "+".join(f"folder_{k}" for k in "abc" if f"folder_{k}" != row["held_out"])
    absent = {r["held_out"]: r["absent"] for r in trained}
    assert absent["folder_c"] == ["monocyte"] and absent["folder_a"] == []


def test_lodo_tables_and_shipped_rows(tiny_lodo):
    cfg, res = tiny_lodo
    out = Path(cfg.out_dir)
    md = (out / "lodo.md").read_text()
    assert "macro F1 over the classes with at least 1 test crops" in md and " ± " in md
    assert "| folder_c | source | folder_a+folder_b |" in md
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["rows"]) == len(res.rows) and len(saved["seed_rows"]) == 12
    assert (out / "lodo.csv").read_text().splitlines()[0].startswith("held_out,recipe,trained_on,n,accuracy")
    shipped = [r for r in res.rows if r["recipe"] == "shipped: tiny-shipped"]
    assert [r["held_out"] for r in shipped] == ["folder_a", "folder_b", "folder_c"]
    # its card records training on a "folder" domain, so every folder row is marked as seen (not held out)
    assert all(not r["held_out_ok"] and r["trained_on"] == "folder (labelled)" for r in shipped)
    assert "shipped: tiny-shipped *" in md
    # the same test crops as the runs
    n = {r["held_out"]: r["n"] for r in res.rows if r["recipe"] == "source"}
    assert all(r["n"] == n[r["held_out"]] for r in shipped)


def test_lodo_resume_skips_finished_runs_and_retrains_changed_ones(tiny_lodo, monkeypatch):
    from bloodsmear.experiments import domain_runs
    from bloodsmear.experiments.lodo import run_lodo

    cfg, res = tiny_lodo

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(domain_runs, "fit", no_training)
    again = run_lodo(cfg, progress=False)
    assert again.seed_rows == res.seed_rows
    # another stain reference: the stain runs are trained again, the source runs not
    changed = cfg.model_copy(update={"recipes": {**cfg.recipes, "stain": cfg.recipes["stain"].model_copy(
        update={"stain_reference": "b"})}})
    run_lodo(changed, progress=False, recipes=["source"], held_out=["c"])
    with pytest.raises(AssertionError, match="trained again"):
        run_lodo(changed, progress=False, recipes=["stain"], held_out=["c"])


def test_bench_lodo_prints_the_table_and_one_json_line(tiny_lodo, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bloodsmear.cli.main import app
    from bloodsmear.experiments import domain_runs

    cfg, _ = tiny_lodo
    monkeypatch.setattr(domain_runs, "fit", None)  # finished runs: nothing trains
    path = cfg.save(tmp_path / "lodo.yaml")
    r = CliRunner().invoke(app, ["bench", "lodo", str(path), "--held-out", "c", "--recipe", "source", "--json"],
                           terminal_width=200)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert [(x["held_out"], x["recipe"]) for x in out["rows"]] == [("folder_c", "source"),
                                                                  ("folder_c", "shipped: tiny-shipped")]
    assert "folder_c" in r.stdout and " ± " in r.stdout
    r = CliRunner().invoke(app, ["bench", "lodo", str(path), "--recipe", "nope"])
    assert r.exit_code == 2 and "unknown recipe 'nope'" in r.stderr


def test_lodo_unknown_recipe_and_domain_key_errors(tiny_lodo, tmp_path):
    from bloodsmear.errors import InputError
    from bloodsmear.experiments.lodo import run_lodo
    from bloodsmear.experiments.lodo_config import load_lodo_config

    cfg, _ = tiny_lodo
    with pytest.raises(InputError, match=r"unknown recipe 'nope' \(valid: source, stain\)"):
        run_lodo(cfg, recipes=["nope"])
    with pytest.raises(InputError, match=r"unknown domain key 'z' \(valid: a, b, c\)"):
        run_lodo(cfg, held_out=["z"])
    p = tmp_path / "l.yaml"
    cases = {"held_out: [x]": r"held_out: unknown domain key 'x' \(valid: pbc, lisc, bccd\)",
             "recipes: {s: {stain: true, stain_reference: q}}": r"recipes.s.stain_reference: unknown domain key 'q'",
             "recipes: {aug: {maps: {viewz: 3}}}": r"unknown key 'recipes.aug.maps.viewz' \(valid: .*views",
             "recipes: {aug: {colour: 1}}": r"unknown key 'recipes.aug.colour'",
             "domains: {a: {name: pbc}}": "at least 2 domains",
             "domains: {a: {name: pbc}, b: {name: xyz}}": "domains.b"}
    for text, msg in cases.items():
        p.write_text("kind: lodo\n" + text + "\n")
        with pytest.raises(InputError, match=msg):
            load_lodo_config(p)


def test_recipe_settings_apply_the_recipe_overrides():
    from bloodsmear.experiments.lodo_config import LodoConfig

    cfg = LodoConfig(maps={"views": 2}, train={"epochs": 3},
                     recipes={"big": {"image_size": 128, "maps": {"backbone": "efficientnet_lite0"},
                                      "train": {"epochs": 9}}, "plain": {}})
    ms, rs, size = cfg.recipe_settings("big")
    assert (ms.backbone, ms.views, rs.epochs, size) == ("efficientnet_lite0", 2, 9, 128)
    ms, rs, size = cfg.recipe_settings("plain")
    assert (ms.backbone, rs.epochs, size) == ("mobilenet_v2", 3, 96)
    assert cfg.stain_reference("plain", "pbc") is None


def test_present_scores_leave_rare_classes_out_of_the_macro_f1():
    from bloodsmear.experiments.lodo import present_scores
    from bloodsmear.metrics.classification import classification_report_arrays

    y = np.array([0, 1, 1, 1, 2, 2, 2])
    p = np.array([1, 1, 1, 2, 2, 2, 2])
    rep = classification_report_arrays(y, p, ["basophil", "eosinophil", "neutrophil"]).to_dict()
    s = present_scores(rep, ["basophil", "eosinophil", "neutrophil"], min_support=2)
    assert s["absent"] == ["basophil"] and s["n"] == 7 and s["accuracy"] == pytest.approx(5 / 7)
    assert s["macro_f1"] == pytest.approx(np.mean([rep["per_class"][c]["f1"] for c in ("eosinophil", "neutrophil")]))


def test_train_runs_a_lodo_config_by_its_kind(tmp_path):
    from bloodsmear.errors import InputError
    from bloodsmear.experiments.runner import load_config_file

    p = tmp_path / "l.yaml"
    p.write_text("kind: lodo\nseeds: [0]\n")
    kind, cfg = load_config_file(p, {"epochs": 3, "out_dir": str(tmp_path / "o")}, ["recipes.source.train.lr=0.001"])
    assert kind.name == "lodo" and cfg.train.epochs == 3 and cfg.out_dir == str(tmp_path / "o")
    assert cfg.recipe_settings("source")[1].lr == 0.001
    with pytest.raises(InputError, match="--seed"):  # the seeds are a list in the config
        load_config_file(p, {"seed": 1})


def test_lodo_calibration_and_bn_adapt_recipe_reusing_the_runs(tmp_path):
    """Every run gets calibration figures chosen on the source validation crops; a `bn_adapt` recipe with
    `reuse` scores the reused recipe's runs (no run folder of its own) after re-estimating batch norm."""
    from bloodsmear.experiments.lodo import run_lodo

    cfg = _config(tmp_path, seeds=[0], held_out=["c"],
                  recipes={"source": {}, "source_bn": {"reuse": "source", "bn_adapt": True}})
    n = torch.get_num_threads()
    try:
        res = run_lodo(cfg, progress=False)
    finally:
        torch.set_num_threads(n)
    out = Path(cfg.out_dir)
    assert not (out / "runs" / "seed0" / "source_bn_wo_c").exists()
    rows = {r["recipe"]: r for r in res.seed_rows}
    for r in rows.values():
        cal = r["calibration"]
        assert cal["temperature"] > 0 and 0.0 <= cal["flagged"] <= 1.0 and cal["n"] == r["n"]
        assert cal["nll_after"] > 0 and cal["val_nll_after"] <= cal["val_nll_before"] + 1e-9
    # unadapted: the calibration's accuracy is the run's own (the reloaded model scores the same crops)
    assert rows["source"]["calibration"]["accuracy"] == pytest.approx(rows["source"]["accuracy"], abs=0.1)
    assert rows["source_bn"]["accuracy"] == pytest.approx(rows["source_bn"]["calibration"]["accuracy"])
    md = (out / "lodo.md").read_text()
    assert "## Calibration and review routing" in md and "| folder_c | source_bn |" in md
    saved = json.loads((out / "results.json").read_text())
    assert {r["recipe"] for r in saved["calibration"]} == {"source", "source_bn"}


def test_review_figures_threshold_from_validation_applied_to_test():
    from bloodsmear.experiments.lodo_scoring import review_figures

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    z = rng.normal(0, 1, (200, 3))
    z[np.arange(200), y] += 2.0
    z *= 5.0  # mostly right, over-confident
    f = review_figures(z[:100], y[:100], z[100:], y[100:], target=0.97)
    assert f["temperature"] > 1.5  # the over-confidence is scaled away
    assert f["nll_after"] < f["nll_before"]
    assert 0 < f["flagged"] < 1 and f["unflagged_accuracy"] >= f["accuracy"]


def test_reuse_must_name_a_training_recipe():
    from bloodsmear.experiments.lodo_config import LodoConfig

    with pytest.raises(ValueError, match="reuse: 'x' is not a recipe that trains"):
        LodoConfig(recipes={"a": {}, "b": {"reuse": "x"}})
    cfg = LodoConfig(recipes={"a": {"stain": True, "maps": {"views": 5}}, "b": {"reuse": "a", "bn_adapt": True}})
    assert cfg.trained_as("b") == "a" and cfg.recipe_settings("b")[0].views == 5
    assert cfg.stain_reference("b", "lisc") == "pbc"
