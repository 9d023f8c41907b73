"""BERT's ``create_optimizer`` learning rate, shared by the schedule and
optimizer tests: google-research/bert's TF1 code line for line, with TF ops."""

from __future__ import annotations


def create_learning_rate(tf, global_step, init_lr, num_train_steps, num_warmup_steps):
  """create_optimizer's learning rate, line for line (a TF tensor)."""
  learning_rate = tf.constant(value=init_lr, shape=[], dtype=tf.float32)
  learning_rate = tf.compat.v1.train.polynomial_decay(
    learning_rate,
    global_step,
    num_train_steps,
    end_learning_rate=0.0,
    power=1.0,
    cycle=False,
  )
  if callable(learning_rate):  # eager TF returns the schedule as a function
    learning_rate = learning_rate()
  if num_warmup_steps:
    global_steps_int = tf.cast(global_step, tf.int32)
    warmup_steps_int = tf.constant(num_warmup_steps, dtype=tf.int32)
    global_steps_float = tf.cast(global_steps_int, tf.float32)
    warmup_steps_float = tf.cast(warmup_steps_int, tf.float32)
    warmup_percent_done = global_steps_float / warmup_steps_float
    warmup_learning_rate = init_lr * warmup_percent_done
    is_warmup = tf.cast(global_steps_int < warmup_steps_int, tf.float32)
    learning_rate = (1.0 - is_warmup) * learning_rate + is_warmup * warmup_learning_rate
  return learning_rate
