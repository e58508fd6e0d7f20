"""bench risk-coverage's pure parts: accuracy at a coverage, and the card section written once, replaced after."""

from __future__ import annotations

import numpy as np

from bloodsmear.experiments.risk_coverage import CARD_HEADING, _acc_at, write_card_section
from bloodsmear.metrics.calibration import risk_coverage


def test_accuracy_at_coverage_keeps_the_most_confident():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.55, 0.45]])
    labels = np.array([0, 0, 0, 1])  # the two most confident are right, the two least wrong
    curve = risk_coverage(probs, labels)
    assert _acc_at(curve, 0.5) == 1.0 and _acc_at(curve, 1.0) == 0.5


def test_card_section_is_added_then_replaced(tmp_path):
    card = tmp_path / "card.md"
    card.write_text("# m\n\n## Data\n\nx\n")
    write_card_section(tmp_path, f"{CARD_HEADING}\n\nfirst")
    write_card_section(tmp_path, f"{CARD_HEADING}\n\nsecond")
    text = card.read_text()
    assert text.count(CARD_HEADING) == 1 and "second" in text and "first" not in text and "## Data" in text
    card.write_text(f"# m\n\n{CARD_HEADING}\n\nold\n\n## Later\n\ny\n")
    write_card_section(tmp_path, f"{CARD_HEADING}\n\nnew")
    text = card.read_text()
    assert "new" in text and "old" not in text and text.index("new") < text.index("## Later")
