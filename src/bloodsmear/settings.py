"""Where things live. `BLOODSMEAR_DATA` locates the shared real data; nothing in the package needs it."""

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
