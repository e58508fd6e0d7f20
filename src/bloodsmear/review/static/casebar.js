// The current case: its summary bar (status, sign-off, reopen, export, report), the live differential,
// and every write to a cell (headers, conflicts, read-only), shared by the gallery and the slide view.
import { EXPORT_FORMATS, api, store } from "./api.js";
import { ensureReviewer, h, inform, ask, pretty, renderDifferential, statusBadge, toast, when } from "./ui.js";

export const current = { name: null, summary: null, differential: null, onCell: null, onSummary: null };

export const readOnly = () => Boolean((store.config && store.config.read_only) || (current.summary && current.summary.status === "signed"));

export function setDifferential(diff) {
  if (!diff) return;
  current.differential = diff;
  for (const el of document.querySelectorAll(".differential-panel")) renderDifferential(el, diff);
  if (current.summary) {
    current.summary.unidentified = diff.unidentified;
    const u = document.getElementById("case-unidentified");
    if (u) u.textContent = `${diff.unidentified} unidentified`;
  }
}

export async function loadCase(name, { force = false } = {}) {
  if (current.name !== name) { current.name = name; current.summary = null; current.differential = null; }
  if (force || !current.summary) {
    const data = await api.case(name);
    if (current.name !== name) return data; // the reviewer moved on meanwhile
    current.summary = data;
    current.differential = data.differential || null;
  }
  return current.summary;
}

function describe(cell) {
  if (!cell) return "unknown";
  if (cell.deleted) return "deleted";
  const by = cell.updated_by ? ` by ${cell.updated_by}` : "";
  return `${pretty(cell.label)} (${cell.state})${by}`;
}

/**
 * Runs one write; the answer's cell and differential update the page. `intent` says in words what the
 * reviewer asked for (shown when it could not be applied, so nothing is lost silently); `retry` redoes
 * it over the current version after a conflict.
 */
export async function write(run, { intent, retry = null } = {}) {
  if (readOnly()) {
    toast(`Read-only: the case is signed${store.config && store.config.read_only ? " (server is read-only)" : ""}. ` +
      `Not applied: ${intent}.`, { kind: "warn" });
    return null;
  }
  if (!(await ensureReviewer())) { toast(`A reviewer name is needed. Not applied: ${intent}.`, { kind: "warn" }); return null; }
  try {
    const res = await run();
    if (res && res.cell && current.onCell) current.onCell(res.cell);
    if (res && res.differential) setDifferential(res.differential);
    if (current.summary && current.summary.status === "new") {
      current.summary.status = "in review";
      const badge = document.querySelector("#casebar .badge");
      if (badge) badge.replaceWith(statusBadge("in review"));
    }
    return res || {};
  } catch (e) {
    const status = e.status || 0;
    if (status === 409 && e.data && e.data.current) {
      const cell = e.data.current;
      if (current.onCell) current.onCell(cell);
      toast(`Conflict: ${cell.updated_by || "another reviewer"} changed cell ${cell.id} first; it is now ` +
        `${describe(cell)}. Your change (${intent}) was NOT applied.`, {
        kind: "error", ms: 0,
        action: retry ? { label: "Apply mine anyway", run: () => write(() => retry(cell), { intent }) } : null,
      });
    } else if (status === 423) {
      toast(`The case was signed: read-only. Not applied: ${intent}.`, { kind: "error", ms: 8000 });
      await loadCase(current.name, { force: true }).then(() => current.onSummary && current.onSummary()).catch(() => {});
    } else {
      toast(`Not applied (${intent}): ${e.message}`, { kind: "error", ms: 8000 });
    }
    return null;
  }
}

export async function undo() {
  const res = await write(() => api.undo(current.name), { intent: "undo" });
  if (res && res.undone) toast(`Undone: ${res.undone.kind} of cell ${res.undone.cell_id ?? ""}`.trim());
  return res;
}

export async function signOff() {
  if (!(await ensureReviewer())) return;
  try {
    current.summary = { ...current.summary, ...(await api.sign(current.name)) };
    toast(`Signed by ${current.summary.signed_by || store.reviewer}`, { kind: "ok" });
    if (current.onSummary) current.onSummary();
  } catch (e) {
    if (e.status === 409) {
      const n = e.data.unidentified ?? (current.differential && current.differential.unidentified);
      await inform("Not signed", `${n} unidentified cell${n === 1 ? "" : "s"} remain${n === 1 ? "s" : ""}: confirm or ` +
        "relabel every flagged cell first.", {
        extra: { label: "Show them", run: () => { location.hash = `#/case/${encodeURIComponent(current.name)}`; } },
      });
    } else toast(`Not signed: ${e.message}`, { kind: "error", ms: 8000 });
  }
}

export async function reopen() {
  if (!(await ensureReviewer())) return;
  const reason = await ask("Reopen the case", "Why? (recorded with your name)", { okLabel: "Reopen" });
  if (!reason) return;
  try {
    current.summary = { ...current.summary, ...(await api.reopen(current.name, reason)) };
    toast("Reopened: changes allowed again", { kind: "ok" });
    if (current.onSummary) current.onSummary();
  } catch (e) { toast(`Not reopened: ${e.message}`, { kind: "error", ms: 8000 }); }
}

/** The bar at the top of a case page (gallery and slide view). */
export function caseBar(extra = []) {
  const s = current.summary || {};
  const signed = s.status === "signed";
  const name = current.name;
  const exportMenu = h("details", { class: "menu", id: "export-menu" }, h("summary", {}, "Export"),
    h("div", { class: "menu-items" }, EXPORT_FORMATS.map(([fmt, label]) =>
      h("a", { href: api.exportUrl(name, fmt), download: "", "data-format": fmt }, label))));
  return h("div", { class: "casebar", id: "casebar" },
    h("div", { class: "casebar-title" },
      h("a", { href: `#/case/${encodeURIComponent(name)}`, class: "case-name" }, name), statusBadge(s.status),
      h("span", { class: "muted" }, `${s.cells ?? "?"} cells · ${s.slides && s.slides.length !== undefined ? s.slides.length : s.slides ?? "?"} slides · `),
      h("span", { id: "case-unidentified", class: s.unidentified ? "warn" : "ok" }, `${s.unidentified ?? 0} unidentified`),
      signed ? h("span", { class: "signed-note" }, `Signed by ${s.signed_by || "?"}, ${when(s.signed_at)} — read-only`) : null),
    h("div", { class: "casebar-actions" }, extra,
      exportMenu,
      h("a", { class: "button", href: api.reportUrl(name, "html"), target: "_blank", rel: "noopener", id: "report-link" }, "Report"),
      h("a", { class: "button", href: api.reportUrl(name, "pdf"), target: "_blank", rel: "noopener" }, "PDF"),
      signed
        ? h("button", { type: "button", id: "reopen-button", onclick: reopen }, "Reopen…")
        : h("button", { type: "button", class: "primary", id: "sign-button", disabled: store.config && store.config.read_only,
          onclick: signOff }, "Sign off")));
}
