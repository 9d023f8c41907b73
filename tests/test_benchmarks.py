"""The benchmark suite still runs and its contenders compute what they claim.

No timing is asserted here (speed lives in ``benchmarks/``): these tests keep
the script from rotting between recorded runs, and check that the hand-fused
update and Optax's chain it compares against are the same optimizer.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

# The benchmark compares against PyTorch's AdamW and uses jax.lax APIs newer
# than the package's floor: a development tool, run in the full suite only.
pytestmark = pytest.mark.heavy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
  sys.path.insert(0, str(ROOT / "benchmarks"))
  try:
    spec = importlib.util.spec_from_file_location(
      "bench_run", ROOT / "benchmarks" / "run.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
  finally:
    sys.path.remove(str(ROOT / "benchmarks"))


def test_dispatch_cost_runs(bench):
  import dispatch_cost

  med = dispatch_cost.main(reps=1, steps=2)
  assert set(med) == {(n, inc) for n in dispatch_cost.COUNTS for inc in (True, False)}


def test_contenders_agree(bench):
  """Hand-fused, its naive form, the prototypes and the tracked step equal
  optaxtra (within a few ulps where the arithmetic is the same);
  optaxtra(clip=False, bc) equals Optax's chain up to where eps sits."""
  bench.check_equivalence()


def test_tiny_run_writes_json_and_markdown(bench, tmp_path):
  stem = tmp_path / "tiny"
  bench.main(
    [
      "--sizes",
      "1000",
      "--leaves",
      "3",
      "--reps",
      "1",
      "--small-reps",
      "1",
      "--compile-reps",
      "1",
      "--skip-check",
      "--only",
      "optaxtra",
      "optaxtra-chain-0.1",
      "hand-fused",
      "optaxtra-noclip-bc",
      "optax-chain",
      "torch-AdamW",
      "--out",
      str(stem),
    ]
  )
  res = json.loads(stem.with_suffix(".json").read_text())
  assert res["machine"]["backend"] == "cpu"
  assert res["bandwidth"]["roofline_gbs"] > 0
  fixed = res["fixed"]["rows"]
  assert set(fixed) == {
    "optaxtra",
    "optaxtra-chain-0.1",
    "hand-fused",
    "optaxtra-noclip-bc",
    "optax-chain",
    "torch-AdamW",
  }
  # optaxtra's state: count, mu, nu, lr, lr scale, decay coefficient, decay
  # rate; the 0.1 chain's: count, mu, nu, bias factor | count, lr, lr scale |
  # count, rate.
  assert fixed["optaxtra"]["state_leaves"] == 7
  assert fixed["optaxtra-chain-0.1"]["state_leaves"] == 9
  assert fixed["optax-chain"]["state_leaves"] == 4
  one = res["one_leaf"]["1000"]["rows"]
  assert one["optaxtra"]["kernels"]["array_fusions"] == 3  # one pass per array
  tree = res["trees"]["3"]["rows"]
  assert tree["optaxtra"]["kernels"]["array_fusions"] == 9
  assert tree["optaxtra"]["compile_total_s"] > 0
  md = stem.with_suffix(".md").read_text()
  for heading in (
    "### Fixed cost per step",
    "### One leaf: time per step",
    "### Trees of about",
    "### Compiled kernels",
    "### Targets",
  ):
    assert heading in md
  # --report re-renders the same table from the JSON alone.
  stem.with_suffix(".md").unlink()
  bench.main(["--report", str(stem.with_suffix(".json"))])
  assert stem.with_suffix(".md").read_text() == md
