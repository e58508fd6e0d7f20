"""`bloodsmear data summary|split` and the summary library function."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bloodsmear.cli.main import app
from bloodsmear.data import load_dataset
from bloodsmear.data.cvat import read_cvat
from bloodsmear.data.splits import load_manifest
from bloodsmear.data.summary import size_stats, summarize
from bloodsmear.io import write_image_atomic

runner = CliRunner()


def _pbc(root: Path) -> Path:
    k = 0
    for cls, prefixes, size in (("ig", ("MY", "MMY", "PMY"), (10, 12)), ("basophil", ("BA",), (8, 8)),
                                ("platelet", ("PLATELET",), (8, 8))):
        for i in range(10):
            rgb = np.full((size[1], size[0], 3), k % 256, np.uint8)
            write_image_atomic(root / cls / f"{prefixes[i % len(prefixes)]}_{i}.png", rgb)
            k += 1
    (root / "ig" / ".DS_1.jpg").write_bytes(b"\x00\x01")
    return root


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_summarize_pbc_like(tmp_path):
    s = summarize(load_dataset(_pbc(tmp_path / "pbc")))
    assert s.format == "pbc" and s.images == 30 and s.cells == 30
    assert s.cells_per_class == {"basophil": 10, "ig": 10, "platelet": 10}
    assert s.subclasses == {"ig": {"MMY": 3, "MY": 4, "PMY": 3}}
    assert s.sizes["min"] == [8, 8] and s.sizes["max"] == [10, 12] and s.sizes["most_common"] == [8, 8]
    assert s.sizes["most_common_count"] == 20 and s.sizes["unknown"] == 0
    assert s.skipped == 1 and ".DS_1.jpg" in s.skipped_entries[0]


def test_size_stats_unknown():
    assert size_stats([(0, 0)]) == {"unknown": 1, "distinct": 0, "min": None, "max": None, "most_common": None,
                                    "most_common_count": 0}


def test_summarize_cells():
    xml = ('<annotations><image name="a.jpg" width="100" height="50">'
           '<polygon label="lymphocyte" points="1,1;9,1;5,9"/><box label="lymphocyte" xtl="1" ytl="1" xbr="5" ybr="5"/>'
           '<box label="monocyte" xtl="1" ytl="1" xbr="5" ybr="5"/></image></annotations>')
    s = summarize(read_cvat(xml))
    assert s.images == 1 and s.cells == 3 and s.cells_per_class == {"lymphocyte": 2, "monocyte": 1}
    assert s.sizes["most_common"] == [100, 50]


def test_cli_summary_json(tmp_path):
    r = runner.invoke(app, ["data", "summary", str(_pbc(tmp_path / "pbc")), "--json"])
    assert r.exit_code == 0, r.output
    d = _last_json(r.output)
    assert d["images"] == 30 and d["cells_per_class"]["ig"] == 10 and d["skipped"] == 1
    assert d["sizes"]["most_common"] == [8, 8]
    assert "ig" in r.output  # the table


def test_cli_summary_bad_format_and_path(tmp_path):
    r = runner.invoke(app, ["data", "summary", str(tmp_path), "--format", "yolo"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["data", "summary", str(tmp_path / "absent")])
    assert r.exit_code == 2


def test_cli_split(tmp_path):
    root = _pbc(tmp_path / "pbc")
    out = tmp_path / "m" / "split.json"
    r = runner.invoke(app, ["data", "split", str(root), "--scheme", "80-10-10", "--seed", "3", "--out", str(out),
                            "--json"])
    assert r.exit_code == 0, r.output
    d = _last_json(r.output)
    assert d["sizes"] == {"train": 24, "val": 3, "test": 3}
    m = load_manifest(out)
    assert m.scheme == "80-10-10" and m.seed == 3 and m.format == "pbc"
    assert sum(len(v) for v in m.splits.values()) == 30
    assert d["counts"]["test"] == {"basophil": 1, "ig": 1, "platelet": 1}
    r = runner.invoke(app, ["data", "split", str(root), "--scheme", "70-30", "--out", str(out)])
    assert r.exit_code == 2
    # one line from the CLI's error boundary, naming the valid schemes
    assert [ln for ln in r.output.splitlines() if ln.strip()] == [
        "error: --scheme: unknown scheme '70-30' (valid: 64-16-20, 80-10-10)"]


@pytest.mark.realdata
@pytest.mark.parametrize("name, images, cells", [("lisc", 242, 242), ("bccd", 364, 4888),
                                                  ("rv-pbs-annotations", 58, 63), ("pbc224", 17092, 17092)])
def test_real_summary_cli(data_root, name, images, cells):
    root = data_root / name
    if not root.is_dir():
        pytest.skip(f"{name} absent")
    r = runner.invoke(app, ["data", "summary", str(root), "--json"])
    assert r.exit_code == 0, r.output
    d = _last_json(r.output)
    assert d["images"] == images and d["cells"] == cells and d["skipped"] == 0
