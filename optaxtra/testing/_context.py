"""What the probes see: the transformation, its inputs and the run so far."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import jax

from optaxtra.testing._trees import FN, Signature, default_grads, signature

# When a probe runs: once after ``tx.init``, after each jitted update of the
# run, or once after the run.
When = Literal["init", "step", "end"]


@dataclasses.dataclass(frozen=True)
class Step:
  """One jitted update of the run: its gradients, its updates, the new state."""

  number: int  # 1 for the first update
  grads: Any
  updates: Any
  state: Any

  @property
  def when(self) -> str:
    """The step in a message: ``at step 2``."""
    return f"at step {self.number}"


@dataclasses.dataclass
class Context:
  """The checked transformation and options, ``init``'s state and the steps run.

  Built by :meth:`start`, which calls ``tx.init``; the driver then calls
  :meth:`advance` once per step, which keeps the latest in ``step``. Probes
  read it, and call :meth:`update` for updates of their own.
  """

  tx: Any
  params: Any
  grads: Any  # as given: None for the default draws (see grads_at)
  num_steps: int
  zero_grad_rtol: float | None
  check_grad_dependence: bool
  kwargs: dict[str, Any]  # extra_args, passed to every tx.update
  state0: Any  # what tx.init(params) returned
  first: Signature  # state0's tree and leaf types
  jitted: Callable[..., Any]  # tx.update under jax.jit, recording each trace
  # The state's leaf types at every trace of the jitted update.
  traces: list[list[tuple[str, Any]]] = dataclasses.field(default_factory=list)
  # The last jitted update of the run (only it is kept: states can be large).
  step: Step | None = None

  @classmethod
  def start(
    cls,
    tx: Any,
    params: Any,
    *,
    grads: Any,
    num_steps: int,
    zero_grad_rtol: float | None,
    check_grad_dependence: bool,
    extra_args: Mapping[str, Any] | None,
  ) -> Context:
    """Calls ``tx.init(params)``; an ``AssertionError`` if it raises."""
    kwargs = dict(extra_args or {})
    try:
      state0 = tx.init(params)
    except Exception as e:
      raise AssertionError(
        f"{FN}: tx.init(params) raised {type(e).__name__}: {e}"
      ) from e
    traces: list[list[tuple[str, Any]]] = []

    def traced_update(g, s, p):
      traces.append(signature(s)[1])
      return tx.update(g, s, p, **kwargs)

    return cls(
      tx=tx,
      params=params,
      grads=grads,
      num_steps=num_steps,
      zero_grad_rtol=zero_grad_rtol,
      check_grad_dependence=check_grad_dependence,
      kwargs=kwargs,
      state0=state0,
      first=signature(state0),
      jitted=jax.jit(traced_update),
      traces=traces,
    )

  def grads_at(self, step: int) -> Any:
    """The gradients of step ``step``: the given ones, or that step's draw."""
    return self.grads if self.grads is not None else default_grads(self.params, step)

  def update(self, grads: Any, state: Any, when: str) -> tuple[Any, Any]:
    """The jitted ``tx.update``; an ``AssertionError`` saying ``when`` if it raises."""
    try:
      return self.jitted(grads, state, self.params)
    except Exception as e:
      raise AssertionError(
        f"{FN}: tx.update fails under jax.jit {when}: {type(e).__name__}: {e}"
      ) from e

  def eager_update(self, grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
    """``tx.update`` with the extra arguments, not jitted (to trace it oneself)."""
    return self.tx.update(grads, state, params, **self.kwargs)

  def advance(self) -> Step:
    """Runs the next jitted update of the run from the last state."""
    last = self.step
    number = 1 if last is None else last.number + 1
    state = self.state0 if last is None else last.state
    grads = self.grads_at(number)
    updates, state = self.update(grads, state, f"at step {number}")
    self.step = Step(number, grads, updates, state)
    return self.step

  @property
  def last(self) -> Step:
    """The step just run (for probes run after each step, or after the run)."""
    if self.step is None:
      raise RuntimeError(f"{FN}: no update has run yet (a probe run at init?).")
    return self.step


class Probe(NamedTuple):
  """A check, and when it runs; the driver runs ``PROBES`` in their order."""

  when: When
  check: Callable[[Context], None]
