"""Fixtures shared by optaxtra's tests.

The suite runs under pytest-xdist with many tests per process, so global JAX
configuration is only ever changed inside a fixture that restores it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest


@pytest.fixture
def x64():
  """Turns ``jax_enable_x64`` on for one test and restores it afterwards."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture(params=["float32", "bfloat16", "float64"])
def float_dtype(request):
  """The params' dtype; float64 runs with ``jax_enable_x64`` on (restored)."""
  if request.param != "float64":
    yield jnp.dtype(request.param)
    return
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield jnp.dtype(jnp.float64)
  finally:
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def maybe_jit(request):
  """A function that jits its argument, or returns it unchanged."""
  return jax.jit if request.param else (lambda f: f)
