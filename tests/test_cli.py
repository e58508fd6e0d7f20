"""The CLI as a whole: one error boundary (a user error is one `error:` line and exit 2, never a
traceback), help without type placeholders, `--version`, `models list`."""

from __future__ import annotations

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from bloodsmear import __version__
from bloodsmear.cli import common
from bloodsmear.cli.main import app

runner = CliRunner()


def _bad_inputs(tmp_path) -> list[list[str]]:
    missing = str(tmp_path / "missing")
    yaml = str(tmp_path / "missing.yaml")
    out = str(tmp_path / "out")
    return [
        ["train", yaml],
        ["classify", missing],
        ["classify", str(tmp_path), "--model", "wbc-seg-fast"],
        ["eval-classifier", "no-such-model", missing],
        ["segment", "train", yaml],
        ["bench", "grid", yaml],
        ["bench", "domains", yaml],
        ["bench", "lodo", yaml],
        ["bench", "classify", "--model", "no-such-model", "--n", "2"],
        ["bench", "crop", missing],
        ["bench", "stages", missing, "--pipeline", "no-such-pipeline"],
        ["analyze", missing, "--out", out, "--pipeline", "no-such-pipeline"],
        ["evaluate", missing],
        ["data", "summary", missing],
        ["crop", "pbc", missing, out],
        ["crop", "cells", missing, out],
        ["adapt", "--model", "no-such-model", "--target", missing, "--out", out],
        ["insight", "tsne", "no-such-model", missing],
        ["complexity", "resnet9000", "--no-timing"],
    ]


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    for args in _bad_inputs(tmp_path):
        r = runner.invoke(app, args)
        errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
        assert r.exit_code == 2, (args, r.exit_code, r.output, r.exception)
        assert len(errors) == 1, (args, r.stderr)
        assert "Traceback" not in r.output and "Traceback" not in r.stderr, args


def test_wrong_kind_on_the_command_line_names_the_kind(tmp_path):
    r = runner.invoke(app, ["eval-classifier", "wbc-maskrcnn", str(tmp_path)])
    assert r.exit_code == 2 and "kind 'maskrcnn' (config.json), but a classifier is expected" in r.stderr


def _all_commands(cmd, path=()):
    from typer.core import TyperGroup

    yield path
    if isinstance(cmd, TyperGroup):  # the root loads its sub-commands lazily: ask it for each
        ctx = typer.Context(cmd)
        for name in cmd.list_commands(ctx):
            yield from _all_commands(cmd.get_command(ctx, name), path + (name,))


def test_help_of_every_command_has_no_placeholders():
    paths = list(_all_commands(get_command(app)))
    assert ("segment", "train") in paths and ("bench", "analyze") in paths and ("insight", "gradcam") in paths
    for path in paths:
        r = runner.invoke(app, [*path, "--help"], terminal_width=160)
        assert r.exit_code == 0, (path, r.output)
        for bad in ("<bool>", "<list", "{", "<int>", "<str>", "<path>"):
            assert bad not in r.output, (path, bad, r.output)


def test_every_command_summary_is_one_line_so_listings_show_no_wrapping_breaks():
    """A group's listing shows each command's first help paragraph as written: a docstring wrapped over
    lines there showed its breaks (and runs of spaces) in `bloodsmear segment --help`."""
    root = get_command(app)
    for path in _all_commands(root):
        cmd = root
        for name in path:
            cmd = cmd.get_command(typer.Context(cmd), name)
        first = (cmd.help or "").strip().split("\n\n")[0]
        assert "\n" not in first, (path, first)
    r = runner.invoke(app, ["segment", "--help"])
    assert r.exit_code == 0 and "Train a segmenter" in r.output


def test_help_names_values_and_arguments_plainly():
    r = runner.invoke(app, ["classify", "--help"], terminal_width=160)
    assert "[OPTIONS] INPUTS..." in r.output and "INTEGER" in r.output


def test_version_option_and_command():
    for args in (["--version"], ["version"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0 and r.stdout.strip() == __version__


def test_models_list_shows_every_model_and_pipeline_uncut_at_80_columns(monkeypatch):
    monkeypatch.setattr(common.console, "width", 80)
    r = runner.invoke(app, ["models", "list"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for name, kind in [("pbc-mobilenetv2", "classifier"), ("pbc-screen-stain", "classifier"),
                       ("pbc-lisc-dann", "classifier"), ("wbc-seg-fast", "fast-unet"), ("wbc-maskrcnn", "maskrcnn"),
                       ("default", "pipeline"), ("maskrcnn", "pipeline")]:
        assert any(f" {name} " in line and kind in line for line in lines), (name, r.stdout)
    assert "macro F1" in r.stdout and "AP50" in r.stdout


@pytest.mark.parametrize("args", [["models", "list", "--json"]])
def test_models_list_json_has_kinds(args):
    import json

    r = runner.invoke(app, args)
    d = json.loads(r.stdout.strip().splitlines()[-1])
    kinds = {m["name"]: m["kind"] for m in d["models"]}
    assert kinds["wbc-seg-fast"] == "fast-unet" and kinds["pbc-lisc-dann"] == "classifier"
    assert {p["name"] for p in d["pipelines"]} >= {"default", "maskrcnn"}


def test_top_level_help_lines_match_each_commands_own_and_load_nothing():
    """`bloodsmear --help` lists every command from cli.main.LAZY_COMMANDS without importing them; the
    listed line must be the command's own first help line, and `--version` must not load torch."""
    import subprocess
    import sys

    from bloodsmear.cli.main import LAZY_COMMANDS, load_command

    for name, (_, _, line) in LAZY_COMMANDS.items():
        cmd = load_command(name)
        assert cmd.get_short_help_str(limit=500) == line, name
    group = get_command(app)
    assert set(LAZY_COMMANDS) <= set(group.list_commands(typer.Context(group)))
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom bloodsmear.cli.main import app\n"
            "r = CliRunner().invoke(app, ['--version']); assert r.exit_code == 0, r.output\n"
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0 and 'analyze' in r.output\n"
            "assert 'torch' not in sys.modules, 'torch loaded for --help'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
