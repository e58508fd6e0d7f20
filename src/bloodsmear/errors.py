"""Project-wide exception types. Every error names the file (when there is one) and the problem."""

from __future__ import annotations

from pathlib import Path


class BloodsmearError(Exception):
    """Base class of every error raised on bad input."""


class InputError(BloodsmearError):
    """A file that cannot be used: undecodable image, bad XML, bad polygon..."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class UnknownLabelError(BloodsmearError, KeyError):
    """A class label that the vocabulary does not know."""

    def __init__(self, label: str, valid: list[str] | None = None, path: str | Path | None = None):
        self.label = label
        self.path = None if path is None else str(path)
        where = f"{self.path}: " if self.path else ""
        hint = f" (known: {', '.join(valid)})" if valid else ""
        super().__init__(f"{where}unknown class label {label!r}{hint}")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])
