// #/slide/ID[/cell/CID] : the field in an SVG with zoom and pan, outlines coloured by class (flagged cells in
// the flag colour), collision-free labels, a legend, the selected cell's info, and outline editing (editor.js).
import { api, store } from "./api.js";
import { caseBar, current, loadCase, readOnly, setDifferential, undo } from "./casebar.js";
import { confirmCell, mark, relabel, renderCellInfo, toggleDelete } from "./cellinfo.js";
import { Editor } from "./editor.js";
import { classForKey } from "./keys.js";
import { placeLabels } from "./labels.js";
import { Viewport, svg } from "./viewport.js";
import { colourOf, h, pretty, toast } from "./ui.js";

const FAMILY = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
let measureCtx = null;
/** Width of a label: its main text in the bold label font, the screening part (a tspan) in the regular one. */
function textWidth(main, extra = "") {
  if (!measureCtx) measureCtx = document.createElement("canvas").getContext("2d");
  measureCtx.font = `600 ${FAMILY}`;
  const w = measureCtx.measureText(main).width;
  if (!extra) return w;
  measureCtx.font = `400 ${FAMILY}`;
  return w + measureCtx.measureText(extra).width;
}

/** Black or white text, whichever reads better on `hex`. */
export function inkOn(hex) {
  const m = /^#?([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})/i.exec(hex || "");
  if (!m) return "#fff";
  const [r, g, b] = m.slice(1).map((x) => parseInt(x, 16) / 255);
  return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.55 ? "#111" : "#fff";
}

export const outlineColour = (cell) => (cell.unidentified ? store.config.flag_colour : colourOf(cell.label));

function pointIn(poly, x, y) {
  let inside = false;
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const [xi, yi] = poly[i], [xj, yj] = poly[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

const centre = (c) => [(c.box[0] + c.box[2]) / 2, (c.box[1] + c.box[3]) / 2];

function legend(cells) {
  const present = [...new Set(cells.filter((c) => !c.deleted).map((c) => c.label))].sort();
  const flag = store.config.flag_colour;
  return h("div", { class: "panel legend", id: "legend" }, h("h3", {}, "Legend"),
    h("div", { class: "legend-classes" }, present.map((l) => h("span", {}, h("span", { class: "swatch", style: `background:${colourOf(l)}` }), pretty(l)))),
    h("ul", { class: "legend-list" },
      h("li", {}, h("span", { class: "swatch swatch-flag", style: `background:${flag}` }),
        h("strong", {}, "?"), " flagged: the model's final score is below the review threshold",
        store.config.review_threshold !== undefined ? ` (${store.config.review_threshold})` : "", "; nobody has answered it yet (sign-off waits for these)"),
      h("li", {}, h("strong", {}, "✓"), " answered by a person (confirmed, corrected or drawn)"),
      h("li", {}, h("span", { class: "swatch swatch-deleted" }), "deleted detection (not a cell)")),
    h("p", { class: "small" }, h("strong", {}, "neutrophil"), h("span", { class: "muted" }, " (ig)"),
      ": the ", h("strong", {}, "final"), " label — the refined classifier's answer or the person's — then, in brackets when it differs, the ",
      h("em", {}, "screening"), " label of the first, coarser classifier."));
}

export async function renderSlide(main, slideId, cellId) {
  const slide = await api.slide(slideId);
  const casePromise = loadCase(slide.case, { force: true }); // not awaited: the field shows first
  const S = { slide, cells: slide.cells, sel: null, hover: null, labels: localStorage.getItem("bloodsmear.labels") !== "off" };
  const byId = () => new Map(S.cells.map((c) => [c.id, c]));

  const world = svg("g", { id: "world" });
  const image = svg("image", { href: slide.preview || slide.image, x: 0, y: 0, width: slide.width, height: slide.height, preserveAspectRatio: "none" });
  // `data-ready` on #slide-svg once the field's first image has loaded (outlines are drawn synchronously):
  // what `bloodsmear bench review` times in a browser.
  image.addEventListener("load", () => { document.getElementById("slide-svg")?.setAttribute("data-ready", "1"); }, { once: true });
  const outlines = svg("g", { id: "outlines" });
  const draftLayer = svg("g", { id: "draft" });
  world.append(image, outlines, draftLayer);
  const labelLayer = svg("g", { id: "labels" });
  const overlay = svg("g", { id: "overlay" });
  const root = svg("svg", { id: "slide-svg", class: "slide-svg", tabindex: "0", role: "application", "aria-label": "slide" });
  root.append(world, labelLayer, overlay);
  if (slide.preview && slide.image && slide.preview !== slide.image) {
    const full = new Image();
    full.onload = () => image.setAttribute("href", slide.image);
    full.src = slide.image;
  }

  const info = h("div", { class: "panel cell-panel", id: "cell-panel" });
  const diff = h("div", { class: "panel differential-panel", id: "differential" });
  const status = h("div", { class: "statusline", id: "statusline", role: "status" });
  const zoomText = h("span", { class: "zoom", id: "zoom" });
  let frame = 0;
  const vp = new Viewport(root, world, { width: slide.width, height: slide.height,
    onChange: (now) => {
      if (now) { if (frame) { cancelAnimationFrame(frame); frame = 0; } drawOverlay(); return; }
      if (!frame) frame = requestAnimationFrame(() => { frame = 0; drawOverlay(); });
    } });
  const editor = new Editor(S, vp, { draftLayer, overlay, status, redraw: () => { drawOutlines(); drawOverlay(); }, select: (id) => select(id) });

  function drawOutlines() {
    outlines.replaceChildren();
    for (const c of S.cells) {
      const poly = editor.polygonOf(c);
      const p = svg("polygon", {
        points: poly.map((q) => q.join(",")).join(" "), "data-cell-id": c.id, "data-label": c.label,
        class: ["cell", c.deleted ? "deleted" : "", c.unidentified ? "unidentified" : "", S.sel === c.id ? "selected" : ""].filter(Boolean).join(" "),
        stroke: c.deleted ? "#9a9a9a" : outlineColour(c), "vector-effect": "non-scaling-stroke",
      });
      p.addEventListener("pointerenter", () => { S.hover = c.id; drawOverlay(); });
      p.addEventListener("pointerleave", () => { if (S.hover === c.id) { S.hover = null; drawOverlay(); } });
      outlines.append(p);
    }
  }

  function labelText(c) {
    const m = c.model;
    const scr = m && m.screening_label && m.screening_label !== c.label && c.state === "model" ? ` (${pretty(m.screening_label)})` : "";
    const mk = mark(c);
    return { main: `${pretty(c.label)}${mk ? ` ${mk}` : ""}`, extra: scr };
  }

  function drawLabel(c, r, forced) {
    const t = labelText(c), bg = c.deleted ? "#9a9a9a" : outlineColour(c), ink = inkOn(bg);
    const g = svg("g", { class: `label${forced ? " forced" : ""}${S.sel === c.id ? " selected" : ""}`, "data-cell-id": c.id,
      transform: `translate(${r.x} ${r.y})` });
    g.append(svg("rect", { width: r.w, height: r.h, rx: 3, fill: bg, "fill-opacity": forced ? 1 : 0.88 }));
    const text = svg("text", { x: 4, y: r.h - 5, fill: ink });
    text.append(document.createTextNode(t.main));
    if (t.extra) { const ts = svg("tspan", { class: "screening" }); ts.textContent = t.extra; text.append(ts); }
    g.append(text);
    labelLayer.append(g);
  }

  function drawOverlay() {
    labelLayer.replaceChildren();
    zoomText.textContent = `${Math.round(vp.s * 100)} %`;
    if (S.labels) {
      const items = [];
      const order = [...S.cells].filter((c) => !c.deleted || c.id === S.sel)
        .sort((a, b) => (b.id === S.sel) - (a.id === S.sel) || b.unidentified - a.unidentified || (a.score ?? 1) - (b.score ?? 1));
      for (const c of order) {
        const [x1, y1] = vp.toScreen(c.box[0], c.box[1]), [x2, y2] = vp.toScreen(c.box[2], c.box[3]);
        if (x2 < 0 || y2 < 0 || x1 > vp.w || y1 > vp.h) continue;
        const t = labelText(c);
        items.push({ id: c.id, box: [x1, y1, x2, y2], w: Math.ceil(textWidth(t.main, t.extra)) + 8, h: 18, cell: c });
      }
      const spots = placeLabels(items, { x: 0, y: 0, w: vp.w, h: vp.h });
      const hidden = [];
      for (const it of items) { const r = spots.get(it.id); if (r) drawLabel(it.cell, r, false); else hidden.push(it); }
      for (const it of hidden) {
        if (it.id !== S.hover && it.id !== S.sel) continue;
        const b = it.box;
        drawLabel(it.cell, { x: Math.max(0, Math.min(vp.w - it.w, (b[0] + b[2] - it.w) / 2)), y: Math.max(0, b[1] - it.h - 2), w: it.w, h: it.h }, true);
      }
      labelLayer.dataset.hidden = String(hidden.length);
    } else if (S.sel !== null || S.hover !== null) {
      for (const id of [S.hover, S.sel]) {
        const c = byId().get(id);
        if (!c) continue;
        const t = labelText(c), w = Math.ceil(textWidth(t.main, t.extra)) + 8;
        const [x1, y1] = vp.toScreen(c.box[0], c.box[1]), [x2] = vp.toScreen(c.box[2], c.box[3]);
        drawLabel(c, { x: (x1 + x2 - w) / 2, y: Math.max(0, y1 - 20), w, h: 18 }, true);
      }
    }
    editor.drawOverlay();
  }

  function showInfo() {
    const c = byId().get(S.sel);
    renderCellInfo(info, c, { links: c ? [h("a", { class: "button", href: `#/case/${encodeURIComponent(slide.case)}` }, "Gallery")] : [] });
  }

  function select(id, { centre: go = false } = {}) {
    S.sel = id;
    editor.cancelVertices();
    drawOutlines(); drawOverlay(); showInfo();
    const c = byId().get(id);
    if (c && go) vp.show(c.box, 0.3);
    else if (c) vp.keepVisible(...centre(c));
    if (c && location.hash !== `#/slide/${slide.id}/cell/${c.id}`) history.replaceState(null, "", `#/slide/${slide.id}/cell/${c.id}`);
  }

  function onCell(cell) {
    const i = S.cells.findIndex((c) => c.id === cell.id);
    if (cell.slide_id !== slide.id) return;
    if (i >= 0) S.cells[i] = cell; else S.cells.push(cell);
    editor.forget(cell.id);
    drawOutlines(); drawOverlay();
    if (S.sel === cell.id) showInfo();
  }

  function step(dir, onlyUnidentified = false) {
    const list = [...S.cells].sort((a, b) => (a.index ?? a.id) - (b.index ?? b.id));
    if (!list.length) return;
    let i = list.findIndex((c) => c.id === S.sel);
    for (let k = 0; k < list.length; k++) {
      i = (i + dir + list.length) % list.length;
      if (!onlyUnidentified || list[i].unidentified) { select(list[i].id); return; }
    }
    toast("No unidentified cells left on this slide", { kind: "ok" });
  }

  function nearest(dx, dy) {
    const from = byId().get(S.sel);
    const [fx, fy] = from ? centre(from) : vp.toWorld(vp.w / 2, vp.h / 2);
    let best = null, bestCost = Infinity;
    for (const c of S.cells) {
      if (from && c.id === from.id) continue;
      const [x, y] = centre(c);
      const along = (x - fx) * dx + (y - fy) * dy, across = Math.abs((x - fx) * dy - (y - fy) * dx);
      if (from && along <= 0) continue;
      const cost = Math.abs(along) + 2 * across;
      if (cost < bestCost) { bestCost = cost; best = c; }
    }
    if (best) select(best.id);
  }

  function gotoSlide(id, what) {
    if (id === null || id === undefined) { toast(`No ${what} slide in this case`); return; }
    location.hash = `#/slide/${id}`;
  }

  vp.attach({
    onDragStart: (ev) => editor.pointerDown(ev),
    onClick: (ev, [x, y]) => {
      if (editor.click(x, y)) return;
      const hit = [...S.cells].reverse().find((c) => pointIn(editor.polygonOf(c), x, y));
      if (hit) select(hit.id); else { S.sel = null; drawOutlines(); drawOverlay(); showInfo(); }
      root.focus();
    },
  });

  const toggleLabels = () => { S.labels = !S.labels; localStorage.setItem("bloodsmear.labels", S.labels ? "on" : "off"); drawOverlay(); };
  const selected = () => byId().get(S.sel);
  const toolbar = h("div", { class: "toolbar", id: "slide-toolbar" },
    h("button", { type: "button", title: "previous slide (Shift+Tab)", onclick: () => gotoSlide(slide.prev, "previous") }, "◀"),
    h("span", { class: "slide-name", id: "slide-name" }, slide.name),
    h("button", { type: "button", title: "next slide (Tab)", onclick: () => gotoSlide(slide.next, "next") }, "▶"),
    h("span", { class: "sep" }),
    h("button", { type: "button", title: "zoom out (-)", onclick: () => vp.zoomBy(1 / 1.4) }, "−"), zoomText,
    h("button", { type: "button", title: "zoom in (+)", onclick: () => vp.zoomBy(1.4) }, "+"),
    h("button", { type: "button", title: "fit (f)", onclick: () => vp.fit(true) }, "Fit"),
    h("button", { type: "button", title: "labels on/off (l)", onclick: toggleLabels }, "Labels"),
    h("span", { class: "sep" }),
    h("button", { type: "button", id: "draw-button", title: "draw a missed cell (d)", disabled: readOnly(), onclick: () => editor.startDraw() }, "Draw cell"),
    h("button", { type: "button", id: "delete-button", title: "delete the selected detection (Delete)", disabled: readOnly(),
      onclick: () => { const c = selected(); if (c) toggleDelete(c); } }, "Delete"),
    h("button", { type: "button", id: "undo-button", title: "undo (u)", disabled: readOnly(), onclick: () => undo() }, "Undo"));

  main.replaceChildren(current.summary ? caseBar() : h("div", { class: "casebar", id: "casebar" }, h("span", { class: "muted" }, slide.case)),
    h("div", { class: "with-sidebar slide-layout" },
    h("div", { class: "slide-main" }, toolbar, h("div", { class: "slide-stage" }, root), status),
    h("aside", { class: "sidebar" }, info, legend(S.cells), diff)));
  current.onCell = onCell;
  current.onSummary = () => { // signed or reopened: same view, new bar and buttons
    main.querySelector("#casebar").replaceWith(caseBar());
    for (const id of ["draw-button", "delete-button", "undo-button"]) document.getElementById(id).disabled = readOnly();
    if (readOnly()) editor.endDraw();
    drawOutlines(); drawOverlay(); showInfo();
  };
  if (current.differential) setDifferential(current.differential);
  casePromise.then(() => { if (current.onCell === onCell) { current.onSummary(); setDifferential(current.differential); } })
    .catch((e) => toast(`Could not load the case: ${e.message}`, { kind: "error" }));
  new ResizeObserver(() => { vp.size(); drawOverlay(); }).observe(root);
  vp.fit(false);
  drawOutlines(); drawOverlay(); showInfo();
  const want = cellId !== undefined && cellId !== null ? byId().get(Number(cellId)) : null;
  if (want) select(want.id, { centre: true });
  root.focus();

  const PAN = { ArrowLeft: [1, 0], ArrowRight: [-1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1], A: [1, 0], D: [-1, 0], W: [0, 1], S: [0, -1] };
  const DIRS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  return {
    slideId: slide.id,
    selectCell(cid) { if (byId().get(Number(cid))) select(Number(cid), { centre: true }); },
    key(ev) {
      const k = ev.key;
      if (editor.key(ev)) return true;
      if ((ev.ctrlKey || ev.metaKey) && k.toLowerCase() === "z") { undo(); return true; }
      if (ev.ctrlKey || ev.metaKey || ev.altKey) return false;
      if (ev.shiftKey && PAN[k]) { vp.panBy(PAN[k][0] * vp.w * 0.15, PAN[k][1] * vp.h * 0.15); return true; }
      if (DIRS[k]) { nearest(...DIRS[k]); return true; }
      if (k === "+" || k === "=") { vp.zoomBy(1.4); return true; }
      if (k === "-" || k === "_") { vp.zoomBy(1 / 1.4); return true; }
      if (k === "f") { vp.fit(true); return true; }
      if (k === "l") { toggleLabels(); return true; }
      if (k === "n") { step(1); return true; }
      if (k === "p") { step(-1); return true; }
      if (k === "N") { step(1, true); return true; }
      if (k === "Tab") { gotoSlide(ev.shiftKey ? slide.prev : slide.next, ev.shiftKey ? "previous" : "next"); return true; }
      if (k === "g") { location.hash = `#/case/${encodeURIComponent(slide.case)}`; return true; }
      if (k === "u") { undo(); return true; }
      if (k === "d") { editor.startDraw(); return true; }
      if (k === "Escape") {
        if (S.sel !== null) { S.sel = null; drawOutlines(); drawOverlay(); showInfo(); history.replaceState(null, "", `#/slide/${slide.id}`); }
        else location.hash = `#/case/${encodeURIComponent(slide.case)}`;
        return true;
      }
      const c = selected();
      if (!c) { if (classForKey(ev) || k === "Enter" || k === " ") { toast("Select a cell first (n, arrows or a click)"); return true; } return false; }
      if (k === "v") { editor.startVertices(c); return true; }
      if (k === "Enter" || k === " ") { if (!c.deleted) confirmCell(c); return true; }
      if (k === "Delete" || k === "Backspace") { toggleDelete(c); return true; }
      const cls = classForKey(ev);
      if (cls) { if (!c.deleted) relabel(c, cls); return true; }
      return false;
    },
  };
}
