"""The optional dependencies some tests need, imported one way.

A test that needs PyTorch, TensorFlow, Keras, Flax, Haiku, Orbax, Jupyter,
matplotlib, scikit-learn or tensorboardX is marked ``heavy`` (conftest.py marks
every test that uses one of the fixtures in ``conftest.HEAVY_FIXTURES``), so
``pytest -m "not heavy"`` runs the core suite with nothing but JAX, Optax and
NumPy installed.

``need(name)`` imports such a dependency. When it is missing:

* under CI (the ``CI`` environment variable set, as every CI service and
  ``.ci/run`` do) the test fails: CI installs the whole test extra, so a
  missing package is a broken environment, never a reason to skip;
* elsewhere the test is skipped, naming the package and the extra that
  brings it.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

# Import name -> what to install (the distribution, via the project's extras).
_INSTALL = {
  "torch": "torch (the test extra pins the CPU build)",
  "tensorflow": "tensorflow-cpu",
  "keras": "keras",
  "flax": "flax",
  "haiku": "dm-haiku",
  "orbax": "orbax-checkpoint",
  "nbformat": "nbformat",
  "nbclient": "nbclient",
  "ipykernel": "ipykernel",
  "matplotlib": "matplotlib",
  "sklearn": "scikit-learn",
  "tensorboardX": "tensorboardX",
}


def in_ci() -> bool:
  return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def need(name: str) -> ModuleType:
  """Imports module ``name`` for a heavy test; see the module docstring."""
  try:
    return importlib.import_module(name)
  except ImportError as e:
    what = _INSTALL.get(name.split(".")[0], name.split(".")[0])
    msg = (
      f"needs {name} ({what}), which is not installed: "
      "pip install -e '.[test]' installs every test dependency, or run the "
      "core suite alone with pytest -m 'not heavy'"
    )
    if in_ci():
      pytest.fail(f"{msg}. CI must have every test dependency ({e}).", pytrace=False)
    pytest.skip(msg, allow_module_level=True)
