"""The few names that moved between the oldest and newest supported versions.

optaxtra supports ``jax>=0.4.30`` and ``optax>=0.2.4`` (``pyproject.toml``;
CI runs the core tests at exactly those versions). Where a public name it uses
appeared later than that floor, the fallback to the older public spelling
lives here, once, so that the rest of the package reads as current code.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.core


def typeof(x: Any) -> Any:
  """``jax.typeof(x)``: the abstract value (shape, dtype, weak type) of ``x``.

  Raises ``TypeError`` for a value that is not an array, as ``jax.typeof``
  does. ``jax.typeof`` appeared in jax 0.4.36; before it, the public
  ``jax.core.get_aval`` returned a concrete value for a concrete array, which
  ``raise_to_shaped`` turns into the same shaped value ``jax.typeof`` gives.
  """
  new = getattr(jax, "typeof", None)
  if new is not None:
    return new(x)
  core: Any = jax.core
  return core.raise_to_shaped(core.get_aval(x))
