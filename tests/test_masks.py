"""Tests of optaxtra.masks: paths, path masks, labels, freezing.

On hand-written trees (Haiku's ``module/~/linear_0`` names included), with every
Optax entry point that takes a mask or labels, under jax.jit and without. The
same on real Flax nnx, Flax linen and Haiku models is in test_masks_frameworks.py.
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxtra
from optaxtra import masks

BERT_EXCLUDE = ["LayerNorm", "layer_norm", "bias"]


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def jit(request):
  return jax.jit if request.param else (lambda f: f)


def leaves_by_path(tree):
  """{path: leaf} through an independent walk of nested dicts and lists."""
  out = {}

  def walk(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(f"{prefix}/{k}" if prefix else str(k), v)
    elif isinstance(node, list | tuple):
      for i, v in enumerate(node):
        walk(f"{prefix}/{i}" if prefix else str(i), v)
    else:
      out[prefix] = node

  walk("", tree)
  return out


def bert_do_use_weight_decay(param_name, weight_decay_rate, exclude):
  """BERT's AdamWeightDecayOptimizer._do_use_weight_decay, verbatim."""
  if not weight_decay_rate:
    return False
  if exclude:
    for r in exclude:
      if re.search(r, param_name) is not None:
        return False
  return True


# BERT-base's variable names (one layer), as in its TF checkpoints.
BERT_NAMES = [
  "bert/embeddings/word_embeddings",
  "bert/embeddings/token_type_embeddings",
  "bert/embeddings/position_embeddings",
  "bert/embeddings/LayerNorm/gamma",
  "bert/embeddings/LayerNorm/beta",
  "bert/encoder/layer_0/attention/self/query/kernel",
  "bert/encoder/layer_0/attention/self/query/bias",
  "bert/encoder/layer_0/attention/output/dense/kernel",
  "bert/encoder/layer_0/attention/output/dense/bias",
  "bert/encoder/layer_0/attention/output/LayerNorm/gamma",
  "bert/encoder/layer_0/attention/output/LayerNorm/beta",
  "bert/encoder/layer_0/intermediate/dense/kernel",
  "bert/encoder/layer_0/intermediate/dense/bias",
  "bert/pooler/dense/kernel",
  "bert/pooler/dense/bias",
  "cls/predictions/output_bias",
]


def nest(names, make):
  tree = {}
  for name in names:
    node = tree
    *parents, last = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = make(name)
  return tree


# ---------------------------------------------------------------------------
# paths


class Pair(NamedTuple):
  w: jax.Array
  b: jax.Array


@dataclasses.dataclass
class Block:
  kernel: jax.Array
  extras: list


jax.tree_util.register_dataclass(
  Block, data_fields=["kernel", "extras"], meta_fields=[]
)


def test_paths_of_plain_containers():
  tree = {
    "pair": Pair(jnp.ones(2), jnp.zeros(1)),
    "block": Block(jnp.ones((2, 2)), [jnp.ones(1), None, (jnp.ones(3),)]),
    "seq": [jnp.ones(1)],
    "ints": {7: jnp.ones(1), 2: jnp.ones(1)},
  }
  assert masks.paths(tree) == [
    "block/kernel",
    "block/extras/0",
    "block/extras/2/0",
    "ints/2",
    "ints/7",
    "pair/w",
    "pair/b",
    "seq/0",
  ]
  assert masks.paths(jnp.ones(3)) == [""]
  assert masks.paths({}) == []
  assert masks.paths({"a": optax.MaskedNode(), "b": jnp.ones(1)}) == ["b"]


def test_paths_match_an_independent_walk():
  tree = nest(BERT_NAMES, lambda _: jnp.zeros(1))
  assert sorted(masks.paths(tree)) == sorted(leaves_by_path(tree))
  assert sorted(masks.paths(tree)) == sorted(BERT_NAMES)


# Haiku's parameter tree for an MLP and a LayerNorm, written out: module names
# with '/~/' as top-level keys (test_masks_frameworks.py checks a real one
# spells the same paths).
HAIKU_PATHS = [
  "layer_norm/offset",
  "layer_norm/scale",
  "mlp/~/linear_0/b",
  "mlp/~/linear_0/w",
  "mlp/~/linear_1/b",
  "mlp/~/linear_1/w",
]


def haiku_like_params():
  return {
    "layer_norm": {"offset": jnp.zeros(3), "scale": jnp.ones(3)},
    "mlp/~/linear_0": {"b": jnp.zeros(4), "w": jnp.ones((2, 4))},
    "mlp/~/linear_1": {"b": jnp.zeros(3), "w": jnp.ones((4, 3))},
  }


def linen_like_params():
  """The params of a small linen BERT-like model (embedding, LayerNorm, two
  Dense), written out; test_masks_frameworks.py checks that the real model's
  tree has these paths and shapes."""
  return {
    "LayerNorm": {"bias": jnp.zeros(4), "scale": jnp.ones(4)},
    "dense": {"bias": jnp.zeros(4), "kernel": jnp.ones((4, 4))},
    "output": {"bias": jnp.zeros(3), "kernel": jnp.ones((4, 3))},
    "word_embeddings": {"embedding": jnp.ones((11, 4))},
  }


def test_paths_of_haiku_module_names():
  assert masks.paths(haiku_like_params()) == HAIKU_PATHS


# ---------------------------------------------------------------------------
# path_mask semantics


def test_path_mask_is_berts_exclusion_rule():
  tree = nest(BERT_NAMES, lambda _: jnp.zeros(1))
  mask = masks.path_mask(exclude=BERT_EXCLUDE, strict=False)(tree)
  got = leaves_by_path(mask)
  want = {n: bert_do_use_weight_decay(n, 0.01, BERT_EXCLUDE) for n in BERT_NAMES}
  assert got == want
  assert sum(want.values()) == 7  # embeddings and kernels decay


@pytest.mark.parametrize(
  "include, exclude",
  [
    (None, None),
    ("kernel", None),
    (["^bert/encoder/", "^cls/"], None),
    (None, ["LayerNorm", "bias"]),
    (["encoder"], ["bias$"]),
    (re.compile(r"dense/\w+$"), "pooler"),
  ],
)
def test_path_mask_include_exclude(include, exclude):
  tree = nest(BERT_NAMES, lambda _: jnp.zeros(1))

  def as_list(p):
    return [] if p is None else [p] if isinstance(p, str | re.Pattern) else p

  def want(name):
    inc = include is None or any(re.search(p, name) for p in as_list(include))
    return inc and not any(re.search(p, name) for p in as_list(exclude))

  got = leaves_by_path(masks.path_mask(include, exclude)(tree))
  assert got == {n: want(n) for n in BERT_NAMES}


def test_path_mask_keeps_structure_and_masked_nodes():
  tree = {"a": {"kernel": jnp.ones(2), "bias": None}, "b": optax.MaskedNode()}
  out = masks.path_mask(exclude="bias", strict=False)(tree)
  assert out == {"a": {"kernel": True, "bias": None}, "b": optax.MaskedNode()}
  assert jax.tree.structure(out) == jax.tree.structure(tree)


def test_strict_counts_parameters_hidden_by_an_outer_mask():
  # 'bias' only matches a parameter that an enclosing optax.masked replaced
  # by MaskedNode: the pattern still names a real parameter, so no error.
  tree = {"dense": {"kernel": jnp.ones(2), "bias": optax.MaskedNode()}}
  assert masks.path_mask(exclude="bias")(tree) == {
    "dense": {"kernel": True, "bias": optax.MaskedNode()}
  }


def test_path_mask_works_on_tracers_and_same_structure_twice():
  mask = masks.path_mask(exclude="bias")
  params = {"kernel": jnp.ones(2), "bias": jnp.ones(2)}
  eager = mask(params)
  traced = jax.jit(lambda p: jax.tree.map(lambda m, x: x * m, mask(p), p))(params)
  assert eager == mask(params) == {"kernel": True, "bias": False}
  np.testing.assert_array_equal(traced["bias"], 0.0)
  # Another structure with the same mask object.
  assert mask({"bias": jnp.ones(1), "w": [jnp.ones(1)]}) == {"bias": False, "w": [True]}


# ---------------------------------------------------------------------------
# path_mask errors


def test_strict_pattern_matching_nothing_names_it_and_lists_paths():
  params = linen_like_params()
  with pytest.raises(ValueError) as e:
    masks.path_mask(exclude=["LayerNrom", "bias"])(params)
  msg = str(e.value)
  assert "exclude pattern 'LayerNrom'" in msg
  assert "'LayerNorm/bias'" in msg  # real paths
  assert "similar names: 'LayerNorm'" in msg
  assert "strict=False" in msg
  # BERT's list holds 'layer_norm' too, which a linen BERT does not have.
  with pytest.raises(ValueError, match="exclude pattern 'layer_norm' matches no"):
    masks.path_mask(exclude=BERT_EXCLUDE)(params)
  assert jax.tree.leaves(masks.path_mask(exclude=BERT_EXCLUDE, strict=False)(params))


def test_strict_include_and_case_hint():
  params = linen_like_params()
  with pytest.raises(ValueError, match="include pattern 'layernorm'") as e:
    masks.path_mask(include="layernorm")(params)
  assert "ignoring case it would match 'LayerNorm/bias'" in str(e.value)
  with pytest.raises(ValueError, match="The tree has no parameters"):
    masks.path_mask(include="x")({})


def test_invalid_regex_is_reported_at_construction():
  with pytest.raises(ValueError, match=r"exclude pattern '\[bias' is not a valid") as e:
    masks.path_mask(exclude=["LayerNorm", "[bias"])
  assert "re.escape" in str(e.value)
  with pytest.raises(ValueError, match=r"rules pattern 'a\(' is not a valid"):
    masks.path_labels({"a(": "x"})


@pytest.mark.parametrize(
  "kwargs, err, match",
  [
    ({"include": 5}, TypeError, "include must be a regular expression"),
    ({"include": b"bias"}, TypeError, "include must be a regular expression"),
    ({"exclude": ["bias", 3]}, TypeError, "every exclude pattern must be a str"),
    ({"exclude": [re.compile(b"x")]}, TypeError, "bytes pattern"),
    ({"exclude": {"bias": 1}}, TypeError, "exclude must be a regular"),
    ({"include": []}, ValueError, "include is empty"),
    ({"strict": "yes"}, TypeError, "strict must be True or False"),
  ],
)
def test_path_mask_bad_arguments(kwargs, err, match):
  with pytest.raises(err, match=match):
    masks.path_mask(**kwargs)


def test_inject_hyperparams_needs_static_args_and_then_works(jit):
  params = {"kernel": jnp.ones(2), "bias": jnp.ones(2)}
  mask = masks.path_mask(exclude="bias")
  # inject_hyperparams calls callables as schedules of the step count: without
  # static_args the mask would silently become True (decay everything).
  with pytest.raises(TypeError, match="static_args"):
    optax.inject_hyperparams(optax.adamw)(0.1, weight_decay=0.5, mask=mask).init(params)
  tx = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
    0.1, weight_decay=0.5, mask=mask
  )
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jit(tx.update)(zeros, state, params)
  np.testing.assert_allclose(updates["kernel"], -0.05, rtol=1e-6)
  np.testing.assert_array_equal(updates["bias"], 0.0)


# ---------------------------------------------------------------------------
# path_labels


def test_path_labels_first_match_wins_and_default():
  tree = nest(BERT_NAMES, lambda _: jnp.zeros(1))
  rules = {"LayerNorm": "norm", "bias": "bias", "^bert/encoder/": "encoder"}
  got = leaves_by_path(masks.path_labels(rules, default="rest")(tree))

  def want(name):
    for pattern, label in rules.items():
      if re.search(pattern, name):
        return label
    return "rest"

  assert got == {n: want(n) for n in BERT_NAMES}
  assert got["bert/encoder/layer_0/attention/output/LayerNorm/gamma"] == "norm"
  # The same rules as a list of pairs.
  pairs = masks.path_labels(list(rules.items()), default="rest")(tree)
  assert leaves_by_path(pairs) == got


def test_path_labels_unmatched_paths_are_listed():
  params = haiku_like_params()
  with pytest.raises(ValueError) as e:
    masks.path_labels({"^mlp/": "mlp"})(params)
  msg = str(e.value)
  assert "2 parameter path(s) match no rule" in msg
  assert "'layer_norm/offset', 'layer_norm/scale'" in msg
  assert "default=" in msg


def test_path_labels_strict_rules():
  params = haiku_like_params()
  with pytest.raises(ValueError, match="rule 'LayerNorm' -> 'norm' matches no"):
    masks.path_labels({"LayerNorm": "norm"}, default="rest")(params)
  with pytest.raises(ValueError, match=r"labels nothing.*earlier rule.*'mlp'"):
    masks.path_labels({"mlp": "a", "linear_0": "b"}, default="rest")(params)
  relaxed = masks.path_labels(
    {"mlp": "a", "linear_0": "b", "LayerNorm": "c"}, default="rest", strict=False
  )(params)
  assert set(jax.tree.leaves(relaxed)) == {"a", "rest"}


@pytest.mark.parametrize(
  "args, err, match",
  [
    (("bias",), TypeError, "rules must be a mapping"),
    (([("bias", "a", "b")],), TypeError, r"\(pattern, label\) pairs"),
    (({},), ValueError, "rules is empty"),
    (({"bias": None},), TypeError, "is None, which is not a label"),
    (({"bias": ("a", "b")},), TypeError, "is a container"),
    (({"bias": "a"}, ["x"]), TypeError, "default .* is a container"),
    (({3: "a"},), TypeError, "must be a str"),
  ],
)
def test_path_labels_bad_arguments(args, err, match):
  with pytest.raises(err, match=match):
    masks.path_labels(*args)


def test_path_labels_default_only():
  labels = masks.path_labels({}, default="all")
  assert labels({"a": jnp.ones(1)}) == {"a": "all"}


# ---------------------------------------------------------------------------
# min_ndim


def test_min_ndim():
  params = linen_like_params()
  got = leaves_by_path(masks.min_ndim(2)(params))
  want = {p: np.ndim(x) >= 2 for p, x in leaves_by_path(params).items()}
  assert got == want
  assert sum(got.values()) == 3
  assert all(jax.tree.leaves(masks.min_ndim(0)(params)))
  tree = {"a": optax.MaskedNode(), "b": jnp.ones((2, 2))}
  assert masks.min_ndim(2)(tree) == {"a": optax.MaskedNode(), "b": True}
  with pytest.raises(TypeError, match="static_args"):
    masks.min_ndim(1)(jnp.int32(3))


@pytest.mark.parametrize(
  "n, err", [(-1, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_min_ndim_bad_n(n, err):
  with pytest.raises(err, match="min_ndim: n must be"):
    masks.min_ndim(n)


# ---------------------------------------------------------------------------
# Every Optax entry point that takes a mask or labels.


def tree_params():
  rng = np.random.default_rng(0)
  return nest(BERT_NAMES, lambda _: jnp.asarray(rng.normal(size=(2, 3)), jnp.float32))


def decay_flags(params):
  return {n: bert_do_use_weight_decay(n, 0.01, BERT_EXCLUDE) for n in BERT_NAMES}


DECAY = masks.path_mask(exclude=BERT_EXCLUDE, strict=False)


@pytest.mark.parametrize(
  "make",
  [
    lambda: optax.masked(optax.add_decayed_weights(0.5), DECAY),
    lambda: optax.add_decayed_weights(0.5, mask=DECAY),
    lambda: optax.chain(
      optaxtra.add_decayed_weights_decoupled(0.5, mask=DECAY, schedule=None),
      optax.scale(-1.0),
    ),
    lambda: optax.transforms.partition(
      {"decay": optax.add_decayed_weights(0.5), "none": optax.identity()},
      masks.path_labels({"|".join(BERT_EXCLUDE): "none"}, default="decay"),
    ),
  ],
  ids=["masked", "add_decayed_weights", "decoupled", "partition"],
)
def test_decay_only_where_the_mask_says(make, jit):
  params = tree_params()
  tx = make()
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jit(tx.update)(zeros, state, params)
  flags = decay_flags(params)
  for name, u in leaves_by_path(updates).items():
    p = np.asarray(leaves_by_path(params)[name], np.float64)
    np.testing.assert_allclose(u, 0.5 * p if flags[name] else 0.0, rtol=1e-7)


def test_adamax_clipped_weight_decay_mask(jit):
  params = tree_params()
  tx = optaxtra.adamax_clipped(0.1, weight_decay=0.5, weight_decay_mask=DECAY)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jit(tx.update)(zeros, state, params)
  flags = decay_flags(params)
  for name, u in leaves_by_path(updates).items():
    p = np.asarray(leaves_by_path(params)[name], np.float64)
    # Zero gradients: Adamax's step is 0, leaving the decay -lr * wd * p.
    np.testing.assert_allclose(u, -0.05 * p if flags[name] else 0.0, rtol=1e-6)


def test_masks_inside_masks_see_masked_nodes(jit):
  # The outer mask hides the pooler and cls; the inner strict mask's 'bias'
  # and the labels still apply to what the inner transforms see.
  params = tree_params()
  inner = optax.transforms.partition(
    {
      "decay": optax.masked(optax.add_decayed_weights(0.5), DECAY),
      "zero": optax.set_to_zero(),
    },
    masks.path_labels({"embeddings": "zero"}, default="decay"),
  )
  tx = optax.masked(inner, masks.path_mask(include="^bert/(embeddings|encoder)/"))
  updates, _ = jit(tx.update)(
    jax.tree.map(jnp.ones_like, params), tx.init(params), params
  )
  for name, u in leaves_by_path(updates).items():
    p = np.asarray(leaves_by_path(params)[name], np.float64)
    if not re.search("^bert/(embeddings|encoder)/", name):
      want = 1.0  # passed through the outer mask untouched
    elif "embeddings" in name:
      want = 0.0
    else:
      want = 1.0 + (0.5 * p if decay_flags(params)[name] else 0.0)
    np.testing.assert_allclose(u, want * np.ones_like(p), rtol=1e-7)


@pytest.mark.parametrize("api", ["partition", "multi_transform"])
def test_two_learning_rates(api, jit):
  params = tree_params()
  labels = masks.path_labels({"^bert/encoder/": "slow"}, default="fast")
  make = optax.transforms.partition if api == "partition" else optax.multi_transform
  tx = make({"slow": optax.sgd(0.01), "fast": optax.sgd(0.1)}, labels)
  grads = jax.tree.map(lambda p: p * 3.0 + 1.0, params)
  updates, _ = jit(tx.update)(grads, tx.init(params), params)
  for name, u in leaves_by_path(updates).items():
    lr = 0.01 if name.startswith("bert/encoder/") else 0.1
    g = np.asarray(leaves_by_path(grads)[name], np.float64)
    np.testing.assert_allclose(u, -lr * g, rtol=1e-6)


@pytest.mark.skipif(
  not hasattr(optax, "freeze"), reason=f"no optax.freeze in optax {optax.__version__}"
)
def test_optax_freeze_accepts_a_path_mask(jit):
  params = tree_params()
  tx = optax.chain(
    optax.freeze(masks.path_mask(include="^bert/embeddings/")), optax.sgd(1.0)
  )
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jit(tx.update)(grads, tx.init(params), params)
  for name, u in leaves_by_path(updates).items():
    np.testing.assert_array_equal(u, 0.0 if "embeddings" in name else -1.0)


# ---------------------------------------------------------------------------
# with_frozen (masks.freeze before 0.2)


def test_freeze_forms_agree(jit):
  params = tree_params()
  grads = jax.tree.map(jnp.ones_like, params)
  frozen_re = "^bert/(embeddings|pooler)/"
  bools = nest(BERT_NAMES, lambda n: bool(re.search(frozen_re, n)))
  results = []
  for frozen in [frozen_re, [frozen_re], masks.path_mask(include=frozen_re), bools]:
    tx = optaxtra.with_frozen(optax.sgd(1.0), frozen=frozen)
    updates, _ = jit(tx.update)(grads, tx.init(params), params)
    results.append(leaves_by_path(updates))
  for r in results:
    for name, u in r.items():
      np.testing.assert_array_equal(u, 0.0 if re.search(frozen_re, name) else -1.0)


def test_freeze_nothing_trainable_and_bad_arguments():
  params = tree_params()
  with pytest.raises(ValueError, match=r"every parameter is frozen \(16 of 16\)"):
    optaxtra.with_frozen(optax.adam(1e-3), frozen="^(bert|cls)/").init(params)
  with pytest.raises(
    ValueError, match="with_frozen: frozen pattern 'encodr' matches no"
  ):
    optaxtra.with_frozen(optax.adam(1e-3), frozen="encodr").init(params)
  # Its own argument named, never path_mask's.
  with pytest.raises(
    TypeError, match=r"with_frozen: every frozen pattern must be a str"
  ):
    optaxtra.with_frozen(optax.adam(1e-3), frozen=["encoder", 1])
  with pytest.raises(
    TypeError, match=r"inner must be an optax\.GradientTransformation"
  ):
    optaxtra.with_frozen(lambda x: x, frozen="bert")
  with pytest.raises(ValueError, match="frozen is empty"):
    optaxtra.with_frozen(optax.adam(1e-3), frozen=[])
  with pytest.raises(TypeError, match="got None"):
    optaxtra.with_frozen(optax.adam(1e-3), frozen=None)
  with pytest.raises(TypeError, match="mask leaves must be True or False"):
    optaxtra.with_frozen(optax.adam(1e-3), frozen={"bert": "yes", "cls": False}).init(
      params
    )


def test_masks_freeze_is_a_deprecated_alias_of_with_frozen(jit):
  params = tree_params()
  grads = jax.tree.map(jnp.ones_like, params)
  with pytest.warns(DeprecationWarning, match=r"optaxtra\.with_frozen"):
    old = masks.freeze(optax.adam(0.1), frozen="^bert/embeddings/")
  new = optaxtra.with_frozen(optax.adam(0.1), frozen="^bert/embeddings/")
  got, _ = jit(old.update)(grads, old.init(params), params)
  want, _ = jit(new.update)(grads, new.init(params), params)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  with (
    pytest.warns(DeprecationWarning),
    pytest.raises(ValueError, match="with_frozen:"),
  ):
    masks.freeze(optax.adam(0.1), frozen="^(bert|cls)/").init(params)


# ---------------------------------------------------------------------------
# strict: every pattern must have an effect (include vs exclude)

# linen_like_params' paths: LayerNorm/bias, LayerNorm/scale, dense/bias,
# dense/kernel, output/bias, output/kernel, word_embeddings/embedding.
EVERY = ["bias", "scale", "kernel", "embedding"]


def plain_rule(include, exclude):
  """The mask's rule (include, then exclude), written independently."""

  def as_list(p):
    return [] if p is None else [p] if isinstance(p, str) else list(p)

  def selected(path):
    inc = include is None or any(re.search(p, path) for p in as_list(include))
    return inc and not any(re.search(p, path) for p in as_list(exclude))

  return selected


@pytest.mark.parametrize(
  "include, exclude, match",
  [
    ("kernel", "kernel", r"'kernel' selects nothing.*pattern\(s\) 'kernel', and"),
    (["kernel", "bias"], "bias", r"include pattern 'bias' selects nothing"),
    ("dense", ["kernel", "bias"], r"'dense' selects nothing.*'kernel', 'bias'"),
    ("^output/", ["LayerNorm", "output"], r"'\^output/' selects.*s\) 'output',"),
    (None, EVERY, r"pattern\(s\) 'bias', 'scale', 'kernel', 'embedding' match"),
    (None, "bias|", r"'bias\|' matches the empty string, hence every path"),
    ("dense", "|bias", r"'dense' selects nothing.*'\|bias' matches the empty"),
    ("kernel|", None, r"include pattern 'kernel\|' matches the empty string"),
    (["dense", ""], "bias", r"include pattern '' matches the empty string"),
    ("^dense/", "embedding", r"exclude pattern 'embedding' removes nothing"),
    ("kernel", ["bias", "^dense/"], r"exclude pattern 'bias' removes nothing"),
  ],
)
def test_strict_rejects_patterns_without_effect(include, exclude, match):
  params = linen_like_params()
  with pytest.raises(ValueError, match=match):
    masks.path_mask(include, exclude)(params)
  # strict=False keeps the plain rule, whatever the patterns match.
  got = leaves_by_path(masks.path_mask(include, exclude, strict=False)(params))
  rule = plain_rule(include, exclude)
  assert got == {p: rule(p) for p in leaves_by_path(params)}


@pytest.mark.parametrize(
  "include, exclude, selected",
  [
    ("dense|output", "bias", ["dense/kernel", "output/kernel"]),
    ("kernel", "^output/", ["dense/kernel"]),
    (None, ["bias", "kernel"], ["LayerNorm/scale", "word_embeddings/embedding"]),
    ("^LayerNorm/", "scale", ["LayerNorm/bias"]),
    (["kernel", "embedding"], "dense", ["output/kernel", "word_embeddings/embedding"]),
    (r"(^|/)bias$", None, ["LayerNorm/bias", "dense/bias", "output/bias"]),
    ("^$|kernel", None, ["dense/kernel", "output/kernel"]),
  ],
)
def test_strict_allows_carving_out(include, exclude, selected):
  got = leaves_by_path(masks.path_mask(include, exclude)(linen_like_params()))
  assert sorted(p for p, keep in got.items() if keep) == selected


def test_include_excluded_message_names_both_patterns_paths_and_fix():
  params = nest(BERT_NAMES, lambda _: jnp.zeros(1))
  mask = masks.path_mask(include=["kernel", "embeddings"], exclude=["kernel", "bias"])
  with pytest.raises(ValueError) as e:
    mask(params)
  msg = str(e.value)
  assert "include pattern 'kernel' selects nothing" in msg
  assert "exclude pattern(s) 'kernel'," in msg and "'bias'" not in msg
  assert "'bert/encoder/layer_0/attention/self/query/kernel'" in msg  # a path
  assert "(^|/)bias$" in msg and "drop the include pattern" in msg
  assert "strict=False" in msg


def test_masked_nodes_count_for_the_include_exclude_checks():
  # Inside an optax.masked / partition group the excluded parameter may be the
  # only real one: the hidden kernel still counts as selected, so no error.
  tree = {"dense": {"kernel": optax.MaskedNode(), "bias": jnp.ones(2)}}
  out = masks.path_mask(exclude="bias")(tree)
  assert out == {"dense": {"kernel": optax.MaskedNode(), "bias": False}}
  with pytest.raises(ValueError, match="include pattern 'bias' selects nothing"):
    masks.path_mask(include="bias", exclude="dense/bias")(tree)


def test_the_single_array_path_may_be_matched_by_an_empty_pattern():
  assert masks.path_mask(include="^$")(jnp.ones(3)) is True
  assert masks.path_labels({"": "all"})(jnp.ones(3)) == "all"


# ---------------------------------------------------------------------------
# Other inputs that used to give a wrong or useless answer, or a vague error.


def small_tree():
  return {"LayerNorm": {"gamma": None, "beta": jnp.zeros(2)}, "k": jnp.ones((2, 2))}


@pytest.mark.parametrize(
  "call, err, match",
  [
    (lambda t: masks.path_mask("gamma")(t), ValueError, "'LayerNorm/gamma', which"),
    (lambda t: masks.path_labels({"gamma": 1}, 2)(t), ValueError, "holds as None"),
    (lambda t: masks.path_labels({"k|": 1}, 2)(t), ValueError, r"'k\|' -> 1 matches"),
    (lambda t: masks.path_labels({"k": jnp.int32(1)}, 2), TypeError, "not hashable"),
    (lambda t: masks.path_labels({"k": 1}, {1, 2}), TypeError, "default .* hashable"),
    (
      lambda t: optaxtra.with_frozen(optax.sgd(1.0), frozen=("k", 3)),
      TypeError,
      "a str",
    ),
    (lambda t: masks.min_ndim(2.0), TypeError, "min_ndim: n must be an int"),
    (lambda t: masks.min_ndim("2"), TypeError, "min_ndim: n must be an int"),
    (lambda t: masks.min_ndim(None), TypeError, "min_ndim: n must be an int"),
    (lambda t: masks.min_ndim(np.bool_(True)), TypeError, "int, got the bool"),
    (lambda t: masks.min_ndim(jnp.bool_(True)), TypeError, "int, got the bool"),
    (lambda t: masks.min_ndim(jnp.float32(2)), TypeError, "n must be an int"),
    (lambda t: masks.min_ndim(jnp.array([2])), TypeError, "n must be an int"),
    (lambda t: masks.min_ndim(-1), ValueError, r"-1; min_ndim\(0\) selects every"),
  ],
)
def test_bad_inputs_raise_naming_the_argument(call, err, match):
  with pytest.raises(err, match=match):
    call(small_tree())


@pytest.mark.parametrize(
  "call, want",
  [
    (masks.paths, ["LayerNorm/beta", "k"]),  # None is no parameter
    (masks.path_mask(exclude="beta"), {"LayerNorm": {"gamma": None, "beta": False}}),
    (lambda t: masks.paths(jnp.int32(3)), [""]),  # no inject_hyperparams hint
    (lambda t: masks.paths(7), [""]),
    (masks.min_ndim(np.int64(2)), {"LayerNorm": {"gamma": None, "beta": False}}),
    (masks.min_ndim(jnp.int32(1)), {"LayerNorm": {"gamma": None, "beta": True}}),
    (lambda t: repr(masks.min_ndim(jnp.int32(2))), "min_ndim(2)"),
  ],
)
def test_inputs_that_compute_right(call, want):
  got = call(small_tree())
  if isinstance(want, dict):  # the mask's value for 'k' (2-D) is True
    want = {**want, "k": True}
  assert got == want


@pytest.mark.parametrize(
  "frozen",
  [{"^bert/embeddings/", "^bert/pooler/"}, frozenset({"^bert/(embeddings|pooler)/"})],
)
def test_freeze_takes_a_set_of_patterns(frozen, jit):
  params = tree_params()
  tx = optaxtra.with_frozen(optax.sgd(1.0), frozen=frozen)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jit(tx.update)(grads, tx.init(params), params)
  for name, u in leaves_by_path(updates).items():
    frozen_here = re.search("^bert/(embeddings|pooler)/", name)
    np.testing.assert_array_equal(u, 0.0 if frozen_here else -1.0)


# ---------------------------------------------------------------------------
# path_mask(optional=...): patterns that may match nothing, the rest strict


def test_optional_patterns_may_match_nothing_the_others_stay_strict():
  params = linen_like_params()  # has 'LayerNorm', not 'layer_norm'
  mask = masks.path_mask(exclude=BERT_EXCLUDE, optional=["LayerNorm", "layer_norm"])
  got = leaves_by_path(mask(params))
  rule = plain_rule(None, BERT_EXCLUDE)
  assert got == {p: rule(p) for p in leaves_by_path(params)}
  # The optional 'LayerNorm' still acts where it matches:
  assert got["LayerNorm/scale"] is False and got["dense/kernel"] is True
  # and 'bias', not optional, is still checked: on a tree without biases ...
  no_bias = {"dense": {"kernel": jnp.ones((2, 2))}, "ln": {"scale": jnp.ones(2)}}
  with pytest.raises(ValueError, match="exclude pattern 'bias' matches no"):
    mask(no_bias)
  # ... while both LayerNorm spellings may be absent.
  ok = masks.path_mask(exclude=BERT_EXCLUDE, optional=["LayerNorm", "layer_norm"])
  assert ok({"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}) == {
    "dense": {"kernel": True, "bias": False}
  }


def test_optional_covers_every_no_effect_check_for_that_pattern_only():
  params = linen_like_params()
  # An optional exclude removing nothing include selects; an optional include
  # whose every match is excluded: no error, and the plain rule.
  for include, exclude, optional in [
    ("^dense/", "embedding", "embedding"),
    (["kernel", "bias"], "bias", "bias"),
    ("kernel", ["bias", "^dense/"], "bias"),
  ]:
    got = leaves_by_path(masks.path_mask(include, exclude, optional=optional)(params))
    rule = plain_rule(include, exclude)
    assert got == {p: rule(p) for p in leaves_by_path(params)}
  # A pattern matching the empty string is still an error: it matches every
  # path, which no list shared between models means.
  with pytest.raises(ValueError, match="matches the empty string"):
    masks.path_mask(include="kernel|", optional="kernel|")(params)


def test_optional_takes_compiled_patterns_and_names_a_stray_one():
  params = linen_like_params()
  rx = re.compile("layer_norm")
  mask = masks.path_mask(exclude=[rx, "bias"], optional=[rx])
  assert leaves_by_path(mask(params))["dense/kernel"] is True
  assert "optional=['layer_norm']" in repr(mask)
  with pytest.raises(ValueError, match=r"optional names the pattern 'LayerNrom'"):
    masks.path_mask(exclude=["LayerNorm", "bias"], optional=["LayerNrom"])
  with pytest.raises(ValueError, match=r"'bias', which is in neither include"):
    masks.path_mask(include="kernel", optional="bias")
  with pytest.raises(TypeError, match="optional"):
    masks.path_mask(exclude="bias", optional=[1])


def test_no_match_message_recommends_optional_for_that_pattern():
  params = linen_like_params()
  with pytest.raises(ValueError) as e:
    masks.path_mask(exclude=BERT_EXCLUDE)(params)
  msg = str(e.value)
  assert "exclude pattern 'layer_norm' matches no parameter path" in msg
  assert "pass optional=['layer_norm']" in msg
  assert "still acts where it matches" in msg
  assert "strict=False turns the check off for every pattern" in msg
  assert "Neither changes which parameters are selected" in msg
  # Following the advice works, and selects what strict=False selects.
  a = masks.path_mask(exclude=BERT_EXCLUDE, optional=["layer_norm"])(params)
  b = masks.path_mask(exclude=BERT_EXCLUDE, strict=False)(params)
  assert a == b


@pytest.mark.parametrize("pattern", ["layernorm", "LAYERNORM", "layerNorm"])
def test_case_hint_covers_hugging_face_spellings(pattern):
  # Hugging Face's no-decay lists spell it 'layernorm', 'LayerNorm', ...: the
  # hint names the case-insensitive pattern and that it selects those paths.
  params = nest(BERT_NAMES, lambda _: jnp.zeros(1))
  with pytest.raises(ValueError) as e:
    masks.path_mask(exclude=[pattern, "bias"])(params)
  msg = str(e.value)
  assert "ignoring case it would match 'bert/embeddings/LayerNorm/beta'" in msg
  assert f"the pattern '(?i){pattern}' ignores case, and then selects those" in msg
  fixed = masks.path_mask(exclude=[f"(?i){pattern}", "bias"])(params)
  assert leaves_by_path(fixed)["bert/embeddings/LayerNorm/gamma"] is False


def test_path_labels_no_match_recommends_strict_false_only():
  with pytest.raises(ValueError) as e:
    masks.path_labels({"layer_norm": "no_decay"}, default="decay")(linen_like_params())
  msg = str(e.value)
  assert "pass strict=False, which turns the check off for every rule" in msg
  assert "optional" not in msg


# ---------------------------------------------------------------------------
# all_of / any_of


def vit_like_params():
  return {
    "cls_token": jnp.zeros((1, 1, 4)),
    "pos_embed": jnp.zeros((1, 5, 4)),
    "patch_embed": {"proj": {"kernel": jnp.ones((2, 2, 3, 4)), "bias": jnp.zeros(4)}},
    "blocks": [
      {
        "norm1": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
        "attn": {"qkv": {"kernel": jnp.ones((4, 12)), "bias": jnp.zeros(12)}},
      }
    ],
    "head": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
  }


def test_all_of_and_any_of_combine_leaf_by_leaf(jit):
  params = vit_like_params()
  big = masks.min_ndim(2)
  named = masks.path_mask(exclude=["pos_embed", "cls_token"])
  both = masks.all_of(big, named)
  either = masks.any_of(big, named)
  got_all, got_any = leaves_by_path(both(params)), leaves_by_path(either(params))
  for path, leaf in leaves_by_path(params).items():
    is_big = np.ndim(leaf) >= 2
    is_named = not re.search("pos_embed|cls_token", path)
    assert got_all[path] is (is_big and is_named), path
    assert got_any[path] is (is_big or is_named), path
  # One mask: itself. Nested, and with a bool tree given directly.
  assert masks.all_of(big)(params) == big(params)
  tree = jax.tree.map(lambda _: True, params)
  assert masks.any_of(masks.all_of(big, named), tree)(params) == tree
  # As an Optax mask, under jit: decay only where both say so.
  tx = optax.add_decayed_weights(0.5, mask=both)
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jit(tx.update)(grads, tx.init(params), params)
  for path, u in leaves_by_path(updates).items():
    assert bool(jnp.any(u != 0)) is got_all[path], path


def test_combined_masks_keep_masked_nodes():
  # Inside optax.masked, the updates hold MaskedNode for hidden parameters.
  params = {"a": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
  inner = masks.all_of(masks.min_ndim(2), masks.path_mask(exclude="bias"))
  tx = optax.masked(
    optax.add_decayed_weights(1.0, mask=inner), {"a": {"kernel": True, "bias": False}}
  )
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_array_equal(updates["a"]["kernel"], jnp.ones((2, 2)))
  tree = {"a": {"kernel": jnp.ones((2, 2)), "bias": optax.MaskedNode()}}
  assert masks.any_of(masks.min_ndim(2))(tree) == {
    "a": {"kernel": True, "bias": optax.MaskedNode()}
  }


@pytest.mark.parametrize("combine", [masks.all_of, masks.any_of], ids=["all", "any"])
def test_combining_non_masks_raises_naming_them(combine):
  name = combine.__name__
  params = vit_like_params()
  with pytest.raises(TypeError, match=f"{name}: give at least one mask"):
    combine()
  for bad in ["bias", 0.5, None, {"a": 1.0}, {}]:
    with pytest.raises(TypeError, match=rf"{name}: masks\[1\] is .* not a mask"):
      combine(masks.min_ndim(2), bad)
  # A function returning floats, or a tree of other paths, is refused when called.
  floats = combine(lambda p: jax.tree.map(lambda x: 1.0, p))
  with pytest.raises(
    TypeError, match=r"masks\[0\] .* gives 1.0 at 'blocks/0/.*not a bool"
  ):
    floats(params)
  other = combine(masks.min_ndim(2), lambda p: {"head": True})
  with pytest.raises(ValueError, match=r"masks\[1\].*Only in the params: 'blocks/0/"):
    other(params)
  assert repr(combine(masks.min_ndim(2))) == f"{name}(min_ndim(2))"
