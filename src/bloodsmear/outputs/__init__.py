"""outputs stage of the bloodsmear pipeline."""
