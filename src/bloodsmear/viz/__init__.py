"""viz stage of the bloodsmear pipeline."""
