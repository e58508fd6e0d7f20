// #/case/NAME : the cell gallery (CellaVision-like): groups ("unidentified" first), crops as tiles,
// keyboard first. A tile keeps its place after an answer (the groups are rebuilt on the next visit).
import { api } from "./api.js";
import { caseBar, current, loadCase, setDifferential, undo } from "./casebar.js";
import { confirmCell, mark, relabel, renderCellInfo, toggleDelete } from "./cellinfo.js";
import { classForKey } from "./keys.js";
import { colourOf, h, pretty, score, toast } from "./ui.js";

let tiles = [];    // [{el, cell}] in page order
let sel = -1;
let info = null;

const cellUrl = (cell) => `#/slide/${cell.slide_id}/cell/${cell.id}`;

function caption(cell) {
  return [h("span", { class: "tile-label" }, pretty(cell.label)),
    h("span", { class: "tile-score" }, cell.deleted ? "deleted" : (cell.origin === "person" || cell.state !== "model") ? (mark(cell) || cell.state) : score(cell.score)),
    cell.unidentified ? h("span", { class: "tile-flag", title: "flagged: final score below the review threshold" }, "?") : null];
}

function paint(t) {
  const c = t.cell;
  t.el.className = ["tile", c.flagged ? "flagged" : "", c.unidentified ? "unidentified" : "", c.deleted ? "deleted" : "",
    c.state !== "model" ? `state-${c.state}` : "", tiles[sel] === t ? "selected" : ""].filter(Boolean).join(" ");
  t.el.style.setProperty("--cls", colourOf(c.label));
  t.el.dataset.label = c.label;
  t.el.dataset.state = c.state;
  t.el.querySelector(".tile-caption").replaceChildren(...caption(c).filter(Boolean));
}

function select(i, { scroll = true } = {}) {
  if (!tiles.length) return;
  const old = tiles[sel];
  sel = Math.max(0, Math.min(tiles.length - 1, i));
  if (old) paint(old);
  const t = tiles[sel];
  paint(t);
  if (scroll) t.el.scrollIntoView({ block: "nearest" });
  showInfo();
}

function showInfo() {
  const t = tiles[sel];
  renderCellInfo(info, t && t.cell, {
    links: t ? [h("a", { class: "button", href: cellUrl(t.cell), title: "o" }, "Open in slide")] : [],
  });
}

function onCell(cell) {
  for (const t of tiles) if (t.cell.id === cell.id) { t.cell = cell; paint(t); }
  if (tiles[sel] && tiles[sel].cell.id === cell.id) showInfo();
}

function vertical(dir) {
  const here = tiles[sel].el.getBoundingClientRect();
  const cx = here.left + here.width / 2;
  let best = -1, bestScore = Infinity;
  tiles.forEach((t, i) => {
    const r = t.el.getBoundingClientRect();
    const dy = dir > 0 ? r.top - here.bottom : here.top - r.bottom;
    if (dy < -2) return;
    const s = dy * 4 + Math.abs(r.left + r.width / 2 - cx);
    if (s < bestScore) { bestScore = s; best = i; }
  });
  if (best >= 0) select(best);
}

async function act(p, advance = true) {
  const at = sel;
  const res = await p;
  if (res && advance && sel === at) select(sel + 1);
  return res;
}

export async function renderGallery(main, name) {
  const [summary, gallery] = await Promise.all([loadCase(name, { force: true }), api.gallery(name)]);
  tiles = [];
  sel = -1;
  info = h("div", { class: "panel cell-panel", id: "cell-panel" });
  const diff = h("div", { class: "panel differential-panel", id: "differential" });
  const groups = gallery.groups.filter((g) => g.cells.length).map((g) =>
    h("section", { class: `group ${g.label === "unidentified" ? "group-unidentified" : ""}`, "data-group": g.label },
      h("h2", {}, g.label === "unidentified" ? h("span", { class: "tile-flag" }, "?") : h("span", { class: "swatch", style: `background:${colourOf(g.label)}` }),
        ` ${g.label === "unidentified" ? "Unidentified (flagged, unanswered)" : pretty(g.label)} `, h("span", { class: "muted" }, `(${g.cells.length})`)),
      h("div", { class: "tiles" }, g.cells.map((cell) => {
        const el = h("div", { class: "tile", tabindex: "-1", "data-cell-id": cell.id, title: `cell ${cell.id}` },
          h("img", { src: cell.crop, alt: pretty(cell.label), loading: "lazy", draggable: "false" }), h("div", { class: "tile-caption" }));
        const t = { el, cell };
        const i = tiles.length;
        el.addEventListener("click", () => select(i, { scroll: false }));
        el.addEventListener("dblclick", () => { location.hash = cellUrl(t.cell); });
        tiles.push(t);
        return el;
      }))));
  const slides = (summary.slides || []).map((s) => h("a", { class: "slide-chip", href: `#/slide/${s.id}` }, s.name,
    s.unidentified ? h("span", { class: "warn" }, ` ${s.unidentified}?`) : null));
  main.replaceChildren(
    caseBar(),
    h("div", { class: "with-sidebar" },
      h("div", { class: "gallery", id: "gallery" },
        h("div", { class: "slides-strip" }, h("span", { class: "muted" }, "Slides: "), slides),
        groups.length ? groups : h("p", { class: "muted" }, "No cells in this case.")),
      h("aside", { class: "sidebar" }, info, diff)));
  tiles.forEach(paint);
  setDifferential(current.differential || (await api.differential(name)));
  current.onCell = onCell;
  current.onSummary = () => { // signed or reopened: same tiles, new bar
    main.querySelector("#casebar").replaceWith(caseBar());
    showInfo();
  };
  if (tiles.length) select(0); else showInfo();

  return {
    key(ev) {
      const t = tiles[sel];
      const k = ev.key;
      if ((ev.ctrlKey || ev.metaKey) && k.toLowerCase() === "z") {
        undo().then((r) => { if (r && r.cell) { const i = tiles.findIndex((x) => x.cell.id === r.cell.id); if (i >= 0) select(i); } });
        return true;
      }
      if (ev.ctrlKey || ev.metaKey || ev.altKey) return false;
      if (k === "ArrowRight") { select(sel + 1); return true; }
      if (k === "ArrowLeft") { select(sel - 1); return true; }
      if (k === "ArrowDown" && t) { vertical(1); return true; }
      if (k === "ArrowUp" && t) { vertical(-1); return true; }
      if (k === "Home") { select(0); return true; }
      if (k === "End") { select(tiles.length - 1); return true; }
      if (k === "Escape") { location.hash = "#/"; return true; }
      if (k === "u") { ev.preventDefault(); return this.key({ key: "z", ctrlKey: true }); }
      if (k === "g" && summary.slides && summary.slides.length) { location.hash = `#/slide/${summary.slides[0].id}`; return true; }
      if (k === "N") {
        const i = [...tiles.slice(sel + 1), ...tiles.slice(0, sel + 1)].findIndex((x) => x.cell.unidentified);
        if (i >= 0) select((sel + 1 + i) % tiles.length); else toast("No unidentified cells left", { kind: "ok" });
        return true;
      }
      if (!t) return false;
      if (k === "o") { location.hash = cellUrl(t.cell); return true; }
      if (k === "Enter" || k === " ") { if (!t.cell.deleted) act(confirmCell(t.cell)); return true; }
      if (k === "Delete" || k === "Backspace") { act(toggleDelete(t.cell), !t.cell.deleted); return true; }
      const cls = classForKey(ev);
      if (cls) { if (!t.cell.deleted) act(relabel(t.cell, cls)); return true; }
      return false;
    },
  };
}
