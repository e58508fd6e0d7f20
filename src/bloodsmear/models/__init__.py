"""models stage of the bloodsmear pipeline."""
