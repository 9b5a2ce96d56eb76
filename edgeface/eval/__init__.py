"""Measurements: LFW verification, identification, clustering, benchmarks and how they are printed."""
