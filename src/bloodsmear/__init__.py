"""bloodsmear: white-blood-cell differential from peripheral blood smear photos.

Data flow (mirrored by the sub-packages):
data -> preprocess -> models -> training -> inference -> outputs -> cli
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
