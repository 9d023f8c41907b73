"""Checks for custom gradient transformations (in progress)."""
