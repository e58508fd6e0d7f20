"""The fast default WBC instance segmenter ("fast-unet"): a small U-Net that predicts WBC foreground and
a per-instance *centredness* map (distance to the instance border / its maximum, 0..1), split into
instances by a marker watershed (scikit-image), at a working scale where red cells are
`rbc_diameter_px` wide (a BCCD field becomes ~170x130 px). The instances then pass the filters of
`bloodsmear.models.instance_filter`: touching pieces of one cell are merged, instances without a
stained nucleus (red cells, dirt, loose platelet clumps) are dropped (thresholds in config.json).

Model folder: ``config.json`` (kind "fast-unet", architecture, `rbc_diameter_px`, thresholds,
normalisation, training info), ``weights.pt`` (fp16 state dict), ``card.md``.

    seg = load_segmenter("src/bloodsmear/zoo/wbc-seg-fast")   # via the segmenter_base registry
    cells = seg.predict(rgb_at_working_scale)                  # list[Cell], label "wbc"

Cells follow `bloodsmear.models.segmenter_base`: box = (x1, y1, x2, y2) with x2/y2 one past the last
mask pixel, `mask` covers exactly that box, `polygon` is the simplified outer contour (pixel centres).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from pydantic import Field
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels, watershed
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from bloodsmear.config import StrictConfig
from bloodsmear.errors import InputError
from bloodsmear.geometry import mask_to_polygon
from bloodsmear.io import atomic_path, write_json_atomic
from bloodsmear.models.instance_filter import (
    FilterConfig,
    drop_unstained,
    merge_split_instances,
    relabel,
)
from bloodsmear.models.folder import check_kind, read_folder_config
from bloodsmear.models.segmenter_base import register_segmenter
from bloodsmear.types import Cell

KIND = "fast-unet"
WEIGHTS = "weights.pt"


# ------------------------------------------------------------------ network


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Plain U-Net: `levels` resolutions (levels-1 poolings), channels base * 2**i, 2 output maps."""

    def __init__(self, base: int = 16, levels: int = 4, in_ch: int = 3, out_ch: int = 2):
        super().__init__()
        chs = [base * 2 ** i for i in range(levels)]
        self.down = nn.ModuleList()
        c = in_ch
        for ch in chs:
            self.down.append(_block(c, ch))
            c = ch
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for ch in reversed(chs[:-1]):
            self.up.append(nn.ConvTranspose2d(c, ch, 2, stride=2))
            self.dec.append(_block(2 * ch, ch))
            c = ch
        self.head = nn.Conv2d(c, out_ch, 1)
        self.levels = levels

    def fuse(self) -> "UNet":
        """Fold every BatchNorm into its convolution (inference only; same outputs, fewer ops)."""
        self.eval()
        for blocks in (self.down, self.dec):
            for i, blk in enumerate(blocks):
                mods = list(blk)
                if not any(isinstance(m, nn.BatchNorm2d) for m in mods):
                    continue
                new = []
                for m in mods:
                    if isinstance(m, nn.BatchNorm2d):
                        new[-1] = fuse_conv_bn_eval(new[-1], m)
                    else:
                        new.append(m)
                blocks[i] = nn.Sequential(*new)
        return self

    @property
    def stride(self) -> int:
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
        for up, dec in zip(self.up, self.dec):
            x = up(x)
            x = dec(torch.cat([x, skips.pop()], 1))
        return self.head(x)


# ------------------------------------------------------------------ config


class FastSegConfig(StrictConfig):
    """The model folder's config.json (unknown keys are an error naming them: `FastSegConfig.from_dict`)."""

    kind: str = KIND
    arch: str = "unet"
    base_channels: int = 8
    levels: int = 5
    rbc_diameter_px: float = 20.0  # working scale: typical red-cell diameter in px
    fg_threshold: float = 0.5  # foreground probability
    center_threshold: float = 0.45  # centredness for watershed markers
    score_threshold: float = 0.5  # instances with a lower mean foreground probability are dropped
    min_area_rbc: float = 0.35  # instances smaller than this many RBC disc areas are dropped
    polygon_epsilon: float = 0.6  # cv2.approxPolyDP tolerance, working-scale px
    expand_px: float = 0.0  # instances grown by this many working-scale px into the background
    # instance filters (bloodsmear.models.instance_filter; areas in red-cell disc areas; 0 switches a rule off)
    merge_dynamics: float = FilterConfig.merge_dynamics  # merge touching pieces of one cell (centredness dip)
    merge_max_area_rbc: float = FilterConfig.merge_max_area_rbc  # ... into at most this big a cell
    merge_min_solidity: float = FilterConfig.merge_min_solidity  # ... that is this convex
    min_nucleus_rbc: float = FilterConfig.min_nucleus_rbc  # drop instances with less purple-stained nucleus
    stain_threshold: float = FilterConfig.stain_threshold  # OD(G) - OD(B) above the red cells' = nucleus stain
    normalisation: dict = Field(default_factory=lambda: {"type": "percentile", "low": 1.0, "high": 99.0,
                                                         "subsample": 4})
    training: dict = Field(default_factory=dict)
    metrics: dict = Field(default_factory=dict)

    def filter_config(self) -> FilterConfig:
        """The instance-filter thresholds of this model (`bloodsmear.models.instance_filter`)."""
        return FilterConfig(merge_dynamics=self.merge_dynamics, merge_max_area_rbc=self.merge_max_area_rbc,
                            merge_min_solidity=self.merge_min_solidity, min_nucleus_rbc=self.min_nucleus_rbc,
                            stain_threshold=self.stain_threshold)


def normalise(rgb: np.ndarray, norm: dict) -> np.ndarray:
    """Per-image, per-channel percentile normalisation to roughly [-1, 1] (float32 CHW)."""
    s = int(norm.get("subsample", 4))
    sub = rgb[::s, ::s].reshape(-1, 3).astype(np.float32)
    lo = np.percentile(sub, norm.get("low", 1.0), axis=0)
    hi = np.percentile(sub, norm.get("high", 99.0), axis=0)
    scale = np.maximum(hi - lo, 10.0)
    x = (rgb.astype(np.float32) - lo) / scale * 2.0 - 1.0
    return np.ascontiguousarray(x.transpose(2, 0, 1))


# ------------------------------------------------------------------ post-processing (pure)


def instances_from_maps(fg: np.ndarray, center: np.ndarray, *, fg_threshold: float = 0.5,
                        center_threshold: float = 0.45, min_area: float = 0.0, expand_px: float = 0.0,
                        merge: FilterConfig | None = None, rbc_diameter_px: float = 20.0) -> np.ndarray:
    """Instance labels (int32, 0 = background) from a foreground probability and a centredness map.

    Markers are the connected components of (centre > center_threshold) inside the foreground; each
    foreground pixel joins a marker by a watershed on -centre. Foreground blobs without a marker form
    one instance each; with `merge`, touching instances that are one cell are merged
    (`instance_filter.merge_split_instances`, red cells `rbc_diameter_px` wide); instances below
    `min_area` px are dropped; the rest are grown by `expand_px` into the background (never into each
    other). Inputs are not modified.
    """
    mask = fg > fg_threshold
    if not mask.any():
        return np.zeros(fg.shape, np.int32)
    markers_b = (center > center_threshold) & mask
    _, markers = cv2.connectedComponents(markers_b.astype(np.uint8), connectivity=8)
    markers = markers.astype(np.int32)
    # foreground blobs with no marker at all keep one instance
    nb, blobs = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    has = np.zeros(nb, bool)
    has[np.unique(blobs[markers > 0])] = True
    next_id = int(markers.max()) + 1
    for b in range(1, nb):
        if not has[b]:
            markers[blobs == b] = next_id
            next_id += 1
    lab = watershed(-center.astype(np.float32), markers, mask=mask).astype(np.int32)
    if merge is not None and merge.merge_dynamics > 0:
        lab = merge_split_instances(lab, center, rbc_diameter_px, dynamics=merge.merge_dynamics,
                                    max_area_rbc=merge.merge_max_area_rbc, min_solidity=merge.merge_min_solidity)
    if min_area > 0 and lab.max() > 0:
        areas = np.bincount(lab.ravel())
        small = np.flatnonzero(areas < min_area)
        small = small[small > 0]
        if len(small):
            lab[np.isin(lab, small)] = 0
    if expand_px > 0 and lab.max() > 0:
        lab = expand_labels(lab, expand_px).astype(np.int32)
    return relabel(lab)


def cells_from_labels(lab: np.ndarray, fg: np.ndarray, *, score_threshold: float = 0.0,
                      polygon_epsilon: float = 0.6) -> list[Cell]:
    """One "wbc" Cell per instance: score = mean foreground probability, box, mask, polygon."""
    cells: list[Cell] = []
    if lab.max() == 0:
        return cells
    slices = _bbox_slices(lab)
    for k, (ys, xs) in slices.items():
        m = lab[ys, xs] == k
        score = float(fg[ys, xs][m].mean())
        if score < score_threshold:
            continue
        poly = mask_to_polygon(m, epsilon=polygon_epsilon) + np.array([xs.start, ys.start], float)
        box = (float(xs.start), float(ys.start), float(xs.stop), float(ys.stop))
        cells.append(Cell(label="wbc", polygon=poly, box=box, mask=m.copy(), score=score))
    cells.sort(key=lambda c: -c.score)
    return cells


def _bbox_slices(lab: np.ndarray) -> dict[int, tuple[slice, slice]]:
    return {i + 1: s for i, s in enumerate(ndi.find_objects(lab)) if s is not None}


# ------------------------------------------------------------------ the segmenter


class FastSegmenter:
    """`Segmenter` (segmenter_base) over a `UNet`; `predict` works at the model's working scale."""

    kind = KIND

    def __init__(self, net: UNet, config: FastSegConfig):
        # channels-last activations: ~25 % faster 3x3 convolutions on CPU (same weights, same maps)
        self.net = net.eval().to(memory_format=torch.channels_last)
        self.config = config
        self.rbc_diameter_px = float(config.rbc_diameter_px)
        self.score_threshold = float(config.score_threshold)
        #: the network's runner, float32 (N, 3, H, W) array -> logits array; None: `net` in torch (the
        #: inference layer sets an ONNX Runtime one: `inference.onnx_backend.use_onnx`)
        self.forward = None

    def maps(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(foreground probability, centredness) maps, both (H, W) float32, for an RGB uint8 image."""
        return self.maps_many([rgb])[0]

    def maps_many(self, rgbs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """`maps` of several images of one size in one batch of the network (per image the same maps
        as one at a time)."""
        xs = []
        for rgb in rgbs:
            if rgb.ndim != 3 or rgb.shape[2] != 3:
                raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
            if rgb.shape != rgbs[0].shape:
                raise ValueError(f"one batch holds images of one size, got {rgbs[0].shape} and {rgb.shape}")
            h, w = rgb.shape[:2]
            st = self.net.stride
            ph, pw = (-h) % st, (-w) % st
            x = normalise(rgb, self.config.normalisation)
            if ph or pw:
                x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")
            xs.append(x)
        if not xs:
            return []
        x = np.stack(xs)
        with torch.inference_mode():
            if self.forward is not None:
                logits = torch.from_numpy(np.asarray(self.forward(x)))
            else:
                logits = self.net(torch.from_numpy(x).float().contiguous(memory_format=torch.channels_last))
            out = torch.sigmoid(logits).contiguous().numpy()
        h, w = rgbs[0].shape[:2]
        return [(o[0, :h, :w], o[1, :h, :w]) for o in out]

    def predict(self, rgb: np.ndarray) -> list[Cell]:
        rgb = np.asarray(rgb)
        return self.cells_from_maps(rgb, *self.maps(rgb))

    def predict_many(self, rgbs: list[np.ndarray]) -> list[list[Cell]]:
        """`predict` of several images of one size, the network run on them in one batch."""
        rgbs = [np.asarray(r) for r in rgbs]
        return [self.cells_from_maps(rgb, fg, center) for rgb, (fg, center) in zip(rgbs, self.maps_many(rgbs))]

    def cells_from_maps(self, rgb: np.ndarray, fg: np.ndarray, center: np.ndarray) -> list[Cell]:
        """The instances of `rgb` from its maps: watershed, instance filters, cells."""
        c = self.config
        rbc_area = np.pi / 4 * self.rbc_diameter_px ** 2
        filt = c.filter_config()
        lab = instances_from_maps(fg, center, fg_threshold=c.fg_threshold, center_threshold=c.center_threshold,
                                  min_area=c.min_area_rbc * rbc_area, expand_px=c.expand_px, merge=filt,
                                  rbc_diameter_px=self.rbc_diameter_px)
        lab = drop_unstained(lab, rgb, self.rbc_diameter_px, min_nucleus_rbc=filt.min_nucleus_rbc,
                             stain_threshold=filt.stain_threshold)
        return cells_from_labels(lab, fg, score_threshold=self.score_threshold, polygon_epsilon=c.polygon_epsilon)

    # -------------------------------------------------------------- folder I/O

    def save(self, folder: str | Path) -> Path:
        if not any(isinstance(m, nn.BatchNorm2d) for m in self.net.modules()):
            raise ValueError("cannot save a fused network (BatchNorm folded); save the training network")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in self.net.state_dict().items()}
        with atomic_path(folder / WEIGHTS) as tmp:
            torch.save(sd, tmp)
        cfg = self.config.to_dict()
        cfg["score_threshold"] = self.score_threshold
        write_json_atomic(folder / "config.json", cfg)
        return folder


def build_net(config: FastSegConfig) -> UNet:
    if config.arch != "unet":
        raise ValueError(f"unknown fast segmenter arch {config.arch!r} (known: unet)")
    return UNet(base=config.base_channels, levels=config.levels)


@register_segmenter(KIND)
def load_fast_segmenter(folder: str | Path) -> FastSegmenter:
    folder = Path(folder)
    d = read_folder_config(folder)
    check_kind(folder, KIND, d)
    cfg = FastSegConfig.from_dict(d, source=folder / "config.json")
    net = build_net(cfg)
    wpath = folder / WEIGHTS
    if not wpath.is_file():
        raise InputError(wpath, "segmenter weights missing")
    sd = torch.load(wpath, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    return FastSegmenter(net.fuse(), cfg)
