// #/ : the case list (counts, share reviewed, unidentified, status).
import { api } from "./api.js";
import { h, pct, statusBadge, when } from "./ui.js";

let rows = [];
let selected = 0;

function select(i) {
  if (!rows.length) return;
  selected = Math.max(0, Math.min(rows.length - 1, i));
  rows.forEach((r, j) => r.classList.toggle("selected", j === selected));
  rows[selected].scrollIntoView({ block: "nearest" });
}

export async function renderCases(main) {
  const cases = await api.cases();
  rows = [];
  const open = (c) => { location.hash = `#/case/${encodeURIComponent(c.name)}`; };
  const body = cases.map((c, i) => {
    const tr = h("tr", { class: "case-row", tabindex: "-1", "data-case": c.name, onclick: () => open(c) },
      h("td", {}, h("a", { href: `#/case/${encodeURIComponent(c.name)}` }, c.name)),
      h("td", { class: "num" }, c.slides),
      h("td", { class: "num" }, c.cells),
      h("td", { class: "share" }, h("span", { class: "sharebar" }, h("span", { style: `width:${Math.round(100 * (c.reviewed_share || 0))}%` })),
        ` ${pct(c.reviewed_share)}`, h("span", { class: "muted" }, ` (${c.reviewed})`)),
      h("td", { class: `num ${c.unidentified ? "warn" : ""}` }, c.unidentified),
      h("td", {}, statusBadge(c.status)),
      h("td", { class: "muted" }, c.signed_by ? `${c.signed_by}, ${when(c.signed_at)}` : ""));
    tr.addEventListener("mouseenter", () => select(i));
    rows.push(tr);
    return tr;
  });
  main.replaceChildren(h("div", { class: "page" },
    h("h1", {}, "Cases"),
    cases.length ? h("table", { class: "cases", id: "cases" },
      h("thead", {}, h("tr", {}, ["Case", "Slides", "Cells", "Reviewed", "Unidentified", "Status", "Signed"].map((t) => h("th", {}, t)))),
      h("tbody", {}, body)) : h("p", { class: "muted" }, "No cases in this output folder."),
    h("p", { class: "muted small" }, "↑ ↓ to move, Enter to open, ? for all keys.")));
  selected = 0;
  select(0);
  return {
    key(ev) {
      if (ev.key === "ArrowDown") { select(selected + 1); return true; }
      if (ev.key === "ArrowUp") { select(selected - 1); return true; }
      if ((ev.key === "Enter" || ev.key === " ") && cases[selected]) { open(cases[selected]); return true; }
      return false;
    },
  };
}
