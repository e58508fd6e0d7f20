"""What the GPU-scale domain runs added: device handling in the engine, `--set` overrides, seed means,
splits from stored hashes, classifier folders that carry a stain normaliser, and pipeline crops of fields."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch


def test_resolve_device_and_to_device():
    from bloodsmear.training.engine import resolve_device, to_device

    assert resolve_device("cpu").type == "cpu"
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    batch = (torch.zeros(2, 3), [torch.ones(1)], "name")
    moved = to_device(batch, torch.device("cpu"))
    assert isinstance(moved, tuple) and isinstance(moved[1], list) and moved[2] == "name"
    assert torch.equal(moved[0], batch[0])
    assert to_device(batch, None) is batch


def test_parse_overrides_nested_and_typed():
    from bloodsmear.config import parse_overrides
    from bloodsmear.errors import InputError

    d = parse_overrides(["train.epochs=2", "seeds=[0, 1]", "device=cuda", "train.dann.max_lambda=0.5"])
    assert d == {"train": {"epochs": 2, "dann": {"max_lambda": 0.5}}, "seeds": [0, 1], "device": "cuda"}
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_overrides(["epochs"])


def test_mean_rows_average_over_seeds():
    from bloodsmear.experiments.domain_tables import mean_rows

    base = {"table": "table6", "run": "dann_A_B", "method": "DANN", "trained_on": "pbc", "target": "lisc",
            "tested_on": "lisc", "n": 48, "epochs": 20}
    rows = [{**base, "seed": s, "macro_precision": p, "macro_recall": p, "macro_f1": f, "accuracy": f,
             "train_seconds": 10.0} for s, p, f in ((0, 80.0, 70.0), (1, 90.0, 80.0), (2, 100.0, 90.0))]
    (m,) = mean_rows(rows)
    assert m["seed"] == "mean of 3" and m["macro_f1"] == 80.0 and m["macro_precision"] == 90.0
    assert m["macro_f1_sd"] == 10.0


def test_split_groups_duplicates_from_stored_hashes_when_files_are_absent(tmp_path):
    from bloodsmear.data.splits import make_split
    from bloodsmear.types import AnnotatedImage, Dataset

    root = tmp_path / "absent"  # no files: without hashes every image would be alone
    ims = [AnnotatedImage(path=root / f"{c}/{i}.jpg", width=0, height=0, source="t", label=c)
           for c in ("a", "b") for i in range(20)]
    hashes = [f"h{k}" for k in range(len(ims))]
    hashes[3] = hashes[17] = "dup"
    m = make_split(Dataset("t", root, ims, "folders"), "64-16-20", seed=1, hashes=hashes)
    side = {e["path"]: name for name in m.splits for e in m.to_dict()["splits"][name]}
    assert side["a/3.jpg"] == side["a/17.jpg"]
    assert m.to_dict()["duplicate_groups"] == [["a/17.jpg", "a/3.jpg"]] or \
        sorted(m.to_dict()["duplicate_groups"][0]) == ["a/17.jpg", "a/3.jpg"]
    with pytest.raises(ValueError, match="hashes"):
        make_split(Dataset("t", root, ims, "folders"), "64-16-20", seed=1, hashes=hashes[:-1])


def test_classifier_folder_applies_its_stain_normalisation(tmp_path, rng):
    from bloodsmear.inference.classify import CellClassifier
    from bloodsmear.models.artifact import ModelInfo, load_model, save_model
    from bloodsmear.models.classifier import build_classifier
    from bloodsmear.preprocess.color import ReinhardNormalizer
    from bloodsmear.preprocess.transforms import fit_image

    torch.manual_seed(0)
    model = build_classifier("tiny_cnn", 3, pretrained=False)
    spec = model.backbone.spec
    crops = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(4)]
    norm = ReinhardNormalizer(per_image=True).fit([rng.integers(100, 200, (32, 32, 3), dtype=np.uint8)])
    info = ModelInfo(backbone="tiny_cnn", classes=["a", "b", "c"], input_size=32, mean=list(spec.mean),
                     std=list(spec.std), color_normalization=norm.to_dict())
    save_model(model, tmp_path / "stained", info)
    assert load_model(tmp_path / "stained").info.color_normalization == norm.to_dict()  # round trip
    save_model(model, tmp_path / "plain", ModelInfo(**{**info.to_dict(), "color_normalization": None}))
    stained, plain = CellClassifier.load(tmp_path / "stained"), CellClassifier.load(tmp_path / "plain")
    before = [c.copy() for c in crops]
    fitted = stained.fit_batch(crops)
    normed = stained.normalize_stain(fitted)
    assert all(np.array_equal(a, b) for a, b in zip(crops, before))  # inputs untouched
    for c, f in zip(crops, normed):
        assert np.array_equal(f, norm(fit_image(c, 32)))
    assert not np.array_equal(normed, fitted) and np.array_equal(plain.normalize_stain(fitted), fitted)
    # every prediction path (crops of any size, or fitted arrays as `eval-classifier` feeds them) normalises
    assert np.allclose(stained.predict_proba(crops), plain.predict_fitted(normed), atol=1e-6)
    assert np.allclose(stained.predict_fitted(fitted), plain.predict_fitted(normed), atol=1e-6)


def test_crop_names_and_largest_cell():
    from bloodsmear.inference.export import crop_names, largest_cell
    from bloodsmear.types import Cell

    assert crop_names("eosinophil/12.jpg", 1, True, "png") == ["eosinophil/12.png"]
    assert crop_names("a/b.c.tif", 2, False, "jpg") == ["a/b.c_0.jpg", "a/b.c_1.jpg"]
    cells = [Cell("wbc", box=(0, 0, 10, 10)), Cell("wbc", box=(0, 0, 30, 30)), Cell("wbc", box=(0, 0, 5, 5))]
    assert largest_cell(cells) == 1 and largest_cell([]) is None


@pytest.mark.realdata
def test_crop_fields_on_lisc_one_per_field_and_resume(data_root, tmp_path):
    from conftest import need

    from bloodsmear.inference.export import MANIFEST, export_cell_crops

    src = need(data_root, "lisc")
    fields = tmp_path / "fields"
    for cls in ("eosinophil", "lymphocyte"):
        (fields / cls).mkdir(parents=True)
        for f in sorted((src / cls).glob("*.jpg"))[:2]:
            (fields / cls / f.name).write_bytes(f.read_bytes())
    (fields / "lymphocyte" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "crops"
    r = export_cell_crops([fields], out, one_per_image=True, progress=False)
    assert r.n_images == 5 and r.n_crops == 4 and len(r.skipped) == 1 and "broken.jpg" in r.skipped[0][0]
    crops = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert [c.split("/")[0] for c in crops] == ["eosinophil"] * 2 + ["lymphocyte"] * 2
    import cv2

    img = cv2.imread(str(out / crops[0]))
    assert img is not None and img.shape[0] == img.shape[1] >= 64  # a square crop around the WBC
    with open(out / MANIFEST, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(int(r["n_cells"]) >= 1 for r in rows)
    again = export_cell_crops([fields], out, one_per_image=True, progress=False)
    assert again.n_resumed == 4 and again.n_crops == 0


def test_shipped_pipeline_names_stain_screening_and_refine():
    from bloodsmear.inference.pipeline_config import PipelineConfig
    from bloodsmear.models.artifact import load_model

    cfg = PipelineConfig.load(None)
    assert cfg.screening == "pbc-screen-stain" and cfg.refine == "pbc-lisc-dann"
    screen = load_model(cfg.screening, base_dir=cfg.base_dir).info
    refine = load_model(cfg.refine, base_dir=cfg.base_dir).info
    assert len(screen.classes) == 8 and screen.color_normalization["method"] == "reinhard"
    assert refine.color_normalization is not None and set(refine.classes) < set(screen.classes)
