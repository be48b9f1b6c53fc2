"""Evaluation: metrics, the eval table and the demo sheet."""
