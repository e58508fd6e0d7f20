"""`bloodsmear.io.atomic_path`: a file appears whole or not at all, with the usual mode."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from bloodsmear.io import atomic_path, write_text_atomic


def test_written_file_has_the_umask_mode_and_no_temp_is_left(tmp_path):
    old = os.umask(0o027)
    try:
        dest = write_text_atomic(tmp_path / "a" / "x.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert [p.name for p in dest.parent.iterdir()] == ["x.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    dest = write_text_atomic(tmp_path / "x.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert dest.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_temp_names_match_what_a_resumed_run_cleans_and_never_clash(tmp_path):
    seen = []

    def write(k):
        for i in range(50):
            with atomic_path(tmp_path / "same.json") as tmp:
                seen.append(tmp.name)
                tmp.write_text(f"{k}-{i}")

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 200  # every temp file its own
    assert all(n.startswith(".same.json.") and ".part" in n for n in seen)  # run_folder.clean_temp_files' ".*.part*"
    assert [p.name for p in tmp_path.iterdir()] == ["same.json"]


def test_a_stale_temp_of_the_same_name_is_not_reused(tmp_path, monkeypatch):
    from bloodsmear import io as bio

    monkeypatch.setattr(bio, "_tmp_counter", iter([7, 7, 8]))
    stale = tmp_path / f".x.txt.{os.getpid()}-{threading.get_ident()}-7.part.txt"
    stale.write_text("stale")
    write_text_atomic(tmp_path / "x.txt", "new")
    assert stale.read_text() == "stale" and (tmp_path / "x.txt").read_text() == "new"
