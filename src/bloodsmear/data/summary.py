"""What a dataset holds: images, cells per class, subclasses, image sizes, skipped entries.

`summarize(dataset)` returns a `DatasetSummary`; ``to_dict()`` is the ``--json`` object of
``bloodsmear data summary`` (keys: name, format, root, images, cells, cells_per_class,
images_per_class, subclasses, sizes, skipped, skipped_entries, splits, nucleus_masks, flagged).
For class-per-folder (single-cell) datasets each image counts as one cell of its class.
Unknown image sizes (folder datasets) are read from the file headers, in threads, without decoding.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from bloodsmear.data.folders import fill_sizes
from bloodsmear.types import Dataset


@dataclass
class DatasetSummary:
    name: str
    format: str
    root: str
    images: int
    cells: int
    cells_per_class: dict[str, int]
    images_per_class: dict[str, int]
    subclasses: dict[str, dict[str, int]]
    sizes: dict
    skipped: int
    skipped_entries: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    nucleus_masks: int = 0
    flagged: dict[str, int] = field(default_factory=dict)  # e.g. {"degenerate": 2} zero-size boxes

    def to_dict(self) -> dict:
        return asdict(self)


def size_stats(sizes: list[tuple[int, int]]) -> dict:
    """{"min", "max", "most_common": [w, h], "most_common_count", "distinct", "unknown"} (by area)."""
    known = [(int(w), int(h)) for w, h in sizes if w > 0 and h > 0]
    out: dict = {"unknown": len(sizes) - len(known), "distinct": len(set(known))}
    if not known:
        return {**out, "min": None, "max": None, "most_common": None, "most_common_count": 0}
    (mc, n) = Counter(known).most_common(1)[0]
    out.update(min=list(min(known, key=lambda s: (s[0] * s[1], s))),
               max=list(max(known, key=lambda s: (s[0] * s[1], s))),
               most_common=list(mc), most_common_count=n)
    return out


def summarize(dataset: Dataset, *, read_sizes: bool = True, max_skipped_entries: int = 50) -> DatasetSummary:
    """Summarise a dataset (see the module doc). `read_sizes`: fill unknown sizes from file headers."""
    if read_sizes and any(im.width <= 0 for im in dataset.images):
        fill_sizes(dataset)
    has_cells = any(im.cells for im in dataset.images)
    images_per_class = dict(sorted(Counter(im.label for im in dataset.images if im.label).items()))
    subs: dict[str, Counter] = {}
    flagged: Counter = Counter()
    for im in dataset.images:
        if has_cells:
            for c in im.cells:
                if c.subclass:
                    subs.setdefault(c.label, Counter())[c.subclass] += 1
                elif c.label == "wbc":
                    subs.setdefault("wbc", Counter())["unknown"] += 1
                for flag in ("degenerate",):
                    if c.attributes.get(flag):
                        flagged[flag] += 1
        elif im.label and im.subclass:
            subs.setdefault(im.label, Counter())[im.subclass] += 1
    if "wbc" in subs and set(subs["wbc"]) == {"unknown"}:
        del subs["wbc"]  # no subtype information at all
    return DatasetSummary(
        name=dataset.name, format=dataset.format, root=str(dataset.root), images=len(dataset),
        cells=sum(len(im.cells) for im in dataset.images) if has_cells else len(dataset),
        cells_per_class=dataset.class_counts(), images_per_class=images_per_class,
        subclasses={k: dict(sorted(v.items())) for k, v in sorted(subs.items())},
        sizes=size_stats([(im.width, im.height) for im in dataset.images]),
        skipped=len(dataset.skipped), skipped_entries=list(dataset.skipped[:max_skipped_entries]),
        splits={k: len(v) for k, v in dataset.splits.items()},
        nucleus_masks=sum(im.nucleus_mask_path is not None for im in dataset.images),
        flagged=dict(flagged),
    )
