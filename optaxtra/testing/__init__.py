"""Checks for custom gradient transformations.

:func:`check_transformation` runs a transformation for a few steps, eagerly
and under :func:`jax.jit`, and fails with an ``AssertionError`` that names the
problem and the leaf, for the mistakes that otherwise show up only as a
silently stalled training run, a recompilation every step, or a crash far
from their cause.
"""

from __future__ import annotations

from optaxtra.testing._check import check_transformation

__all__ = ["check_transformation"]
