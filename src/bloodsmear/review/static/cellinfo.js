// One cell: the actions on it (relabel, confirm, delete, restore) and the info panel (final, screening and
// refined labels with their scores), shared by the gallery and the slide view.
import { api, store } from "./api.js";
import { readOnly, write } from "./casebar.js";
import { keyForClass } from "./keys.js";
import { colourOf, h, pretty, score, when } from "./ui.js";

export const relabel = (cell, label) => write(() => api.label(cell, label),
  { intent: `relabel cell ${cell.id} as ${pretty(label)}`, retry: (cur) => api.label(cur, label) });
export const confirmCell = (cell) => write(() => api.confirm(cell),
  { intent: `confirm cell ${cell.id} as ${pretty(cell.label)}`, retry: (cur) => api.label(cur, cell.label) });
export const deleteCell = (cell) => write(() => api.remove(cell),
  { intent: `delete cell ${cell.id}`, retry: (cur) => api.remove(cur) });
export const restoreCell = (cell) => write(() => api.restore(cell),
  { intent: `restore cell ${cell.id}`, retry: (cur) => api.restore(cur) });
export const toggleDelete = (cell) => (cell.deleted ? restoreCell(cell) : deleteCell(cell));

/** "?" marks a flagged cell nobody has answered yet. */
export const mark = (cell) => (cell.unidentified ? "?" : (cell.state === "confirmed" || cell.state === "corrected" || cell.state === "added") ? "✓" : "");

export const isPersonAnswer = (cell) => ["confirmed", "corrected", "added"].includes(cell.state);

function row(name, label, s) {
  return h("tr", {}, h("th", {}, name),
    h("td", {}, label ? h("span", { class: "swatch", style: `background:${colourOf(label)}` }) : null, pretty(label)),
    h("td", { class: "num" }, score(s)));
}

export function classSelect(cell, onPick) {
  const sel = h("select", { "aria-label": "relabel", disabled: readOnly() || cell.deleted, id: "relabel-select" },
    h("option", { value: "" }, "Relabel as…"),
    ((store.config && store.config.classes) || []).map((c) => {
      const k = keyForClass(c);
      return h("option", { value: c }, `${pretty(c)}${k ? `  [${k}]` : ""}`);
    }));
  sel.addEventListener("change", () => { if (sel.value) onPick(sel.value); });
  sel.addEventListener("keydown", (ev) => ev.stopPropagation());
  return sel;
}

/** The info panel of one cell; `links` are extra nodes (e.g. "open in slide"). */
export function renderCellInfo(target, cell, { links = [], onChanged = null } = {}) {
  if (!target) return;
  target.replaceChildren();
  if (!cell) {
    target.append(h("h3", {}, "Cell"), h("p", { class: "muted" }, "No cell selected."));
    return;
  }
  const m = cell.model || {};
  const ro = readOnly();
  const after = (p) => p.then((r) => { if (r && onChanged) onChanged(r.cell); });
  target.append(
    h("h3", {}, `Cell ${cell.id}`, cell.unidentified ? h("span", { class: "flag-pill", title: "flagged, not yet answered" }, "? unidentified")
      : cell.flagged ? h("span", { class: "flag-pill flag-done" }, "flagged") : null),
    h("div", { class: "info-body" },
      cell.crop ? h("img", { class: "info-crop", src: cell.crop, alt: `cell ${cell.id}` }) : null,
      h("div", { class: "info-final" },
        h("div", { class: "muted small" }, "Final label"),
        h("div", { class: "info-final-label" }, h("span", { class: "swatch", style: `background:${colourOf(cell.label)}` }),
          h("strong", { id: "info-label" }, pretty(cell.label))),
        h("div", { class: "small" }, isPersonAnswer(cell) ? `answered by ${cell.updated_by || "a person"}` : `score ${score(cell.score)}`))),
    h("table", { class: "info", id: "cell-info" },
      h("tr", {}, h("th", {}, ""), h("th", {}, "model's label"), h("th", { class: "num" }, "score")),
      cell.model ? [row("Screening", m.screening_label, m.screening_score), row("Refined", m.refined_label, m.refined_score),
        row("Final", m.label, m.score)] : h("tr", {}, h("th", {}, "Model"), h("td", { colspan: 2, class: "muted" }, "none (drawn by a reviewer)"))),
    h("p", { class: "small" }, `State: `, h("strong", { id: "info-state" }, cell.state), cell.deleted ? " (deleted)" : "",
      cell.group && cell.fine ? ` · group ${pretty(cell.group)}, fine ${pretty(cell.fine)}` : cell.group ? ` · group ${pretty(cell.group)}` : "",
      cell.updated_by ? h("span", { class: "muted" }, ` · ${cell.updated_by}, ${when(cell.updated_at)}`) : ""),
    h("div", { class: "info-actions" },
      h("button", { type: "button", disabled: ro || cell.deleted, onclick: () => after(confirmCell(cell)), title: "Enter" }, "Confirm"),
      h("button", { type: "button", disabled: ro, onclick: () => after(toggleDelete(cell)), title: "Delete / r" },
        cell.deleted ? "Restore" : "Delete"),
      classSelect(cell, (label) => after(relabel(cell, label))), links),
  );
}
