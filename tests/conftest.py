"""Fixtures shared by optaxtra's tests.

The suite runs under pytest-xdist with many tests per process, so global JAX
configuration is only ever changed inside a fixture that restores it.

Tests that need a heavy optional dependency (the reference frameworks, Flax,
Haiku, Orbax, Jupyter, plotting) are marked ``heavy``: either explicitly, or
by using one of the fixtures in ``HEAVY_FIXTURES``, which import them. So are
the tests too slow for the quick loop (runs of several processes) and most
cases of a sweep: a parametrized test marked ``sweep(quick=[ids])`` re-checks
one property on many inputs, and only the listed cases stay in the quick loop.
The quick loop ``pytest -m "not heavy"`` runs everything else with only JAX,
Optax and NumPy installed; see _deps.py for what a missing dependency does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from _deps import need

# Fixtures that import a heavy dependency: a test that uses one, directly or
# through another fixture, is marked heavy.
HEAVY_FIXTURES = frozenset({"torch", "tf", "keras", "tf_history"})


def pytest_configure(config):
  config.addinivalue_line(
    "markers",
    "heavy: needs a heavy optional dependency (PyTorch, TensorFlow, Keras, Flax, "
    "Haiku, Orbax, Jupyter, matplotlib, scikit-learn, tensorboardX), or is too "
    "slow for the quick loop; deselect with -m 'not heavy'",
  )
  config.addinivalue_line(
    "markers",
    "sweep(quick): a parametrized test re-checking one property on many inputs; "
    "only the cases whose ids are in quick run in the quick loop, the others "
    "are heavy",
  )


# Modules whose every test is heavy; they import Flax, Haiku, Orbax or Jupyter
# at module level, so under -m "not heavy" they are not even collected (and
# need not be installed).
HEAVY_MODULES = frozenset(
  {
    "test_checkpoint.py",
    "test_frameworks.py",
    "test_masks_frameworks.py",
    "test_notebooks.py",
  }
)


# Checkpoints written by old releases, and the scripts that wrote them (run by
# hand, with that release installed): data for the tests, not tests.
collect_ignore = ["data"]


def pytest_ignore_collect(collection_path, config):
  markexpr = config.getoption("markexpr", "") or ""
  if collection_path.name in HEAVY_MODULES and "not heavy" in markexpr:
    return True
  return None


def pytest_collection_modifyitems(config, items):
  for item in items:
    if HEAVY_FIXTURES.intersection(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.heavy)
  _mark_sweeps(items)


def _mark_sweeps(items):
  """Marks heavy every case of a ``sweep`` test whose id is not a quick one.

  A quick id that names no case is an error (a typo would silently move the
  whole sweep out of the quick loop), checked where more than one case of
  the test was collected (a single case may be asked for by its id).
  """
  cases: dict[tuple, list] = {}
  for item in items:
    marker = item.get_closest_marker("sweep")
    if marker is None:
      continue
    callspec = getattr(item, "callspec", None)
    assert callspec is not None, f"{item.nodeid}: a sweep must be parametrized"
    quick = marker.kwargs["quick"]
    cases.setdefault((item.path, item.originalname), [quick, set()])[1].add(callspec.id)
    if callspec.id not in quick:
      item.add_marker(pytest.mark.heavy)
  for (path, name), (quick, ids) in cases.items():
    unknown = set(quick) - ids
    if unknown and len(ids) > 1:
      raise pytest.UsageError(
        f"{path.name}::{name}: the quick cases {sorted(unknown)} are not among its "
        f"cases {sorted(ids)}"
      )


@pytest.fixture(scope="session")
def torch():
  """PyTorch (the CPU build the test extra pins), imported once."""
  return need("torch")


@pytest.fixture(scope="session")
def tf():
  """TensorFlow, imported once, only by the tests that need it."""
  return need("tensorflow")


@pytest.fixture(scope="session")
def keras():
  """Keras 3 on TensorFlow, imported once, only by the tests that need it."""
  return need("keras")


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
