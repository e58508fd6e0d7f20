"""ONNX Runtime as an optional CPU inference backend (`PipelineConfig.backend: onnx`, `analyze --backend onnx`).

    net = onnx_net(torch_module, (3, 80, 80))     # exported once, cached; OnnxNet(x: float32 NCHW) -> ndarray
    use_onnx(pipeline)                            # the pipeline's segmenter and classifiers run on ONNX Runtime

Each network is exported with `torch.onnx.export` (TorchScript exporter, opset `OPSET`, batch and - for
the segmenter - height and width dynamic) into the user cache, `settings.cache_dir("onnx")`, under a
name keyed by the checksum of the exported weights (the BatchNorm-folded state dict, its shapes and the
torch and onnx versions): a model folder is exported once per machine, a changed model (new weights, a
batch-norm adaptation) gets its own file. Sessions run with as many intra-op threads as torch has at
the call (`torch.get_num_threads()`: a worker thread's one thread stays one), one session per count.
Outputs agree with torch within 1e-4 (tests/test_onnx_backend.py); docs/speed.md has the speeds.

Needs the extra `pip install bloodsmear[onnx]` (onnxruntime, onnx); without it `require_onnxruntime`
is one `BloodsmearError` line naming it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import warnings
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bloodsmear.errors import BloodsmearError
from bloodsmear.io import atomic_path
from bloodsmear.settings import cache_dir

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")
INSTALL_HINT = ("the onnx backend needs ONNX Runtime, which is not installed: pip install bloodsmear[onnx] "
                "(or use --backend torch)")
OPSET = 17
CACHE_SUB = "onnx"

_lock = threading.Lock()
_nets: "weakref.WeakKeyDictionary[torch.nn.Module, OnnxNet]" = weakref.WeakKeyDictionary()


def require_onnxruntime():
    """The `onnxruntime` module, or one clear `BloodsmearError` naming the extra to install."""
    try:
        import onnxruntime  # noqa: PLC0415 - optional extra (bloodsmear[onnx]): only this backend needs it
    except ImportError as e:
        raise BloodsmearError(INSTALL_HINT) from e
    return onnxruntime


def check_backend(name: str, where: object = None) -> str:
    """`name` when it is a known backend, else `BloodsmearError` listing them."""
    if name not in BACKENDS:
        raise BloodsmearError(f"{where + ': ' if where else ''}backend must be one of {', '.join(BACKENDS)}, "
                              f"not {name!r}")
    return name


def weights_key(module: torch.nn.Module, input_shape: Sequence[int]) -> str:
    """Checksum of what an export depends on: the module's weights (names, shapes, values), the example
    input's shape, the torch and onnx versions and `OPSET` (hex, 16 digits)."""
    import onnx  # noqa: PLC0415 - optional extra (bloodsmear[onnx]): only an export needs it

    h = hashlib.sha256(f"{torch.__version__}|{onnx.__version__}|{OPSET}|{tuple(input_shape)}".encode())
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def export_onnx(module: torch.nn.Module, input_shape: Sequence[int], dest: Path, *,
                dynamic_hw: bool = False) -> Path:
    """Export `module` (eval mode; inputs (N, *input_shape) float32) to `dest`, atomically; batch dynamic,
    and height and width with `dynamic_hw`."""
    module = module.eval()
    x = torch.zeros((1, *input_shape), dtype=torch.float32)
    axes = {0: "n", 2: "h", 3: "w"} if dynamic_hw else {0: "n"}
    with atomic_path(dest) as tmp, warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(module, (x,), str(tmp), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": axes, "y": axes}, opset_version=OPSET, dynamo=False)
    return dest


class OnnxNet:
    """A network exported to ONNX, run by ONNX Runtime: `net(x)` for a float32 (N, C, H, W) array gives
    the network's first output as a float32 array. Thread-safe; one session per intra-op thread count."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._ort = require_onnxruntime()
        self._sessions: dict[int, object] = {}
        self._lock = threading.Lock()

    def session(self, threads: int | None = None):
        n = max(1, int(threads if threads is not None else torch.get_num_threads()))
        s = self._sessions.get(n)
        if s is None:
            with self._lock:
                s = self._sessions.get(n)
                if s is None:
                    opts = self._ort.SessionOptions()
                    opts.intra_op_num_threads = n
                    opts.inter_op_num_threads = 1
                    opts.log_severity_level = 3
                    s = self._ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
                    self._sessions[n] = s
        return s

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session().run(None, {"x": x})[0]


def onnx_net(module: torch.nn.Module, input_shape: Sequence[int], *, name: str = "net",
             dynamic_hw: bool = False, folder: str | Path | None = None) -> OnnxNet:
    """The `OnnxNet` of `module` for inputs (N, *input_shape): exported into `folder` (default: the user
    cache's "onnx" folder) as `<name>-<weights_key>.onnx` unless that file exists; remembered per module."""
    require_onnxruntime()
    net = _nets.get(module)
    if net is not None:
        return net
    with _lock:
        net = _nets.get(module)
        if net is None:
            dest = Path(folder) if folder is not None else cache_dir(CACHE_SUB)
            dest = dest / f"{name}-{weights_key(module, input_shape)}.onnx"
            if not dest.is_file():
                log.info("exporting %s to ONNX: %s", name, dest)
                export_onnx(module, input_shape, dest, dynamic_hw=dynamic_hw)
            net = OnnxNet(dest)
            _nets[module] = net
    return net


def use_onnx(pipeline) -> None:
    """Switch `pipeline`'s networks to ONNX Runtime (exported now, or read from the cache): the
    segmenter when it has a `net` and a `forward` hook (the fast U-Net), every `CellClassifier` stage."""
    require_onnxruntime()
    nets = []
    seg = pipeline.segmenter
    if hasattr(seg, "forward") and isinstance(getattr(seg, "net", None), torch.nn.Module):
        seg.forward = onnx_net(seg.net, (3, 64, 64), name=f"seg-{getattr(seg, 'kind', 'net')}", dynamic_hw=True)
        nets.append(seg.forward)
    for clf in (pipeline.screening, pipeline.refine):
        if clf is not None and hasattr(clf, "backend"):
            clf.backend = "onnx"
            nets.append(clf.onnx_forward(clf.net))  # exported now, not in the first batch
    for net in nets:  # sessions for torch's thread count and for analyze's one-thread workers, made now
        for n in {1, torch.get_num_threads()}:
            net.session(n)


__all__ = ["BACKENDS", "INSTALL_HINT", "OnnxNet", "check_backend", "export_onnx", "onnx_net", "require_onnxruntime",
           "use_onnx", "weights_key"]
