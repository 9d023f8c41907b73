"""Carrying a training run's optimizer state across frameworks.

A run trained for a while in PyTorch, Keras 3 or TensorFlow 1 continues in
Optax (and a run in Optax continues in PyTorch) with its moments and its step
count, so the next update is the one the other framework would have made:

* :func:`from_torch` and :func:`to_torch`: ``torch.optim.Adam``, ``AdamW``,
  ``Adamax`` and ``SGD``;
* :func:`from_keras`: a built Keras 3 ``Adam``, ``AdamW`` or ``Adamax``;
* :func:`from_tf1_checkpoint`: a ``tf.compat.v1.train.Saver`` checkpoint of
  ``tf.compat.v1.train.AdamOptimizer`` or of the Neural GPU's Adamax.

Each checks ``tx`` against the hyperparameters the source recorded, by running
it on stand-ins of the params, and refuses a disagreement by name. PyTorch,
TensorFlow and Keras are imported only when a function needs them.
"""

from optaxtra.interop._common import transpose_linear
from optaxtra.interop._keras import from_keras
from optaxtra.interop._tf1 import from_tf1_checkpoint
from optaxtra.interop._torch import from_torch, to_torch

__all__ = [
  "from_keras",
  "from_tf1_checkpoint",
  "from_torch",
  "to_torch",
  "transpose_linear",
]
