"""The `bloodsmear` command. Sub-command groups live in sibling modules; each is imported only when one
of its commands runs or shows its help (lazy sub-commands, as click documents them), so `bloodsmear --help` and
`--version` answer at once instead of loading torch, timm and the models first. Every group is a
`cli.common.App`, so one error boundary covers every command (a `BloodsmearError` is one `error: ...`
line on stderr and exit code 2)."""

from __future__ import annotations

import importlib

import typer
from typer.core import TyperCommand

from bloodsmear import __version__
from bloodsmear.cli.common import App, Group, setup_logging

#: top-level name -> (module, "app" for a command group / "register" for commands the module adds itself,
#: the one-line help shown by `bloodsmear --help`; tests/test_cli.py checks it against the command's own).
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "analyze": ("bloodsmear.cli.analyze", "register", "Find, outline, classify and count every WBC: results.json, "
                "coco.json, annotations.xml, counts.csv, overlays/."),
    "evaluate": ("bloodsmear.cli.evaluate", "register", "Detection, segmentation and classification figures of a "
                 "pipeline against annotations."),
    "train": ("bloodsmear.cli.classifier", "register", "Train a model from a config file; re-running the same "
              "command resumes after a kill."),
    "classify": ("bloodsmear.cli.classifier", "register", "Classify single-cell images: class and probabilities "
                 "per image (bad images reported and skipped)."),
    "eval-classifier": ("bloodsmear.cli.classifier", "register", "Score a classifier: macro P/R/F1, accuracy, per "
                        "class, confusion matrix."),
    "adapt": ("bloodsmear.cli.adapt", "register", "Adapt a classifier to a lab's unlabelled images (DANN) and save "
              "a new model folder with its card."),
    "learn": ("bloodsmear.cli.learn", "register", "Fine-tune a classifier on a few cells a person labelled and save "
              "a lab model folder with its card."),
    "review": ("bloodsmear.cli.review", "register", "Review, correct and sign an analyze output folder in the "
               "browser (cases, slides, gallery, report)."),
    "export": ("bloodsmear.cli.review", "register", "Export an analyze folder with the review's corrections "
               "applied: CVAT XML, COCO, paper JSON, counts CSV or labelled crops for `bloodsmear learn`."),
    "report": ("bloodsmear.cli.report", "register", "Differential report per case: counts and % at both levels "
               "with 95 % intervals, reference ranges, flags, cell images, review status and signer; HTML (and PDF)."),
    "complexity": ("bloodsmear.cli.insight", "register", "Conv/dense layers, parameters (frozen and fine-tuned), "
                   "activation memory, file size, train/inference time."),
    "insight": ("bloodsmear.cli.insight", "register", "Look inside a classifier: activation maximisation, "
                "Grad-CAM, t-SNE."),
    "data": ("bloodsmear.cli.data", "app", "Datasets: summaries and split manifests."),
    "crop": ("bloodsmear.cli.crop", "app", "Crop single-cell images (C-PBC) or annotated cells out of fields."),
    "bench": ("bloodsmear.cli.bench", "app", "Benchmarks that print figures (speed, accuracy)."),
    "models": ("bloodsmear.cli.models", "app", "Shipped models and pipelines (src/bloodsmear/zoo)."),
    "segment": ("bloodsmear.cli.segment", "app", "WBC instance segmenters: train, export, eval, card, check "
                "training masks, estimate scale."),
}


def load_command(name: str) -> TyperCommand:
    """The click command behind a top-level name (imports its module)."""
    module, attr, _ = LAZY_COMMANDS[name]
    mod = importlib.import_module(module)
    if attr == "app":
        grp = typer.main.get_group(getattr(mod, "app"))
        grp.name = name
        return grp
    holder = App()
    mod.register(holder)
    cmd = typer.main.get_group(holder).commands[name]
    return cmd


class LazyRoot(Group):
    """The root group: its sub-commands are loaded on first use; help lists them from `LAZY_COMMANDS`."""

    _listing = False

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(super().list_commands(ctx)) + [n for n in LAZY_COMMANDS if n not in self.commands]

    def get_command(self, ctx: typer.Context, name: str) -> TyperCommand | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None or name not in LAZY_COMMANDS:
            return cmd
        if self._listing:  # the root's own help: a name and its line, nothing imported
            return TyperCommand(name, help=LAZY_COMMANDS[name][2], short_help=LAZY_COMMANDS[name][2])
        cmd = load_command(name)
        self.commands[name] = cmd
        return cmd

    def format_help(self, ctx: typer.Context, formatter) -> None:  # noqa: ANN001 - click's HelpFormatter
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = App(
    name="bloodsmear",
    help="White-blood-cell differential from peripheral blood smear photos.",
    no_args_is_help=True,
    cls=LazyRoot,
)


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


def main() -> None:  # pragma: no cover
    app()
