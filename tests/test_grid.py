"""The benchmark grid: config, dataset preparation, rows, resume, tables (fake runner, tiny folders)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from bloodsmear.errors import InputError
from bloodsmear.experiments.grid import GridDataset, RowResult, grid_config_from_dict, grid_rows, load_grid_config, prepare_dataset, run_grid, select_subset
from bloodsmear.outputs.tables import markdown_table

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "grid"


def _cell_image(rng, colour) -> np.ndarray:
    img = np.full((48, 48, 3), 225, np.uint8)
    cv2.circle(img, (24, 24), 9, colour, -1)
    return (img.astype(int) + rng.integers(-8, 8, img.shape)).clip(0, 255).astype(np.uint8)


def make_folder(root: Path, rng, per_class=6, classes=("lymphocyte", "monocyte", "neutrophil")) -> Path:
    colours = [(90, 40, 150), (130, 60, 170), (60, 30, 110), (100, 80, 180)]
    for i, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            cv2.imwrite(str(root / c / f"{c[:3].upper()}_{k}.jpg"), _cell_image(rng, colours[i % 4]))
    return root


def _cfg(tmp_path: Path, data: Path, **kw) -> dict:
    d = {
        "name": "t",
        "backbones": [{"name": "tiny", "pretrained": False}, "tiny2"],
        "modes": ["frozen", "finetune"],
        "datasets": [
            {"name": "A", "source": str(data)},
            {"name": "C-A", "source": str(data), "kind": "cpbc", "method": "paper"},
        ],
        "per_class": 4,
        "image_size": 32,
        "epochs": 1,
        "out": str(tmp_path / "grid"),
    }
    d.update(kw)
    return d


def fake_runner(calls: list):
    def run(cfg, row, data_dir, run_dir, restart=False):
        calls.append(row.id if not restart else row.id + " (restart)")
        n = sum(1 for _ in data_dir.glob("*/*"))
        f1 = 0.5 + 0.1 * (row.mode == "finetune") + 0.01 * len(calls)
        return RowResult(row=row, settings={}, metrics={"accuracy": f1, "macro_precision": f1, "macro_recall": f1,
                                                        "macro_f1": f1}, train_time_s=1.5, n_train=n, epochs_run=1)

    return run


def test_config_rows_and_errors(tmp_path):
    cfg = grid_config_from_dict(_cfg(tmp_path, tmp_path))
    rows = grid_rows(cfg)
    assert len(rows) == 2 * 2 * 2
    assert rows[0].id == "A__tiny__frozen" and rows[-1].id == "C-A__tiny2__finetune"
    with pytest.raises(InputError, match="unknown mode"):
        grid_config_from_dict(_cfg(tmp_path, tmp_path, modes=["frozen", "melted"]))
    with pytest.raises(InputError, match="unknown kind"):
        grid_config_from_dict(_cfg(tmp_path, tmp_path, datasets=[{"name": "x", "source": "y", "kind": "zip"}]))
    with pytest.raises(InputError, match="no such config file"):
        load_grid_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["small-cpu.yaml", "paper-full.yaml"])
def test_shipped_grid_configs_parse(name):
    cfg = load_grid_config(CONFIGS / name)
    assert {b.name for b in cfg.backbones} >= {"mobilenet_v2"}
    assert {d.name for d in cfg.datasets} >= {"PBC", "C-PBC"}
    assert set(cfg.modes) == {"frozen", "finetune"}


def test_select_subset_is_seeded_and_capped():
    paths = {"a": [Path(f"a{i}") for i in range(10)], "b": [Path("b0"), Path("b1")]}
    s1, s2 = select_subset(paths, 3, 7), select_subset(paths, 3, 7)
    assert s1 == s2 and len(s1["a"]) == 3 and len(s1["b"]) == 2
    assert select_subset(paths, None, 7)["a"] == sorted(paths["a"])


def test_prepare_folder_subset_and_cpbc(tmp_path, rng):
    data = make_folder(tmp_path / "data", rng)
    d, counts = prepare_dataset(GridDataset(name="A", source=str(data)), per_class=4, seed=1, cache=tmp_path / "cache")
    assert counts == {"lymphocyte": 4, "monocyte": 4, "neutrophil": 4}
    files = sorted(d.glob("*/*"))
    assert len(files) == 12 and all(f.is_symlink() for f in files)
    c, ccounts = prepare_dataset(GridDataset(name="C-A", source=str(data), kind="cpbc", method="paper"), per_class=4, seed=1,
                                 cache=tmp_path / "cache")
    assert ccounts == counts
    # the same images, cropped (smaller than the 48 px originals)
    assert sorted(p.stem for p in c.glob("*/*")) == sorted(p.stem for p in files)
    crop = cv2.imread(str(next(c.glob("*/*"))))
    assert crop.shape[0] < 48 and crop.shape[1] < 48
    # classes filter; min_per_class drops thin classes, and none left is an error naming the folder
    _, some = prepare_dataset(GridDataset(name="B", source=str(data), classes=["monocyte", "neutrophil"]), per_class=None,
                              seed=1, cache=tmp_path / "cache")
    assert some == {"monocyte": 6, "neutrophil": 6}
    with pytest.raises(InputError, match="no class with at least 7"):
        prepare_dataset(GridDataset(name="B", source=str(data), min_per_class=7), per_class=None, seed=2, cache=tmp_path / "c2")


def test_run_grid_writes_tables_and_resumes(tmp_path, rng):
    data = make_folder(tmp_path / "data", rng)
    cfg = grid_config_from_dict(_cfg(tmp_path, data))
    calls: list = []
    res = run_grid(cfg, runner=fake_runner(calls))
    assert len(calls) == 8 and len(res.rows) == 8
    with res.csv_path.open() as f:
        table = list(csv.DictReader(f))
    assert [(r["dataset"], r["backbone"], r["mode"]) for r in table][:2] == [("A", "tiny", "frozen"), ("A", "tiny", "finetune")]
    assert table[0]["weights"] == "random init" and table[0]["per_class"] == "4" and table[0]["image_size"] == "32"
    assert float(table[1]["macro_f1"]) == pytest.approx(100 * (0.6 + 0.02))
    md = res.md_path.read_text()
    assert md.count("\n| ") == 1 + 8 and "random init" in md
    # resume: nothing re-runs
    calls2: list = []
    res2 = run_grid(cfg, runner=fake_runner(calls2))
    assert calls2 == [] and len(res2.rows) == 8 and len(res2.skipped) == 8
    # a changed setting re-runs; a deleted row re-runs alone
    (cfg.out_dir() / "rows" / "A__tiny2__frozen.json").unlink()
    calls3: list = []
    run_grid(cfg, runner=fake_runner(calls3))
    assert calls3 == ["A__tiny2__frozen"]
    cfg.epochs = 2
    calls4: list = []
    res4 = run_grid(cfg, runner=fake_runner(calls4), only=["C-A__tiny__"])
    assert calls4 == ["C-A__tiny__frozen (restart)", "C-A__tiny__finetune (restart)"]  # old checkpoints dropped
    assert len(res4.rows) == 2  # rows with the old settings are not mixed into the new table
    saved = json.loads((cfg.out_dir() / "rows" / "C-A__tiny__frozen.json").read_text())
    assert saved["settings"]["epochs"] == 2 and saved["settings"]["dataset_kind"] == "cpbc/paper"


def test_failed_row_is_reported_and_grid_goes_on(tmp_path, rng):
    data = make_folder(tmp_path / "data", rng)
    cfg = grid_config_from_dict(_cfg(tmp_path, data, datasets=[{"name": "A", "source": str(data)}]))

    def runner(cfg, row, data_dir, run_dir, restart=False):
        if row.backbone == "tiny2":
            raise RuntimeError("boom")
        return fake_runner([])(cfg, row, data_dir, run_dir)

    res = run_grid(cfg, runner=runner)
    assert len(res.rows) == 2
    assert sum("failed: RuntimeError: boom" in s for s in res.skipped) == 2


def test_markdown_table_escapes():
    md = markdown_table(["a", "b"], [[1.23456, "x|y"]])
    assert md.splitlines()[2] == "| 1.235 | x\\|y |"


def test_export_cell_crops_labels_and_boxes(tmp_path, rng):
    from bloodsmear.io import write_image_atomic
    from bloodsmear.experiments.grid import export_cell_crops
    from bloodsmear.types import AnnotatedImage, Cell, Dataset

    img = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    p = write_image_atomic(tmp_path / "f1.png", img)
    cells = [
        Cell("wbc", box=(10, 10, 30, 30), subclass="monocyte"),
        Cell("wbc", box=(40, 5, 60, 25)),  # no subtype: left out
        Cell("rbc", box=(0, 0, 10, 10)),  # not a WBC
        Cell("eosinophil", box=(70, 50, 80, 60)),  # at the border: clipped
    ]
    ds = Dataset("d", tmp_path, [AnnotatedImage(p, 80, 60, cells)])
    out = export_cell_crops(ds, tmp_path / "crops", margin=0.1)
    assert sorted(out) == ["eosinophil", "monocyte"]
    assert [q.name for q in out["monocyte"]] == ["f1_0.jpg"] and [q.name for q in out["eosinophil"]] == ["f1_3.jpg"]
    mono = cv2.imread(str(out["monocyte"][0]))
    assert mono.shape[:2] == (24, 24)  # 20 px box + 2 px margin each side


def test_grid_with_the_real_trainer_tiny_backbone(tmp_path, rng):
    """End to end: tiny_cnn on a tiny synthetic folder through `training.trainer.train`, then resume."""
    data = make_folder(tmp_path / "data", rng, per_class=10)
    cfg = grid_config_from_dict({
        "name": "tiny", "backbones": ["tiny_cnn"], "modes": ["frozen", "finetune"],
        "datasets": [{"name": "A", "source": str(data)}],
        "per_class": 10, "image_size": 32, "epochs": 1, "batch_size": 8, "lr": 1e-3, "threads": 1,
        "out": str(tmp_path / "grid"),
        "train": {"early_stopping_patience": None, "data": {"cache_dir": str(tmp_path / "arrays")}},
    })
    res = run_grid(cfg)
    assert [r.row.id for r in res.rows] == ["A__tiny_cnn__frozen", "A__tiny_cnn__finetune"], res.skipped
    with res.csv_path.open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2
    for r in table:
        assert 0.0 <= float(r["macro_f1"]) <= 100.0 and 0.0 <= float(r["accuracy"]) <= 100.0
        assert int(r["n_train"]) + int(r["n_val"]) + int(r["n_test"]) == 30 and int(r["n_test"]) > 0
        assert r["epochs"] == "1" and r["image_size"] == "32"
    assert (cfg.out_dir() / "runs" / "A__tiny_cnn__frozen" / "model" / "config.json").is_file()
    assert run_grid(cfg, runner=fake_runner(calls := [])).rows and calls == []  # resumed: nothing re-runs
    res = run_grid(cfg, only=["frozen"], rerun=True)  # the real trainer restarts from scratch
    assert [r.row.mode for r in res.rows] == ["frozen", "finetune"] and not any("failed" in s for s in res.skipped)
