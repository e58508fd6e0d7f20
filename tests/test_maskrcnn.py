"""Mask R-CNN segmenter: tiny random backbone trains a step, contract-format Cells, folder round trip,
training masks and (image, target) transforms."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from bloodsmear.errors import InputError
from bloodsmear.models.maskrcnn import (
    MaskRCNNConfig, MaskRCNNSegmenter, build_maskrcnn, detections_to_cells, load_maskrcnn, save_maskrcnn,
)
from bloodsmear.models.segmenter_base import Segmenter, load_segmenter
from bloodsmear.training.maskrcnn_data import (
    Compose, RandomFlip, RandomScale, classical_wbc_mask, collate, to_tensors,
)
from bloodsmear.training.engine import train_one_epoch
from bloodsmear.training.objectives import build_objective

torch.set_num_threads(2)


def tiny_cfg(**kw) -> MaskRCNNConfig:
    base = dict(backbone="tiny", neck_channels=16, representation_size=32, mask_layers=[8, 8],
                anchor_sizes=[16, 32], rpn_pre_nms_top_n_train=50, rpn_post_nms_top_n_train=20,
                rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=10, box_batch_size_per_image=16,
                box_detections_per_img=5, score_threshold=0.0, rbc_diameter_px=12.0)
    base.update(kw)
    return MaskRCNNConfig(**base)


def disc_field(size: int = 64, cx: int = 30, cy: int = 34, r: int = 12) -> tuple[np.ndarray, dict]:
    """A pinkish field with one lilac cell (purple nucleus) and its target."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.empty((size, size, 3), np.uint8)
    img[:] = (225, 215, 205)  # background: B < R
    cell = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    img[cell] = (200, 185, 225)  # cytoplasm: B > R
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= (r // 2) ** 2] = (110, 60, 170)  # nucleus
    target = {"boxes": np.array([[cx - r, cy - r, cx + r + 1, cy + r + 1]], np.float32),
              "masks": cell.astype(np.uint8)[None]}
    return img, target


def test_tiny_model_trains_a_step():
    torch.manual_seed(0)
    model = build_maskrcnn(tiny_cfg())
    batch = [to_tensors(*disc_field(), image_id=i) for i in range(2)]
    loader = [collate(batch)]
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    before = [p.detach().clone() for p in model.roi_heads.parameters()]
    losses = train_one_epoch(model, build_objective("maskrcnn"), loader, opt, progress=False)
    assert {"loss", "loss_mask", "loss_classifier", "loss_box_reg", "loss_objectness"} <= set(losses)
    assert all(np.isfinite(v) for v in losses.values())
    after = list(model.roi_heads.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_predict_returns_contract_cells_and_keeps_input():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    seg = MaskRCNNSegmenter(build_maskrcnn(cfg), cfg)
    assert isinstance(seg, Segmenter) and seg.kind == "maskrcnn" and seg.rbc_diameter_px == 12.0
    img, _ = disc_field()
    copy = img.copy()
    cells = seg.predict(img)
    assert np.array_equal(img, copy)
    assert isinstance(cells, list)
    for c in cells:
        assert c.label == "wbc" and isinstance(c.score, float) and c.score >= 0.0
    with pytest.raises(ValueError):
        seg.predict(img.astype(np.float32))


def test_detections_to_cells_polygon_box_mask_agree():
    cfg = tiny_cfg(score_threshold=0.7)
    h, w = 60, 80
    yy, xx = np.mgrid[0:h, 0:w]
    prob = ((yy - 30) ** 2 + (xx - 40) ** 2 <= 100).astype(np.float32)  # disc r=10 at (40, 30)
    out = {
        "boxes": torch.tensor([[29.6, 19.6, 51.4, 41.4], [0.0, 0.0, 10.0, 10.0]]),
        "scores": torch.tensor([0.9, 0.5]),
        "masks": torch.from_numpy(np.stack([prob, prob]))[:, None],
    }
    cells = detections_to_cells(out, cfg)
    assert len(cells) == 1  # the 0.5 detection is under the threshold
    c = cells[0]
    assert c.box == (30.0, 20.0, 51.0, 41.0)
    assert c.mask.dtype == bool and c.mask.shape == (21, 21)
    assert c.mask.sum() == pytest.approx(np.pi * 100, rel=0.1)
    assert c.polygon.shape[1] == 2 and len(c.polygon) >= 4
    assert c.polygon[:, 0].min() >= 30 and c.polygon[:, 0].max() <= 51
    assert c.polygon[:, 1].min() >= 20 and c.polygon[:, 1].max() <= 41
    assert abs(c.polygon[:, 0].mean() - 40) < 1.5 and abs(c.polygon[:, 1].mean() - 30) < 1.5


def test_model_folder_round_trip(tmp_path):
    torch.manual_seed(1)
    cfg = tiny_cfg(score_threshold=0.0, trained_with={"note": "test"})
    model = build_maskrcnn(cfg).eval()
    folder = save_maskrcnn(model, cfg, tmp_path / "m", extra_files={"history.json": [{"epoch": 0}]})
    conf = json.loads((folder / "config.json").read_text())
    assert conf["kind"] == "maskrcnn" and conf["weights_dtype"] == "float16" and conf["score_threshold"] == 0.0
    state = torch.load(folder / "weights.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    seg = load_segmenter(folder)
    assert isinstance(seg, MaskRCNNSegmenter) and seg.cfg == cfg
    loaded = seg.model.state_dict()
    for k, v in model.state_dict().items():  # fp16 on disk, float32 again in memory
        want = v.half().float() if v.is_floating_point() else v
        assert torch.equal(loaded[k], want), k
    img = disc_field()[0]
    seg.model.load_state_dict(model.state_dict())
    ref = MaskRCNNSegmenter(model, cfg).predict(img)
    got = seg.predict(img)
    assert [c.box for c in got] == [c.box for c in ref]
    # a folder of another kind is refused with the file named
    conf["kind"] = "unet"
    (tmp_path / "m" / "config.json").write_text(json.dumps(conf))
    with pytest.raises(InputError, match="config.json"):
        load_maskrcnn(tmp_path / "m")


def test_classical_mask_finds_the_cell():
    img, t = disc_field(size=80, cx=40, cy=40, r=18)
    box = (19.0, 19.0, 62.0, 62.0)
    m = classical_wbc_mask(img, box)
    assert m.shape == (43, 43)
    ref = t["masks"][0][19:62, 19:62].astype(bool)
    iou = (m & ref).sum() / (m | ref).sum()
    assert iou > 0.85
    assert np.array_equal(img, disc_field(size=80, cx=40, cy=40, r=18)[0])  # input untouched


def test_flip_and_scale_keep_boxes_on_masks():
    random.seed(0)
    img, t = disc_field(size=64, cx=20, cy=40, r=8)
    tr = Compose([RandomFlip(1.0, 1), RandomFlip(1.0, 0), RandomScale(0.3)])
    img2, t2 = tr(img, {k: v.copy() for k, v in t.items()})
    m = t2["masks"][0]
    assert m.shape == img2.shape[:2]
    ys, xs = np.nonzero(m)
    x1, y1, x2, y2 = t2["boxes"][0]
    assert abs(xs.min() - x1) <= 2 and abs(xs.max() + 1 - x2) <= 2
    assert abs(ys.min() - y1) <= 2 and abs(ys.max() + 1 - y2) <= 2
    # flipped both ways: the cell moved from the left/bottom to the right/top
    assert xs.mean() > img2.shape[1] / 2 and ys.mean() < img2.shape[0] / 2


def test_pretrained_backbone_loads_offline_weights():
    from bloodsmear.models.maskrcnn import build_backbone, mobilenet_v2_imagenet_path

    try:
        path = mobilenet_v2_imagenet_path()
    except FileNotFoundError:
        pytest.skip("offline MobileNetV2 weights not installed")
    ref = torch.load(path, map_location="cpu", weights_only=True)
    bb = build_backbone(MaskRCNNConfig(), pretrained=True)
    assert torch.equal(bb.body[0][0].weight, ref["features.0.0.weight"])
    assert bb.out_channels == 256


@pytest.mark.realdata
def test_wbc_masks_on_bccd_fields(data_root, tmp_path):
    import cv2

    from conftest import need

    from bloodsmear.io import read_image
    from bloodsmear.training.maskrcnn_data import bccd_split, with_wbc_masks

    need(data_root, "bccd", "Annotations")
    ims, rbc = bccd_split(data_root / "bccd", "test")
    assert len(ims) == 72 and 80 < rbc < 120
    for method in ("classical", "grabcut"):
        ious = []
        for im in ims[:4]:
            rgb = read_image(im.path)
            gt = with_wbc_masks(im, rgb, method, cache=tmp_path / method / f"{im.path.stem}.npz")
            assert len(gt.cells) == sum(c.label == "wbc" for c in im.cells)
            again = with_wbc_masks(im, rgb, method, cache=tmp_path / method / f"{im.path.stem}.npz")
            assert all(np.array_equal(a.mask, b.mask) for a, b in zip(gt.cells, again.cells))  # cache round trip
            if len(gt.cells) == 1 and im.nucleus_mask_path:
                ref = cv2.imread(str(im.nucleus_mask_path), cv2.IMREAD_GRAYSCALE) > 0
                m = gt.cells[0].mask
                ious.append((ref & m).sum() / max(1, (ref | m).sum()))
        assert ious and np.mean(ious) > 0.6, method


def test_evaluate_engine_reports_on_working_scale_fields():
    from bloodsmear.training.maskrcnn_data import FieldDataset
    from bloodsmear.training.maskrcnn_train import evaluate
    from bloodsmear.types import AnnotatedImage

    torch.manual_seed(0)
    cfg = tiny_cfg(score_threshold=0.7)
    model = build_maskrcnn(cfg)
    items = [disc_field(), disc_field(cx=40, cy=20)]
    gts = [AnnotatedImage(path=f"/f/{i}.png", width=64, height=64) for i in range(2)]
    rep = evaluate(model, FieldDataset.from_arrays(items, gts), cfg)
    assert rep.box.n_gt == 2 and rep.n_images == 2
    assert rep.mask is not None and rep.mask.n_gt == 2
    assert 0.0 <= rep.box.ap50 <= 1.0
    wbc = rep.per_class["wbc"]
    assert wbc.tp + wbc.fn == 2
    assert model.roi_heads.score_thresh == 0.7  # restored after the low-threshold evaluation pass


def test_card_renders_from_model_folder(tmp_path):
    from bloodsmear.training.maskrcnn_train import render_card

    cfg = tiny_cfg(trained_with={"data": "BCCD", "best_epoch": 0, "epochs_run": 1})
    folder = save_maskrcnn(build_maskrcnn(cfg), cfg, tmp_path / "m", extra_files={"history.json": [
        {"epoch": 0, "phase": "heads", "loss": 1.5, "val": {"wbc_box_ap": 0.25, "wbc_box_ap50": 0.5}, "seconds": 3}]})
    card = render_card(folder, {"split": "test", "n_fields": 2, "wbc_box_ap50": 0.875, "threads": 2},
                       commands={"train": "python -m x"})
    assert "| 0 | heads |" in card and "| wbc_box_ap50 | 0.875 |" in card and "`python -m x`" in card


def test_shipped_zoo_model_loads():
    from bloodsmear.settings import ZOO_DIR

    folder = ZOO_DIR / "wbc-maskrcnn"
    assert (folder / "card.md").is_file()
    if not (folder / "weights.pt").is_file():
        pytest.skip("Mask R-CNN weights not shipped")
    assert (folder / "weights.pt").stat().st_size < 20 * 2**20
    seg = load_segmenter(folder)
    assert seg.kind == "maskrcnn" and seg.score_threshold == 0.7 and seg.rbc_diameter_px == 50.0
    assert seg.predict(np.full((96, 128, 3), 230, np.uint8)) == []  # a blank field holds no WBC


# ---------------------------------------------------------------- strict configs, scheduler, checkpoints


def test_maskrcnn_config_rejects_unknown_key_and_shipped_round_trips():
    from bloodsmear.settings import ZOO_DIR

    with pytest.raises(InputError, match=r"unknown key 'neck_chanels' \(valid: .*neck_channels"):
        MaskRCNNConfig.from_dict({"neck_chanels": 8})
    d = json.loads((ZOO_DIR / "wbc-maskrcnn" / "config.json").read_text())
    assert MaskRCNNConfig.from_dict(d).to_dict() == d


def test_maskrcnn_train_config_unknown_model_key(tmp_path):
    from bloodsmear.training.maskrcnn_train import MaskRCNNTrainConfig

    (tmp_path / "c.yaml").write_text("kind: maskrcnn\nmodel: {score_treshold: 0.5}\n")
    with pytest.raises(InputError, match=r"unknown key 'score_treshold' \(valid: "):
        MaskRCNNTrainConfig.load(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("kind: maskrcnn\nepochs_head: 1\n")
    with pytest.raises(InputError, match=r"unknown key 'epochs_head'"):
        MaskRCNNTrainConfig.load(tmp_path / "c.yaml")


def test_maskrcnn_scheduler_warms_up_then_switches_lr():
    from bloodsmear.training.maskrcnn_train import MaskRCNNTrainConfig, build_maskrcnn_scheduler

    cfg = MaskRCNNTrainConfig(lr=0.01, lr_all=0.002, warmup_iters=4, epochs_heads=2)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    sched = build_maskrcnn_scheduler(opt, cfg, steps_per_epoch=5)
    seen = []
    for _ in range(14):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [0.01 * (0.1 + 0.9 * s / 4) for s in range(4)] + [0.01] * 6 + [0.002] * 4  # the old per-step rule
    assert seen == pytest.approx(want, rel=1e-9)


def test_fit_maskrcnn_resumes_to_the_same_weights(tmp_path):
    from bloodsmear.training.checkpoint import read_checkpoint
    from bloodsmear.training.maskrcnn_data import FieldDataset
    from bloodsmear.training.maskrcnn_train import MaskRCNNTrainConfig, fit_maskrcnn
    from bloodsmear.types import AnnotatedImage

    items = [disc_field(), disc_field(cx=40, cy=20)]
    gts = [AnnotatedImage(path=f"/f/{i}.png", width=64, height=64) for i in range(2)]
    ds = FieldDataset.from_arrays(items, gts)
    model_over = tiny_cfg().to_dict()
    model_over.pop("rbc_diameter_px")

    def cfg(out, **kw):
        return MaskRCNNTrainConfig(out_dir=str(out), epochs_heads=1, epochs_all=1, warmup_iters=1, batch_size=2,
                                   threads=1, pretrained_backbone=False, model=model_over, rbc_diameter_px=12.0,
                                   **kw)

    _, _, hist, _ = fit_maskrcnn(cfg(tmp_path / "a"), ds, ds)
    assert [h["phase"] for h in hist] == ["heads", "all"]
    _, _, h1, _ = fit_maskrcnn(cfg(tmp_path / "b", max_minutes=0.0), ds, ds)  # stops after epoch 0
    assert len(h1) == 1
    _, _, h2, _ = fit_maskrcnn(cfg(tmp_path / "b", max_minutes=0.0), ds, ds)  # resumes: epoch 1
    assert [h["epoch"] for h in h2] == [0, 1]
    a, b = read_checkpoint(tmp_path / "a" / "checkpoint.pt"), read_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    with pytest.raises(InputError, match="differs in: momentum"):
        fit_maskrcnn(cfg(tmp_path / "a", momentum=0.5), ds, ds)
