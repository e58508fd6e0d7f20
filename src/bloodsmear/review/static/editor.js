// Outline editing in the slide view: draw a missed cell (clicks, or a crosshair moved by the arrow keys and
// Space), then a class key; move the selected cell's vertices (drag the handles, or v + Tab + arrows).
import { api } from "./api.js";
import { readOnly, write } from "./casebar.js";
import { classSelect } from "./cellinfo.js";
import { classForKey } from "./keys.js";
import { svg } from "./viewport.js";
import { h, pretty, toast } from "./ui.js";

const round = (v) => Math.round(v * 100) / 100;

export class Editor {
  constructor(S, vp, { draftLayer, overlay, status, redraw, select }) {
    Object.assign(this, { S, vp, draftLayer, overlay, status, redraw, select });
    this.mode = "view"; // view | draw | pick | vertex
    this.pts = [];
    this.cross = null;
    this.working = new Map(); // cell id -> polygon being edited (not yet saved)
    this.vi = 0;
    this.drag = null;
    const el = vp.el;
    el.addEventListener("pointermove", (ev) => this.pointerMove(ev));
    el.addEventListener("pointerup", (ev) => this.pointerUp(ev));
  }

  clamp([x, y]) {
    const { width, height } = this.S.slide;
    return [round(Math.max(0, Math.min(width - 1, x))), round(Math.max(0, Math.min(height - 1, y)))];
  }

  polygonOf(c) { return this.working.get(c.id) || c.polygon; }
  forget(id) { if (!(this.drag && this.drag.id === id)) this.working.delete(id); }

  selectedCell() { return this.S.cells.find((c) => c.id === this.S.sel) || null; }
  editable(c) { return c && !c.deleted && !readOnly(); }

  say(...parts) { this.status.replaceChildren(...parts); this.status.classList.toggle("active", parts.length > 0); }

  // ---- drawing a missed cell ------------------------------------------------------------------------
  startDraw() {
    if (readOnly()) { toast("Read-only: the case is signed", { kind: "warn" }); return; }
    this.cancelVertices();
    this.mode = "draw";
    this.pts = [];
    this.vp.size();
    this.cross = this.clamp(this.vp.toWorld(this.vp.w / 2, this.vp.h / 2));
    this.vp.el.classList.add("drawing");
    this.sayDraw();
    this.drawDraft();
  }

  sayDraw() {
    this.say(`Drawing a missed cell: ${this.pts.length} point${this.pts.length === 1 ? "" : "s"}. Click points, or move the crosshair ` +
      "with the arrows (Shift: faster) and press Space. Backspace removes the last point, Enter finishes, Escape cancels.");
  }

  endDraw() {
    this.mode = "view"; this.pts = []; this.cross = null;
    this.vp.el.classList.remove("drawing");
    this.say();
    this.drawDraft();
    this.redraw();
  }

  addPoint(p) { this.pts.push(this.clamp(p)); this.sayDraw(); this.drawDraft(); }

  finishDraw() {
    if (this.pts.length < 3) { toast("An outline needs at least 3 points", { kind: "warn" }); return; }
    this.mode = "pick";
    this.vp.el.classList.remove("drawing");
    const pick = classSelect({ deleted: false }, (cls) => this.addCell(cls));
    pick.id = "new-cell-class";
    this.say(h("strong", {}, "New cell: "), "press a class key, or choose: ", pick, " (Escape cancels)");
    this.drawDraft();
  }

  async addCell(cls) {
    const pts = this.pts;
    this.endDraw();
    const res = await write(() => api.add(this.S.slide.id, pts, cls), { intent: `add a ${pretty(cls)} cell` });
    if (res && res.cell) { this.select(res.cell.id); toast(`Added a ${pretty(cls)} cell`, { kind: "ok", ms: 2500 }); }
  }

  drawDraft() {
    this.draftLayer.replaceChildren();
    if (this.mode !== "draw" && this.mode !== "pick") { this.drawOverlay(); return; }
    const pts = this.mode === "draw" && this.cross && this.pts.length ? [...this.pts, this.cross] : this.pts;
    if (pts.length) {
      const tag = this.mode === "pick" ? "polygon" : "polyline";
      this.draftLayer.append(svg(tag, { points: pts.map((p) => p.join(",")).join(" "), class: "draft", "vector-effect": "non-scaling-stroke" }));
    }
    this.drawOverlay();
  }

  // ---- moving vertices ----------------------------------------------------------------------------
  startVertices(c) {
    if (!this.editable(c)) { toast(readOnly() ? "Read-only: the case is signed" : "Restore the cell first", { kind: "warn" }); return; }
    this.mode = "vertex";
    this.vi = 0;
    this.working.set(c.id, c.polygon.map((p) => [...p]));
    this.say(`Editing the outline of cell ${c.id}: Tab picks a vertex, the arrows move it (Shift: faster), Enter saves, Escape cancels.`);
    this.redraw();
  }

  cancelVertices() {
    if (this.mode === "vertex") { this.mode = "view"; this.say(); }
    if (!this.drag) this.working.clear();
  }

  async savePolygon(c) {
    const poly = this.working.get(c.id);
    this.mode = "view";
    this.say();
    if (!poly) return;
    const res = await write(() => api.polygon(c, poly), { intent: `move the outline of cell ${c.id}`, retry: (cur) => api.polygon(cur, poly) });
    if (!res) { this.working.delete(c.id); this.redraw(); }
  }

  pointerDown(ev) {
    const idx = ev.target && ev.target.dataset ? ev.target.dataset.vertex : undefined;
    const c = this.selectedCell();
    if (idx === undefined || !this.editable(c)) return false;
    if (!this.working.has(c.id)) this.working.set(c.id, c.polygon.map((p) => [...p]));
    this.drag = { id: c.id, i: Number(idx), pointer: ev.pointerId, moved: false };
    this.vi = Number(idx);
    this.vp.el.setPointerCapture(ev.pointerId);
    ev.preventDefault();
    return true;
  }

  pointerMove(ev) {
    if (!this.drag || ev.pointerId !== this.drag.pointer) return;
    const poly = this.working.get(this.drag.id);
    poly[this.drag.i] = this.clamp(this.vp.clientToWorld(ev.clientX, ev.clientY));
    this.drag.moved = true;
    this.redraw();
  }

  pointerUp(ev) {
    if (!this.drag || ev.pointerId !== this.drag.pointer) return;
    const d = this.drag;
    this.drag = null;
    const c = this.S.cells.find((x) => x.id === d.id);
    if (d.moved && c) this.savePolygon(c); else if (this.mode !== "vertex") { this.working.delete(d.id); }
  }

  /** A press that did not move; true when the editor used it. */
  click(x, y) {
    if (this.mode === "draw") { this.addPoint([x, y]); return true; }
    return this.mode === "pick";
  }

  // ---- keys ------------------------------------------------------------------------------------------
  key(ev) {
    const k = ev.key;
    const fast = ev.shiftKey ? 8 : 1;
    const arrows = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (this.mode === "draw") {
      if (arrows[k]) {
        const stepPx = 4 * fast / this.vp.s;
        this.cross = this.clamp([this.cross[0] + arrows[k][0] * stepPx, this.cross[1] + arrows[k][1] * stepPx]);
        this.vp.keepVisible(...this.cross);
        this.drawDraft();
        return true;
      }
      if (k === " ") { this.addPoint(this.cross); return true; }
      if (k === "Backspace" || k === "Delete") { this.pts.pop(); this.sayDraw(); this.drawDraft(); return true; }
      if (k === "Enter") { this.finishDraw(); return true; }
      if (k === "Escape") { this.endDraw(); toast("Drawing cancelled"); return true; }
      return ["+", "=", "-", "_", "f"].includes(k) ? false : true; // zoom still works; other keys wait
    }
    if (this.mode === "pick") {
      if (k === "Escape") { this.endDraw(); toast("New cell cancelled"); return true; }
      const cls = classForKey(ev);
      if (cls) { this.addCell(cls); return true; }
      return !["+", "=", "-", "_", "f"].includes(k);
    }
    if (this.mode === "vertex") {
      const c = this.selectedCell();
      const poly = c && this.working.get(c.id);
      if (!poly) { this.mode = "view"; return false; }
      if (k === "Tab") { this.vi = (this.vi + (ev.shiftKey ? -1 : 1) + poly.length) % poly.length; this.redraw(); return true; }
      if (arrows[k]) {
        const stepPx = 2 * fast / this.vp.s;
        poly[this.vi] = this.clamp([poly[this.vi][0] + arrows[k][0] * stepPx, poly[this.vi][1] + arrows[k][1] * stepPx]);
        this.vp.keepVisible(...poly[this.vi]);
        this.redraw();
        return true;
      }
      if (k === "Enter") { this.savePolygon(c); return true; }
      if (k === "Escape") { this.working.delete(c.id); this.mode = "view"; this.say(); this.redraw(); return true; }
      return !["+", "=", "-", "_", "f"].includes(k);
    }
    return false;
  }

  // ---- screen-space overlay: handles, crosshair, draft points -----------------------------------------
  drawOverlay() {
    const vp = this.vp, o = this.overlay;
    o.replaceChildren();
    const c = this.selectedCell();
    if (this.editable(c) && (this.mode === "view" || this.mode === "vertex")) {
      const poly = this.polygonOf(c);
      const r = poly.length > 60 && vp.s < 1.5 ? 2.5 : 4;
      poly.forEach((p, i) => {
        const [x, y] = vp.toScreen(p[0], p[1]);
        o.append(svg("circle", { cx: x, cy: y, r: this.mode === "vertex" && i === this.vi ? r + 2.5 : r, class: `handle${this.mode === "vertex" && i === this.vi ? " active" : ""}`,
          "data-vertex": i }));
      });
    }
    if (this.mode === "draw" || this.mode === "pick") {
      for (const p of this.pts) {
        const [x, y] = vp.toScreen(p[0], p[1]);
        o.append(svg("circle", { cx: x, cy: y, r: 3.5, class: "draft-point" }));
      }
    }
    if (this.mode === "draw" && this.cross) {
      const [x, y] = vp.toScreen(this.cross[0], this.cross[1]);
      o.append(svg("path", { d: `M${x - 12},${y}H${x - 3}M${x + 3},${y}H${x + 12}M${x},${y - 12}V${y - 3}M${x},${y + 3}V${y + 12}`, class: "crosshair" }),
        svg("circle", { cx: x, cy: y, r: 1.5, class: "crosshair-dot" }));
    }
  }
}
