"""Where things live. `BLOODSMEAR_DATA` locates the shared real data (nothing in the package needs it);
`BLOODSMEAR_CACHE` the caches (decoded arrays, domain crops, segmenter fields)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ZOO_DIR = PACKAGE_DIR / "zoo"
PROJECT_ROOT = PACKAGE_DIR.parent.parent  # src/bloodsmear -> repo root (editable installs)


def data_root() -> Path:
    """The real-data folder: $BLOODSMEAR_DATA, else ../shared/data next to the project root, else ./../shared/data."""
    env = os.environ.get("BLOODSMEAR_DATA")
    if env:
        return Path(env).expanduser()
    for base in (PROJECT_ROOT, Path.cwd()):
        cand = (base / ".." / "shared" / "data").resolve()
        if cand.is_dir():
            return cand
    return (PROJECT_ROOT / ".." / "shared" / "data").resolve()


def data_path(*parts: str) -> Path:
    return data_root().joinpath(*parts)


def cache_dir(sub: str = "") -> Path:
    """The cache folder `sub` of $BLOODSMEAR_CACHE (default ~/.cache/bloodsmear); the folder itself for ""."""
    env = os.environ.get("BLOODSMEAR_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "bloodsmear"
    return root / sub if sub else root
