"""The review web app over one analyze output folder (FastAPI; API in docs/review-api.md; the page is
`review/static/`, served from the package, no build step).

    app = create_app(out_dir)                     # SQLite store OUT_DIR/review.sqlite
    app = create_app(out_dir, db_url="postgresql://...", host="0.0.0.0")   # token required (app.state.token)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi import Body, FastAPI, Header, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from bloodsmear.classes import FINE_CLASSES, GROUP_CLASSES, REVIEW_KINDS
from bloodsmear.errors import BloodsmearError, InputError
from bloodsmear.outputs.overlay import REVIEW_COLOUR_HEX, class_colour_hex
from bloodsmear.review.exports import EXPORT_FORMATS, export
from bloodsmear.review.media import Media
from bloodsmear.review.reporting import case_report
from bloodsmear.report.render import render_html, write_pdf
from bloodsmear.review.security import AccessGuard, is_loopback, new_token, safe_file
from bloodsmear.review.session import ReviewRun, ValidationError, conflict_body
from bloodsmear.review.store import ConflictError, LockedError, NotFoundError

STATIC_DIR = Path(__file__).parent / "static"
MAX_NAME = 128
#: Default labelling keys (the page lets a reviewer remap them).
DEFAULT_KEYS = {"1": "neutrophil", "2": "lymphocyte", "3": "monocyte", "4": "eosinophil", "5": "basophil",
                "6": "ig", "7": "band_cell", "8": "segmented_neutrophil", "9": "erythroblast", "0": "blast_cell",
                "q": "myelocyte", "w": "metamyelocyte", "e": "promyelocyte", "r": "platelet",
                "x": "artefact", "z": "smudge_cell"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabelBody(_Body):
    label: str = Field(max_length=64)
    version: int


class VersionBody(_Body):
    version: int


class PolygonBody(_Body):
    polygon: list[list[float]]
    version: int


class NewCellBody(_Body):
    polygon: list[list[float]]
    label: str = Field(max_length=64)


class ReopenBody(_Body):
    reason: str = Field(max_length=1000)


def _who(x_reviewer: str | None) -> str:
    who = (x_reviewer or "").strip()
    if not who or len(who) > MAX_NAME or any(ord(ch) < 32 for ch in who):
        raise ValidationError(f"X-Reviewer header: the reviewer's name (1-{MAX_NAME} printable characters) is needed")
    return who


def create_app(out_dir: str | Path, *, db_url: str | None = None, host: str = "127.0.0.1", token: str | None = None,
               images: str | Path | None = None) -> FastAPI:
    """The app; bound to a non-loopback `host` it requires `token` (made when None: `app.state.token`)."""
    out_dir = Path(out_dir)
    run = ReviewRun.open(out_dir, db_url=db_url, images=images)
    media = Media(out_dir, (run.meta.get("pipeline") or {}).get("crop_frame_rbc"))
    token = None if is_loopback(host) else (token or new_token())
    csrf = new_token()
    app = FastAPI(title="bloodsmear review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.run, app.state.token, app.state.csrf, app.state.media = run, token, csrf, media
    app.add_middleware(AccessGuard, csrf_token=csrf, token=token)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(BloodsmearError)
    async def _errors(_request: Request, err: BloodsmearError):
        if isinstance(err, ConflictError):
            return JSONResponse(conflict_body(err, run), status_code=409)
        status = {NotFoundError: 404, LockedError: 423, ValidationError: 422, InputError: 404}
        code = next((v for k, v in status.items() if isinstance(err, k)), 400)
        return JSONResponse({"detail": str(err)}, status_code=code)

    # ------------------------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("__CSRF_TOKEN__", csrf), headers={"Cache-Control": "no-store"})

    @app.get("/api/config")
    def config() -> dict:
        return {"csrf_token": csrf, "classes": run.classes, "fine_classes": list(FINE_CLASSES),
                "group_classes": list(GROUP_CLASSES), "special": list(REVIEW_KINDS),
                "model_classes": run.model_classes,
                "keymap": {k: v for k, v in DEFAULT_KEYS.items() if v in run.classes},
                "colours": {c: class_colour_hex(c) for c in run.classes}, "flag_colour": REVIEW_COLOUR_HEX,
                "review_threshold": (run.meta.get("pipeline") or {}).get("review_threshold"),
                "out_dir": out_dir.resolve().name, "export_formats": list(EXPORT_FORMATS)}

    # ------------------------------------------------------------------------------------ reading
    @app.get("/api/cases")
    def cases() -> list[dict]:
        return run.case_summaries()

    @app.get("/api/cases/{case:path}/gallery")
    def gallery(case: str) -> dict:
        return run.gallery(case)

    @app.get("/api/cases/{case:path}/differential")
    def differential(case: str) -> dict:
        return run.case_detail(case)["differential"]

    @app.get("/api/cases/{case:path}/events")
    def events(case: str) -> list[dict]:
        return run.events(case)

    @app.get("/api/cases/{case:path}/export")
    def export_case(case: str, format: str = "cvat", level: str = "fine"):  # noqa: A002 - the API's name
        tmp = Path(tempfile.mkdtemp(prefix="bloodsmear-export-"))
        cleanup = BackgroundTask(shutil.rmtree, tmp, ignore_errors=True)
        try:
            out = export(run, format, tmp, case=case, level=level, media=media)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        stem = f"{case.replace('/', '_')}-{format}"
        if out.is_dir():
            archive = shutil.make_archive(str(tmp / stem), "zip", root_dir=out)
            return FileResponse(archive, filename=f"{stem}.zip", background=cleanup)
        return FileResponse(out, filename=f"{stem}{out.suffix}", background=cleanup)

    @app.get("/api/cases/{case:path}/report.html", response_class=HTMLResponse)
    def report_html(case: str, wbc_count: float | None = None) -> HTMLResponse:
        return HTMLResponse(render_html(case_report(run, case, wbc_count=wbc_count, media=media)))

    @app.get("/api/cases/{case:path}/report.pdf")
    def report_pdf(case: str, wbc_count: float | None = None) -> FileResponse:
        tmp = Path(tempfile.mkdtemp(prefix="bloodsmear-report-"))
        html = render_html(case_report(run, case, wbc_count=wbc_count, media=media))
        pdf = write_pdf(html, tmp / "report.pdf")
        return FileResponse(pdf, media_type="application/pdf", filename=f"report-{case.replace('/', '_')}.pdf",
                            background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))

    @app.get("/api/cases/{case:path}")
    def case_detail(case: str) -> dict:
        return run.case_detail(case)

    @app.get("/api/slides/{slide_id}")
    def slide(slide_id: int) -> dict:
        return run.slide_view(slide_id)

    @app.get("/media/slides/{slide_id}/{which}.jpg")
    def slide_image(slide_id: int, which: str) -> FileResponse:
        if which not in ("full", "preview"):
            raise NotFoundError(f"no image {which!r}")
        return FileResponse(media.slide_file(run.store.slide(slide_id), which), media_type="image/jpeg",
                            headers={"Cache-Control": "max-age=3600"})

    @app.get("/media/cells/{cell_id}.jpg")
    def cell_image(cell_id: int) -> FileResponse:
        cell = run.store.cell(cell_id)
        return FileResponse(media.cell_file(cell, run.store.slide(cell.slide_id)), media_type="image/jpeg",
                            headers={"Cache-Control": "max-age=3600"})

    @app.get("/files/{rel:path}")
    def files(rel: str) -> FileResponse:
        return FileResponse(safe_file(out_dir, rel))

    # ------------------------------------------------------------------------------------ writing
    @app.post("/api/cells/{cell_id}/label")
    def relabel(cell_id: int, body: LabelBody, x_reviewer: str | None = Header(None)) -> dict:
        return run.relabel(cell_id, body.label, version=body.version, who=_who(x_reviewer))

    @app.post("/api/cells/{cell_id}/confirm")
    def confirm(cell_id: int, body: VersionBody, x_reviewer: str | None = Header(None)) -> dict:
        return run.confirm(cell_id, version=body.version, who=_who(x_reviewer))

    @app.post("/api/cells/{cell_id}/delete")
    def delete(cell_id: int, body: VersionBody, x_reviewer: str | None = Header(None)) -> dict:
        return run.delete(cell_id, version=body.version, who=_who(x_reviewer))

    @app.post("/api/cells/{cell_id}/restore")
    def restore(cell_id: int, body: VersionBody, x_reviewer: str | None = Header(None)) -> dict:
        return run.restore(cell_id, version=body.version, who=_who(x_reviewer))

    @app.post("/api/cells/{cell_id}/polygon")
    def polygon(cell_id: int, body: PolygonBody, x_reviewer: str | None = Header(None)) -> dict:
        return run.move(cell_id, body.polygon, version=body.version, who=_who(x_reviewer))

    @app.post("/api/slides/{slide_id}/cells", status_code=201)
    def add_cell(slide_id: int, body: NewCellBody, x_reviewer: str | None = Header(None)) -> dict:
        return run.add(slide_id, body.polygon, body.label, who=_who(x_reviewer))

    @app.post("/api/cases/{case:path}/undo")
    def undo(case: str, _body: dict = Body(default_factory=dict), x_reviewer: str | None = Header(None)) -> dict:
        return run.undo(case, who=_who(x_reviewer))

    @app.post("/api/cases/{case:path}/sign")
    def sign(case: str, _body: dict = Body(default_factory=dict), x_reviewer: str | None = Header(None)):
        who = _who(x_reviewer)
        try:
            return run.sign(case, who=who)
        except ConflictError as e:
            return JSONResponse({"detail": str(e), "unidentified": run.case_detail(case)["unidentified"]},
                                status_code=409)

    @app.post("/api/cases/{case:path}/reopen")
    def reopen(case: str, body: ReopenBody, x_reviewer: str | None = Header(None)) -> dict:
        return run.reopen(case, body.reason, who=_who(x_reviewer))

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    return app
