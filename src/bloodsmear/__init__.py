"""bloodsmear: white-blood-cell differential from peripheral blood smear photos.

Data flow (mirrored by the sub-packages):
data -> preprocess -> models -> training -> inference -> outputs -> cli
"""

from __future__ import annotations

import logging
import os

# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads cost
# several times the CPU of the work itself (measured: 6.6 vs 1.0 CPU-s per training step).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
