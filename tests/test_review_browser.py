"""End to end in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright): the review page over
a synthetic analyze output (no models). Open the case, relabel a cell with the keyboard alone, delete one,
draw one, sign; the CVAT export, read back with our reader, holds the three changes.

With BLOODSMEAR_SCREENSHOTS=docs/img the test also writes the docs' screenshots (review-cases.png,
review-slide.png, review-gallery.png); a screenshot of the signed case is always kept in the test's tmp dir.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from browser_page import chromium_page

from bloodsmear.data.cvat import read_cvat

pytestmark = pytest.mark.browser


@pytest.fixture
def server(tmp_path):
    """(base URL, out dir): the review app over a demo output folder, served by uvicorn in a thread."""
    from bloodsmear.review.app import create_app
    from bloodsmear.review.bench import ServerThread
    from bloodsmear.review.demo import make_demo_out_dir

    out = make_demo_out_dir(tmp_path / "demo")
    with ServerThread(create_app(out)) as srv:
        yield srv.url, out


@pytest.fixture
def page():
    yield from chromium_page({"width": 1400, "height": 860})


def _shot(pg, tmp_path: Path, name: str, clip: dict | None = None) -> None:
    pg.evaluate("document.getElementById('toasts').replaceChildren()")  # passing notes, not the view
    pg.screenshot(path=str(tmp_path / f"{name}.png"), clip=clip)
    docs = os.environ.get("BLOODSMEAR_SCREENSHOTS")
    if docs and name in ("review-cases", "review-gallery", "review-slide"):
        Path(docs).mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(Path(docs) / f"{name}.png"), clip=clip)


def _cells(base: str, slide_id: int) -> dict[int, dict]:
    return {c["id"]: c for c in httpx.get(f"{base}/api/slides/{slide_id}").json()["cells"]}


def _same_box(a, b, tol: float = 1.5) -> bool:
    return all(abs(float(x) - float(y)) <= tol for x, y in zip(a, b))


def _key_for(pg, cls: str) -> str:
    keymap = pg.evaluate("fetch('/api/config').then(r => r.json()).then(c => c.keymap)")
    return next(k for k, v in keymap.items() if v == cls)


def test_review_relabel_delete_draw_sign_export(page, server, tmp_path):
    base, _out = server
    pg = page
    pg.goto(f"{base}/#/")
    pg.wait_for_selector("tr.case-row")
    case = pg.get_attribute("tr.case-row.selected", "data-case")

    # open the case with the keyboard: the gallery, "unidentified" first, its first cell selected
    pg.keyboard.press("Enter")
    pg.wait_for_selector(".tile.selected")
    assert pg.get_attribute(".group:first-of-type", "data-group") == "unidentified"
    _shot(pg, tmp_path, "review-gallery")

    # relabel with the keyboard alone: the class key (the first write asks the reviewer's name)
    relabel_id = int(pg.get_attribute(".tile.selected", "data-cell-id"))
    before = httpx.get(f"{base}/api/cases/{case}/gallery").json()
    old = next(c for g in before["groups"] for c in g["cells"] if c["id"] == relabel_id)
    target = "eosinophil" if old["label"] != "eosinophil" else "basophil"
    pg.keyboard.press(_key_for(pg, target))
    pg.wait_for_selector("#modal-input")
    pg.keyboard.type("tester")
    pg.keyboard.press("Enter")
    pg.wait_for_selector(f'.tile[data-cell-id="{relabel_id}"][data-label="{target}"]')
    # the selection moved on; the differential followed the write
    delete_id = int(pg.get_attribute(".tile.selected", "data-cell-id"))
    assert delete_id != relabel_id
    assert pg.locator(f'#differential tr[data-label="{target}"]').count() >= 1

    # delete the next one (Delete key)
    pg.keyboard.press("Delete")
    pg.wait_for_selector(f'.tile.deleted[data-cell-id="{delete_id}"]')

    # o opens the selected cell at its place in the slide (flagged cells still unanswered); Escape comes back
    pg.keyboard.press("Shift+N")
    open_id = pg.get_attribute(".tile.selected", "data-cell-id")
    pg.keyboard.press("o")
    pg.wait_for_selector(f'#slide-svg polygon.cell.selected[data-cell-id="{open_id}"]')
    pg.keyboard.press("f")
    pg.wait_for_timeout(400)
    _shot(pg, tmp_path, "review-slide")
    pg.keyboard.press("Escape")
    pg.keyboard.press("Escape")
    pg.wait_for_selector(".tile.selected")

    # sign-off is refused while unidentified cells remain, and says how many
    left = int(pg.inner_text("#diff-unidentified").split()[0])
    if left:
        pg.click("#sign-button")
        pg.wait_for_selector("#modal")
        assert f"{left} unidentified" in pg.inner_text("#modal")
        pg.keyboard.press("Escape")
    # confirm the rest with the keyboard: N jumps to the next unidentified cell, Enter confirms it
    for _ in range(50):
        if pg.inner_text("#diff-unidentified").startswith("0 "):
            break
        pg.keyboard.press("Shift+N")
        pg.keyboard.press("Enter")
        pg.wait_for_timeout(150)
    assert pg.inner_text("#diff-unidentified").startswith("0 ")

    # draw a missed cell on the first slide: d, four clicks, Enter, a class key
    pg.keyboard.press("g")
    pg.wait_for_selector("#slide-svg polygon.cell")
    slide_id = int(pg.evaluate("location.hash.split('/')[2]"))
    cells_before = _cells(base, slide_id)
    pg.keyboard.press("d")
    box = pg.locator("#slide-svg").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    for dx, dy in ((-30, -30), (30, -30), (30, 30), (-30, 30)):
        pg.mouse.click(cx + dx, cy + dy)
    pg.keyboard.press("Enter")
    pg.wait_for_selector("#new-cell-class")
    pg.keyboard.press(_key_for(pg, "monocyte"))
    pg.wait_for_function(f"document.querySelectorAll('#slide-svg polygon.cell').length === {len(cells_before) + 1}")
    cells_after = _cells(base, slide_id)
    (drawn,) = [c for i, c in cells_after.items() if i not in cells_before]
    assert drawn["origin"] == "person" and drawn["label"] == "monocyte" and len(drawn["polygon"]) == 4

    # sign off (the button); the case turns read-only with a Reopen button
    pg.click("#sign-button")
    pg.wait_for_selector("#reopen-button")
    assert "signed" in pg.inner_text("#casebar")
    assert pg.is_disabled("#draw-button")
    pg.screenshot(path=str(tmp_path / "review-signed.png"))
    pg.goto(f"{base}/#/")
    pg.wait_for_selector("tr.case-row .badge-signed")
    pg.set_viewport_size({"width": 1000, "height": 280})
    _shot(pg, tmp_path, "review-cases")

    # the CVAT export holds the three changes
    relabelled = _cells(base, old["slide_id"])[relabel_id]
    deleted = next(c for s in (1, 2) for c in _cells(base, s).values() if c["id"] == delete_id)
    assert deleted["deleted"]
    resp = httpx.get(f"{base}/api/cases/{case}/export", params={"format": "cvat"})
    assert resp.status_code == 200
    data = read_cvat(resp.content, neutrophil="group")
    summary = httpx.get(f"{base}/api/cases/{case}").json()
    names = {s["id"]: Path(s["name"]).name for s in summary["slides"]}
    by_image = {Path(im.path).name: im for im in data.images}

    def cells_on(slide: int):
        return by_image[names[slide]].cells

    assert any(_same_box(c.box, relabelled["box"]) and c.label == target for c in cells_on(relabelled["slide_id"]))
    assert not any(_same_box(c.box, deleted["box"]) for c in cells_on(deleted["slide_id"]))
    assert any(_same_box(c.box, drawn["box"]) and c.label == "monocyte" for c in cells_on(slide_id))
    assert sum(len(im.cells) for im in data.images) == summary["cells"]

    # reopening asks for a reason and makes the case writable again
    pg.set_viewport_size({"width": 1400, "height": 860})
    pg.goto(f"{base}/#/case/{case}")
    pg.click("#reopen-button")
    pg.wait_for_selector("#modal-input")
    pg.keyboard.type("second look at the monocytes")
    pg.keyboard.press("Enter")
    pg.wait_for_selector("#sign-button")
    assert httpx.get(f"{base}/api/cases/{case}").json()["status"] != "signed"


def test_conflict_shows_the_other_answer_and_keeps_the_intent(page, server):
    base, _out = server
    pg = page
    pg.add_init_script("localStorage.setItem('bloodsmear.reviewer', 'tester')")
    pg.goto(f"{base}/#/")
    pg.wait_for_selector("tr.case-row")
    case = pg.get_attribute("tr.case-row", "data-case")
    pg.goto(f"{base}/#/case/{case}")
    pg.wait_for_selector(".tile.selected")
    cid = int(pg.get_attribute(".tile.selected", "data-cell-id"))
    cfg = httpx.get(f"{base}/api/config").json()
    cell = next(c for g in httpx.get(f"{base}/api/cases/{case}/gallery").json()["groups"] for c in g["cells"] if c["id"] == cid)
    # another reviewer answers first (the page still holds the old version)
    r = httpx.post(f"{base}/api/cells/{cid}/label", json={"label": "basophil", "version": cell["version"]},
                   headers={"X-Reviewer": "other", "X-CSRF-Token": cfg["csrf_token"]})
    assert r.status_code == 200
    pg.keyboard.press(_key_for(pg, "lymphocyte"))
    toast = pg.wait_for_selector(".toast-error")
    text = toast.inner_text()
    assert "other" in text and "basophil" in text and "NOT applied" in text
    # the tile shows the other reviewer's answer; the intent can be applied on purpose
    pg.wait_for_selector(f'.tile[data-cell-id="{cid}"][data-label="basophil"]')
    pg.click(".toast-error .toast-action")
    pg.wait_for_selector(f'.tile[data-cell-id="{cid}"][data-label="lymphocyte"]')
    # u undoes this reviewer's last change: back to the other reviewer's answer
    pg.keyboard.press("u")
    pg.wait_for_selector(f'.tile[data-cell-id="{cid}"][data-label="basophil"]')


def test_slide_labels_never_overlap(page, server):
    base, _out = server
    pg = page
    pg.goto(f"{base}/#/slide/1")
    pg.wait_for_selector("#slide-svg polygon.cell")
    for zoom in ("f", "-", "+", "+", "+"):
        pg.keyboard.press(zoom)
        pg.wait_for_timeout(300)
        rects = pg.evaluate("[...document.querySelectorAll('#labels g.label')].map(g => { const r = g.getBoundingClientRect();"
                            " return [r.left, r.top, r.right, r.bottom]; })")
        assert rects, "no labels drawn"
        for i, a in enumerate(rects):
            for b in rects[i + 1:]:
                assert a[2] <= b[0] + 0.5 or b[2] <= a[0] + 0.5 or a[3] <= b[1] + 0.5 or b[3] <= a[1] + 0.5, (zoom, a, b)


def test_remapped_class_key_is_kept_and_used(page, server):
    base, _out = server
    pg = page
    pg.add_init_script("localStorage.setItem('bloodsmear.reviewer', 'tester')")
    pg.goto(f"{base}/#/")
    pg.wait_for_selector("tr.case-row")
    pg.keyboard.press("Enter")
    pg.wait_for_selector(".tile.selected")
    pg.keyboard.press(",")  # the key settings
    box = pg.locator('input.keybox[data-class="eosinophil"]')
    box.focus()
    pg.keyboard.press("k")
    pg.click("#settings-save")
    assert "k" in pg.evaluate("JSON.parse(localStorage.getItem('bloodsmear.keymap'))")
    cid = pg.get_attribute(".tile.selected", "data-cell-id")
    pg.keyboard.press("k")
    pg.wait_for_selector(f'.tile[data-cell-id="{cid}"][data-label="eosinophil"]')
    # a key the page itself uses is refused
    pg.keyboard.press(",")
    pg.locator('input.keybox[data-class="basophil"]').focus()
    pg.keyboard.press("n")
    pg.click("#settings-save")
    assert "used by the page" in pg.inner_text("#modal")
