"""`bloodsmear bench review`: how fast the review server opens a big field and answers a relabel, measured
over real HTTP against a running uvicorn server (not a timed test).

A synthetic analyze folder (`review.demo`: one 4032 x 3024 photo, 200 cells by default) or a given OUT_DIR
is served on a free localhost port; then:
- open, cold: the slide's JSON (every cell), its preview image (made on this first request) and the full
  image, one after the other, as the page asks for them;
- open, warm: the same again (what a second reviewer or a reload sees);
- relabel round trip: POST a new label and read the answer (cell + live differential), `n` times;
- in headless Chromium when available (`browser=True`): from navigation to the slide view with every
  outline drawn (the page sets `data-ready` on its `#slide-svg` element).
"""

from __future__ import annotations

import logging
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from bloodsmear.review.app import create_app
from bloodsmear.review.demo import make_demo_out_dir

log = logging.getLogger(__name__)
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving `app` on localhost in a thread (a context manager: started on enter, stopped on exit)."""

    def __init__(self, app, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the review server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _ms(t0: float) -> float:
    return round(1000.0 * (time.perf_counter() - t0), 1)


def _open(client: httpx.Client, slide_id: int) -> dict:
    t0 = time.perf_counter()
    view = client.get(f"/api/slides/{slide_id}").raise_for_status().json()
    t_json = _ms(t0)
    client.get(view["preview"]).raise_for_status()
    t_preview = _ms(t0)
    client.get(view["image"]).raise_for_status()
    return {"cells_json_ms": t_json, "with_preview_ms": t_preview, "with_full_image_ms": _ms(t0),
            "cells": len(view["cells"])}


def _browser_open(url: str, slide_id: int, repeats: int = 3) -> list[float] | None:
    """ms from navigating to the slide view to every outline drawn on the loaded field, `repeats` times (back
    to the case list between); None without Playwright or Chromium."""
    try:
        from playwright.sync_api import sync_playwright  # optional: only this figure needs a browser
    except ImportError:
        return None
    if not Path(CHROMIUM).exists():
        return None
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url + "/#/", wait_until="load")
        page.evaluate("localStorage.setItem('bloodsmear.reviewer', 'bench')")
        for _ in range(repeats):
            page.goto(url + "/#/", wait_until="load")
            page.wait_for_selector(".case-row, table", timeout=30000)
            t0 = time.perf_counter()
            page.goto(url + f"/#/slide/{slide_id}", wait_until="commit")
            page.wait_for_selector("#slide-svg[data-ready='1']", timeout=30000)
            out.append(_ms(t0))
        browser.close()
    return out


def bench_review(out_dir: str | Path | None = None, *, cells: int = 200, size: tuple[int, int] = (4032, 3024),
                 relabels: int = 50, browser: bool = True) -> dict:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    with tempfile.TemporaryDirectory(prefix="bloodsmear-bench-review-") as tmp:
        if out_dir is None:
            t0 = time.perf_counter()
            out_dir = make_demo_out_dir(Path(tmp), n_fields=1, cells_per_field=cells, size=size)
            log.info("synthetic %dx%d field with %d cells made in %.1f s", *size, cells, time.perf_counter() - t0)
            db = None
        else:
            db = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"  # never the folder's own review database
        app = create_app(out_dir, db_url=db)
        with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
            cfg = client.get("/api/config").json()
            case = client.get("/api/cases").json()[0]["name"]
            slide = max(client.get(f"/api/cases/{case}").json()["slides"], key=lambda s: s["cells"])
            cold = _open(client, slide["id"])
            warm = min((_open(client, slide["id"]) for _ in range(5)), key=lambda r: r["with_full_image_ms"])
            head = {"X-Reviewer": "bench", "X-CSRF-Token": cfg["csrf_token"]}
            view = client.get(f"/api/slides/{slide['id']}").json()
            cell = next(c for c in view["cells"] if not c["deleted"])
            version, times = cell["version"], []
            for i in range(relabels):
                t0 = time.perf_counter()
                r = client.post(f"/api/cells/{cell['id']}/label", headers=head,
                                json={"label": ("eosinophil", "lymphocyte")[i % 2], "version": version})
                r.raise_for_status()
                times.append(_ms(t0))
                version = r.json()["cell"]["version"]
            browser_ms = _browser_open(srv.url, slide["id"]) if browser else None  # [first, then warm ones]
        times.sort()
        return {"field": f"{slide['width']}x{slide['height']}", "cells": slide["cells"], "open_cold": cold,
                "open_warm": warm, "browser_open_ms": browser_ms,
                "relabel_ms": {"median": round(statistics.median(times), 1), "p95": times[int(0.95 * (len(times) - 1))],
                               "max": times[-1], "n": len(times)}}
