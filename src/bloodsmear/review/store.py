"""The review store: every correction a person makes is an EVENT (who, when, which cell, before -> after) in a
database; results.json is never overwritten, so every answer of the model stays comparable with the person's.

Tables (SQLAlchemy; the same code on SQLite - a file in OUT_DIR, the default - and on PostgreSQL for a lab
server shared by several reviewers):
- `review_runs`: one analyze output folder (its absolute path and the checksum of the results.json imported);
- `review_cases`, `review_slides`: cases (a folder of fields) and their fields;
- `review_cells`: each cell's model answer (`model`, as results.json has it, never changed) and its CURRENT
  state (label, polygon, deleted, answered), a projection of the events kept in the same transaction, with a
  `version` for optimistic concurrency;
- `review_events`: the log. A write names the version it saw; if another reviewer changed the cell first,
  the write is refused (`ConflictError` with the current cell) and recorded as a not-applied event: the
  first answer stands and the second is kept in the log - nothing is lost.

Writes to a signed case raise `LockedError` until it is reopened (recorded too).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint,
                        create_engine, event, insert, inspect, select, update)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from bloodsmear.errors import BloodsmearError

DB_FILE = "review.sqlite"
SCHEMA_VERSION = 1  # raise it with every change of the tables below
EDIT_KINDS = ("label", "confirm", "delete", "restore", "polygon", "add")


class ConflictError(BloodsmearError):
    """Another reviewer changed the cell after this one loaded it."""

    def __init__(self, message: str, current: "CellRow | None" = None) -> None:
        super().__init__(message)
        self.current = current


class LockedError(BloodsmearError):
    """The case is signed: read-only until it is reopened."""


class NotFoundError(BloodsmearError):
    pass


class Base(DeclarativeBase):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class SchemaRow(Base):
    __tablename__ = "review_schema"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class RunRow(Base):
    __tablename__ = "review_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(1024), unique=True)
    results_sha: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class CaseRow(Base):
    __tablename__ = "review_cases"
    __table_args__ = (UniqueConstraint("run_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("review_runs.id"), index=True)
    name: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default="new")  # new | in review | signed
    signed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    signed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SlideRow(Base):
    __tablename__ = "review_slides"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("review_cases.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(1024))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    source: Mapped[str | None] = mapped_column(Text, nullable=True)
    rbc_px: Mapped[float | None] = mapped_column(Float, nullable=True)


class CellRow(Base):
    __tablename__ = "review_cells"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slide_id: Mapped[int] = mapped_column(ForeignKey("review_slides.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    origin: Mapped[str] = mapped_column(String(8))  # model | person
    model: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the results.json mask, never changed
    label: Mapped[str] = mapped_column(String(64))
    polygon: Mapped[list] = mapped_column(JSON)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    answered: Mapped[bool] = mapped_column(Boolean, default=False)  # a person has given or confirmed its answer
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)  # the model flagged it (its `review`), never changed
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    @property
    def unidentified(self) -> bool:
        return self.flagged and not self.answered and not self.deleted


@dataclass(frozen=True)
class Tally:
    """What the differential needs of a cell (read without its outline and model answer)."""

    label: str
    deleted: bool
    answered: bool
    flagged: bool
    slide_id: int = 0

    @property
    def unidentified(self) -> bool:
        return self.flagged and not self.answered and not self.deleted


class EventRow(Base):
    __tablename__ = "review_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("review_cases.id"), index=True)
    cell_id: Mapped[int | None] = mapped_column(ForeignKey("review_cells.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))  # label confirm delete restore polygon add undo sign reopen
    who: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    before: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    applied: Mapped[bool] = mapped_column(Boolean, default=True)
    undone_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)


@dataclass(frozen=True)
class SlideInput:
    """One analysed field to import: its case, name, size, image file and the masks of results.json."""

    case: str
    name: str
    width: int
    height: int
    source: str | None
    rbc_px: float | None
    masks: list[dict]


def default_url(out_dir: Path) -> str:
    return f"sqlite:///{(Path(out_dir) / DB_FILE).resolve()}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for `url` (sqlite:///path or postgresql://...; a bare postgresql:// URL uses psycopg 3)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        with engine.begin() as conn:
            fresh = not inspect(conn).has_table(SchemaRow.__tablename__)
            Base.metadata.create_all(conn)
            if fresh:
                conn.execute(insert(SchemaRow).values(version=SCHEMA_VERSION))
            found = conn.scalar(select(SchemaRow.version))
    except (SQLAlchemyError, ImportError, ValueError) as e:
        raise BloodsmearError(f"cannot open the review database {url.split('@')[-1]}: {e.__class__.__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from e
    if found != SCHEMA_VERSION:
        raise BloodsmearError(f"the review database {url.split('@')[-1]} has schema version {found}, this bloodsmear "
                              f"reads version {SCHEMA_VERSION}: review with another --db (or move the old file away)")
    return engine


def cell_state(cell: CellRow) -> dict:
    """What an edit event records as before/after."""
    return {"label": cell.label, "polygon": cell.polygon, "deleted": cell.deleted, "answered": cell.answered}


class Store:
    """The review database of one or more analyze folders (`key`: the folder's absolute path)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # ------------------------------------------------------------------------------------------ import
    def import_run(self, key: str, results_sha: str, slides: Iterable[SlideInput]) -> int:
        """The run's id, importing its slides and the model's cells the first time. A results.json that
        changed since (another analysis into the same folder) is an error: its reviews belong to the old one."""
        with self.session() as s, s.begin():
            run = s.scalar(select(RunRow).where(RunRow.key == key))
            if run is not None:
                if run.results_sha != results_sha:
                    raise BloodsmearError(
                        f"{key}: results.json changed since its review started (re-analysed?); its corrections "
                        "belong to the earlier results - review it with another --db, or move review.sqlite away")
                return run.id
            run = RunRow(key=key, results_sha=results_sha)
            s.add(run)
            s.flush()
            cases: dict[str, CaseRow] = {}
            for pos, sl in enumerate(slides):
                case = cases.get(sl.case)
                if case is None:
                    case = cases[sl.case] = CaseRow(run_id=run.id, name=sl.case)
                    s.add(case)
                    s.flush()
                row = SlideRow(case_id=case.id, position=pos, name=sl.name, width=sl.width, height=sl.height,
                               source=sl.source, rbc_px=sl.rbc_px)
                s.add(row)
                s.flush()
                s.add_all(CellRow(slide_id=row.id, index=i, origin="model", model=m, label=m["class_name"],
                                  polygon=m.get("vertices") or [], deleted=False, answered=False,
                                  flagged=bool(m.get("review")), version=1)
                          for i, m in enumerate(sl.masks))
            return run.id

    # ------------------------------------------------------------------------------------------ reading
    def cases(self, run_id: int) -> list[CaseRow]:
        with self.session() as s:
            return list(s.scalars(select(CaseRow).where(CaseRow.run_id == run_id).order_by(CaseRow.name)))

    def case(self, run_id: int, name: str) -> CaseRow:
        with self.session() as s:
            row = s.scalar(select(CaseRow).where(CaseRow.run_id == run_id, CaseRow.name == name))
        if row is None:
            raise NotFoundError(f"no case {name!r}")
        return row

    def slides(self, case_id: int) -> list[SlideRow]:
        with self.session() as s:
            return list(s.scalars(select(SlideRow).where(SlideRow.case_id == case_id).order_by(SlideRow.position)))

    def _by_id(self, model, row_id: int, what: str):
        with self.session() as s:
            row = s.get(model, row_id)
        if row is None:
            raise NotFoundError(f"no {what} {row_id}")
        return row

    def slide(self, slide_id: int) -> SlideRow:
        return self._by_id(SlideRow, slide_id, "slide")

    def cells(self, *, slide_id: int | None = None, case_id: int | None = None) -> list[CellRow]:
        q = select(CellRow)
        if slide_id is not None:
            q = q.where(CellRow.slide_id == slide_id)
        if case_id is not None:
            q = q.join(SlideRow, SlideRow.id == CellRow.slide_id).where(SlideRow.case_id == case_id)
        with self.session() as s:
            return list(s.scalars(q.order_by(CellRow.slide_id, CellRow.index)))

    def tallies(self, case_id: int) -> list[Tally]:
        q = (select(CellRow.label, CellRow.deleted, CellRow.answered, CellRow.flagged, CellRow.slide_id)
             .join(SlideRow, SlideRow.id == CellRow.slide_id).where(SlideRow.case_id == case_id))
        with self.session() as s:
            return [Tally(*row) for row in s.execute(q)]

    def cell(self, cell_id: int) -> CellRow:
        return self._by_id(CellRow, cell_id, "cell")

    def case_of_slide(self, slide_id: int) -> CaseRow:
        with self.session() as s:
            return s.get(CaseRow, self.slide(slide_id).case_id)  # type: ignore[return-value]

    def events(self, case_id: int) -> list[EventRow]:
        with self.session() as s:
            return list(s.scalars(select(EventRow).where(EventRow.case_id == case_id).order_by(EventRow.id.desc())))

    # ------------------------------------------------------------------------------------------ writing
    def _writable_case(self, s: Session, case_id: int) -> CaseRow:
        case = s.get(CaseRow, case_id)
        if case is None:
            raise NotFoundError(f"no case {case_id}")
        if case.status == "signed":
            raise LockedError(f"case {case.name!r} is signed by {case.signed_by}: reopen it to change anything")
        return case

    def edit(self, cell_id: int, kind: str, who: str, version: int, **change: Any) -> CellRow:
        """Apply one edit (`kind` in EDIT_KINDS less "add") to a cell if it is still at `version`; one event."""
        with self.session() as s, s.begin():
            cell = s.get(CellRow, cell_id)
            if cell is None:
                raise NotFoundError(f"no cell {cell_id}")
            case_id = s.get(SlideRow, cell.slide_id).case_id  # type: ignore[union-attr]
            case = self._writable_case(s, case_id)
            before = cell_state(cell)
            after = {**before, **change}
            res = s.execute(update(CellRow).where(CellRow.id == cell_id, CellRow.version == version).values(
                **change, version=CellRow.version + 1, updated_by=who, updated_at=_now())
                .execution_options(synchronize_session=False))
            if res.rowcount == 1:
                s.add(EventRow(case_id=case_id, cell_id=cell_id, kind=kind, who=who, before=before, after=after))
                if case.status == "new":
                    case.status = "in review"
                ok = True
            else:
                ok = False
        if not ok:
            current = self.cell(cell_id)
            with self.session() as s, s.begin():  # the refused answer stays in the log: nothing is lost
                s.add(EventRow(case_id=case_id, cell_id=cell_id, kind=kind, who=who, before=cell_state(current),
                               after={**cell_state(current), **change}, applied=False,
                               note=f"conflict: saw version {version}, cell at {current.version} "
                                    f"(changed by {current.updated_by})"))
            raise ConflictError(f"cell {cell_id} was changed by {current.updated_by} meanwhile (version "
                                f"{current.version}, you saw {version}); reload it", current)
        return self.cell(cell_id)

    def add_cell(self, slide_id: int, who: str, label: str, polygon: list) -> CellRow:
        case_id = self.slide(slide_id).case_id
        with self.session() as s, s.begin():
            case = self._writable_case(s, case_id)
            last = s.scalar(select(CellRow.index).where(CellRow.slide_id == slide_id).order_by(CellRow.index.desc()))
            row = CellRow(slide_id=slide_id, index=(last + 1) if last is not None else 0, origin="person", model=None,
                          label=label, polygon=polygon, deleted=False, answered=True, version=1, updated_by=who,
                          updated_at=_now())
            s.add(row)
            s.flush()
            s.add(EventRow(case_id=case_id, cell_id=row.id, kind="add", who=who, before=None, after=cell_state(row)))
            if case.status == "new":
                case.status = "in review"
            cell_id = row.id
        return self.cell(cell_id)

    def undo(self, case_id: int, who: str) -> tuple[CellRow, EventRow]:
        """Revert `who`'s last applied, not yet undone edit in the case (an "undo" event); `ConflictError`
        when someone else changed that cell since, `BloodsmearError` when there is nothing to undo."""
        with self.session() as s:
            ev = s.scalar(select(EventRow).where(
                EventRow.case_id == case_id, EventRow.who == who, EventRow.applied.is_(True),
                EventRow.undone_by.is_(None), EventRow.kind.in_(EDIT_KINDS)).order_by(EventRow.id.desc()))
        if ev is None:
            raise ConflictError(f"nothing of {who}'s to undo in this case")
        cell = self.cell(ev.cell_id)  # type: ignore[arg-type]
        if cell_state(cell) != ev.after:
            raise ConflictError(f"cell {cell.id} was changed by {cell.updated_by} after your edit: not undone", cell)
        target = ev.before if ev.before is not None else {**ev.after, "deleted": True}
        with self.session() as s, s.begin():
            self._writable_case(s, case_id)
            res = s.execute(update(CellRow).where(CellRow.id == cell.id, CellRow.version == cell.version).values(
                **target, version=CellRow.version + 1, updated_by=who, updated_at=_now()))
            if res.rowcount != 1:
                raise ConflictError(f"cell {cell.id} changed while undoing: not undone", cell)
            undo = EventRow(case_id=case_id, cell_id=cell.id, kind="undo", who=who, before=cell_state(cell),
                            after=target, note=f"undoes event {ev.id} ({ev.kind})")
            s.add(undo)
            s.flush()
            s.execute(update(EventRow).where(EventRow.id == ev.id).values(undone_by=undo.id))
        return self.cell(cell.id), ev

    def sign(self, case_id: int, who: str, unidentified: int) -> CaseRow:
        with self.session() as s, s.begin():
            case = self._writable_case(s, case_id)
            if unidentified:
                raise ConflictError(f"case {case.name!r}: {unidentified} unidentified cell(s) left: answer them "
                                    "before signing")
            case.status, case.signed_by, case.signed_at = "signed", who, _now()
            s.add(EventRow(case_id=case_id, kind="sign", who=who, after={"status": "signed"}))
        return self._case_by_id(case_id)

    def reopen(self, case_id: int, who: str, reason: str) -> CaseRow:
        with self.session() as s, s.begin():
            case = s.get(CaseRow, case_id)
            if case is None:
                raise NotFoundError(f"no case {case_id}")
            if case.status != "signed":
                raise ConflictError(f"case {case.name!r} is not signed")
            before = {"status": case.status, "signed_by": case.signed_by,
                      "signed_at": case.signed_at.isoformat() if case.signed_at else None}
            case.status, case.signed_by, case.signed_at = "in review", None, None
            s.add(EventRow(case_id=case_id, kind="reopen", who=who, before=before, after={"status": "in review"},
                           note=reason))
        return self._case_by_id(case_id)

    def _case_by_id(self, case_id: int) -> CaseRow:
        with self.session() as s:
            return s.get(CaseRow, case_id)  # type: ignore[return-value]
