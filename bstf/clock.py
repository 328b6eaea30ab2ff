"""The example clock: training time measured in examples seen.

When the batch size changes during training, optimizer steps stop measuring
time. bstf therefore measures time in *examples seen*; epochs are derived as
``examples / train_size``. Every schedule in bstf (learning rate, batch size,
momentum, accumulation steps) is a function of the epoch read from one
:class:`Clock`, which the training loop advances by the examples it actually
consumed and which is saved in checkpoints (it is a ``tf.Module``, so
``tf.train.Checkpoint(clock=clock)`` tracks it).

Example:

    clock = bstf.Clock(train_size=50_000)
    clock.advance(128)
    float(clock.epoch)  # 0.00256
"""

import numbers

import numpy as np
import tensorflow as tf


def epoch_at(examples, train_size):
    """The epoch at ``examples`` examples seen, exactly as :attr:`Clock.epoch` computes it in-graph.

    float64 division, float32 result (a ``numpy.float32``): host code that must agree with the in-graph
    schedules at a phase boundary (which phase an update starts in) uses this.
    """
    return np.float32(np.float64(examples) / float(train_size))


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be a positive integer, got {value!r} "
            f"of type {type(value).__name__}."
        )
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value}.")
    return int(value)


class Clock(tf.Module):
    """Training time as examples seen, with epochs derived.

    Args:
      train_size: number of examples in one epoch of the training set (> 0).
      examples: initial number of examples seen (>= 0), e.g. when resuming.
      name: name of the module (and prefix of its variable).

    The counter is an ``int64`` variable, exact for any realistic run. Under a
    ``tf.distribute`` strategy create the clock inside ``strategy.scope()``;
    its variable aggregates ``ONLY_FIRST_REPLICA``, so every replica may
    advance it by the *global* number of examples in replica context.
    """

    def __init__(self, train_size, examples=0, name="clock"):
        super().__init__(name=name)
        self.train_size = _check_positive_int("train_size", train_size)
        if isinstance(examples, bool) or not isinstance(examples, numbers.Integral):
            raise TypeError(f"examples must be a non-negative integer, got {examples!r}.")
        if examples < 0:
            raise ValueError(f"examples must be >= 0, got {examples}.")
        self.examples = tf.Variable(
            int(examples),
            dtype=tf.int64,
            trainable=False,
            name="examples_seen",
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    @property
    def epoch(self):
        """Epochs elapsed, a float32 tensor (computed in float64 for precision)."""
        return tf.cast(
            tf.cast(self.examples, tf.float64) / float(self.train_size), tf.float32
        )

    def advance(self, num_examples):
        """Adds ``num_examples`` (int or int tensor) to the examples seen."""
        if isinstance(num_examples, numbers.Integral) and not isinstance(num_examples, bool):
            if num_examples < 0:
                raise ValueError(f"num_examples must be >= 0, got {num_examples}.")
        return self.examples.assign_add(tf.cast(num_examples, tf.int64))

    def reset(self, examples=0):
        """Sets the examples seen (e.g. to 0 for a new run)."""
        if examples < 0:
            raise ValueError(f"examples must be >= 0, got {examples}.")
        self.examples.assign(int(examples))

    def numpy(self):
        """(examples, epoch) as Python numbers, read eagerly."""
        examples = int(self.examples.numpy())
        return examples, examples / self.train_size

    def __repr__(self):
        try:
            examples, epoch = self.numpy()
            return f"Clock(train_size={self.train_size}, examples={examples}, epoch={epoch:.4f})"
        except Exception:  # inside a graph
            return f"Clock(train_size={self.train_size})"
