"""Issue 13's target "reviewing a 100-cell BCCD case with the keyboard alone": the first 100 BCCD fields through
the shipped pipeline, served by the review app, reviewed in headless Chromium with `page.keyboard` only (no
mouse, no element.click(), no fill): open the case, name the reviewer in the name dialog, answer every
unidentified cell (Enter, class keys, one artefact), delete a detection, open a cell in the slide view, draw a
missed cell with the crosshair and give it a class, move a vertex, undo, go back, sign off, open the report.
The API then shows the case signed by that name, no cell unidentified, and every kind of event. Keystrokes and
the time taken are logged (never asserted).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest
from browser_page import chromium_page
from review_screenshots_bccd import CASE, VIEWPORT, analyzed_case

from bloodsmear.errors import BloodsmearError

pytestmark = [pytest.mark.realdata, pytest.mark.browser]
log = logging.getLogger(__name__)
REVIEWER = "kb tester"
RELABEL_AT = {5: "lymphocyte", 20: "monocyte", 40: "eosinophil"}  # positions in the unidentified group
ARTEFACT_AT = 60


class Keys:
    """page.keyboard, counting every key pressed (a chord such as Shift+N is one press; type() one per char)."""

    def __init__(self, pg) -> None:
        self.pg, self.n = pg, 0

    def press(self, key: str, times: int = 1) -> None:
        for _ in range(times):
            self.pg.keyboard.press(key)
            self.n += 1

    def type(self, text: str) -> None:
        self.pg.keyboard.type(text)
        self.n += len(text)

    def tab_to(self, element_id: str, limit: int = 400) -> int:
        """Tab until `#element_id` has the focus; the number of Tabs (fails past `limit`)."""
        for i in range(1, limit + 1):
            self.press("Tab")
            if self.pg.evaluate("document.activeElement && document.activeElement.id") == element_id:
                return i
        raise AssertionError(f"#{element_id} not reached with {limit} Tabs")


@pytest.fixture(scope="module")
def bccd_out(tmp_path_factory) -> Path:
    try:
        return analyzed_case(tmp_path_factory.mktemp("kb"))
    except FileNotFoundError as e:
        pytest.skip(str(e))
    except (ImportError, BloodsmearError) as e:  # a shipped model not there yet: an InputError from the zoo
        pytest.skip(f"shipped pipeline not loadable: {e}")


@pytest.fixture
def page():
    yield from chromium_page(VIEWPORT)


def _key_for(cfg: dict, cls: str) -> str:
    return next(k for k, v in cfg["keymap"].items() if v == cls)


def _selected(pg) -> int:
    return int(pg.get_attribute(".tile.selected", "data-cell-id"))


def _answer(pg, keys: Keys, key: str, cell_id: int, next_id: int | None) -> None:
    """One answer in the gallery; waits until the cell is written and the selection moved on."""
    keys.press(key)
    if pg.locator("#modal-input").count():  # the first write asks who is reviewing
        keys.type(REVIEWER)
        keys.press("Enter")
    pg.wait_for_selector(f'.tile[data-cell-id="{cell_id}"]:not([data-state="model"])')
    if next_id is not None:
        pg.wait_for_selector(f'.tile.selected[data-cell-id="{next_id}"]')


def _wait_for(get, ok, timeout: float = 10.0):
    """Polls `get()` until `ok(value)`; the value (fails after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout} s")
        time.sleep(0.05)


def _name_dialog_if_asked(pg, keys: Keys) -> None:
    try:
        pg.wait_for_selector("#modal-input", timeout=1500)
    except Exception:  # noqa: BLE001 - no dialog: the name is known
        return
    keys.type(REVIEWER)
    keys.press("Enter")


def test_review_100_cell_bccd_case_with_the_keyboard_alone(page, bccd_out):  # page first: no browser, no analysis
    from bloodsmear.review.app import create_app
    from bloodsmear.review.bench import ServerThread

    pg = page
    keys = Keys(pg)
    with ServerThread(create_app(bccd_out)) as srv:
        base = srv.url
        cfg = httpx.get(f"{base}/api/config").json()
        start = httpx.get(f"{base}/api/cases/{CASE}").json()
        assert start["cells"] >= 100 and start["unidentified"] > 0

        t0 = time.perf_counter()
        pg.goto(f"{base}/#/")
        pg.wait_for_selector("tr.case-row.selected")
        assert pg.get_attribute("tr.case-row.selected", "data-case") == CASE

        # the case list: Enter opens the gallery, "unidentified" first, its first cell selected
        keys.press("Enter")
        pg.wait_for_selector(".tile.selected")
        unidentified = pg.eval_on_selector_all('.group[data-group="unidentified"] .tile',
                                               "els => els.map(e => Number(e.dataset.cellId))")
        assert unidentified and unidentified[0] == _selected(pg)
        tiles = pg.eval_on_selector_all(".tile", "els => els.map(e => [Number(e.dataset.cellId), e.dataset.label])")
        order = [cid for cid, _ in tiles]
        label_of = dict(tiles)

        # every unidentified cell: Enter confirms; class keys relabel some; x marks one as artefact
        relabelled: dict[int, str] = {}
        for i, cid in enumerate(unidentified):
            want = RELABEL_AT.get(i)
            if want and label_of[cid] == want:
                want = "basophil"
            key = _key_for(cfg, want) if want else ("x" if i == ARTEFACT_AT else "Enter")
            if want or i == ARTEFACT_AT:
                relabelled[cid] = want or "artefact"
            nxt = order.index(cid) + 1
            _answer(pg, keys, key, cid, order[nxt] if nxt < len(order) else None)
        assert pg.inner_text("#case-unidentified").startswith("0 ")
        t_answers = time.perf_counter() - t0

        # delete one detection (the selection is now on the first cell after the unidentified group)
        deleted = _selected(pg)
        keys.press("Delete")
        pg.wait_for_selector(f'.tile.deleted[data-cell-id="{deleted}"]')

        # o opens the selected cell at its place in the slide
        opened = _selected(pg)
        keys.press("o")
        pg.wait_for_selector(f'#slide-svg polygon.cell.selected[data-cell-id="{opened}"]')
        slide_id = int(pg.evaluate("location.hash.split('/')[2]"))
        n_before = pg.locator("#slide-svg polygon.cell").count()

        # d: draw a missed cell with the keyboard crosshair (arrows move it, Space sets a point), Enter, class key
        keys.press("d")
        pg.wait_for_selector("#statusline.active")
        keys.press("Shift+ArrowLeft", 6)
        for arrow in ("Shift+ArrowRight", "Shift+ArrowDown", "Shift+ArrowLeft", None):
            keys.press(" ")
            if arrow:
                keys.press(arrow, 2)
        keys.press("Enter")
        pg.wait_for_selector("#new-cell-class")
        keys.press(_key_for(cfg, "monocyte"))
        pg.wait_for_function(f"document.querySelectorAll('#slide-svg polygon.cell').length === {n_before + 1}")
        cells = {c["id"]: c for c in httpx.get(f"{base}/api/slides/{slide_id}").json()["cells"]}
        (drawn,) = [c for c in cells.values() if c["origin"] == "person"]
        assert drawn["label"] == "monocyte" and len(drawn["polygon"]) == 4

        # v: move a vertex of the opened cell (Tab picks the vertex, arrows move it, Enter saves) ...
        keys.press("Escape")  # drop the selection of the drawn cell
        for _ in range(len(cells) + 1):  # n: next cell, until the opened one is selected again
            keys.press("n")
            if pg.get_attribute("#slide-svg polygon.cell.selected", "data-cell-id") == str(opened):
                break
        else:
            raise AssertionError(f"n never selected cell {opened}")
        before_poly = cells[opened]["polygon"]
        keys.press("v")
        pg.wait_for_selector("circle.handle.active")
        keys.press("Tab")
        keys.press("Shift+ArrowRight", 2)
        keys.press("Enter")
        moved_poly = _wait_for(lambda: next(c for c in httpx.get(f"{base}/api/slides/{slide_id}").json()["cells"]
                                            if c["id"] == opened)["polygon"], lambda poly: poly != before_poly)
        assert moved_poly != before_poly

        # ... and undo it (u)
        keys.press("u")
        pg.wait_for_selector(".toast:has-text('Undone')")
        after = next(c for c in httpx.get(f"{base}/api/slides/{slide_id}").json()["cells"] if c["id"] == opened)
        assert after["polygon"] == before_poly

        # g: back to the gallery; Tab to "Sign off" and Enter
        keys.press("g")
        pg.wait_for_selector(".tile.selected")
        pg.wait_for_selector("#sign-button")
        tabs_to_sign = keys.tab_to("sign-button")
        keys.press("Enter")
        _name_dialog_if_asked(pg, keys)
        pg.wait_for_selector("#reopen-button")
        t_review = time.perf_counter() - t0

        # the report opens from the case bar (Tab to it, Enter: a new tab) and names the signer
        tabs_to_report = keys.tab_to("report-link")
        with pg.context.expect_page() as popup:
            keys.press("Enter")
        report = popup.value
        report.wait_for_load_state()
        assert REVIEWER in report.inner_text("body")
        report.close()

        log.info("keyboard review of %d cells (%d unidentified) on %d fields: %d keystrokes (%d Tabs to sign off, "
                 "%d to the report); unidentified answered in %.1f s, whole review to sign-off %.1f s",
                 start["cells"], len(unidentified), len(start["slides"]), keys.n, tabs_to_sign, tabs_to_report,
                 t_answers, t_review)

        # the API: signed by that name, nothing unidentified, every kind of action recorded
        summary = httpx.get(f"{base}/api/cases/{CASE}").json()
        assert summary["status"] == "signed" and summary["signed_by"] == REVIEWER
        assert summary["unidentified"] == 0
        assert all(not c["unidentified"] for s in summary["slides"]
                   for c in httpx.get(f"{base}/api/slides/{s['id']}").json()["cells"])
        events = httpx.get(f"{base}/api/cases/{CASE}/events").json()
        kinds = {e["kind"] for e in events}
        assert {"label", "confirm", "delete", "add", "polygon", "undo", "sign"} <= kinds, kinds
        assert {e["who"] for e in events} == {REVIEWER}
        final = {c["id"]: c for g in httpx.get(f"{base}/api/cases/{CASE}/gallery").json()["groups"] for c in g["cells"]}
        for cid, label in relabelled.items():
            assert final[cid]["label"] == label
        assert deleted not in final  # the gallery leaves deleted cells out
