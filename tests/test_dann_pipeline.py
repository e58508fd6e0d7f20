"""Cached-trunk training, domain crops, the DANN train kind and `bloodsmear adapt` on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bloodsmear.experiments.domain_data import crop_square, locate_wbc
from bloodsmear.training.feature_cache import MapLoader, TailModel, cached_views


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _field(rng, cx, cy, tint=(150, 60, 170)):
    img = np.full((120, 160, 3), (215, 205, 225), np.float64) + rng.normal(0, 4, (120, 160, 3))
    yy, xx = np.mgrid[:120, :160]
    for _ in range(25):  # lavender red cells
        x, y = rng.integers(0, 160), rng.integers(0, 120)
        img[(yy - y) ** 2 + (xx - x) ** 2 < 60] = (185, 180, 220)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < 100] = tint  # the stained WBC
    return np.clip(img, 0, 255).astype(np.uint8)


def test_locate_wbc_finds_the_stained_cell(rng):
    img = _field(rng, 110, 40)
    cx, cy, r = locate_wbc(img)
    assert abs(cx - 110) < 3 and abs(cy - 40) < 3 and 7 < r < 13
    assert locate_wbc(np.full((50, 50, 3), 200, np.uint8)) is None


def test_crop_square_stays_inside_and_pads_only_when_needed(rng):
    img = _field(rng, 5, 5)
    c = crop_square(img, 5, 5, 40)
    assert c.shape == (40, 40, 3) and np.array_equal(c, img[:40, :40])  # moved inside the field
    big = crop_square(img, 80, 60, 200)
    assert big.shape == (200, 200, 3)


def test_tail_model_on_cached_maps_equals_the_full_model():
    from bloodsmear.models.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier("tiny_cnn", 3, pretrained=False).eval()
    tail = TailModel(model, 1).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), tail(tail.trunk(x)), atol=1e-5)
    assert not any(p.requires_grad for p in model.backbone.body[0].parameters())
    assert all(p.requires_grad for p in model.backbone.body[1].parameters())
    imgs = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    maps = cached_views(tail, imgs, policy=lambda im, rng: im[::-1].copy(), views=2, seed=0,
                        mean=(0.5,) * 3, std=(0.25,) * 3)
    assert maps.shape[:2] == (6, 2) and maps.dtype == torch.float16
    loader = MapLoader(maps, np.arange(6) % 3, batch_size=4, shuffle=True, seed=1, drop_last=True, num_batches=3)
    batches = list(loader)
    assert len(batches) == 3 and all(b[0].shape[0] == 4 for b in batches)


def _class_folder(root: Path, rng, n=8):
    from bloodsmear.io import write_image_atomic

    for c, tint in (("lymphocyte", (120, 40, 160)), ("neutrophil", (200, 150, 200))):
        for i in range(n):
            img = np.clip(np.full((32, 32, 3), tint, float) + rng.normal(0, 15, (32, 32, 3)), 0, 255).astype(np.uint8)
            write_image_atomic(root / c / f"{c}_{i}.png", img)


def test_adapt_command_end_to_end(tmp_path, rng):
    from typer.testing import CliRunner

    from bloodsmear.cli.main import app
    from bloodsmear.models.artifact import ModelInfo, load_model, save_model
    from bloodsmear.models.classifier import build_classifier
    from bloodsmear.io import write_image_atomic

    src = tmp_path / "src"
    _class_folder(src, rng)
    tgt = tmp_path / "target"
    for i in range(6):
        img = np.clip(np.full((40, 40, 3), (90, 60, 120), float) + rng.normal(0, 15, (40, 40, 3)), 0, 255)
        write_image_atomic(tgt / f"t{i}.png", img.astype(np.uint8))
    (tgt / "broken.jpg").write_bytes(b"not an image")
    model = build_classifier("tiny_cnn", 2, pretrained=False)
    info = ModelInfo(backbone="tiny_cnn", classes=["lymphocyte", "neutrophil"], input_size=32, mean=[0.5] * 3,
                     std=[0.25] * 3, hidden=128)
    save_model(model, tmp_path / "base", info)
    out = tmp_path / "adapted"
    r = CliRunner().invoke(app, ["adapt", "--model", str(tmp_path / "base"), "--target", str(tgt), "--out", str(out),
                                 "--source", str(src), "--epochs", "2", "--batch-size", "4", "--train-from", "1",
                                 "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert d["n_target"] == 6 and d["skipped"] == 1
    assert (out / "card.md").is_file() and "DANN" in (out / "card.md").read_text()
    adapted = load_model(out)
    assert adapted.info.training["kind"] == "adapt"
    base = load_model(tmp_path / "base")
    w0 = base.model.backbone.body[0][0].weight
    assert torch.allclose(adapted.model.backbone.body[0][0].weight, w0, atol=1e-3)  # frozen trunk kept
    assert not torch.allclose(adapted.model.classifier[0].weight, base.model.classifier[0].weight)


def test_dann_config_kind_and_unknown_keys(tmp_path):
    from bloodsmear.errors import InputError
    from bloodsmear.experiments.dann import load_dann_config, run_id
    from bloodsmear.experiments.domains_config import load_domains_config

    p = tmp_path / "c.yaml"
    p.write_text("kind: dann\nsource: {name: pbc}\ntarget: {name: lisc}\nstain: true\n")
    cfg = load_dann_config(p)
    assert run_id(cfg) == "stain_dann_A_B"
    p.write_text("kind: dann\nsourse: {name: pbc}\n")
    with pytest.raises(InputError, match="sourse"):
        load_dann_config(p)
    root = Path(__file__).resolve().parents[1] / "configs"
    assert load_domains_config(root / "domains" / "pbc_lisc.yaml").runs[0] == "src_A"
    assert load_dann_config(root / "dann" / "pbc_to_lisc.yaml").objective == "dann"


@pytest.mark.realdata
def test_lisc_wbc_located_in_real_fields(data_root):
    from conftest import need

    from bloodsmear.io import read_image
    from bloodsmear.experiments.domain_data import stain_contrast

    lisc = need(data_root, "lisc")
    files = [sorted((lisc / c).glob("*.jpg"))[:4] for c in ("basophil", "eosinophil", "lymphocyte", "monocyte",
                                                             "neutrophil")]
    for f in [f for fs in files for f in fs]:
        rgb = read_image(f)
        cx, cy, r = locate_wbc(rgb)
        crop = crop_square(rgb, cx, cy, 160)
        s = stain_contrast(crop)
        centre = s[60:100, 60:100].mean()
        assert centre > np.median(stain_contrast(rgb)) + 15, f  # the crop centre is on the stained WBC
        assert 8 < r < 80, f


def test_domain_entries_are_checked_as_domain_specs_and_keep_their_cache_keys(tmp_path):
    """A misnamed domain or crops mode, or a wrong type, used to pass the config and fail (or be used as
    given) only when the crops were built; the crop caches keep the keys the dataclass gave them."""
    from bloodsmear.classes import LISC_CLASSES
    from bloodsmear.errors import InputError
    from bloodsmear.experiments.dann import load_dann_config
    from bloodsmear.experiments.domain_data import DomainSpec
    from bloodsmear.experiments.domains_config import load_domains_config

    p = tmp_path / "c.yaml"
    for text, msg in [("kind: domains\ndomains: {A: {name: lsic}}\n", r"'domains.A.name': Input should be 'pbc'"),
                      ("kind: domains\ndomains: {A: {name: lisc, crops: blob}}\n", r"'domains.A.crops'"),
                      ("kind: domains\ndomains: {A: {root: lisc}}\n", r"domains.A needs a name \(pbc, lisc"),
                      ("kind: dann\ntarget: {name: lisc, crop_side: big}\n", r"'target.crop_side': .*integer")]:
        p.write_text(text)
        with pytest.raises(InputError, match=msg):
            (load_dann_config if "dann" in text else load_domains_config)(p)
    # the entries stay as written (run identities unchanged); the specs hash as before
    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_domains_config(root / "domains" / "pbc_lisc.yaml")
    assert cfg.to_dict()["domains"]["B"] == {"name": "lisc", "root": "lisc", "crop_side": 160}
    classes = list(LISC_CLASSES)
    keys = [DomainSpec(**{"size": cfg.image_size, **cfg.domains[k]}).key(classes) for k in ("A", "B")]
    assert keys == ["d9567e8a6706", "799d56e4b474"]
    assert DomainSpec(name="lisc", root="lisc", size=80, crops="pipeline", pipeline="p.yaml").key(["a", "b"]) \
        == "c38f90cb583c"
    assert DomainSpec(name="bccd", root="bccd", box_scale=1.6, size=96, max_per_class=300, seed=3).key(["a", "b"]) \
        == "fc40a9b2f06e"
