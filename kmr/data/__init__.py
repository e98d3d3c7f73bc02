"""Interaction data: reading interaction files, the in-memory form, synthetic data."""
