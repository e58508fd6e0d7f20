// The review page: one page, routes in the hash (#/ cases, #/case/NAME gallery, #/slide/ID[/cell/CID] slide view),
// keyboard first. Talks to the server only through the API in docs/review-api.md.
import { loadConfig, prefetch, store } from "./api.js";
import { current, signOff } from "./casebar.js";
import { renderCases } from "./cases.js";
import { renderGallery } from "./gallery.js";
import { renderSlide } from "./slide.js";
import { ensureReviewer, h, modalOpen, showHelp, showSettings } from "./ui.js";

const main = document.getElementById("main");
let view = null;
let routing = Promise.resolve();

function parse(hash) {
  const parts = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "case" && parts.length > 1) return { name: "case", caseName: parts.slice(1).join("/") };
  if (parts[0] === "slide" && parts[1]) return { name: "slide", slide: Number(parts[1]), cell: parts[2] === "cell" ? Number(parts[3]) : null };
  return { name: "cases" };
}

function reviewerButton() {
  const b = document.getElementById("reviewer");
  b.textContent = store.reviewer ? `Reviewer: ${store.reviewer}` : "Set reviewer name";
}

async function route() {
  const r = parse(location.hash);
  if (r.name === "slide" && view && view.slideId === r.slide) {
    if (r.cell !== null) view.selectCell(r.cell);
    return;
  }
  document.body.dataset.view = r.name;
  current.onCell = null;
  current.onSummary = null;
  main.setAttribute("aria-busy", "true");
  try {
    if (r.name === "case") { view = await renderGallery(main, r.caseName); document.title = `${r.caseName} · bloodsmear review`; }
    else if (r.name === "slide") { view = await renderSlide(main, r.slide, r.cell); document.title = `slide ${r.slide} · bloodsmear review`; }
    else { view = await renderCases(main); document.title = "Cases · bloodsmear review"; }
  } catch (e) {
    view = null;
    main.replaceChildren(h("div", { class: "page" }, h("h1", {}, "Could not open this page"),
      h("p", { class: "error" }, e.message || String(e)), h("p", {}, h("a", { href: "#/" }, "Back to the cases"))));
  } finally {
    main.removeAttribute("aria-busy");
  }
}

function closeMenus(except = null) {
  for (const m of document.querySelectorAll("details.menu[open]")) if (m !== except) m.open = false;
}

function onKey(ev) {
  if (modalOpen()) return;
  if (ev.key === "Escape" && document.querySelector("details.menu[open]")) { closeMenus(); ev.preventDefault(); return; }
  const t = ev.target;
  const tag = t && t.tagName;
  if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
  // on a button or link, Enter, Space and Tab keep their usual meaning (press it, move the focus)
  if ((tag === "BUTTON" || tag === "A" || tag === "SUMMARY") && (ev.key === "Enter" || ev.key === " " || ev.key === "Tab")) return;
  if (!ev.ctrlKey && !ev.metaKey && !ev.altKey) {
    if (ev.key === "?" || ev.key === "h") { ev.preventDefault(); showHelp(); return; }
    if (ev.key === ",") { ev.preventDefault(); showSettings(); return; }
    if (ev.key === "t") { ev.preventDefault(); ensureReviewer(true); return; }
    // sign off from the gallery or the slide view without hunting for the button
    if (ev.key === "Enter" && ev.shiftKey && current.name && view) { ev.preventDefault(); signOff(); return; }
  }
  if (view && view.key && view.key(ev)) ev.preventDefault();
}

async function start() {
  const first = parse(location.hash);
  if (first.name === "slide") prefetch(`/api/slides/${encodeURIComponent(first.slide)}`);
  try {
    await loadConfig();
  } catch (e) {
    main.replaceChildren(h("div", { class: "page" }, h("h1", {}, "The review server did not answer"), h("p", { class: "error" }, e.message)));
    return;
  }
  document.getElementById("out-dir").textContent = store.config.out_dir || "";
  if (store.config.read_only) document.body.classList.add("read-only");
  document.getElementById("reviewer").addEventListener("click", () => ensureReviewer(true));
  document.getElementById("help-button").addEventListener("click", () => showHelp());
  document.getElementById("keys-button").addEventListener("click", () => showSettings());
  document.addEventListener("reviewer", reviewerButton);
  document.addEventListener("keydown", onKey);
  document.addEventListener("click", (ev) => closeMenus(ev.target.closest && ev.target.closest("details.menu")));
  window.addEventListener("hashchange", () => { routing = routing.then(route); });
  reviewerButton();
  routing = routing.then(route);
}

start();
