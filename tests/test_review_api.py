"""The review server's API (docs/review-api.md) through FastAPI's TestClient: reads, writes, conflicts,
security (localhost, token, CSRF, origin, body size, paths outside OUT_DIR) and the corrected exports."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pycocotools.coco import COCO

from bloodsmear.data.cvat import read_cvat
from bloodsmear.experiments.learn_data import read_labelled
from bloodsmear.review.app import create_app
from bloodsmear.review.demo import make_demo_out_dir

LOCAL = "http://127.0.0.1:8765"


@pytest.fixture
def out_dir(tmp_path) -> Path:
    return make_demo_out_dir(tmp_path, cells_per_field=8)


@pytest.fixture
def client(out_dir) -> TestClient:
    return TestClient(create_app(out_dir), base_url=LOCAL)


def _h(client: TestClient, who: str = "ana") -> dict:
    return {"X-Reviewer": who, "X-CSRF-Token": client.get("/api/config").json()["csrf_token"]}


def _slide(client: TestClient) -> dict:
    case = client.get("/api/cases").json()[0]["name"]
    return client.get(f"/api/slides/{client.get(f'/api/cases/{case}').json()['slides'][0]['id']}").json()


def test_reads_cases_slides_gallery_media(client):
    cases = client.get("/api/cases").json()
    assert [c["name"] for c in cases] == ["demo-case"] and cases[0]["status"] == "new" and cases[0]["cells"] == 16
    sl = _slide(client)
    assert sl["width"] == 640 and len(sl["cells"]) == 8 and sl["next"] is not None and sl["prev"] is None
    groups = client.get("/api/cases/demo-case/gallery").json()["groups"]
    assert groups[0]["label"] == "unidentified" and all(c["unidentified"] for c in groups[0]["cells"])
    for g in groups[1:]:
        scores = [c["score"] for c in g["cells"]]
        flagged = [c["flagged"] for c in g["cells"]]
        assert flagged == sorted(flagged, reverse=True)  # flagged first ...
    r = client.get(sl["preview"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    assert client.get(sl["cells"][0]["crop"]).content[:2] == b"\xff\xd8"
    assert client.get("/").text.count(client.get("/api/config").json()["csrf_token"]) == 1
    assert client.get("/static/app.js").status_code == 200


def test_relabel_round_trip_conflict_and_locked(client):
    h = _h(client)
    cell = _slide(client)["cells"][0]
    r = client.post(f"/api/cells/{cell['id']}/label", json={"label": "eosinophil", "version": cell["version"]}, headers=h)
    assert r.status_code == 200 and r.json()["cell"]["label"] == "eosinophil" and r.json()["cell"]["version"] == 2
    assert any(row["label"] == "eosinophil" for row in r.json()["differential"]["group"])
    r = client.post(f"/api/cells/{cell['id']}/label", json={"label": "basophil", "version": 1}, headers=_h(client, "ben"))
    assert r.status_code == 409 and r.json()["current"]["label"] == "eosinophil"
    assert client.post(f"/api/cells/{cell['id']}/label", json={"label": "dragon", "version": 2}, headers=h).status_code == 422
    assert client.post(f"/api/cells/{cell['id']}/label", json={"label": "monocyte", "version": 2, "extra": 1},
                       headers=h).status_code == 422
    assert client.post("/api/cells/99999/confirm", json={"version": 1}, headers=h).status_code == 404
    r = client.post("/api/cases/demo-case/sign", json={}, headers=h)
    assert r.status_code == 409 and r.json()["unidentified"] > 0
    for c in client.get("/api/cases/demo-case/gallery").json()["groups"][0]["cells"]:
        assert client.post(f"/api/cells/{c['id']}/confirm", json={"version": c["version"]}, headers=h).status_code == 200
    assert client.post("/api/cases/demo-case/sign", json={}, headers=h).json()["status"] == "signed"
    assert client.post(f"/api/cells/{cell['id']}/label", json={"label": "monocyte", "version": 2}, headers=h).status_code == 423
    assert client.post("/api/cases/demo-case/reopen", json={"reason": "typo"}, headers=h).json()["status"] == "in review"


def test_writes_need_reviewer_and_csrf_and_same_origin(client):
    cell = _slide(client)["cells"][0]
    url, body = f"/api/cells/{cell['id']}/confirm", {"version": 1}
    token = client.get("/api/config").json()["csrf_token"]
    assert client.post(url, json=body, headers={"X-Reviewer": "ana"}).status_code == 403
    assert client.post(url, json=body, headers={"X-Reviewer": "ana", "X-CSRF-Token": "wrong"}).status_code == 403
    assert client.post(url, json=body, headers={"X-CSRF-Token": token}).status_code == 422
    assert client.post(url, json=body, headers={**_h(client), "Origin": "http://evil.example"}).status_code == 403
    big = {"polygon": [[1.0, 1.0]] * 100000, "version": 1}
    assert client.post(f"/api/cells/{cell['id']}/polygon", json=big, headers=_h(client)).status_code == 413
    assert client.post(url, json=body, headers={**_h(client), "Origin": LOCAL}).status_code == 200


def test_loopback_only_without_token_and_token_required_elsewhere(out_dir):
    assert TestClient(create_app(out_dir), base_url="http://evil.example").get("/api/cases").status_code == 403
    app = create_app(out_dir, host="0.0.0.0")
    token = app.state.token
    assert token
    c = TestClient(app, base_url="http://192.168.1.5:8765")
    assert c.get("/api/cases").status_code == 401
    assert c.get("/api/cases", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.get("/api/cases", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    r = c.get(f"/?token={token}")
    assert r.status_code == 200 and "bloodsmear_token" in r.headers["set-cookie"]
    assert c.get("/api/cases").status_code == 200  # the cookie now carries it


def test_nothing_outside_out_dir_is_served(client, out_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (out_dir / "link_out").symlink_to(secret)
    (out_dir / "dir_out").symlink_to(tmp_path, target_is_directory=True)
    (out_dir / "inside.txt").write_text("ok")
    (out_dir / "link_in").symlink_to(out_dir / "inside.txt")
    assert client.get("/files/inside.txt").text == "ok"
    assert client.get("/files/link_in").text == "ok"
    for bad in ["../secret.txt", "%2e%2e/secret.txt", "..%2fsecret.txt", "%2e%2e%2fsecret.txt", "link_out",
                "dir_out/secret.txt", "/etc/passwd", "%2fetc%2fpasswd", "review.sqlite", ".hidden", "..\\secret.txt",
                "results.json%00.png"]:
        r = client.get(f"/files/{bad}")
        assert r.status_code == 404 and "secret" != r.text, bad
    assert client.get("/static/../review.sqlite").status_code == 404
    assert client.get("/static/%2e%2e/app.py").status_code == 404


def test_exports_apply_the_corrections(client, out_dir, tmp_path):
    h = _h(client)
    cells = _slide(client)["cells"]
    name = _slide(client)["name"]
    client.post(f"/api/cells/{cells[0]['id']}/label", json={"label": "eosinophil", "version": 1}, headers=h)
    client.post(f"/api/cells/{cells[1]['id']}/delete", json={"version": 1}, headers=h)
    poly = [[300.0, 200.0], [340.0, 200.0], [340.0, 240.0], [300.0, 240.0]]
    assert client.post(f"/api/slides/{cells[0]['slide_id']}/cells", json={"polygon": poly, "label": "basophil"},
                       headers=h).status_code == 201
    xml = tmp_path / "annotations.xml"
    xml.write_bytes(client.get("/api/cases/demo-case/export?format=cvat").content)
    im = next(i for i in read_cvat(xml).images if i.name == Path(name).name or str(i.path).endswith(name))
    assert len(im.cells) == 8 and im.cells[0].label == "eosinophil" and im.cells[-1].label == "basophil"
    coco_path = tmp_path / "coco.json"
    coco_path.write_bytes(client.get("/api/cases/demo-case/export?format=coco").content)
    coco = COCO(str(coco_path))
    assert len(coco.getAnnIds()) == 16 and {c["name"] for c in coco.loadCats(coco.getCatIds())} >= {"eosinophil", "basophil"}
    doc = client.get("/api/cases/demo-case/export?format=paper-json").json()
    assert doc["run"]["review"]["cases"][0]["name"] == "demo-case"
    assert "total" in client.get("/api/cases/demo-case/export?format=csv").text.lower()
    z = zipfile.ZipFile(io.BytesIO(client.get("/api/cases/demo-case/export?format=crops").content))
    crops = tmp_path / "crops"
    z.extractall(crops)
    got = read_labelled([crops])
    assert "eosinophil" in got.labels and "basophil" in got.labels and len(got.labels) == 16 - 1 + 1 - sum(
        c["unidentified"] for c in client.get("/api/cases/demo-case/gallery").json()["groups"][0]["cells"])
    assert client.get("/api/cases/demo-case/export?format=pdfx").status_code == 400
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("bloodsmear-export-*"))  # temp folders removed


def test_report_follows_the_review_and_renders_pdf(client, tmp_path):
    from bloodsmear.report.render import pdf_page_png

    h = _h(client)
    cell = _slide(client)["cells"][0]
    client.post(f"/api/cells/{cell['id']}/label", json={"label": "blast_cell", "version": 1}, headers=h)
    html = client.get("/api/cases/demo-case/report.html?wbc_count=7.2").text
    assert "Blast" in html and "PRELIMINARY" in html.upper()
    r = client.get("/api/cases/demo-case/report.pdf")
    assert r.status_code == 200 and r.content[:5] == b"%PDF-"
    (tmp_path / "r.pdf").write_bytes(r.content)
    page = pdf_page_png(tmp_path / "r.pdf")
    assert page.shape[0] > page.shape[1] > 300 and page.std() > 5  # an A4 page with something on it


def test_cli_export_and_report(out_dir, tmp_path):
    from typer.testing import CliRunner

    from bloodsmear.cli.main import app

    runner = CliRunner()
    r = runner.invoke(app, ["export", str(out_dir), "--format", "coco", "--out", str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    assert COCO(str(tmp_path / "x" / "coco.json")).getAnnIds()
    r = runner.invoke(app, ["report", str(out_dir), "--out", str(tmp_path / "rep"), "--wbc-count", "6"])
    assert r.exit_code == 0 and (tmp_path / "rep" / "report-demo-case.html").is_file()
    r = runner.invoke(app, ["export", str(out_dir), "--format", "nope"])
    assert r.exit_code == 2 and "unknown export format" in r.output
    r = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "not a folder" in r.output
