// Labels that never collide: greedy placement in screen space. Items are placed in priority order; each
// tries a few spots around its cell's box, never overlapping a label already placed nor leaving the view,
// and prefers the spot that covers the fewest other cells. A label with no free spot is hidden (null).

const overlaps = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;

function overlapArea(a, b) {
  const w = Math.min(a.x + a.w, b.x2) - Math.max(a.x, b.x1);
  const hh = Math.min(a.y + a.h, b.y2) - Math.max(a.y, b.y1);
  return w > 0 && hh > 0 ? w * hh : 0;
}

function candidates(box, w, h, gap) {
  const [x1, y1, x2, y2] = box;
  const cx = (x1 + x2) / 2, cy = (y1 + y2) / 2;
  const out = [
    { x: cx - w / 2, y: y1 - h - gap }, // above
    { x: cx - w / 2, y: y2 + gap }, // below
    { x: x2 + gap, y: cy - h / 2 }, // right
    { x: x1 - w - gap, y: cy - h / 2 }, // left
    { x: x1, y: y1 - h - gap }, { x: x2 - w, y: y1 - h - gap },
    { x: x1, y: y2 + gap }, { x: x2 - w, y: y2 + gap },
    { x: x2 + gap, y: y1 - h - gap }, { x: x1 - w - gap, y: y1 - h - gap },
    { x: x2 + gap, y: y2 + gap }, { x: x1 - w - gap, y: y2 + gap },
  ];
  if (x2 - x1 > w + 4 && y2 - y1 > h + 4) out.push({ x: cx - w / 2, y: cy - h / 2 }); // inside a large cell
  return out;
}

/**
 * items: [{id, box: [x1, y1, x2, y2] (screen px), w, h}] in priority order (most important first).
 * view: {x: 0, y: 0, w, h}. Returns a Map id -> {x, y, w, h} (top-left, screen px) or null (hidden).
 */
export function placeLabels(items, view, { gap = 2, margin = 1 } = {}) {
  const placed = [];
  const result = new Map();
  const boxes = items.map((it) => ({ id: it.id, x1: it.box[0], y1: it.box[1], x2: it.box[2], y2: it.box[3] }));
  for (const it of items) {
    let best = null, bestCost = Infinity;
    candidates(it.box, it.w, it.h, gap).forEach((c, order) => {
      const r = { x: c.x, y: c.y, w: it.w, h: it.h };
      if (r.x < view.x + margin || r.y < view.y + margin || r.x + r.w > view.x + view.w - margin || r.y + r.h > view.y + view.h - margin) return;
      for (const p of placed) if (overlaps(r, p)) return;
      let cost = order * 0.5;
      for (const b of boxes) if (b.id !== it.id) cost += overlapArea(r, b);
      if (cost < bestCost) { bestCost = cost; best = r; }
    });
    result.set(it.id, best);
    if (best) placed.push(best);
  }
  return result;
}
