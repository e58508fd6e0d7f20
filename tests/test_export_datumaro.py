"""The review's CVAT export, with a person's corrections, read by datumaro's CVAT importer and by our reader.

datumaro pins opencv<5 / pillow<13, so it lives in its own venv (`.ci/datumaro_venv.sh`) and runs
tools/datumaro_check.py in a subprocess. Its python: env BLOODSMEAR_DATUMARO_PYTHON, else
<repo>/.venv-datumaro/bin/python; the datumaro test skips where neither exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from bloodsmear.data.cvat import display_label, read_cvat
from bloodsmear.review.demo import make_demo_out_dir
from bloodsmear.review.exports import export
from bloodsmear.review.session import ReviewRun

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "tools" / "datumaro_check.py"


def _datumaro_python() -> Path:
    env = os.environ.get("BLOODSMEAR_DATUMARO_PYTHON")
    if env:
        if not Path(env).is_file():
            pytest.skip(f"BLOODSMEAR_DATUMARO_PYTHON={env} does not exist")
        return Path(env)
    p = REPO / ".venv-datumaro" / "bin" / "python"
    if not p.is_file():
        pytest.skip(f"no datumaro venv (set BLOODSMEAR_DATUMARO_PYTHON or run .ci/datumaro_venv.sh; {p} absent)")
    return p


def _bbox(polygon) -> list[float]:
    p = np.asarray(polygon, dtype=float).reshape(-1, 2)
    return [*p.min(axis=0).tolist(), *p.max(axis=0).tolist()]


def _has(shapes: list, label: str | None, bbox: list[float]) -> bool:
    return any((label is None or s[1] == label) and np.allclose(s[2], bbox, atol=0.02) for s in shapes)


def test_review_cvat_export_reads_in_datumaro_and_read_cvat(tmp_path):
    py = _datumaro_python()
    out = make_demo_out_dir(tmp_path)
    run = ReviewRun.open(out)
    slides = run.case_detail("demo-case")["slides"]
    first, second = (run.slide_view(s["id"]) for s in slides[:2])
    target = next(c for c in first["cells"] if c["label"] != "eosinophil")
    gone = next(c for c in first["cells"] if c["id"] != target["id"])
    relabelled = run.relabel(target["id"], "eosinophil", version=target["version"], who="t")["cell"]
    run.delete(gone["id"], version=gone["version"], who="t")
    added = run.add(second["id"], [[5, 5], [45, 5], [45, 40], [5, 40]], "basophil", who="t")["cell"]
    xml = export(run, "cvat", tmp_path / "exp")

    res = subprocess.run([str(py), str(CHECK), str(xml), str(tmp_path / "fields")], capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    seen = json.loads(res.stdout.strip().splitlines()[-1])

    # the store after the corrections: the live cells of each field, labels as CVAT spells them
    expected = {}
    for sv in (run.slide_view(s["id"]) for s in slides):
        live = [c for c in sv["cells"] if not c["deleted"]]
        expected[PurePosixPath(sv["name"]).with_suffix("").as_posix()] = Counter(display_label(c["label"]) for c in live)
    assert seen["items"] == len(expected) == 2
    assert set(seen["item"]) == set(expected)
    for item, counts in expected.items():
        assert seen["item"][item]["labels"] == dict(counts), item
        assert seen["item"][item]["polygons"] == sum(counts.values())
    one = seen["item"][PurePosixPath(first["name"]).with_suffix("").as_posix()]
    two = seen["item"][PurePosixPath(second["name"]).with_suffix("").as_posix()]
    assert one["polygons"] == len(first["cells"]) - 1  # the deleted cell is gone ...
    assert not _has(one["shapes"], None, _bbox(gone["polygon"]))
    assert _has(one["shapes"], "eosinophil", _bbox(relabelled["polygon"]))  # ... the relabelled one says so
    assert not _has(one["shapes"], display_label(target["label"]), _bbox(target["polygon"]))
    assert two["polygons"] == len(second["cells"]) + 1 and _has(two["shapes"], "basophil", _bbox(added["polygon"]))

    # our reader agrees with datumaro, image by image and shape by shape
    ours = read_cvat(xml)
    assert len(ours.images) == seen["items"]
    for im in ours.images:
        theirs = seen["item"][PurePosixPath(im.path.relative_to(xml.parent).as_posix()).with_suffix("").as_posix()]
        assert len(im.cells) == theirs["polygons"]
        assert Counter(display_label(c.label) for c in im.cells) == Counter(theirs["labels"])
        for c in im.cells:
            assert _has(theirs["shapes"], display_label(c.label), _bbox(c.polygon)), (im.path, c.label)


def test_datumaro_check_refuses_a_missing_images_folder(tmp_path):
    """datumaro 1.x needs the images; the script says so before importing datumaro (any python runs it)."""
    xml = tmp_path / "annotations.xml"
    xml.write_text("<annotations/>")
    res = subprocess.run([sys.executable, str(CHECK), str(xml)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 2 and "images: no such folder" in res.stderr
