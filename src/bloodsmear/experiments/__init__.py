"""Experiments: the grid (backbone benchmark), cross-domain runs, DANN adaptation, rescoring, benchmarks."""
