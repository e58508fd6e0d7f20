"""training stage of the bloodsmear pipeline."""
