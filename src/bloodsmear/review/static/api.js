// The review server's HTTP API (docs/review-api.md): reads, writes with X-Reviewer and X-CSRF-Token, errors.

export class ApiError extends Error {
  constructor(status, data) {
    super((data && data.detail) || `HTTP ${status}`);
    this.status = status;
    this.data = data || {};
  }
}

export const store = {
  config: null,
  get reviewer() { return localStorage.getItem("bloodsmear.reviewer") || ""; },
  set reviewer(v) { localStorage.setItem("bloodsmear.reviewer", v); },
};

function csrfToken() {
  if (store.config && store.config.csrf_token) return store.config.csrf_token;
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

async function answer(resp) {
  let data = null;
  const text = await resp.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = { detail: text.slice(0, 200) }; }
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

const prefetched = new Map();

/** Starts a GET now (e.g. while the config loads); the next get(url) takes its answer. */
export function prefetch(url) {
  prefetched.set(url, fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" }));
}

export async function get(url) {
  const early = prefetched.get(url);
  prefetched.delete(url);
  return answer(await (early || fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })));
}

export async function post(url, body) {
  const resp = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: {
      "Content-Type": "application/json",
      Accept: "application/json",
      "X-Reviewer": store.reviewer,
      "X-CSRF-Token": csrfToken(),
    },
    body: JSON.stringify(body || {}),
  });
  return answer(resp);
}

export async function loadConfig() {
  store.config = await get("/api/config");
  return store.config;
}

const enc = encodeURIComponent;

export const api = {
  cases: () => get("/api/cases"),
  case: (name) => get(`/api/cases/${enc(name)}`),
  gallery: (name) => get(`/api/cases/${enc(name)}/gallery`),
  differential: (name) => get(`/api/cases/${enc(name)}/differential`),
  slide: (id) => get(`/api/slides/${enc(id)}`),
  label: (cell, label) => post(`/api/cells/${cell.id}/label`, { label, version: cell.version }),
  confirm: (cell) => post(`/api/cells/${cell.id}/confirm`, { version: cell.version }),
  remove: (cell) => post(`/api/cells/${cell.id}/delete`, { version: cell.version }),
  restore: (cell) => post(`/api/cells/${cell.id}/restore`, { version: cell.version }),
  polygon: (cell, polygon) => post(`/api/cells/${cell.id}/polygon`, { polygon, version: cell.version }),
  add: (slideId, polygon, label) => post(`/api/slides/${enc(slideId)}/cells`, { polygon, label }),
  undo: (name) => post(`/api/cases/${enc(name)}/undo`, {}),
  sign: (name) => post(`/api/cases/${enc(name)}/sign`, {}),
  reopen: (name, reason) => post(`/api/cases/${enc(name)}/reopen`, { reason }),
  exportUrl: (name, format) => `/api/cases/${enc(name)}/export?format=${enc(format)}`,
  reportUrl: (name, kind) => `/api/cases/${enc(name)}/report.${kind}`,
};

export const EXPORT_FORMATS = [
  ["cvat", "CVAT for images (XML)"],
  ["coco", "COCO (JSON)"],
  ["paper-json", "Paper JSON"],
  ["csv", "Counts (CSV)"],
  ["crops", "Labelled crops (zip)"],
];
