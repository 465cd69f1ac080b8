"""Inputs: listing sources (prefixes, globs, manifests, containers) into rows (sources), selecting
rows by a previous run's output (selection), and run records (runs)."""
