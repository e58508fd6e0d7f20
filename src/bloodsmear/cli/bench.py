"""`bloodsmear bench ...`: benchmark commands that print figures (never timed tests)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Benchmarks that print figures (speed, accuracy).", no_args_is_help=True)

# Commands are added below by feature: crop, classify, grid, analyze, domains.
