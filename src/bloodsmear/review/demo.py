"""A synthetic analyze output folder for tests, the browser test and `bloodsmear bench review`: smear-like
fields (pink background, red cells, purple WBC blobs) and a results.json as `analyze` writes it, some cells
flagged for review. No model is needed.

    out = make_demo_out_dir(tmp_path)                      # 2 fields of 640 x 480, 12 cells each
    out = make_demo_out_dir(tmp_path, n_fields=1, cells_per_field=200, size=(4032, 3024))
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from bloodsmear.outputs.paper_json import image_record, write_results_json
from bloodsmear.types import Cell, SlideResult

DEMO_CLASSES = ("basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil")
_WEIGHTS = np.array([0.02, 0.05, 0.03, 0.3, 0.08, 0.52])


def _field(rng: np.random.Generator, w: int, h: int, n: int) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (232, 212, 214)
    rbc_r = max(6, round(min(w, h) / 22))
    for _ in range(int(w * h / (rbc_r * rbc_r * 6))):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, c, rbc_r, (214, 140, 150), -1, cv2.LINE_AA)
        cv2.circle(img, c, rbc_r // 2, (224, 170, 176), -1, cv2.LINE_AA)
    # WBC centres on a jittered grid, so that cells do not overlap
    cols = max(1, int(np.ceil(np.sqrt(n * w / h))))
    rows = max(1, int(np.ceil(n / cols)))
    step_x, step_y = w / cols, h / rows
    r = max(8.0, min(step_x, step_y) * 0.32)
    centres = []
    for i in range(n):
        cx = (i % cols + 0.5) * step_x + rng.uniform(-0.1, 0.1) * step_x
        cy = (i // cols + 0.5) * step_y + rng.uniform(-0.1, 0.1) * step_y
        rr = r * rng.uniform(0.8, 1.05)
        cv2.circle(img, (round(cx), round(cy)), round(rr), (200, 170, 210), -1, cv2.LINE_AA)
        cv2.ellipse(img, (round(cx), round(cy)), (round(rr * 0.6), round(rr * 0.45)), float(rng.uniform(0, 180)),
                    0, 360, (90, 40, 130), -1, cv2.LINE_AA)
        centres.append((cx, cy, rr))
    return img, centres


def _outline(cx: float, cy: float, r: float, w: int, h: int, k: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    return np.stack([np.clip(cx + r * np.cos(t), 0, w - 1), np.clip(cy + r * np.sin(t), 0, h - 1)], 1)


def make_demo_out_dir(dest: Path, *, n_fields: int = 2, cells_per_field: int = 12, size: tuple[int, int] = (640, 480),
                      case: str = "demo-case", seed: int = 0, flagged_share: float = 0.25) -> Path:
    """Fields under dest/fields/<case>/, results under dest/out (returned)."""
    rng = np.random.default_rng(seed)
    w, h = size
    fields, out = Path(dest) / "fields" / case, Path(dest) / "out"
    fields.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for f in range(n_fields):
        img, centres = _field(rng, w, h, cells_per_field)
        path = fields / f"field_{f:03d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        cells = []
        for cx, cy, rr in centres:
            label = str(rng.choice(DEMO_CLASSES, p=_WEIGHTS / _WEIGHTS.sum()))
            flagged = bool(rng.random() < flagged_share)
            score = float(rng.uniform(0.3, 0.49) if flagged else rng.uniform(0.6, 0.99))
            screen = label if rng.random() < 0.8 else str(rng.choice(DEMO_CLASSES))
            cells.append(Cell(label=label, polygon=_outline(cx, cy, rr, w, h), score=score, attributes={
                "detection_score": float(rng.uniform(0.7, 1.0)), "screening_label": screen,
                "screening_score": float(rng.uniform(0.4, 0.99)), "refined_label": label if screen != label else None,
                "refined_score": score if screen != label else None, "review": flagged}))
        records.append(image_record(SlideResult(name=f"{case}/{path.name}", width=w, height=h, cells=cells, path=path,
                                                rbc_diameter_px=2.0 * max(6, round(min(w, h) / 22)))))
    pipeline = {"classes": list(DEMO_CLASSES), "review_threshold": 0.5, "crop_frame_rbc": 5.45, "name": "demo"}
    write_results_json(out / "results.json", records, pipeline, run={"identity": {"demo": True}})
    return out
