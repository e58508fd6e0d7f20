"""preprocess stage of the bloodsmear pipeline."""
