"""The `bloodsmear` command. Sub-command groups live in sibling modules and are registered here."""

from __future__ import annotations

import importlib

import typer

from bloodsmear import __version__
from bloodsmear.cli.common import setup_logging

app = typer.Typer(
    name="bloodsmear",
    help="White-blood-cell differential from peripheral blood smear photos.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
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
