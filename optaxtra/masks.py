"""Choosing parameters by path (in progress)."""
