"""The `bloodsmear` command. Sub-command groups live in sibling modules and are registered here; every
group is a `cli.common.App`, so one error boundary covers every command (a `BloodsmearError` is one
`error: ...` line on stderr and exit code 2)."""

from __future__ import annotations

import importlib

import typer

from bloodsmear import __version__
from bloodsmear.cli.common import App, setup_logging

app = App(
    name="bloodsmear",
    help="White-blood-cell differential from peripheral blood smear photos.",
    no_args_is_help=True,
)

# (module, attribute, group name or None for top-level commands registered by the module itself)
_GROUPS = [
    ("bloodsmear.cli.data", "app", "data"),
    ("bloodsmear.cli.crop", "app", "crop"),
    ("bloodsmear.cli.bench", "app", "bench"),
    ("bloodsmear.cli.models", "app", "models"),
    ("bloodsmear.cli.segment", "app", "segment"),
]
_COMMAND_MODULES = [
    "bloodsmear.cli.classifier",  # train, classify, eval-classifier
    "bloodsmear.cli.analyze",  # analyze, evaluate
    "bloodsmear.cli.adapt",  # adapt
    "bloodsmear.cli.insight",  # complexity, insight actmax/gradcam/tsne
]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    _version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                  help="Print the version and exit."),
) -> None:
    setup_logging(verbose)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def _register() -> None:
    for mod_name, attr, group in _GROUPS:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name == mod_name:
                continue  # group not built yet
            raise
        app.add_typer(getattr(mod, attr), name=group)
    for mod_name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name == mod_name:
                continue
            raise
        mod.register(app)


_register()


def main() -> None:  # pragma: no cover
    app()
