"""Reference ranges for the differential: a strict YAML file naming its source, one entry per class.

    source: "Dacie and Lewis Practical Haematology, 12th ed. ..."
    classes:
      neutrophil: {percent_low: 40, percent_high: 80, absolute_low: 2.0, absolute_high: 7.0}
      blast_cell: {note: "absent in health"}

Percent is the share of the WBC counted; absolute counts are x10^9/L. Either bound may be left out (a
one-sided range). Class names are any spelling `bloodsmear.classes.canonical` knows, stored canonical; a
class outside the report's vocabulary, a misspelt key or an inverted range is one `InputError` line naming
the file and the key. `load_ranges()` without a path is the shipped adult default.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from bloodsmear.classes import FINE_CLASSES, GROUP_CLASSES, canonical, is_known
from bloodsmear.config import StrictConfig, load_config

#: The shipped adult default.
DEFAULT_RANGES = Path(__file__).with_name("assets") / "ranges_adult.yaml"
#: Classes a range may be given for.
RANGE_CLASSES: tuple[str, ...] = tuple(sorted(set(FINE_CLASSES) | set(GROUP_CLASSES)))


class RangeEntry(StrictConfig):
    """One class's reference range (None: that bound is not given)."""

    percent_low: float | None = None
    percent_high: float | None = None
    absolute_low: float | None = None  # x10^9/L
    absolute_high: float | None = None
    note: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> RangeEntry:
        for lo, hi, top in (("percent_low", "percent_high", 100.0), ("absolute_low", "absolute_high", None)):
            a, b = getattr(self, lo), getattr(self, hi)
            for k, v in ((lo, a), (hi, b)):
                if v is not None and (v < 0 or (top is not None and v > top)):
                    raise ValueError(f"{k} = {v} is outside 0-{top:g}" if top else f"{k} = {v} is negative")
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo} ({a:g}) is above {hi} ({b:g})")
        return self

    @property
    def percent(self) -> tuple[float | None, float | None] | None:
        return None if self.percent_low is None and self.percent_high is None else (self.percent_low,
                                                                                    self.percent_high)

    @property
    def absolute(self) -> tuple[float | None, float | None] | None:
        return None if self.absolute_low is None and self.absolute_high is None else (self.absolute_low,
                                                                                      self.absolute_high)


class ReferenceRanges(StrictConfig):
    """A named set of reference ranges (the source is printed on every report)."""

    source: str
    classes: dict[str, RangeEntry] = Field(default_factory=dict)

    @field_validator("source")
    @classmethod
    def _named(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the ranges' source must be named (e.g. the textbook and its edition)")
        return v.strip()

    @field_validator("classes", mode="before")
    @classmethod
    def _known_classes(cls, v: object) -> object:
        if not isinstance(v, dict):
            return v  # pydantic reports the type
        out: dict = {}
        for k, entry in v.items():
            key = canonical(k) if isinstance(k, str) and is_known(k) else k
            if key not in RANGE_CLASSES:
                raise ValueError(f"unknown class {k!r} (known: {', '.join(RANGE_CLASSES)})")
            if key in out:
                raise ValueError(f"class {key!r} is given twice")
            out[key] = entry
        return out

    def get(self, label: str) -> RangeEntry | None:
        return self.classes.get(label)


def load_ranges(path: str | Path | None = None) -> ReferenceRanges:
    """Read a ranges YAML (None: the shipped adult default); a bad file is one `InputError` line."""
    return load_config(ReferenceRanges, DEFAULT_RANGES if path is None else Path(path))
