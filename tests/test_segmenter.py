"""The fast WBC segmenter: post-processing, network shapes, model folder round trip, training pieces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from bloodsmear.geometry import mask_to_polygon
from bloodsmear.models.segmenter import (FastSegConfig, FastSegmenter, UNet, build_net, cells_from_labels,
                                         instances_from_maps)
from bloodsmear.models.segmenter_base import Segmenter, load_segmenter
from bloodsmear.training.synthetic_fields import synthetic_field

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _maps_for_discs(h, w, discs):
    """Ideal foreground and centredness maps for discs (x, y, r)."""
    fg = np.zeros((h, w), np.float32)
    cen = np.zeros((h, w), np.float32)
    for x, y, r in discs:
        yy, xx = np.mgrid[:h, :w]
        d = np.hypot(xx - x, yy - y)
        inside = d <= r
        fg[inside] = 1.0
        cen[inside] = np.maximum(cen[inside], 1 - d[inside] / r)
    return fg, cen


def test_two_touching_discs_give_two_instances():
    fg, cen = _maps_for_discs(80, 120, [(40, 40, 20), (78, 40, 20)])  # overlapping by 2 px
    before = (fg.copy(), cen.copy())
    lab = instances_from_maps(fg, cen)
    assert np.array_equal(fg, before[0]) and np.array_equal(cen, before[1])
    assert lab.max() == 2
    assert lab[40, 40] != lab[40, 78] and lab[40, 40] > 0 and lab[40, 78] > 0
    assert abs((lab == lab[40, 40]).sum() - (lab == lab[40, 78]).sum()) < 0.1 * (lab > 0).sum()


def test_blob_without_marker_is_kept_and_small_ones_dropped():
    fg, cen = _maps_for_discs(60, 60, [(20, 20, 10), (45, 45, 3)])
    cen[:] = 0.0  # no markers at all
    lab = instances_from_maps(fg, cen, min_area=50)
    assert lab.max() == 1 and lab[20, 20] == 1 and lab[45, 45] == 0
    assert instances_from_maps(np.zeros((5, 5)), np.zeros((5, 5))).max() == 0


def test_cells_from_labels_box_mask_polygon_agree():
    lab = np.zeros((50, 70), np.int32)
    cv2.rectangle(lab, (10, 5), (29, 24), 1, -1)
    cv2.circle(lab, (50, 30), 8, 2, -1)
    prob = np.where(lab == 1, 0.9, np.where(lab == 2, 0.6, 0.0)).astype(np.float32)
    cells = cells_from_labels(lab, prob, score_threshold=0.5)
    assert [round(c.score, 2) for c in cells] == [0.9, 0.6]
    sq = cells[0]
    assert sq.label == "wbc" and sq.box == (10.0, 5.0, 30.0, 25.0) and sq.mask.shape == (20, 20) and sq.mask.all()
    assert sq.polygon[:, 0].min() == 10 and sq.polygon[:, 0].max() == 29
    assert len(cells_from_labels(lab, prob, score_threshold=0.7)) == 1
    assert mask_to_polygon(np.zeros((4, 4), bool), epsilon=0.6).shape == (0, 2)


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (120, 161)])
def test_unet_output_shape_any_size(shape):
    torch.manual_seed(0)
    seg = FastSegmenter(UNet(base=4, levels=3), FastSegConfig(base_channels=4, levels=3))
    img = (np.random.default_rng(0).random((*shape, 3)) * 255).astype(np.uint8)
    before = img.copy()
    fg, cen = seg.maps(img)
    assert fg.shape == shape and cen.shape == shape
    assert 0 <= fg.min() and fg.max() <= 1
    assert isinstance(seg.predict(img), list)
    assert np.array_equal(img, before)


def test_model_folder_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = FastSegConfig(base_channels=4, levels=3, rbc_diameter_px=18.0)
    net = build_net(cfg)
    # make BatchNorm statistics non-trivial so the fusion is exercised
    net.train()
    with torch.no_grad():
        net(torch.randn(4, 3, 32, 32) * 2 + 0.5)
    seg = FastSegmenter(net.eval(), cfg)
    seg.save(tmp_path / "m")
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "weights.pt").is_file()
    loaded = load_segmenter(tmp_path / "m")
    assert isinstance(loaded, Segmenter) and loaded.kind == "fast-unet" and loaded.rbc_diameter_px == 18.0
    img = synthetic_field(64, 96, 18.0).image
    a, _ = seg.maps(img)
    b, _ = loaded.maps(img)
    assert np.abs(a - b).max() < 5e-3  # fp16 weights, BatchNorm folded
    with pytest.raises(ValueError):
        loaded.save(tmp_path / "fused")


def test_training_targets_and_batch():
    from bloodsmear.training.seg_data import SegField
    from bloodsmear.training.seg_train import SegTrainConfig, instance_targets, make_batch

    lab = np.zeros((40, 60), np.int32)
    cv2.circle(lab, (15, 20), 10, 1, -1)
    cv2.circle(lab, (34, 20), 10, 2, -1)  # touching the first
    fg, cen = instance_targets(lab)
    assert fg.sum() == (lab > 0).sum()
    assert cen[20, 15] > 0.9 and cen[20, 34] > 0.9 and cen.max() == pytest.approx(1.0)
    assert cen[20, 25] < 0.3  # the border between the two cells is low
    f = synthetic_field(160, 200, 40.0, seed=2)
    fields = {"bccd": [SegField(f.image, f.labels, "bccd", "s")]}
    cfg = SegTrainConfig(crop=64, batch_size=3)
    x, fgb, cb = make_batch(fields, cfg, 20.0, 40.0, np.random.default_rng(0))
    assert x.shape == (3, 3, 64, 64) and fgb.shape == (3, 1, 64, 64) and cb.shape == fgb.shape
    assert float(cb.max()) <= 1.0


def test_quickly_fitted_net_segments_synthetic_wbcs():
    """A tiny net fitted for a few seconds on synthetic fields finds the purple discs as instances."""
    from bloodsmear.training.seg_data import SegField
    from bloodsmear.training.seg_objectives import seg_loss
    from bloodsmear.training.seg_train import SegTrainConfig, make_batch

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = []
    for s in range(4):
        wbc = [(rng.uniform(60, 340), rng.uniform(60, 240), rng.uniform(70, 90)) for _ in range(2)]
        f = synthetic_field(300, 400, 40.0, wbc=wbc, seed=s)
        train.append(SegField(f.image, f.labels, "bccd", str(s)))
    cfg = SegTrainConfig(crop=64, batch_size=8, scale_min=0.9, scale_max=1.1)
    x, fg, cen = make_batch({"bccd": train}, cfg, 20.0, 40.0, rng)  # one fixed batch, fitted repeatedly
    mcfg = FastSegConfig(base_channels=8, levels=3, rbc_diameter_px=20.0)
    net = build_net(mcfg)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(30):
        loss = seg_loss(net(x), fg, cen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seg = FastSegmenter(net.eval(), mcfg)
    test = synthetic_field(150, 200, 20.0, wbc=[(60, 70, 38), (150, 80, 36)], seed=9)
    cells = seg.predict(test.image)
    centres = [((c.box[0] + c.box[2]) / 2, (c.box[1] + c.box[3]) / 2) for c in cells]
    for x, y in test.wbc_centres:
        assert any(np.hypot(x - cx, y - cy) < 8 for cx, cy in centres), (centres, test.wbc_centres)


def test_expanded_instances_grow_but_stay_apart():
    fg, cen = _maps_for_discs(80, 120, [(40, 40, 20), (80, 40, 20)])
    a = instances_from_maps(fg, cen)
    b = instances_from_maps(fg, cen, expand_px=2)
    assert b.max() == 2
    assert (b > 0).sum() > (a > 0).sum()
    assert ((b == 1) & (b == 2)).sum() == 0 and (b[a > 0] == a[a > 0]).all()


# ---------------------------------------------------------------- strict configs, engine, checkpoints


def test_fast_seg_config_rejects_unknown_key_naming_it():
    from bloodsmear.errors import InputError

    with pytest.raises(InputError, match=r"unknown key 'levles' \(valid: .*levels"):
        FastSegConfig.from_dict({"levels": 3, "levles": 4})


def test_shipped_fast_config_round_trips_exactly():
    import json

    from bloodsmear.settings import ZOO_DIR

    d = json.loads((ZOO_DIR / "wbc-seg-fast" / "config.json").read_text())
    assert FastSegConfig.from_dict(d).to_dict() == d


def test_seg_train_config_unknown_keys(tmp_path):
    from bloodsmear.errors import InputError
    from bloodsmear.training.seg_train import SegTrainConfig

    for text, key in [("crpo: 64\n", "crpo"), ("model: {levles: 3}\n", "model.levles"),
                      ("data: {store_rbc: 40}\n", "data.store_rbc")]:
        (tmp_path / "c.yaml").write_text("kind: fast-unet\n" + text)
        with pytest.raises(InputError, match=rf"unknown key '{key}' \(valid: "):
            SegTrainConfig.load(tmp_path / "c.yaml")


def test_stock_scheduler_is_the_old_warmup_cosine():
    from bloodsmear.training.seg_train import SegTrainConfig, build_seg_scheduler

    for max_iters in (10, 400):
        cfg = SegTrainConfig(max_iters=max_iters, lr=3e-3)
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=cfg.lr)
        sched = build_seg_scheduler(opt, cfg)
        warm = max(1, int(0.03 * max_iters))
        for it in range(max_iters):
            t = min(1.0, (it - warm) / max(1, max_iters - warm))
            want = cfg.lr * (it + 1) / warm if it < warm else cfg.lr * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * t)))
            assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-9)
            opt.step()
            sched.step()


def _tiny_fields(n=2, seed=0):
    from bloodsmear.training.seg_data import SegField

    out = []
    for s in range(n):
        f = synthetic_field(120, 160, 40.0, wbc=[(60, 60, 75)], seed=seed + s)
        out.append(SegField(f.image, f.labels, "bccd", str(s)))
    return out


def _tiny_cfg(tmp_path, **kw):
    from bloodsmear.training.seg_train import SegTrainConfig

    base = dict(out_dir=str(tmp_path), crop=32, batch_size=2, max_iters=4, val_every=2, ckpt_every=2, threads=1,
                model=FastSegConfig(base_channels=4, levels=3, rbc_diameter_px=20.0),
                source_weights={"bccd": 1.0})
    return SegTrainConfig(**{**base, **kw})


def test_segmentation_objective_runs_in_the_engine():
    from bloodsmear.training.engine import train_one_epoch
    from bloodsmear.training.objectives import build_objective
    from bloodsmear.training.seg_train import CropStream

    torch.manual_seed(0)
    cfg = _tiny_cfg("unused")
    net = build_net(cfg.model)
    stream = CropStream({"bccd": _tiny_fields()}, cfg, 20.0, 40.0, np.random.default_rng(0), 3)
    stats = train_one_epoch(net, build_objective("segmentation"), stream, torch.optim.Adam(net.parameters(), 1e-3),
                            progress=False)
    assert {"loss", "fg_loss", "centre_loss", "lr"} <= set(stats) and "accuracy" not in stats
    assert stats["loss"] == pytest.approx(stats["fg_loss"] + 2 * stats["centre_loss"], rel=1e-5)


def test_fit_segmenter_resumes_to_the_same_weights(tmp_path):
    """Killed by its budget after each chunk and resumed, the run ends with the straight run's weights."""
    from bloodsmear.errors import InputError
    from bloodsmear.training.checkpoint import read_checkpoint
    from bloodsmear.training.seg_train import fit_segmenter

    tr, va = _tiny_fields(), _tiny_fields(1, seed=7)
    straight = fit_segmenter(_tiny_cfg(tmp_path / "a"), tr, va, 40.0)
    assert straight["iterations"] == 4 and len(straight["history"]) == 2
    legs = [fit_segmenter(_tiny_cfg(tmp_path / "b", budget_minutes=0.0), tr, va, 40.0)["iterations"]
            for _ in range(3)]
    assert legs == [2, 4, 4]  # the third call finds the run finished
    a, b = read_checkpoint(tmp_path / "a" / "checkpoint.pt"), read_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["iteration"] == b["iteration"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4
    with pytest.raises(InputError, match="differs in: lr"):
        fit_segmenter(_tiny_cfg(tmp_path / "a", lr=1e-2), tr, va, 40.0)


def test_resuming_with_a_new_max_iters_replans_the_schedule_where_the_run_is(tmp_path):
    """The shipped segmenter was trained in legs with max_iters raised between them: a resume with a new
    max_iters continues at the iteration reached, on the schedule of the new max_iters."""
    from bloodsmear.training.checkpoint import read_checkpoint
    from bloodsmear.training.seg_train import build_seg_scheduler, fit_segmenter

    tr, va = _tiny_fields(), _tiny_fields(1, seed=7)
    assert fit_segmenter(_tiny_cfg(tmp_path / "r"), tr, va, 40.0)["iterations"] == 4
    longer = _tiny_cfg(tmp_path / "r", max_iters=8)
    assert fit_segmenter(longer, tr, va, 40.0)["iterations"] == 8
    ck = read_checkpoint(tmp_path / "r" / "checkpoint.pt")
    ref_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=longer.lr)
    ref = build_seg_scheduler(ref_opt, longer)
    for _ in range(8):
        ref_opt.step()
        ref.step()
    assert ck["scheduler"]["last_epoch"] == 8
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12)


def test_segment_cli_train_kind_and_card_refuse_clearly(tmp_path):
    from typer.testing import CliRunner

    from bloodsmear.cli.segment import app
    from bloodsmear.settings import ZOO_DIR

    (tmp_path / "c.yaml").write_text("kind: unet3000\n")
    r = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml")])
    assert r.exit_code == 2 and "unknown segmenter kind 'unet3000'" in r.output
    r = CliRunner().invoke(app, ["card", str(ZOO_DIR / "wbc-seg-fast")])
    assert r.exit_code == 2 and "Mask R-CNN" in r.output


def _old_box_prf(gt_boxes, pred_boxes, iou=0.5):
    """The validation matcher seg_train had before it used metrics.detection (the reference)."""
    from bloodsmear.geometry import box_iou_matrix

    used, tp = set(), 0
    ious = box_iou_matrix(pred_boxes, gt_boxes)
    for k in range(len(pred_boxes)):
        best, bj = 0.0, -1
        for j in range(len(gt_boxes)):
            if j not in used and float(ious[k, j]) > best:
                best, bj = float(ious[k, j]), j
        if best >= iou:
            used.add(bj)
            tp += 1
    return tp, len(pred_boxes) - tp, len(gt_boxes) - tp


class _BoxSegmenter:
    """Stands in for FastSegmenter in `validate`: the working scale is the stored one; fixed predictions."""

    rbc_diameter_px = 40.0

    def __init__(self, boxes):
        self.boxes = iter(boxes)

    def predict(self, img):
        from bloodsmear.types import Cell

        bs = next(self.boxes)
        return [Cell("wbc", box=b, score=1.0 - k / 100) for k, b in enumerate(bs)]


def _corner_labels(h, w, boxes):
    """A label image whose instance k+1 is two pixels at the corners of boxes[k] (boxes may overlap)."""
    lab = np.zeros((h, w), np.int32)
    for k, (x1, y1, x2, y2) in enumerate(boxes, start=1):
        lab[y1, x1] = lab[y2 - 1, x2 - 1] = k
    return lab


def test_validation_prf_comes_from_metrics_and_keeps_its_numbers():
    from scipy import ndimage as ndi

    from bloodsmear.training.seg_data import SegField
    from bloodsmear.training.seg_train import validate

    # an exact IoU tie (pred 1 overlaps both GT cells by 100/120): it goes to GT 1, so pred 2 finds none
    tie_gt, tie_pred = [(0, 2, 10, 14), (0, 0, 10, 12)], [(0, 2, 10, 12), (0, 5, 10, 17)]
    fields = [SegField(np.zeros((30, 30, 3), np.uint8), _corner_labels(30, 30, tie_gt), "bccd", "tie")]
    v = validate(_BoxSegmenter([tie_pred]), fields, 40.0)
    assert (v["tp"], v["fp"], v["fn"]) == (1, 1, 1) == _old_box_prf(tie_gt, tie_pred)
    # random fields with near-duplicate, shifted and missing boxes: the old matcher's counts and P/R/F1
    rng = np.random.default_rng(3)
    fields, preds, tot = [], [], np.zeros(3, int)
    for i in range(40):
        gt = [(int(x), int(y), int(x + rng.integers(4, 12)), int(y + rng.integers(4, 12)))
              for x, y in rng.integers(0, 30, (rng.integers(0, 6), 2))]
        lab = _corner_labels(45, 45, gt)
        gt_found = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndi.find_objects(lab) if s is not None]
        pred = [tuple(int(v + rng.integers(-2, 3)) for v in b) for b in gt if rng.random() < 0.8]
        pred = [b for b in pred if b[2] > b[0] and b[3] > b[1]] + [(1, 1, 6, 6)] * int(rng.random() < 0.3)
        fields.append(SegField(np.zeros((45, 45, 3), np.uint8), lab, "bccd", str(i)))
        preds.append(pred)
        tot += _old_box_prf(gt_found, pred)
    v = validate(_BoxSegmenter(preds), fields, 40.0)
    tp, fp, fn = (int(t) for t in tot)
    assert (v["tp"], v["fp"], v["fn"]) == (tp, fp, fn) and tp > 0 and fp > 0 and fn > 0
    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    assert (v["precision"], v["recall"], v["f1"]) == (p, r, 2 * p * r / max(p + r, 1e-9))
    empty = validate(_BoxSegmenter([[]]), [SegField(np.zeros((9, 9, 3), np.uint8), np.zeros((9, 9), np.int32),
                                                    "bccd", "0")], 40.0)
    assert empty == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 0}



_TINY_FAST_YAML = """kind: fast-unet
out_dir: {out}
crop: 32
batch_size: 2
max_iters: 2
val_every: 2
ckpt_every: 2
threads: 1
source_weights: {{bccd: 1.0}}
model: {{base_channels: 4, levels: 3, rbc_diameter_px: 20.0}}
"""


def test_bloodsmear_train_runs_segmenter_configs_with_their_shortcuts(tmp_path, monkeypatch):
    """`bloodsmear train configs/segmenter/fast.yaml` used to fail: unknown config kind 'fast-unet'."""
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    import bloodsmear.experiments.runner as runner
    from bloodsmear.cli.main import app
    from bloodsmear.training.seg_train import fit_segmenter

    repo_configs = Path(__file__).resolve().parents[1] / "configs" / "segmenter"
    assert runner.config_kind(repo_configs / "fast.yaml").name == "fast-unet"
    assert runner.config_kind(repo_configs / "maskrcnn.yaml").name == "maskrcnn"
    # the fast U-Net really trains (2 iterations) on synthetic fields in place of the data folders
    monkeypatch.setattr(runner, "train_segmenter", lambda cfg, progress=True: fit_segmenter(
        cfg, _tiny_fields(), _tiny_fields(1, seed=7), 40.0))
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(_TINY_FAST_YAML.format(out=tmp_path / "ignored"))
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", str(cfg), "--out-dir", str(out), "--seed", "3", "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert d["model"] == str(out / "best") and (out / "best" / "config.json").is_file()
    assert d["iterations"] == 2 and d["config"]["seed"] == 3 and 0.0 <= d["val_f1"] <= 1.0
    assert not (tmp_path / "ignored").exists()
    r = CliRunner().invoke(app, ["train", str(cfg), "--epochs", "2"])
    assert r.exit_code == 2 and "--epochs: not an option of fast-unet configs (valid: --lr, --batch-size, --seed, " \
        "--out-dir, or --set KEY=VALUE)" in r.output.replace("\n", " ")
    # Mask R-CNN: the dispatch (declared shortcuts, --restart drops the checkpoint), not the training
    seen = {}

    def fake_maskrcnn(c):
        seen["cfg"] = c
        return Path(c.out_dir) / "model"

    monkeypatch.setattr(runner, "train_maskrcnn", fake_maskrcnn)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "checkpoint.pt").write_bytes(b"old")
    r = CliRunner().invoke(app, ["train", str(repo_configs / "maskrcnn.yaml"), "--out-dir", str(tmp_path / "m"),
                                 "--no-pretrained", "--lr", "0.01", "--set", "epochs_all=1", "--restart", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1]) == {"model": str(tmp_path / "m" / "model")}
    c = seen["cfg"]
    assert (c.pretrained_backbone, c.lr, c.epochs_all, c.out_dir) == (False, 0.01, 1, str(tmp_path / "m"))
    assert not (tmp_path / "m" / "checkpoint.pt").exists()
    r = CliRunner().invoke(app, ["train", str(repo_configs / "maskrcnn.yaml"), "--device", "cuda"])
    assert r.exit_code == 2 and "--device: not an option of maskrcnn configs" in r.output
