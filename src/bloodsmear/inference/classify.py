"""Classify single-cell images with a model folder (default: the shipped PBC model).

    clf = CellClassifier.load("default")
    probs = clf.predict_proba(list_of_rgb_uint8_crops)          # (N, C), any crop sizes
    res = classify_paths(["cells/"], model="default")            # folders walked, bad files skipped
    write_predictions(res, "out.csv")                            # or .json

Crops are fitted exactly as in training (centre square of the model's `crop_fraction`, resized to its
input size), batched, and run through a BatchNorm-folded, channels-last copy of the network.
`classify_paths(..., framer=f)` first frames each image with `f` (image -> the cell's crop, or None when
it holds no cell: `inference.single_cell.CellFramer`, docs/framing.md); such images are rows with status
`NO_CELL`, not classified.
"""

from __future__ import annotations

import csv
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from bloodsmear.errors import InputError
from bloodsmear.inference.onnx_backend import OnnxNet, onnx_net
from bloodsmear.inference.tta import check_tta, predict_tta
from bloodsmear.io import atomic_path, is_image_file, list_images, read_image, write_json_atomic
from bloodsmear.models.artifact import LoadedClassifier, load_model
from bloodsmear.preprocess.color import ReinhardNormalizer
from bloodsmear.preprocess.transforms import fit_image, normalizer

log = logging.getLogger(__name__)

#: How `bloodsmear classify` frames a single-cell image: "cell" finds the cell with the pipeline's segmenter
#: and frames it as PBC does (`inference.single_cell`); "centre": the image as it is (the model's centre
#: square, for datasets already cropped as PBC; the behaviour before docs/framing.md).
FRAMINGS = ("cell", "centre")
#: A prediction's status when the framer found no cell in the image.
NO_CELL = "no cell found"
#: An image -> the crop of its cell, framed for the classifier (None: no cell found).
Framer = Callable[[np.ndarray], "np.ndarray | None"]


def optimize_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Eval-mode copy with Conv+BatchNorm folded (torch.fx) and channels-last memory; falls back to the model."""
    model = model.eval()
    try:  # imported here: torch.fx is heavy to import, only this optional fusion needs it, and a torch
        # build without it (or a backbone it cannot trace) still classifies, unfused
        from torch.fx.experimental.optimization import fuse

        fused = fuse(model)
    except Exception as e:  # noqa: BLE001 - fx tracing can fail on exotic backbones; unfused still works
        log.debug("conv-bn fusion skipped: %s", e)
        fused = model
    return fused.to(memory_format=torch.channels_last).eval()


@dataclass
class CellPrediction:
    path: str
    label: str
    confidence: float
    probs: dict[str, float] = field(default_factory=dict)
    status: str = "ok"  # or NO_CELL (label "", no probabilities)


@dataclass
class ClassifyResult:
    classes: list[str]
    predictions: list[CellPrediction]
    skipped: list[str]  # "path: problem"
    seconds: float
    model: str
    framing: str = "centre"

    @property
    def classified(self) -> list[CellPrediction]:
        """The predictions of images that were classified (status "ok")."""
        return [p for p in self.predictions if p.status == "ok"]

    @property
    def no_cell(self) -> list[str]:
        """Paths of the images in which the framer found no cell."""
        return [p.path for p in self.predictions if p.status == NO_CELL]

    def to_dict(self) -> dict:
        preds = [asdict(p) for p in self.predictions]
        extra = {}
        if self.framing != "centre":  # centre framing keeps the output of before (no status, no framing)
            extra = {"framing": self.framing, "no_cell": len(self.no_cell)}
        else:
            for d in preds:
                d.pop("status")
        return {"model": self.model, "classes": self.classes, "n": len(self.predictions),
                "skipped": self.skipped, "seconds": round(self.seconds, 3), **extra, "predictions": preds}


class CellClassifier:
    """A loaded classifier folder ready for batched inference on RGB uint8 crops."""

    def __init__(self, loaded: LoadedClassifier, *, optimize: bool = True, tta: str = "none"):
        self.loaded = loaded
        self.tta = check_tta(tta)  # test-time augmentation: none | flip | d8 (inference/tta.py)
        self.info = loaded.info
        self.classes = list(loaded.info.classes)
        self.net = optimize_for_inference(loaded.model) if optimize else loaded.model.eval()
        self.backend = "torch"  # or "onnx": `self.net` run by ONNX Runtime (`inference.onnx_backend.use_onnx`)

        self._mean, self._std = normalizer(self.info.mean, self.info.std)
        self._stain = None
        if self.info.color_normalization:  # the stain normalisation the model was trained with

            self._stain = ReinhardNormalizer.from_dict(self.info.color_normalization)

    @classmethod
    def load(cls, ref: str | Path = "default", **kw) -> "CellClassifier":
        return cls(load_model(ref), **kw)

    def fit_batch(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, S, S, 3) uint8: each crop fitted to the model's input (the inputs are not modified)."""
        s = int(self.info.input_size)
        out = np.empty((len(crops), s, s, 3), np.uint8)
        for i, c in enumerate(crops):
            c = np.asarray(c)
            if c.ndim != 3 or c.shape[2] != 3 or c.dtype != np.uint8:
                raise InputError(None, f"crop {i}: expected an RGB uint8 (H, W, 3) array, got {c.dtype} {c.shape}")
            out[i] = fit_image(c, s, self.info.crop_fraction)
        return out

    def normalize_stain(self, batch: np.ndarray) -> np.ndarray:
        """The model's stain normalisation (if it has one) of fitted (N, S, S, 3) uint8 images (a new array)."""
        if self._stain is None:
            return batch
        return np.stack([self._stain(im) for im in batch]) if len(batch) else batch

    def predict_fitted(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for already-fitted (N, S, S, 3) uint8 images (stain-normalised here when the model is;
        averaged over the test-time views of `self.tta`)."""
        return predict_tta(self._forward, self.normalize_stain(batch), self.tta)

    @torch.inference_mode()
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
        x = (x - self._mean) / self._std
        if self.backend == "onnx":
            logits = torch.from_numpy(self.onnx_forward(self.net)(x.numpy()))
        else:
            logits = self.net(x.contiguous(memory_format=torch.channels_last))
        return torch.softmax(logits.float(), dim=1).numpy()

    def onnx_forward(self, net: torch.nn.Module) -> OnnxNet:
        """`net` exported to ONNX (once per weights, `inference.onnx_backend.onnx_net`): a copy of this
        classifier with another net (a batch-norm adaptation) gets that net's own export."""
        s = int(self.info.input_size)
        return onnx_net(net, (3, s, s), name=f"clf-{self.info.backbone}-{s}")

    def predict_proba(self, crops: Sequence[np.ndarray], *, batch_size: int = 256,
                      workers: int | None = None) -> np.ndarray:
        """(N, C) class probabilities for N RGB uint8 crops of any size.

        The crops are cut into chunks of `chunk_size` (small batches stay in cache) that `workers` threads
        (default: torch's thread count) fit and classify, each with one torch thread: on a few CPU cores
        this beats one batch spread over the cores by intra-op threads. `batch_size` bounds the memory:
        at most that many crops are fitted at once.
        """
        if len(crops) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        workers = max(1, int(workers if workers is not None else torch.get_num_threads()))
        out = []
        for b in range(0, len(crops), batch_size):
            part = crops[b:b + batch_size]
            if workers == 1 or len(part) <= self.chunk_size:
                out.append(self.predict_fitted(self.fit_batch(part)))
                continue
            chunks = [part[i:i + self.chunk_size] for i in range(0, len(part), self.chunk_size)]
            out.extend(_pool(workers).map(self._fit_predict_1thread, chunks))
        return np.concatenate(out)

    chunk_size = 32

    def _fit_predict_1thread(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        torch.set_num_threads(1)  # this worker thread only (OpenMP thread-local setting)
        return self.predict_fitted(self.fit_batch(crops))


_POOLS: dict[int, object] = {}


def _pool(workers: int):
    """A shared thread pool per worker count (threads keep their one-torch-thread setting)."""
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bloodsmear-classify")
    return _POOLS[workers]


def collect_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Image files from files and folders (walked, sorted); returns (files, problems for missing inputs)."""
    files, problems = [], []
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            files.extend(list_images(p, include_hidden=False))
        elif p.is_file():
            if is_image_file(p):
                files.append(p)
            else:
                problems.append(f"{p}: not an image file (suffix {p.suffix or 'none'})")
        else:
            problems.append(f"{p}: no such file or folder")
    return files, problems


def predict_images(clf: CellClassifier, images: Sequence[np.ndarray], framer: Framer | None = None, *,
                   batch_size: int = 256) -> list[np.ndarray | None]:
    """Class probabilities per image (None where `framer` found no cell); without a framer the images
    are classified as they are (the model's centre square). The images are not modified."""
    crops = list(images) if framer is None else [framer(im) for im in images]
    found = [i for i, c in enumerate(crops) if c is not None]
    probs = clf.predict_proba([crops[i] for i in found], batch_size=batch_size) if found else []
    out: list[np.ndarray | None] = [None] * len(crops)
    for i, p in zip(found, probs):
        out[i] = p
    return out


def classify_paths(inputs: Sequence[str | Path], *, model: str | Path | CellClassifier = "default",
                   batch_size: int = 256, progress: bool = True, tta: str = "none",
                   framer: Framer | None = None) -> ClassifyResult:
    """Classify every image under `inputs`; unreadable images are reported in `skipped`, not fatal.
    `tta`: test-time augmentation of a model given by name/folder (none | flip | d8). `framer`: frames
    each image first (`inference.single_cell.CellFramer`); an image where it finds no cell is a
    prediction with status `NO_CELL`. Without one, each image is classified as it is (centre framing)."""
    clf = model if isinstance(model, CellClassifier) else CellClassifier.load(model, tta=tta)
    files, skipped = collect_inputs(inputs)
    t0 = time.perf_counter()
    preds: list[CellPrediction] = []
    bar = tqdm(total=len(files), desc="classify", unit="cell", disable=not progress)
    for b in range(0, len(files), batch_size):
        chunk, imgs = [], []
        for f in files[b:b + batch_size]:
            try:
                imgs.append(read_image(f))
                chunk.append(f)
            except InputError as e:
                skipped.append(str(e))
        if imgs:
            probs = predict_images(clf, imgs, framer, batch_size=batch_size)
            for f, p in zip(chunk, probs):
                if p is None:
                    preds.append(CellPrediction(path=str(f), label="", confidence=0.0, status=NO_CELL))
                    continue
                k = int(p.argmax())
                preds.append(CellPrediction(path=str(f), label=clf.classes[k], confidence=float(p[k]),
                                            probs={c: round(float(v), 6) for c, v in zip(clf.classes, p)}))
        bar.update(len(files[b:b + batch_size]))
    bar.close()
    if skipped:
        log.warning("skipped %d input(s): %s%s", len(skipped), skipped[0], " ..." if len(skipped) > 1 else "")
    n_none = sum(p.status == NO_CELL for p in preds)
    if n_none:
        log.warning("no cell found in %d of %d image(s)", n_none, len(preds))
    return ClassifyResult(classes=clf.classes, predictions=preds, skipped=skipped,
                          seconds=time.perf_counter() - t0, model=str(clf.loaded.path),
                          framing="centre" if framer is None else str(getattr(framer, "name", "cell")))


def write_predictions(result: ClassifyResult, dest: str | Path) -> Path:
    """CSV (path, label, confidence, one column per class; with a framer also status) or JSON, by
    suffix; written atomically."""
    dest = Path(dest)
    if dest.suffix.lower() == ".json":
        return write_json_atomic(dest, result.to_dict())
    if dest.suffix.lower() != ".csv":
        raise InputError(dest, "output must end in .csv or .json")

    with atomic_path(dest) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            status = result.framing != "centre"  # centre framing writes the columns of before
            w.writerow(["path", "label", "confidence", *[f"p_{c}" for c in result.classes]] + ["status"] * status)
            for p in result.predictions:
                probs = [f"{p.probs[c]:.6f}" if c in p.probs else "" for c in result.classes]
                w.writerow([p.path, p.label, f"{p.confidence:.6f}", *probs] + [p.status] * status)
    return dest


__all__ = ["CellClassifier", "CellPrediction", "ClassifyResult", "FRAMINGS", "Framer", "NO_CELL", "classify_paths",
           "collect_inputs", "predict_images", "write_predictions", "optimize_for_inference"]
