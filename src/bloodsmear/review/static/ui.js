// Small building blocks: elements, toasts, dialogs (name, reason, help, key settings), the differential panel.
import { store } from "./api.js";
import {
  CASES_KEYS, COMMON_KEYS, GALLERY_KEYS, SLIDE_KEYS, checkAssignment, defaultKeymap, keymap, resetKeymap,
  saveKeymap,
} from "./keys.js";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const pretty = (label) => (label ? String(label).replace(/_/g, " ") : "—");
export const pct = (x) => (x === null || x === undefined ? "—" : `${(100 * x).toFixed(0)} %`);
export const score = (x) => (x === null || x === undefined ? "—" : Number(x).toFixed(2));
export const colourOf = (label) => ((store.config && store.config.colours) || {})[String(label).split(" (")[0]] || "#888888";

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

// ---- toasts ----------------------------------------------------------------------------------------
export function toast(message, { kind = "info", ms = 4000, action = null } = {}) {
  const box = document.getElementById("toasts");
  const t = h("div", { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  if (action) {
    t.append(h("button", { class: "toast-action", onclick: () => { t.remove(); action.run(); } }, action.label));
  }
  t.append(h("button", { class: "toast-close", "aria-label": "close", onclick: () => t.remove() }, "×"));
  box.append(t);
  if (ms) setTimeout(() => t.remove(), ms);
  return t;
}

// ---- modal dialogs -----------------------------------------------------------------------------------
let openModal = null;
export const modalOpen = () => openModal !== null;

export function closeModal(value) {
  if (!openModal) return;
  const { root, resolve } = openModal;
  openModal = null;
  root.remove();
  resolve(value);
}

function showModal(title, body, buttons, { wide = false } = {}) {
  if (openModal) closeModal(null);
  return new Promise((resolve) => {
    const root = h("div", { class: "modal-backdrop", id: "modal" },
      h("div", { class: `modal ${wide ? "modal-wide" : ""}`, role: "dialog", "aria-modal": "true", "aria-label": title },
        h("h2", {}, title), body, h("div", { class: "modal-buttons" }, buttons)));
    root.addEventListener("keydown", (ev) => {
      ev.stopPropagation();
      if (ev.key === "Escape") { ev.preventDefault(); closeModal(null); }
    });
    root.addEventListener("click", (ev) => { if (ev.target === root) closeModal(null); });
    document.body.append(root);
    openModal = { root, resolve };
    const first = root.querySelector("input, select, button.primary, button");
    if (first) first.focus({ preventScroll: true });
    root.querySelector(".modal").scrollTop = 0;
  });
}

/** Asks for one line of text; resolves to the trimmed text, or null when cancelled. */
export function ask(title, prompt, { value = "", placeholder = "", okLabel = "OK" } = {}) {
  const input = h("input", { type: "text", id: "modal-input", value, placeholder, autocomplete: "off" });
  const ok = () => { const v = input.value.trim(); if (v) closeModal(v); else input.focus(); };
  input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); ok(); } });
  return showModal(title, h("label", { class: "modal-field" }, h("span", {}, prompt), input), [
    h("button", { type: "button", onclick: () => closeModal(null) }, "Cancel"),
    h("button", { type: "button", class: "primary", id: "modal-ok", onclick: ok }, okLabel),
  ]);
}

export function inform(title, message, { okLabel = "OK", extra = null } = {}) {
  const buttons = [h("button", { type: "button", class: "primary", onclick: () => closeModal(true) }, okLabel)];
  if (extra) buttons.unshift(h("button", { type: "button", onclick: () => { closeModal(null); extra.run(); } }, extra.label));
  return showModal(title, h("p", {}, message), buttons);
}

/** The reviewer's name: asked once, kept in localStorage. Resolves to the name or null. */
export async function ensureReviewer(force = false) {
  if (store.reviewer && !force) return store.reviewer;
  const name = await ask("Who is reviewing?", "Your name (recorded with every change and the sign-off)",
    { value: store.reviewer, placeholder: "e.g. ana" });
  if (name) { store.reviewer = name; document.dispatchEvent(new CustomEvent("reviewer")); }
  return name || (force ? store.reviewer : null);
}

function keyTable(title, rows) {
  return h("section", {}, h("h3", {}, title),
    h("table", { class: "keys" }, rows.map(([k, what]) => h("tr", {}, h("td", {}, h("kbd", {}, k)), h("td", {}, what)))));
}

export function showHelp() {
  const map = keymap();
  const classRows = Object.entries(map).sort().map(([k, cls]) => [k, pretty(cls)]);
  const body = h("div", { class: "help-grid" },
    keyTable("Everywhere", COMMON_KEYS), keyTable("Case list", CASES_KEYS), keyTable("Gallery", GALLERY_KEYS),
    keyTable("Slide view", SLIDE_KEYS), keyTable("Class keys (gallery and slide view)", classRows));
  return showModal("Keyboard", body, [h("button", { type: "button", class: "primary", onclick: () => closeModal(true) }, "Close")],
    { wide: true });
}

export function showSettings() {
  const classes = (store.config && store.config.classes) || [];
  const current = keymap();
  const byClass = Object.fromEntries(classes.map((c) => [c, ""]));
  for (const [k, c] of Object.entries(current)) byClass[c] = k;
  const error = h("p", { class: "error", role: "alert" });
  const inputs = {};
  const rows = classes.map((cls) => {
    const input = h("input", { type: "text", maxlength: "1", class: "keybox", value: byClass[cls], "aria-label": `key for ${cls}`,
      "data-class": cls });
    input.addEventListener("keydown", (ev) => {
      if (ev.key === "Tab" || ev.key === "Escape" || ev.key === "Enter") return;
      ev.preventDefault();
      input.value = ev.key === "Backspace" || ev.key === "Delete" ? "" : (ev.key.length === 1 ? ev.key : input.value);
    });
    inputs[cls] = input;
    return h("tr", {}, h("td", {}, h("span", { class: "swatch", style: `background:${colourOf(cls)}` }), pretty(cls)), h("td", {}, input));
  });
  const save = () => {
    const proposed = Object.fromEntries(classes.map((c) => [c, inputs[c].value]));
    const problem = checkAssignment(proposed);
    if (problem) { error.textContent = problem; return; }
    const map = {};
    for (const [c, k] of Object.entries(proposed)) if (k) map[k] = c;
    saveKeymap(map);
    closeModal(true);
    toast("Class keys saved (this browser)");
  };
  const reset = () => {
    resetKeymap();
    const d = defaultKeymap();
    for (const c of classes) inputs[c].value = "";
    for (const [k, c] of Object.entries(d)) if (inputs[c]) inputs[c].value = k;
    error.textContent = "";
  };
  const body = h("div", {}, h("p", { class: "muted" }, "Press a key in a box to assign it; Backspace clears it."),
    h("div", { class: "settings-scroll" }, h("table", { class: "keys" }, rows)), error);
  return showModal("Class keys", body, [
    h("button", { type: "button", onclick: reset }, "Defaults"),
    h("button", { type: "button", onclick: () => closeModal(null) }, "Cancel"),
    h("button", { type: "button", class: "primary", id: "settings-save", onclick: save }, "Save"),
  ]);
}

// ---- differential -----------------------------------------------------------------------------------
function levelTable(title, rows) {
  return h("div", { class: "diff-level" }, h("h4", {}, title),
    h("table", { class: "diff" }, (rows || []).map((r) =>
      h("tr", { "data-label": r.label },
        h("td", { class: "diff-name" }, h("span", { class: "swatch", style: `background:${colourOf(r.label)}` }), pretty(r.label)),
        h("td", { class: "num" }, r.count),
        h("td", { class: "num" }, `${Number(r.percent).toFixed(1)} %`),
        h("td", { class: "bar" }, h("span", { style: `width:${Math.min(100, r.percent)}%;background:${colourOf(r.label)}` }))))));
}

export function renderDifferential(target, diff) {
  if (!target) return;
  target.replaceChildren();
  if (!diff) return;
  const ex = diff.excluded || {};
  target.append(
    h("h3", {}, "Differential"),
    h("p", { class: "diff-total" }, h("strong", { id: "diff-total" }, diff.total), " cells counted · ",
      h("span", { class: diff.unidentified ? "warn" : "ok", id: "diff-unidentified" }, `${diff.unidentified} unidentified`)),
    levelTable("Groups", diff.group), levelTable("Fine classes", diff.fine),
    h("p", { class: "muted small" }, `Not counted: ${ex.artefact || 0} artefact, ${ex.smudge_cell || 0} smudge cells, ${ex.deleted || 0} deleted.`),
  );
}

export function statusBadge(status) {
  return h("span", { class: `badge badge-${String(status || "new").replace(/\s+/g, "-")}` }, status || "new");
}
