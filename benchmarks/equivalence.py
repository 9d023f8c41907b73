"""Before timing: the contenders compute what they claim to.

``check_equivalence()`` runs each on the same small tree for 20 steps and
compares the parameters with optaxtra's, or with Optax's chain where that is
the claim; the prototypes' states and the clip share are compared with those
of the 0.1 chain, whose state structure is fixed. ``tests/test_benchmarks.py``
runs it too.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import variants as V
from contenders import PACK_BELOW, random_tree


def check_equivalence():
  """The contenders compute what they claim to (small tree, 20 steps)."""
  rng = np.random.default_rng(1)
  params_np, _ = random_tree(5, 3000, rng)
  params_np["tiny"] = rng.standard_normal((3,), dtype=np.float32)
  grads_seq = [
    jax.tree.map(lambda p: 1e-2 * rng.standard_normal(p.shape, np.float32), params_np)
    for _ in range(20)
  ]

  def run(step, init):
    p = jax.tree.map(jnp.asarray, params_np)
    s = init(p)
    step = jax.jit(step)
    for g in grads_seq:
      p, s = step(p, s, g)
    return p, s

  ref_p, _ = run(V.tx_step(V.optaxtra_tx()), V.optaxtra_tx().init)
  tr_tx = V.optaxtra_tx(track=True)
  tr_p, _ = run(V.tx_step(tr_tx), tr_tx.init)
  _within_ulps("optaxtra with and without the clip share", tr_p, ref_p)
  # The 0.1 chain's state has a fixed structure (three stages' states): the
  # prototypes' states and the clip share are checked against it.
  old_tx = V.optaxtra_chain_0_1(track=True)
  old_p, old_s = run(V.tx_step(old_tx), old_tx.init)
  _allclose("optaxtra-chain-0.1 vs optaxtra", old_p, ref_p, 1e-6)
  hf_p, hf_s = run(V.hand_fused_step(True), V.hand_fused_init_diag)
  _allclose("hand-fused vs optaxtra", hf_p, ref_p, 1e-6)
  nv_p, _ = run(V.hand_fused_step(False, naive=True), V.hand_fused_init)
  _within_ulps("hand-fused-naive vs hand-fused", nv_p, hf_p)
  for pack, tx in {
    "proto-fused": V.fused_adamax_clipped(),
    "proto-packed": V.fused_adamax_clipped(pack_below=PACK_BELOW),
  }.items():
    p, s = run(V.tx_step(tx), tx.init)
    _allclose(f"{pack} vs optaxtra", p, ref_p, 1e-6)
    _allclose(f"{pack} state", s, old_s, 1e-6)
  n_total = sum(x.size for x in jax.tree.leaves(params_np))
  frac = float(old_s[0].clip_fraction)
  if not math.isclose(frac, int(hf_s[3]) / n_total, rel_tol=1e-6):
    raise AssertionError(f"clip fraction {frac} vs count {int(hf_s[3])}")
  nc_p, _ = run(
    V.tx_step(V.optaxtra_tx(clip=False, bias_correction=True)),
    V.optaxtra_tx(clip=False, bias_correction=True).init,
  )
  ox_p, _ = run(V.tx_step(V.optax_chain()), V.optax_chain().init)
  _allclose("optaxtra(clip=False, bc) vs optax chain", nc_p, ox_p, 1e-5)


def _within_ulps(what, a, b, maxulp=4):
  """The same arithmetic as two compiled programs: equal up to the roundings
  that FMA contraction may change (a few ulps; tests/_harness.py,
  CROSS_PROGRAM_ULPS, says why 4)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    try:
      np.testing.assert_array_max_ulp(np.asarray(x), np.asarray(y), maxulp)
    except AssertionError as e:
      raise AssertionError(f"{what}: {e}") from None


def _allclose(what, a, b, rtol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x), np.asarray(y)
    same = np.allclose(x, y, rtol, rtol * 1e-2)
    if not same:
      err = np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))
      raise AssertionError(f"{what}: max abs difference {err}")
