"""Shared CLI helpers: the `App` every command group is (one error boundary, plain help), logging setup,
`--json` output (one JSON object as the last line), tables."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Callable, Iterable, Sequence

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from bloodsmear.errors import BloodsmearError
from bloodsmear.inference.tta import check_tta
from bloodsmear.io import json_default

log = logging.getLogger(__name__)
console = Console(stderr=False)
err_console = Console(stderr=True)


class TqdmHandler(logging.Handler):
    """The CLI's one log handler: each record one line on stderr, written with `tqdm.write`, so a line
    printed while a progress bar runs goes above the bar instead of breaking it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
            sys.stderr.flush()  # in order with what the command prints on stdout (the --json last line)
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)


class _LevelFormatter(logging.Formatter):
    """Info lines as they are; other levels prefixed ("warning: ...", "debug: ...")."""

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        return msg if record.levelno == logging.INFO else f"{record.levelname.lower()}: {msg}"


def setup_logging(verbose: bool = False) -> None:
    """One handler on the root logger (`TqdmHandler`), replacing any there: every record printed once."""
    handler = TqdmHandler()
    handler.setFormatter(_LevelFormatter("%(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)


# ------------------------------------------------------------------ the error boundary and plain help


def _user_error(fn: Callable[[], Any]) -> Any:
    """Run `fn`; a `BloodsmearError` (bad input) becomes one `error: ...` line on stderr and exit code 2
    (the traceback only in the debug log, `--verbose`)."""
    try:
        return fn()
    except BloodsmearError as e:
        log.debug("user error", exc_info=True)
        typer.echo(f"error: {' '.join(str(e).split())}", err=True)
        raise typer.Exit(2) from None


_VALUE_NAMES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "path": "PATH", "bool": "BOOLEAN"}


def _value_name(p: object) -> str:
    """INTEGER / FLOAT / TEXT / PATH / [a|b] for an option's value (the element's, for a repeatable one)."""
    desc = getattr(p, "type_descriptor", None)
    if desc is None:
        return "VALUE"
    if desc.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices or ()) + "]"
    if desc.is_path:
        return "PATH"
    name = p.bare_type()
    name = name[5:-1] if name.startswith("list[") else name
    return _VALUE_NAMES.get(name.lower(), name.upper())


class _PlainArgument(TyperArgument):
    def display_type_rich(self, ctx: typer.Context) -> str | None:
        return None  # the name (metavar) says it: no `<list[Path]>` type column


def _plain_metavars(cmd: TyperCommand | TyperGroup) -> None:
    """Help names values as click does (INTEGER, PATH, TEXT, INPUTS...), never `<bool>`/`<list[Path]>`:
    flags show no value, an explicit `metavar=` is kept."""
    for p in cmd.params:
        if isinstance(p, TyperArgument) and not isinstance(p, _PlainArgument):
            p.__class__ = _PlainArgument
        if p.metavar is not None:
            continue
        if isinstance(p, TyperArgument):
            p.metavar = p.name.upper() + ("..." if p.nargs != 1 else "")
        elif getattr(p, "is_flag", False) or getattr(p, "count", False):
            p.metavar = ""
        else:
            p.metavar = _value_name(p)


class _Plain:
    """Mixin of `Command` and `Group`: plain metavars, `--help` shown without a type."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_metavars(self)

    def get_help_option(self, ctx: typer.Context) -> TyperOption | None:
        opt = super().get_help_option(ctx)
        if opt is not None and opt.metavar is None:
            opt.metavar = ""
        return opt


class Command(_Plain, TyperCommand):
    """A command inside the error boundary, with plain help (usage `[OPTIONS] INPUTS...`)."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                pieces.append(p.metavar if p.required else f"[{p.metavar}]")
        return pieces

    def invoke(self, ctx: typer.Context) -> Any:
        return _user_error(lambda: super(Command, self).invoke(ctx))


class Group(_Plain, TyperGroup):
    """A command group inside the error boundary (its callback and every sub-command)."""

    def invoke(self, ctx: typer.Context) -> Any:
        return _user_error(lambda: super(Group, self).invoke(ctx))


class App(typer.Typer):
    """`typer.Typer` for every bloodsmear command group: the error boundary (`BloodsmearError` -> one
    `error: ...` line, exit 2) and plain help for all its commands; no completion, no pretty tracebacks."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", Group)
        kwargs.setdefault("add_completion", False)
        kwargs.setdefault("pretty_exceptions_enable", False)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any):  # noqa: ANN201 - typer's decorator
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
                keep: Sequence[int] = ()) -> None:
    """A table on stdout; the columns in `keep` (indices) are never cut or wrapped, the others fold."""
    rows = [[_fmt(v) for v in r] for r in rows]
    t = Table(title=title)
    for i, c in enumerate(columns):
        if i in keep:
            width = max([len(str(c))] + [len(r[i]) for r in rows if i < len(r)])
            t.add_column(str(c), no_wrap=True, min_width=width)
        else:
            t.add_column(str(c), overflow="fold")
    for r in rows:
        t.add_row(*r)
    console.print(t)


def emit_json(obj: Any) -> None:
    """Print one JSON object as the last line of output (the `--json` contract)."""
    print(json.dumps(obj, default=json_default), flush=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def tta_option(value: str) -> str:
    """Typer callback of `--tta`: the mode name, or a usage error listing the valid ones."""
    try:
        return check_tta(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


SCALE_HELP = ("Red-cell scale: auto (each field's own estimate; one that is far off its folder's median, or "
              "missing, takes the median), field (each field alone), folder (the median of the folder's fields "
              "of that pixel size) or the red-cell diameter in pixels.")
TTA_HELP = "Test-time augmentation: none | flip | d8 (class probabilities averaged over the crop's mirror images / quarter turns)."
