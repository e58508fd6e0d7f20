"""The leave-one-domain-out experiment's config (`kind: lodo`): domains, classes, recipes, seeds, shipped models.

    cfg = load_lodo_config("configs/lodo/cpu.yaml", {"seeds": [0]})
    cfg.recipe_settings("stain")     # (MapSettings, RunSettings, image size) of one recipe

A recipe is a named way of training on the labelled domains that are not held out: stain
normalisation or not (and to which domain's stain), and overrides of the shared `maps:` / `train:`
sections and of the crop size, so augmentation, input size, backbone, ... are config entries.
"""

from __future__ import annotations

from pydantic import field_validator, model_validator

from bloodsmear.classes import canonical
from bloodsmear.config import StrictConfig, load_config, validate_config
from bloodsmear.errors import InputError
from bloodsmear.experiments.domain_runs import MapSettings, RunSettings
from bloodsmear.experiments.domains_config import check_domain

LODO_CLASSES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]


class Recipe(StrictConfig):
    """One training recipe of the LODO table (trained once per held-out domain and seed)."""

    description: str = ""  # one line for the docs and the table's notes
    stain: bool = False  # Reinhard-normalise every crop to the reference domain's stain first
    stain_reference: str | None = None  # a domain key; None, or the held-out domain: the first training domain
    image_size: int | None = None  # crop side for this recipe (None: the config's image_size)
    maps: dict = {}  # overrides of the `maps:` section (MapSettings keys)
    train: dict = {}  # overrides of the `train:` section (RunSettings keys)
    bn_adapt: bool = False  # re-estimate batch norm on the held-out test crops (no labels) before scoring
    reuse: str | None = None  # score the runs of this recipe (its settings, stain, run folders): no training


class LodoConfig(StrictConfig):
    name: str = "lodo"
    domains: dict[str, dict] = {"pbc": {"name": "pbc", "root": "pbc224", "max_per_class": 300},
                                "lisc": {"name": "lisc", "root": "lisc", "crops": "pipeline"},
                                "bccd": {"name": "bccd", "root": "bccd", "box_scale": 1.6}}
    classes: list[str] = list(LODO_CLASSES)
    held_out: list[str] | None = None  # domain keys to hold out (None: every domain)
    image_size: int = 96
    scheme: str = "64-16-20"
    split_seed: int = 42
    maps: MapSettings = MapSettings()
    train: RunSettings = RunSettings()
    recipes: dict[str, Recipe] = {"source": Recipe(description="supervised on the other domains mixed"),
                                  "stain": Recipe(description="as source, every crop Reinhard-normalised to the "
                                                              "reference domain's stain", stain=True,
                                                  stain_reference="pbc")}
    seeds: list[int] = [0, 1, 2]
    min_support: int = 5  # a class with fewer test crops in a domain is reported absent (not in its macro F1)
    shipped: list[str] = ["pbc-screen-stain", "pbc-lisc-dann"]  # model folders / shipped names scored alongside
    threads: int = 1
    device: str = "cpu"  # where runs train: cpu | cuda | auto
    out_dir: str = "runs/lodo"
    cache_dir: str | None = None  # None -> $BLOODSMEAR_CACHE/domains (shared with `bench domains`)

    @field_validator("domains")
    @classmethod
    def _valid_domains(cls, domains: dict[str, dict]) -> dict[str, dict]:
        if len(domains) < 2:
            raise ValueError(f"domains: leave-one-domain-out needs at least 2 domains, got {len(domains)}")
        for key, d in domains.items():
            check_domain(d, f"domains.{key}")
        return domains

    @field_validator("classes")
    @classmethod
    def _canonical_classes(cls, classes: list[str]) -> list[str]:
        if len(classes) < 2:
            raise ValueError("classes: at least 2 classes")
        return [canonical(c) for c in classes]

    @field_validator("recipes")
    @classmethod
    def _valid_recipes(cls, recipes: dict[str, Recipe]) -> dict[str, Recipe]:
        if not recipes:
            raise ValueError("recipes: at least one recipe")
        for name, r in recipes.items():
            for section, model in (("maps", MapSettings), ("train", RunSettings)):
                try:
                    validate_config(model, getattr(r, section), prefix=f"recipes.{name}.{section}.")
                except InputError as e:
                    raise ValueError(e.problem) from None
        return recipes

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("seeds: at least one seed")
        return seeds

    @model_validator(mode="after")
    def _known_keys(self) -> LodoConfig:
        keys = list(self.domains)
        for k in self.held_out or []:
            if k not in self.domains:
                raise ValueError(f"held_out: unknown domain key {k!r} (valid: {', '.join(keys)})")
        for name, r in self.recipes.items():
            if r.reuse is not None and (r.reuse not in self.recipes or self.recipes[r.reuse].reuse is not None):
                raise ValueError(f"recipes.{name}.reuse: {r.reuse!r} is not a recipe that trains its own runs "
                                 f"(valid: {', '.join(n for n, x in self.recipes.items() if x.reuse is None)})")
            if r.stain_reference is not None and r.stain_reference not in self.domains:
                raise ValueError(f"recipes.{name}.stain_reference: unknown domain key {r.stain_reference!r} "
                                 f"(valid: {', '.join(keys)})")
        return self

    def held_out_keys(self) -> list[str]:
        return list(self.held_out) if self.held_out else list(self.domains)

    def recipe(self, name: str) -> Recipe:
        if name not in self.recipes:
            raise InputError(None, f"unknown recipe {name!r} (valid: {', '.join(self.recipes)})")
        return self.recipes[name]

    def trained_as(self, name: str) -> str:
        """The recipe whose runs `name` scores: its `reuse`, else itself."""
        return self.recipe(name).reuse or name

    def recipe_settings(self, name: str) -> tuple[MapSettings, RunSettings, int]:
        """The recipe's MapSettings and RunSettings (the shared sections with its overrides) and crop size
        (a `reuse` recipe: those of the recipe it reuses)."""
        r = self.recipe(self.trained_as(name))
        ms = MapSettings.model_validate({**self.maps.to_dict(), **r.maps})
        rs = RunSettings.model_validate({**self.train.to_dict(), **r.train})
        return ms, rs, int(r.image_size or self.image_size)

    def stain_reference(self, name: str, held_out: str) -> str | None:
        """The domain whose stain the recipe normalises to when `held_out` is held out (None: no stain).
        Never the held-out domain itself: its crops, labelled or not, stay unseen."""
        r = self.recipe(self.trained_as(name))
        if not r.stain:
            return None
        train = [k for k in self.domains if k != held_out]
        return r.stain_reference if r.stain_reference in train else train[0]


def load_lodo_config(path, overrides: dict | list[str] | None = None) -> LodoConfig:
    """A `kind: lodo` config file; `overrides` (nested dict or `["seeds=[0]"]`) win."""
    return load_config(LodoConfig, path, overrides)


__all__ = ["LodoConfig", "Recipe", "LODO_CLASSES", "load_lodo_config"]
