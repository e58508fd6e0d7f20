"""The docs' screenshots of the review page over real data: `python tests/review_screenshots_bccd.py docs/img`.

The first 100 BCCD fields ($BLOODSMEAR_DATA/bccd/JPEGImages, symlinked into one case folder) go through the
shipped pipeline (`bloodsmear analyze`, ~15 s), the review server serves the output, and headless Chromium
(Debian's /usr/bin/chromium through Playwright) answers a few cells with the keyboard, then saves at
1400x900: review-gallery.png (the gallery with some answers), review-slide.png (the field with the most
WBCs, at least 2) and review-cases.png (the case list, in review).

`analyzed_case` is also the set-up of tests/test_review_keyboard_bccd.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from browser_page import CHROMIUM  # tests/ is on the path: pytest's, or this script's own folder

log = logging.getLogger("review_screenshots_bccd")
VIEWPORT = {"width": 1400, "height": 900}
CASE = "bccd-case"


def bccd_images() -> Path:
    """The BCCD field folder, FileNotFoundError where the data is absent."""
    from bloodsmear.settings import data_root

    images = data_root() / "bccd" / "JPEGImages"
    if not images.is_dir():
        raise FileNotFoundError(f"real data {images} not present (set BLOODSMEAR_DATA)")
    return images


def analyzed_case(tmp: Path, n: int = 100) -> Path:
    """tmp/in/bccd-case/ (the first `n` BCCD fields, symlinked) analysed by the shipped pipeline into tmp/out;
    answers tmp/out. Raises FileNotFoundError without the data, InputError/ImportError without the models."""
    from bloodsmear.inference.batch import analyze
    from bloodsmear.inference.pipeline import Pipeline

    images = bccd_images()
    case = tmp / "in" / CASE
    case.mkdir(parents=True, exist_ok=True)
    for src in sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]:
        (case / src.name).symlink_to(src)
    pipe = Pipeline.from_config(None)  # the shipped default, as `bloodsmear analyze` loads it
    analyze([tmp / "in"], tmp / "out", pipe, progress=False)
    return tmp / "out"


def _clear_toasts(pg) -> None:
    pg.evaluate("document.getElementById('toasts').replaceChildren()")  # passing notes, not the view


def screenshots(out: Path, dest: Path) -> list[Path]:
    """Serves `out` and writes review-gallery.png, review-slide.png, review-cases.png into `dest`."""
    # imported here: playwright is optional, and the test imports `analyzed_case` without a browser
    import httpx
    from playwright.sync_api import sync_playwright

    from bloodsmear.review.app import create_app
    from bloodsmear.review.bench import ServerThread

    dest.mkdir(parents=True, exist_ok=True)
    paths = [dest / f"review-{n}.png" for n in ("gallery", "slide", "cases")]
    with ServerThread(create_app(out)) as srv, sync_playwright() as p:
        summary = httpx.get(f"{srv.url}/api/cases/{CASE}").json()
        field = max(summary["slides"], key=lambda s: (s["cells"], -s["id"]))
        if field["cells"] < 2:
            raise RuntimeError(f"no field with 2 or more cells in {out}")
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        pg = browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.add_init_script("localStorage.setItem('bloodsmear.reviewer', 'ana')")
        pg.goto(f"{srv.url}/#/case/{CASE}")
        pg.wait_for_selector(".tile.selected")
        # a few answers, so that the gallery and the case list show a case in review
        for key in ("Enter", "Enter", "4", "Enter", "Enter", "2"):
            at = pg.get_attribute(".tile.selected", "data-cell-id")
            pg.keyboard.press(key)
            pg.wait_for_selector(f'.tile[data-cell-id="{at}"]:not([data-state="model"])')
        pg.wait_for_function("[...document.querySelectorAll('.tile img')].slice(0, 40).every(i => i.complete)")
        _clear_toasts(pg)
        pg.screenshot(path=str(paths[0]))
        log.info("gallery: %s", paths[0])

        pg.goto(f"{srv.url}/#/slide/{field['id']}")
        pg.wait_for_selector("#slide-svg[data-ready='1']")
        pg.keyboard.press("n")  # select a cell: its info panel and handles show
        pg.wait_for_timeout(800)  # the full-resolution image replaces the preview
        _clear_toasts(pg)
        pg.screenshot(path=str(paths[1]))
        log.info("slide view of %s (%d cells): %s", field["name"], field["cells"], paths[1])

        pg.goto(f"{srv.url}/#/")
        pg.wait_for_selector("tr.case-row .badge")
        _clear_toasts(pg)
        pg.screenshot(path=str(paths[2]))
        log.info("case list: %s", paths[2])
        browser.close()
    if errors:
        raise RuntimeError(f"JavaScript errors on the page: {errors}")
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path, help="folder for review-cases.png, review-slide.png, review-gallery.png")
    ap.add_argument("--out", type=Path, help="an analyze output of the BCCD case (default: analyse it now)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not CHROMIUM.exists():
        log.error("%s not found (apt-get install chromium)", CHROMIUM)
        return 1
    with tempfile.TemporaryDirectory(prefix="bloodsmear-shots-") as tmp:
        out = args.out or analyzed_case(Path(tmp))
        screenshots(out if args.out is None else _copy(out, Path(tmp)), args.dest)
    return 0


def _copy(out: Path, tmp: Path) -> Path:
    """A copy of a given output folder: the screenshots' answers never land in its review database."""
    import shutil

    dst = tmp / "out"
    shutil.copytree(out, dst, symlinks=True, ignore=shutil.ignore_patterns("*.sqlite*"))
    return dst


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
