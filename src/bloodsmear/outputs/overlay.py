"""Overlay images: each cell outlined in its class colour with one label beside it - the final class and
score, the screening class when it differs, "?" when the cell is flagged for review - placed so that no two
labels overlap (`labels.place_labels`), and a legend panel to the right of the field that explains the
colours, the labels and the "?". Large photos are downscaled first (the overlay is for looking at).

`CLASS_COLOURS` / `class_colour_hex` are the one home of the class colours (the review page uses them too).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np

from bloodsmear.io import atomic_path, encode_png
from bloodsmear.outputs.labels import place_labels
from bloodsmear.types import Cell, SlideResult

MAX_SIDE = 1600  # longest side of an overlay's field (the legend panel is added beside it)
REVIEW_COLOUR = (255, 0, 255)  # RGB magenta: cells flagged for review (ring round the outline, label frame)
FONT = cv2.FONT_HERSHEY_SIMPLEX
LEGEND_BG = (250, 250, 250)
MAX_LISTED = 80  # numbered cells listed in the legend at most

#: RGB per class, fixed and distinct; related fine classes share a hue (neutrophils blue, IG greens).
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "neutrophil": (0, 114, 178), "segmented_neutrophil": (30, 70, 200), "band_cell": (86, 180, 233),
    "ig": (0, 158, 115), "promyelocyte": (0, 100, 60), "myelocyte": (60, 180, 75), "metamyelocyte": (150, 210, 100),
    "lymphocyte": (213, 94, 0), "monocyte": (230, 159, 0), "eosinophil": (240, 228, 66),
    "basophil": (120, 60, 160), "blast_cell": (200, 0, 0), "erythroblast": (140, 70, 20),
    "platelet": (0, 190, 190), "rbc": (170, 170, 170), "wbc": (40, 40, 40),
    "artefact": (110, 110, 110), "smudge_cell": (128, 128, 0),
}
# Names outside the canonical set (a lab's own classes) get a stable colour from their name.
_FALLBACK = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233),
             (230, 159, 0), (0, 0, 0), (240, 228, 66), (120, 60, 160), (160, 30, 40)]


def class_colour(name: str) -> tuple[int, int, int]:
    """The RGB colour of a class (stable: the same name always gets the same colour)."""
    c = CLASS_COLOURS.get(name)
    return c if c is not None else _FALLBACK[zlib.crc32(name.encode("utf-8")) % len(_FALLBACK)]


def class_colour_hex(name: str) -> str:
    """`class_colour` as "#rrggbb" (for HTML/CSS)."""
    return "#{:02x}{:02x}{:02x}".format(*class_colour(name))


REVIEW_COLOUR_HEX = "#{:02x}{:02x}{:02x}".format(*REVIEW_COLOUR)


def _display(name: str) -> str:
    return name.replace("_", " ")


def label_lines(cell: Cell) -> list[str]:
    """A cell's label: its final class and score ("?" when flagged for review), then the screening class
    on a second line when it differs from the final one."""
    a = cell.attributes
    first = _display(cell.label) + ("" if cell.score is None else f" {cell.score:.2f}")
    lines = [first + (" ?" if a.get("review") else "")]
    screen = a.get("screening_label")
    if screen is not None and screen != cell.label:
        lines.append(f"(screen: {_display(screen)})")
    return lines


def _text_block(lines: list[str], scale: float, thick: int) -> tuple[int, int, int, int]:
    """(width, height, line height, padding) of a label box holding `lines`."""
    sizes = [cv2.getTextSize(t, FONT, scale, thick) for t in lines]
    pad = max(2, round(scale * 5))
    line_h = max(th + base for (_, th), base in sizes) + max(1, round(scale * 3))
    return max(tw for (tw, _), _ in sizes) + 2 * pad, line_h * len(lines) + 2 * pad - max(1, round(scale * 3)), \
        line_h, pad


def _ink(colour) -> tuple[int, int, int]:
    r, g, b = colour
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _draw_block(img: np.ndarray, lines: list[str], xy: tuple[int, int], size, colour, scale: float, thick: int,
                *, flagged: bool) -> None:
    x, y = xy
    w, h, line_h, pad = size
    cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), colour, -1)
    if flagged:
        fw = max(2, round(scale * 3))
        cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), REVIEW_COLOUR, fw)
    ink = _ink(colour)
    for k, t in enumerate(lines):
        (_, th), _ = cv2.getTextSize(t, FONT, scale, thick)
        cv2.putText(img, t, (x + pad, y + pad + k * line_h + th), FONT, scale, ink, thick, cv2.LINE_AA)


def _gap_points(label: tuple[int, int, int, int], box) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The closest points of a label rectangle and a cell box, or None when they (nearly) touch."""
    lx1, ly1, lx2, ly2 = label
    bx1, by1, bx2, by2 = box
    px, qx = (lx2, bx1) if lx2 < bx1 else (lx1, bx2) if lx1 > bx2 else ((max(lx1, bx1) + min(lx2, bx2)) / 2,) * 2
    py, qy = (ly2, by1) if ly2 < by1 else (ly1, by2) if ly1 > by2 else ((max(ly1, by1) + min(ly2, by2)) / 2,) * 2
    if abs(px - qx) + abs(py - qy) < 8:
        return None
    return (round(px), round(py)), (round(qx), round(qy))


def _downscale(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """A copy of `rgb` with its longest side at most `max_side`, and the factor. Fast: an integer-factor
    area reduction (OpenCV's fast path) then a linear resize for the rest (under 2x, no aliasing to see)."""
    h, w = rgb.shape[:2]
    f = min(1.0, max_side / max(h, w))
    if f >= 1.0:
        return rgb.copy(), 1.0
    size = (max(1, round(w * f)), max(1, round(h * f)))
    k = int(1 / f)
    src = cv2.resize(rgb, (w // k, h // k), interpolation=cv2.INTER_AREA) if k >= 2 else rgb
    return cv2.resize(src, size, interpolation=cv2.INTER_LINEAR if k >= 2 else cv2.INTER_AREA), f


def render_overlay(rgb: np.ndarray, result: SlideResult, *, max_side: int = MAX_SIDE, legend: bool = True,
                   review_threshold: float | None = None) -> np.ndarray:
    """A new RGB image: the field (downscaled to `max_side`) with outlines and labels, and (`legend`) a
    legend panel to its right. `review_threshold` (else `result.meta["review_threshold"]`) is named in the
    legend when known. `rgb` and `result` are not modified."""
    img, f = _downscale(rgb, max_side)
    side = max(img.shape[:2])
    thick = max(1, round(side / 800))
    scale = max(0.4, side / 2700)
    text_thick = 1 if scale < 0.7 else 2
    cells = [(i, c) for i, c in enumerate(result.cells) if c.polygon is not None and len(c.polygon) >= 2]
    pts = [np.round(c.polygon * f).astype(np.int32).reshape(-1, 1, 2) for _, c in cells]
    for (_, c), p in zip(cells, pts):  # a magenta ring round flagged cells, under the class-coloured outline
        if c.attributes.get("review"):
            cv2.polylines(img, [p], True, REVIEW_COLOUR, thick + 4, cv2.LINE_AA)
    for (_, c), p in zip(cells, pts):
        cv2.polylines(img, [p], True, class_colour(c.label), thick + 1, cv2.LINE_AA)
    boxes = [(int(p[:, 0, 0].min()), int(p[:, 0, 1].min()), int(p[:, 0, 0].max()), int(p[:, 0, 1].max()))
             for p in pts]
    texts = [label_lines(c) for _, c in cells]
    blocks = [_text_block(t, scale, text_thick) for t in texts]
    priority = [(1e9 if c.attributes.get("review") else 0.0) + (b[2] - b[0]) * (b[3] - b[1])
                for (_, c), b in zip(cells, boxes)]
    size_wh = (img.shape[1], img.shape[0])
    gap = thick + 2
    places = place_labels(boxes, [b[:2] for b in blocks], size_wh, priority=priority, gap=gap)
    # Labels that did not fit: a number tag instead, the full label listed in the legend.
    missing = [k for k, p in enumerate(places) if p is None]
    tag_texts = [[f"#{cells[k][0] + 1}"] for k in missing]
    tag_blocks = [_text_block(t, scale, text_thick) for t in tag_texts]
    taken = [(p[0], p[1], p[0] + b[0], p[1] + b[1]) for p, b in zip(places, blocks) if p is not None]
    tags = place_labels([boxes[k] for k in missing], [b[:2] for b in tag_blocks], size_wh,
                        priority=[priority[k] for k in missing], taken=taken, gap=gap)
    draw = [(k, texts[k], blocks[k], places[k]) for k in range(len(cells)) if places[k] is not None]
    draw += [(k, t, b, p) for k, t, b, p in zip(missing, tag_texts, tag_blocks, tags) if p is not None]
    for k, _, b, p in draw:  # leader lines first, so that labels lie on top of them
        link = _gap_points((p[0], p[1], p[0] + b[0], p[1] + b[1]), boxes[k])
        if link is not None:
            cv2.line(img, link[0], link[1], class_colour(cells[k][1].label), max(1, thick), cv2.LINE_AA)
    for k, t, b, p in draw:
        c = cells[k][1]
        _draw_block(img, t, p, b, class_colour(c.label), scale, text_thick, flagged=bool(c.attributes.get("review")))
    if not legend:
        return img
    listed = [(cells[k][0] + 1, " ".join(texts[k]), p is not None) for k, p in zip(missing, tags)]
    thr = review_threshold if review_threshold is not None else result.meta.get("review_threshold")
    panel = _legend(legend_rows(result, listed, thr), img.shape[0], max(0.45, scale), text_thick)
    return np.hstack([img, panel])


def legend_rows(result: SlideResult, listed: list[tuple[int, str, bool]] = (), threshold: float | None = None
                ) -> list[tuple[str, tuple[int, int, int] | None, str]]:
    """The legend's rows, (kind, colour, text) with kind title / text / swatch / flag / gap: each class
    present with its colour and count, the "?" and its colour, the label format, and the `listed` cells
    ((number, label text, has a number tag)) whose label did not fit."""
    counts = result.class_counts()
    n_review = sum(bool(c.attributes.get("review")) for c in result.cells)
    name = result.name if len(result.name) <= 40 else "..." + result.name[-37:]  # a deep path: its end
    rows: list[tuple[str, tuple | None, str]] = [("title", None, f"{name}: {len(result.cells)} cells")]
    rows.append(("text", None, "Outline colour = final class (count)"))
    if not counts:
        rows.append(("text", None, "  no cells found"))
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        rows.append(("swatch", class_colour(name), f"{_display(name)}  {n}"))
    rows.append(("gap", None, ""))
    rows.append(("flag", REVIEW_COLOUR, f"? flagged for review ({n_review})"))
    below = f"below {threshold:.2f}" if threshold is not None else "below the review threshold"
    rows += [("text", None, f"  final score {below}"), ("text", None, "  (or screening's top class excluded)"),
             ("gap", None, ""), ("text", None, "Label: final class + score"),
             ("text", None, "(screen: X) = screening class,"), ("text", None, "  shown only when it differs")]
    if listed:
        rows += [("gap", None, ""), ("text", None, "#n = cell n of results.json,"),
                 ("text", None, "  its label did not fit:")]
        shown = listed[:MAX_LISTED]
        rows += [("text", None, (f"#{n} " if tagged else f"(#{n} no tag) ") + t) for n, t, tagged in shown]
        if len(listed) > len(shown):
            rows.append(("text", None, f"... {len(listed) - len(shown)} more: see results.json"))
    return rows


def _legend(rows: list[tuple[str, tuple[int, int, int] | None, str]], height: int, scale: float, thick: int
            ) -> np.ndarray:
    """The legend panel (RGB, `height` rows high, as many columns as `rows` need)."""
    (_, th), base = cv2.getTextSize("Ag", FONT, scale, thick)
    line_h = th + base + max(4, round(scale * 10))
    margin, sw = max(6, round(scale * 14)), th + base
    widths = [cv2.getTextSize(t, FONT, scale, thick)[0][0] + (sw + margin // 2 if kind in ("swatch", "flag") else 0)
              for kind, _, t in rows]
    per_col = max(1, (height - 2 * margin) // line_h)
    cols = [rows[i:i + per_col] for i in range(0, len(rows), per_col)]
    col_w = [max(widths[i:i + per_col]) + margin for i in range(0, len(rows), per_col)]
    panel = np.full((height, margin + sum(col_w), 3), LEGEND_BG, np.uint8)
    panel[:, :max(1, round(scale * 3))] = (90, 90, 90)  # a rule between field and legend
    x = margin
    for col, cw in zip(cols, col_w):
        y = margin
        for kind, colour, text in col:
            tx = x
            if kind == "swatch":
                cv2.rectangle(panel, (x, y), (x + sw, y + sw), colour, -1)
                tx = x + sw + margin // 2
            elif kind == "flag":
                cv2.rectangle(panel, (x, y), (x + sw, y + sw), colour, max(2, round(scale * 3)))
                tx = x + sw + margin // 2
            cv2.putText(panel, text, (tx, y + th), FONT, scale, (0, 0, 0), thick + (kind == "title"), cv2.LINE_AA)
            y += line_h
        x += cw
    return panel


def write_overlay(dest: str | Path, rgb: np.ndarray, result: SlideResult, *, max_side: int = MAX_SIDE,
                  review_threshold: float | None = None) -> Path:
    """Render and write a PNG atomically (fast PNG compression: overlays are written per image)."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(overlay_png(rgb, result, max_side=max_side, review_threshold=review_threshold))
    return dest


def overlay_png(rgb: np.ndarray, result: SlideResult, *, max_side: int = MAX_SIDE,
                review_threshold: float | None = None) -> bytes:
    """The overlay `write_overlay` writes, as PNG bytes (a Ray worker sends them to the driver)."""
    return encode_png(render_overlay(rgb, result, max_side=max_side, review_threshold=review_threshold))
