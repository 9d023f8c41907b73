"""The report: the console lines during a run, and the results' .json and .md.

``markdown(results)`` renders the tables from the JSON alone, so that
``run.py --report X.json`` rewrites an ``.md`` without timing anything.
"""

from __future__ import annotations

import json

from timing import BYTES_PER_PARAM

# The fixed-cost table gives each contender's difference to these.
FIXED_BASELINES = ("optax-chain", "optaxtra-chain-0.1")


def print_rows(title, rows, micro=False):
  """One line per contender; ``micro``: µs per step and state leaves (n=16)."""
  print(f"== {title}", flush=True)
  for name, r in rows.items():
    extra = f"  compile {r['compile_total_s']:.2f} s" if "compile_s" in r else ""
    if "kernels" in r:
      k = r["kernels"]
      extra += f"  kernels {k['fusions']}+{k['copies']}"
      extra += f" (arrays {k['array_fusions']}+{k['array_copies']})"
    if micro:
      leaves = r.get("state_leaves", "–")
      step = f"{r['step_s'] * 1e6:8.2f} µs (min {r['step_s_min'] * 1e6:.2f})"
      print(f"  {name:22s} {step}  state leaves {leaves}{extra}")
    else:
      step = f"{r['step_s'] * 1e3:10.3f} ms  {r['gbs']:6.2f} GB/s"
      print(f"  {name:22s} {step}{extra}")


def save(results, stem):
  """Write ``<stem>.json`` and ``<stem>.md``."""
  with open(f"{stem}.json", "w") as f:
    json.dump(results, f, indent=1)
  with open(f"{stem}.md", "w") as f:
    f.write(markdown(results))


def _ratio(rows, a, b, key="step_s"):
  if a in rows and b in rows and key in rows[a] and key in rows[b]:
    return rows[a][key] / rows[b][key]
  return None


def _fmt(x, spec=".2f"):
  return "–" if x is None else format(x, spec)


def _grid(title, group, label, cell, keep=None) -> list[str]:
  """A Markdown table: one row per contender, one column per key of ``group``.

  ``cell(rows, name)`` renders a contender present in a column's rows; absent
  ones get a dash. ``keep(name)`` filters the contenders.
  """
  keys = list(group)
  names = []
  for key in keys:
    names += [n for n in group[key]["rows"] if n not in names]
  if keep is not None:
    names = [n for n in names if keep(n)]
  lines = [
    title,
    "",
    "| contender | " + " | ".join(label(k) for k in keys) + " |",
    "| --- |" + " ---: |" * len(keys),
  ]
  for name in names:
    cells = [
      cell(group[k]["rows"], name) if name in group[k]["rows"] else "–" for k in keys
    ]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines.append("")
  return lines


def markdown(res) -> str:
  m, bw = res["machine"], res["bandwidth"]
  gpu = m["backend"] != "cpu"
  out = [
    f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
    f"backend {m['backend']} ({m['device']}); jax {m['jax']}, optax {m['optax']}, "
    f"optaxtra {m['optaxtra']}, torch {m.get('torch', '–')} "
    f"({m.get('torch_device', '–')}, {m.get('torch_threads', '–')} threads), "
    f"numpy {m['numpy']}, Python {m['python']}."
    + (f" XLA_FLAGS={m['xla_flags']}" if m["xla_flags"] else ""),
    "",
    f"Copy bandwidth (bytes read + written per second, {bw['n']:.0e} float32): "
    + ", ".join(f"{k[:-4]} {v:.1f} GB/s" for k, v in bw.items() if k.endswith("_gbs"))
    + f". Roofline used below: jax_inplace_scale, {bw['roofline_gbs']:.1f} GB/s.",
    "",
  ]
  roof = bw["roofline_gbs"]
  one, trees = res["one_leaf"], res["trees"]

  def size(s):
    return f"{int(s):.0e}"

  if one:

    def time_cell(rows, name):
      r = _ratio(rows, name, "hand-fused")
      return f"{rows[name]['step_s'] * 1e3:.3g} ({_fmt(r)}x)"

    def bandwidth_cell(rows, name):
      g = rows[name]["gbs"]
      return f"{g:.1f} ({100 * g / roof:.0f}%)"

    out += _grid(
      "### One leaf: time per step (ms), and ratio to the hand-fused update",
      one,
      size,
      time_cell,
    )
    out += _grid(
      f"### One leaf: achieved bandwidth, {BYTES_PER_PARAM} B/param "
      f"(GB/s, and % of the {roof:.1f} GB/s roofline)",
      one,
      size,
      bandwidth_cell,
    )
  if trees:

    def tree_cell(rows, name):
      r = rows[name]
      cell = f"{r['step_s'] * 1e3:.3g} ({_fmt(_ratio(rows, name, 'optax-chain'))}x)"
      if "compile_s" in r:
        cell += f" \\| {r['trace_s']:.2f} \\| {r['compile_s']:.2f}"
      return cell

    total = next(iter(trees.values()))["total"]
    out += _grid(
      f"### Trees of about {total:.0e} entries: step (ms) | trace+lower s | "
      "XLA compile s, ratio of step to Optax's chain",
      trees,
      lambda c: f"{c} leaves",
      tree_cell,
    )

  def kernel_cell(rows, name):
    k = rows[name].get("kernels")
    return "–" if not k else f"{k['array_fusions']}+{k['array_copies']}"

  for title, group in (("one leaf, size", one), ("tree, leaves", trees)):
    if group:
      out += _grid(
        "### Compiled kernels: fusions + copies on arrays (scalars excluded), " + title,
        group,
        str,
        kernel_cell,
        keep=lambda name, group=group: any(
          "kernels" in d["rows"].get(name, {}) for d in group.values()
        ),
      )
  if res.get("fixed"):
    out += fixed_table(res["fixed"])
  out += [
    "### Targets (ratios within this run)",
    "",
    "Judged on the ratio of medians; the ratio of the fastest samples (less "
    "exposed to load from other processes) is shown beside it.",
    "",
    "| target | value | of minima | limit | met |",
    "| --- | ---: | ---: | ---: | :---: |",
  ]

  def target(label, value, limit, value_min=None):
    ok = "–" if value is None else ("yes" if value <= limit else "**no**")
    out.append(
      f"| {label} | {_fmt(value, '.3f')} | {_fmt(value_min, '.3f')} | {limit} | {ok} |"
    )

  def ratios(rows, a, b):
    return _ratio(rows, a, b), _ratio(rows, a, b, "step_s_min")

  for s, d in one.items():
    rows = d["rows"]
    med, low = ratios(rows, "optaxtra", "hand-fused")
    target(f"optaxtra / hand-fused, n={int(s):.0e}", med, 1.05 if gpu else 1.10, low)
    med, low = ratios(rows, "optaxtra-noclip-bc", "optax-chain")
    target(f"optaxtra(clip=False, bc) / optax chain, n={int(s):.0e}", med, 1.05, low)
    d_hf = _ratio(rows, "hand-fused+count", "hand-fused")
    target(
      f"clip count share of the hand-fused step, n={int(s):.0e}",
      None if d_hf is None else 1 - 1 / d_hf,
      0.05,
    )
    for what, name, limit in (
      ("clip count", "optaxtra+track", 0.05),
      ("record_norm", "optaxtra+norm", 0.10),
    ):
      d = _ratio(rows, name, "optaxtra")
      if d is not None:
        target(f"{what} share of the {name} step, n={int(s):.0e}", 1 - 1 / d, limit)
    d_avg = _ratio(rows, "optaxtra+average", "optaxtra")
    if d_avg is not None:
      # The step reads params, grads, mu, nu and writes params, mu, nu: 7
      # arrays; the average adds one read and one write: 9 / 7 at best.
      target(
        f"optaxtra+average / optaxtra (memory bound: 9/7 = 1.29), n={int(s):.0e}",
        d_avg,
        9 / 7 * 1.10,
      )
    if gpu and int(s) >= 100_000_000 and "optaxtra" in rows:
      target(
        f"1 - optaxtra bandwidth / roofline, n={int(s):.0e}",
        1 - rows["optaxtra"]["gbs"] / roof,
        0.15,
      )
  if "1000" in trees:
    rows = trees["1000"]["rows"]
    for name in ("optaxtra-noclip-bc", "optaxtra", "optaxtra+track"):
      med, low = ratios(rows, name, "optax-chain")
      target(f"1000 leaves: {name} step / optax chain", med, 1.05, low)
      target(
        f"1000 leaves: {name} trace+compile / optax chain",
        _ratio(rows, name, "optax-chain", "compile_total_s"),
        1.25,
      )
  out.append("")
  return "\n".join(out)


def fixed_table(fixed) -> list[str]:
  """The fixed cost per step: µs, differences to the baselines, state leaves."""
  rows = fixed["rows"]
  # Optax's chain always has its column (a dash where it was not timed).
  bases = [b for b in FIXED_BASELINES if b in rows or b == "optax-chain"]
  base_cols = "".join(
    " | more than Optax's chain" if b == "optax-chain" else f" | more than {b}"
    for b in bases
  )
  out = [
    f"### Fixed cost per step (one leaf of {fixed['n']} entries): dispatch "
    "and scalar work",
    "",
    f"| contender | µs per step (median) | minimum{base_cols} "
    "| state leaves | scalar kernels |",
    "| --- | ---: | ---: |" + " ---: |" * len(bases) + " ---: | ---: |",
  ]
  for name, r in rows.items():
    k = r.get("kernels")
    scal = (
      "–"
      if not k
      else str(k["fusions"] + k["copies"] - k["array_fusions"] - k["array_copies"])
    )
    more = "".join(
      f" | {(r['step_s'] - rows[b]['step_s']) * 1e6:+.1f}" if b in rows else " | –"
      for b in bases
    )
    out.append(
      f"| {name} | {r['step_s'] * 1e6:.1f} | {r['step_s_min'] * 1e6:.1f}{more} "
      f"| {r.get('state_leaves', '–')} | {scal} |"
    )
  out.append("")
  return out
