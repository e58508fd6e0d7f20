"""Training: one engine (`train_one_epoch` / `evaluate`), the trainer, objectives, loaders.

Importing the package registers every built-in objective (timm-style: one registry, filled here), so
`build_objective(name)` knows them all whichever module was imported first.
"""

from bloodsmear.training import dann_objective as _dann_objective  # noqa: F401 - registers "dann"
from bloodsmear.training import seg_objectives as _seg_objectives  # noqa: F401 - registers "segmentation", "maskrcnn"
