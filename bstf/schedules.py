"""Schedules as functions of training time in epochs, read from a bstf.Clock.

Every schedule is a ``keras.optimizers.schedules.LearningRateSchedule`` (so a
learning-rate schedule drops into any Keras optimizer) whose real content is
``value(epoch)``: a pure function of the (float) epoch, written with TF ops so
it works eagerly on Python numbers and inside a compiled train step on tensors.

Keras optimizers call ``schedule(step)`` with their update counter; that count
is *not* time once the batch changes, so a bstf schedule ignores it and reads
the epoch from the :class:`bstf.Clock` it is bound to (``schedule.bind(clock)``;
``bstf.fit`` binds everything it is given). Calling an unbound schedule with a
step raises a clear error rather than silently treating steps as time.
"""

import keras
import tensorflow as tf

from bstf.clock import Clock


class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """Base class: a function of the epoch, bound to a :class:`bstf.Clock`.

    Subclasses implement ``value(epoch)`` (epoch: float32 scalar tensor or
    Python number; returns a scalar tensor), ``get_config()``, and, when they
    hold other schedules, ``children()`` so that ``bind`` reaches them.
    """

    _clock = None

    def value(self, epoch):
        raise NotImplementedError

    def children(self):
        """Schedules this schedule is composed of (bound together with it)."""
        return ()

    @property
    def clock(self):
        return self._clock

    def bind(self, clock):
        """Reads time from ``clock`` from now on (also for children). Returns self."""
        if not isinstance(clock, Clock):
            raise TypeError(
                f"clock must be a bstf.Clock, got {type(clock).__name__}."
            )
        self._clock = clock
        for child in self.children():
            child.bind(clock)
        return self

    def __call__(self, step=None):
        if self._clock is None:
            raise RuntimeError(
                f"{type(self).__name__} is a function of examples seen, not of "
                "optimizer steps, and is not bound to a clock. Bind it with "
                "`schedule.bind(bstf.Clock(train_size))` (bstf.fit does this for "
                "you), or evaluate it directly with `schedule.value(epoch)`."
            )
        return self.value(self._clock.epoch)

    def numpy(self, epoch):
        """``value(epoch)`` as a Python number (eager)."""
        v = self.value(tf.constant(epoch, tf.float32))
        return v.numpy().item()
