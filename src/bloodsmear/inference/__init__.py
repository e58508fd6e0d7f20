"""inference stage of the bloodsmear pipeline."""
