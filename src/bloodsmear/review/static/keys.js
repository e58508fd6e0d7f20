// One key per class (default keymap from /api/config, remapped by the reviewer and kept in localStorage),
// the keys the page itself uses, and the help text listing them all.
import { store } from "./api.js";

const STORAGE = "bloodsmear.keymap";

// Keys with a fixed meaning somewhere on the page: never offered for a class.
export const RESERVED = new Set([
  "n", "p", "N", "P", "o", "d", "u", "h", "?", "+", "=", "-", "_", "l", "v", "g", ",", "f", "t",
  "W", "A", "S", "D", " ", "Enter", "Escape", "Tab", "Delete", "Backspace",
  "ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown",
]);

const SPECIAL_DEFAULTS = { artefact: "x", smudge_cell: "z" };

export function defaultKeymap() {
  const cfg = store.config || {};
  const map = {};
  for (const [k, cls] of Object.entries(cfg.keymap || {})) if (!RESERVED.has(k)) map[k] = cls;
  const mapped = new Set(Object.values(map));
  for (const [cls, k] of Object.entries(SPECIAL_DEFAULTS)) {
    if (!mapped.has(cls) && !(k in map) && (cfg.classes || []).includes(cls)) map[k] = cls;
  }
  return map;
}

export function keymap() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORAGE) || "null");
    if (saved && typeof saved === "object") {
      const known = new Set((store.config && store.config.classes) || []);
      const map = {};
      for (const [k, cls] of Object.entries(saved)) if (known.has(cls) && !RESERVED.has(k)) map[k] = cls;
      return map;
    }
  } catch { /* a broken entry falls back to the default */ }
  return defaultKeymap();
}

export function saveKeymap(map) { localStorage.setItem(STORAGE, JSON.stringify(map)); }
export function resetKeymap() { localStorage.removeItem(STORAGE); }

export function classForKey(ev) {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return null;
  return keymap()[ev.key] || null;
}

export function keyForClass(cls) {
  for (const [k, c] of Object.entries(keymap())) if (c === cls) return k;
  return null;
}

/** Checks a proposed map {class: key}: "" when fine, else one line naming the problem. */
export function checkAssignment(byClass) {
  const seen = {};
  for (const [cls, key] of Object.entries(byClass)) {
    if (!key) continue;
    if (key.length !== 1) return `"${key}" for ${cls}: one character per class`;
    if (RESERVED.has(key)) return `"${key}" for ${cls} is used by the page itself`;
    if (seen[key]) return `"${key}" is given to both ${seen[key]} and ${cls}`;
    seen[key] = cls;
  }
  return "";
}

export const COMMON_KEYS = [
  ["? or h", "this help"],
  [",", "key settings (remap the class keys)"],
  ["Escape", "cancel / close / back"],
  ["u or Ctrl+Z", "undo your last change in this case"],
  ["t", "change the reviewer name"],
  ["Shift+Enter", "sign off the case (gallery and slide view)"],
];

export const CASES_KEYS = [
  ["↑ ↓", "move in the case list"],
  ["Enter", "open the case's gallery"],
];

export const GALLERY_KEYS = [
  ["← → ↑ ↓", "move the selection"],
  ["class key", "relabel the selected cell (then the next cell is selected)"],
  ["Enter or Space", "confirm the current label"],
  ["Delete or Backspace", "delete the detection (not a cell); again: restore"],
  ["o", "open the cell at its place in the slide"],
  ["g", "first slide of the case"],
  ["N", "jump to the next unidentified cell"],
];

export const SLIDE_KEYS = [
  ["+ / -", "zoom in / out (also the mouse wheel)"],
  ["f", "fit the field"],
  ["Shift+arrows or Shift+W A S D", "pan (also drag)"],
  ["← → ↑ ↓", "select the nearest cell in that direction"],
  ["n / p", "next / previous cell; N: next unidentified"],
  ["Tab / Shift+Tab", "next / previous slide"],
  ["class key", "relabel the selected cell"],
  ["Enter or Space", "confirm the selected cell"],
  ["Delete or Backspace", "delete the selected detection; again: restore"],
  ["d", "draw a missed cell: click points (or move the crosshair with the arrows and press Space), Enter to finish, then a class key; Escape cancels"],
  ["v", "edit vertices: Tab picks a vertex, arrows move it (Shift: faster), Enter saves, Escape cancels; or drag the handles"],
  ["l", "labels on / off"],
  ["g", "back to the gallery"],
];
