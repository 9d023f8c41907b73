"""scikit-learn's bundled digits (8x8 images, 10 classes), split for tests.

The data ship inside the scikit-learn wheel, so loading them needs no network.
The split is fixed (a seeded permutation), so every test sees the same data.
"""

from __future__ import annotations

import functools

import numpy as np

NUM_CLASSES = 10
NUM_FEATURES = 64


@functools.cache
def load(test_fraction: float = 0.25, seed: int = 0):
  """Returns ``(x_train, y_train, x_test, y_test)`` as NumPy arrays.

  Pixels are scaled from 0..16 to [0, 1] as float32; labels are int32.
  The returned arrays are read-only, since they are cached and shared.
  """
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  y = y.astype(np.int32)
  perm = np.random.default_rng(seed).permutation(len(x))
  n_test = round(len(x) * test_fraction)
  test, train = perm[:n_test], perm[n_test:]
  out = (x[train], y[train], x[test], y[test])
  for a in out:
    a.setflags(write=False)
  return out


def batches(num_steps: int, batch_size: int, seed: int = 0):
  """``num_steps`` minibatch index arrays over the training set, epoch by epoch.

  Returns an int32 array of shape ``(num_steps, batch_size)``, so a training
  loop can index the data inside ``jax.lax.scan`` or a Python loop alike.
  """
  n = len(load()[0])
  rng = np.random.default_rng(seed)
  per_epoch = n // batch_size
  rows = []
  while len(rows) < num_steps:
    perm = rng.permutation(n)
    rows.extend(perm[i * batch_size : (i + 1) * batch_size] for i in range(per_epoch))
  return np.asarray(rows[:num_steps], dtype=np.int32)
