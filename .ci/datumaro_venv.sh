#!/usr/bin/env bash
# Create a separate venv holding datumaro, used by tests/test_export_datumaro.py to
# check the review's CVAT export with datumaro's CVAT importer. datumaro pins
# opencv<5 / pillow<13, which conflict with the project's venv, hence its own venv.
# Usage: .ci/datumaro_venv.sh [VENV_DIR]   (default .venv-datumaro). Idempotent.
set -euo pipefail
venv="${1:-.venv-datumaro}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import datumaro" 2>/dev/null; then
    echo "datumaro venv ready: $venv"
    exit 0
fi
python3 -m venv "$venv"
# (pip's "Location ... is ignored" warnings about this machine's offline index folders are dropped)
"$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
"$venv/bin/python" -m pip install -q datumaro 2>&1 | grep -v "is ignored" || true
"$venv/bin/python" -c "import datumaro, sys; print('datumaro', datumaro.__version__, 'in', sys.prefix)"
