"""Helpers that build tiny real-class checkpoints (for tests, benchmarks and smoke runs)."""
