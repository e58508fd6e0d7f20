"""evaluation stage of the bloodsmear pipeline."""
