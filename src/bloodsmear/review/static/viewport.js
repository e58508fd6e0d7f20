// Zoom and pan of an SVG "world" group: screen = world * s + t. Smooth: wheel zooms around the cursor,
// keys animate; drag pans (a press that does not move is a click).

const SVGNS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) el.setAttribute(k, v);
  return el;
}

export class Viewport {
  constructor(svgEl, world, { width, height, onChange }) {
    this.el = svgEl;
    this.world = world;
    this.W = width;
    this.H = height;
    this.onChange = onChange;
    this.s = 1; this.tx = 0; this.ty = 0;
    this.anim = null;
    this.w = 1; this.h = 1;
  }

  size() {
    const r = this.el.getBoundingClientRect();
    this.w = Math.max(1, r.width); this.h = Math.max(1, r.height);
    return r;
  }

  get fitScale() { return Math.min(this.w / this.W, this.h / this.H); }
  clampScale(s) { return Math.max(this.fitScale * 0.5, Math.min(16, s)); }

  apply(now = false) {
    this.world.setAttribute("transform", `translate(${this.tx} ${this.ty}) scale(${this.s})`);
    if (this.onChange) this.onChange(now);
  }

  /** `now`: redraw the screen-space overlay in this frame (animation steps), else in the next one. */
  set(s, tx, ty, now = false) { this.s = s; this.tx = tx; this.ty = ty; this.apply(now); }

  toScreen(x, y) { return [x * this.s + this.tx, y * this.s + this.ty]; }
  toWorld(sx, sy) { return [(sx - this.tx) / this.s, (sy - this.ty) / this.s]; }
  clientToWorld(cx, cy) { const r = this.el.getBoundingClientRect(); return this.toWorld(cx - r.left, cy - r.top); }

  fit(animate = false) {
    this.size();
    const s = this.fitScale;
    this.go(s, (this.w - this.W * s) / 2, (this.h - this.H * s) / 2, animate);
  }

  /** Centres the view on the box [x1, y1, x2, y2] (world), zoomed so it fills about `share` of the view. */
  show(box, share = 0.3, animate = true) {
    this.size();
    const bw = Math.max(8, box[2] - box[0]), bh = Math.max(8, box[3] - box[1]);
    const s = this.clampScale(Math.max(this.fitScale * 1.5, Math.min(share * this.w / bw, share * this.h / bh)));
    const cx = (box[0] + box[2]) / 2, cy = (box[1] + box[3]) / 2;
    this.go(s, this.w / 2 - cx * s, this.h / 2 - cy * s, animate);
  }

  /** Scrolls (without zooming) just enough to keep the world point (x, y) in view. */
  keepVisible(x, y, pad = 40) {
    const [sx, sy] = this.toScreen(x, y);
    let dx = 0, dy = 0;
    if (sx < pad) dx = pad - sx; else if (sx > this.w - pad) dx = this.w - pad - sx;
    if (sy < pad) dy = pad - sy; else if (sy > this.h - pad) dy = this.h - pad - sy;
    if (dx || dy) this.set(this.s, this.tx + dx, this.ty + dy);
  }

  zoomAt(factor, sx, sy, animate = false) {
    const s = this.clampScale(this.s * factor);
    const [wx, wy] = this.toWorld(sx, sy);
    this.go(s, sx - wx * s, sy - wy * s, animate);
  }

  zoomBy(factor) { this.size(); this.zoomAt(factor, this.w / 2, this.h / 2, true); }
  panBy(dx, dy, animate = true) { this.go(this.s, this.tx + dx, this.ty + dy, animate); }

  go(s, tx, ty, animate) {
    if (this.anim) { cancelAnimationFrame(this.anim); this.anim = null; }
    if (!animate) { this.set(s, tx, ty); return; }
    const from = { s: this.s, tx: this.tx, ty: this.ty }, t0 = performance.now(), ms = 160;
    const step = (now) => {
      const k = Math.min(1, (now - t0) / ms), e = 1 - (1 - k) ** 3;
      this.set(from.s * (s / from.s) ** e, from.tx + (tx - from.tx) * e, from.ty + (ty - from.ty) * e, true);
      this.anim = k < 1 ? requestAnimationFrame(step) : null;
    };
    this.anim = requestAnimationFrame(step);
  }

  /** Wheel zoom and drag pan. `onClick(ev, worldXY)` gets presses that did not move. */
  attach({ onClick, onDragStart }) {
    this.el.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const r = this.el.getBoundingClientRect();
      const dy = ev.deltaMode === 1 ? ev.deltaY * 16 : ev.deltaY;
      this.zoomAt(Math.exp(-dy * 0.0015), ev.clientX - r.left, ev.clientY - r.top);
    }, { passive: false });
    let drag = null;
    this.el.addEventListener("pointerdown", (ev) => {
      if (ev.button !== 0) return;
      if (onDragStart && onDragStart(ev)) return; // e.g. a vertex handle took the press
      drag = { x: ev.clientX, y: ev.clientY, tx: this.tx, ty: this.ty, moved: false, id: ev.pointerId };
      this.el.setPointerCapture(ev.pointerId);
    });
    this.el.addEventListener("pointermove", (ev) => {
      if (!drag || ev.pointerId !== drag.id) return;
      const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      if (!drag.moved && Math.hypot(dx, dy) < 4) return;
      if (!drag.moved) { drag.moved = true; this.el.classList.add("panning"); }
      this.set(this.s, drag.tx + dx, drag.ty + dy);
    });
    const end = (ev) => {
      if (!drag || ev.pointerId !== drag.id) return;
      const d = drag; drag = null;
      this.el.classList.remove("panning");
      if (!d.moved && onClick && ev.type === "pointerup") onClick(ev, this.clientToWorld(ev.clientX, ev.clientY));
    };
    this.el.addEventListener("pointerup", end);
    this.el.addEventListener("pointercancel", end);
  }
}
