"""The review store on SQLite and PostgreSQL: events, optimistic concurrency (two reviewers), undo, sign-off."""

from __future__ import annotations

import threading

import pytest

from bloodsmear.review.demo import make_demo_out_dir
from bloodsmear.review.session import ReviewRun, ValidationError
from bloodsmear.review.store import ConflictError, LockedError


@pytest.fixture
def run(tmp_path, review_db) -> ReviewRun:
    return ReviewRun.open(make_demo_out_dir(tmp_path, cells_per_field=6), db_url=review_db)


def _first(run: ReviewRun):
    return run.store.cells(case_id=run.store.cases(run.run_id)[0].id)[0]


def test_import_once_and_model_answers_kept(run, review_db, tmp_path):
    cells = run.store.cells()
    assert len(cells) == 12 and all(c.origin == "model" and c.version == 1 for c in cells)
    again = ReviewRun.open(run.out_dir, db_url=review_db)
    assert again.run_id == run.run_id and len(again.store.cells()) == 12
    c = _first(run)
    run.relabel(c.id, "eosinophil", version=1, who="ana")
    row = run.store.cell(c.id)
    assert row.label == "eosinophil" and row.model["class_name"] == c.label  # the model's answer stays
    assert (run.out_dir / "results.json").read_bytes() == (tmp_path / "out" / "results.json").read_bytes()


def test_changed_results_json_is_refused(run, review_db):
    p = run.out_dir / "results.json"
    p.write_text(p.read_text().replace('"width": 640', '"width": 641', 1))
    with pytest.raises(Exception, match="results.json changed"):
        ReviewRun.open(run.out_dir, db_url=review_db)


def test_every_edit_is_an_event_with_before_and_after(run):
    c = _first(run)
    case = run.store.cases(run.run_id)[0]
    run.relabel(c.id, "monocyte", version=1, who="ana")
    run.delete(c.id, version=2, who="ana")
    ev = run.events(case.name)
    assert [e["kind"] for e in ev] == ["delete", "label"]
    assert ev[1]["before"]["label"] == c.label and ev[1]["after"]["label"] == "monocyte"
    assert ev[0]["after"]["deleted"] is True and all(e["who"] == "ana" and e["applied"] for e in ev)


def test_two_reviewers_same_cell_second_gets_conflict_nothing_lost(run):
    c = _first(run)
    run.relabel(c.id, "lymphocyte", version=1, who="ana")
    with pytest.raises(ConflictError) as err:
        run.relabel(c.id, "basophil", version=1, who="ben")  # ben loaded version 1 too
    assert err.value.current.label == "lymphocyte" and err.value.current.updated_by == "ana"
    assert run.store.cell(c.id).label == "lymphocyte"
    ev = run.events(run.store.cases(run.run_id)[0].name)
    refused = [e for e in ev if not e["applied"]]
    assert len(refused) == 1 and refused[0]["who"] == "ben" and refused[0]["after"]["label"] == "basophil"


def test_concurrent_writers_exactly_one_wins(run):
    c = _first(run)
    results: list[str] = []

    def write(who: str) -> None:
        try:
            run.relabel(c.id, "monocyte" if who == "a" else "basophil", version=1, who=who)
            results.append("ok")
        except ConflictError:
            results.append("conflict")
    threads = [threading.Thread(target=write, args=(w,)) for w in ("a", "b", "c", "d")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results) == ["conflict"] * 3 + ["ok"]
    assert run.store.cell(c.id).version == 2


def test_undo_reverts_own_last_edit_and_is_recorded(run):
    c = _first(run)
    case = run.store.cases(run.run_id)[0].name
    run.relabel(c.id, "monocyte", version=1, who="ana")
    out = run.undo(case, who="ana")
    assert out["cell"]["label"] == c.label and out["cell"]["state"] == "model"
    assert run.events(case)[0]["kind"] == "undo"
    with pytest.raises(ConflictError):
        run.undo(case, who="ana")  # nothing left of ana's
    added = run.add(c.slide_id, [[1, 1], [30, 1], [30, 30]], "lymphocyte", who="ben")["cell"]
    assert run.undo(case, who="ben")["cell"]["deleted"] is True and added["origin"] == "person"


def test_sign_refused_while_unidentified_then_read_only_and_reopen_recorded(run):
    case = run.store.cases(run.run_id)[0]
    flagged = [c for c in run.store.cells(case_id=case.id) if c.unidentified]
    assert flagged
    with pytest.raises(ConflictError, match="unidentified"):
        run.sign(case.name, who="ana")
    for c in flagged:
        run.confirm(c.id, version=c.version, who="ana")
    s = run.sign(case.name, who="ana")
    assert s["status"] == "signed" and s["signed_by"] == "ana" and s["signed_at"]
    c = _first(run)
    with pytest.raises(LockedError):
        run.relabel(c.id, "monocyte", version=run.store.cell(c.id).version, who="ana")
    with pytest.raises(ValidationError):
        run.reopen(case.name, "  ", who="ben")
    assert run.reopen(case.name, "wrong patient", who="ben")["status"] == "in review"
    kinds = [(e["kind"], e["who"], e["note"]) for e in run.events(case.name)[:2]]
    assert kinds == [("reopen", "ben", "wrong patient"), ("sign", "ana", None)]


def test_writes_validated(run):
    c = _first(run)
    with pytest.raises(ValidationError, match="unknown class"):
        run.relabel(c.id, "dragon", version=1, who="ana")
    for bad in ([[0, 0], [1, 1]], [[0, 0], [10, 0], [10, 10000]], [[-1, 0], [10, 0], [10, 10]], "nope",
                [[0, 0, 0], [1, 1, 1], [2, 2, 2]]):
        with pytest.raises(ValidationError, match="polygon"):
            run.move(c.id, bad, version=1, who="ana")
    assert run.store.cell(c.id).version == 1  # nothing written


def test_differential_follows_corrections(run):
    case = run.store.cases(run.run_id)[0]
    d0 = run.case_detail(case.name)["differential"]
    c = _first(run)
    d1 = run.relabel(c.id, "artefact", version=1, who="ana")["differential"]
    assert d1["total"] == d0["total"] - 1 and d1["excluded"]["artefact"] == 1
    d2 = run.add(c.slide_id, [[1, 1], [30, 1], [30, 30]], "basophil", who="ana")["differential"]
    assert d2["total"] == d1["total"] + 1
    assert abs(sum(r["percent"] for r in d2["group"]) - 100) < 0.5


def test_a_database_of_another_schema_version_is_one_clear_error(run, review_db):
    from sqlalchemy import update as sa_update

    from bloodsmear.errors import BloodsmearError
    from bloodsmear.review.store import SchemaRow

    with run.store.engine.begin() as conn:
        conn.execute(sa_update(SchemaRow).values(version=99))
    with pytest.raises(BloodsmearError, match="schema version 99"):
        ReviewRun.open(run.out_dir, db_url=review_db)
