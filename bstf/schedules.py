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

import math
import numbers

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


_RULES = ("linear", "sqrt", "none")


def _check_number(name, value, low=None, high=None, low_open=False, high_open=True, integer=False):
    """Validates ``value`` against the interval given by ``low``/``high``.

    Raises TypeError for non-numbers and ValueError naming the argument, the
    value and the allowed range. Returns the value as float (or int).
    """
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or (
        integer and not float(value).is_integer()
    ):
        raise TypeError(f"{name} must be {kind}, got {value!r} of type {type(value).__name__}.")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}.")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        if low is not None and high is not None:
            allowed = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            allowed = f"{'>' if low_open else '>='} {low}"
        else:
            allowed = f"{'<' if high_open else '<='} {high}"
        raise ValueError(f"{name} must be {allowed}, got {value}.")
    return int(value) if integer else float(value)


def scaled_learning_rate(base_lr, base_batch, batch, rule="linear"):
    """The learning rate coupled to a batch size.

    Args:
      base_lr: learning rate that works at ``base_batch`` (> 0).
      base_batch: reference batch size (integer >= 1).
      batch: the batch size to train with (integer >= 1).
      rule: "linear" (η₀·B/B₀, Goyal et al. 2017), "sqrt" (η₀·√(B/B₀),
        Hoffer et al. 2017) or "none" (η₀).

    Returns:
      The coupled learning rate, a Python float.
    """
    base_lr = _check_number("base_lr", base_lr, low=0, low_open=True, high=None)
    base_batch = _check_number("base_batch", base_batch, low=1, high=None, integer=True)
    batch = _check_number("batch", batch, low=1, high=None, integer=True)
    if rule not in _RULES:
        raise ValueError(f"rule must be one of {_RULES}, got {rule!r}.")
    ratio = batch / base_batch
    if rule == "linear":
        return base_lr * ratio
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    return base_lr


def _as_schedule(value, name):
    if isinstance(value, Schedule):
        return value
    return Constant(_check_number(name, value))


def _epoch(epoch):
    return tf.cast(epoch, tf.float32)


@keras.saving.register_keras_serializable(package="bstf")
class Constant(Schedule):
    """A constant value at every epoch."""

    def __init__(self, value):
        self.constant = _check_number("value", value)

    def value(self, epoch):
        del epoch
        return tf.constant(self.constant, tf.float32)

    def get_config(self):
        return {"value": self.constant}


@keras.saving.register_keras_serializable(package="bstf")
class PiecewiseConstant(Schedule):
    """``values[i]`` from epoch ``boundaries[i-1]`` (inclusive) to ``boundaries[i]``.

    Args:
      boundaries: epochs where the value changes, strictly increasing, >= 0.
      values: ``len(boundaries) + 1`` numbers; all integers gives an int64
        schedule (batch sizes), otherwise float32.
    """

    def __init__(self, boundaries, values):
        boundaries = [float(_check_number("boundaries", b, low=0, high=None)) for b in boundaries]
        if any(b2 <= b1 for b1, b2 in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries must be strictly increasing epochs, got {boundaries}.")
        values = list(values)
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"values must have len(boundaries) + 1 = {len(boundaries) + 1} entries, got {len(values)}."
            )
        for v in values:
            _check_number("values", v)
        self.integer = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values)
        self.boundaries = boundaries
        self.values = [int(v) for v in values] if self.integer else [float(v) for v in values]

    def value(self, epoch):
        epoch = _epoch(epoch)
        values = tf.constant(self.values, tf.int64 if self.integer else tf.float32)
        if not self.boundaries:
            return values[0]
        index = tf.reduce_sum(tf.cast(epoch >= tf.constant(self.boundaries, tf.float32), tf.int32))
        return tf.gather(values, index)

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values)}


@keras.saving.register_keras_serializable(package="bstf")
class PiecewiseBatch(PiecewiseConstant):
    """Piecewise-constant batch size (positive integers) by epoch milestones."""

    def __init__(self, boundaries, values):
        for v in values:
            _check_number("values", v, low=1, high=None, integer=True)
        super().__init__(boundaries, values)


@keras.saving.register_keras_serializable(package="bstf")
class PiecewiseMomentum(PiecewiseConstant):
    """Piecewise-constant momentum (values in [0, 1)) by epoch milestones."""

    def __init__(self, boundaries, values):
        values = [_check_number("values", v, low=0, high=1) for v in values]
        super().__init__(boundaries, values)


class _Wrapper(Schedule):
    """A schedule that modifies another one (``after``) for ``warmup_epochs``."""

    def __init__(self, after, warmup_epochs):
        self.after = _as_schedule(after, "after")
        self.warmup_epochs = _check_number("warmup_epochs", warmup_epochs, low=0, low_open=True, high=None)

    def children(self):
        return (self.after,)

    def _base_config(self):
        return {
            "after": keras.saving.serialize_keras_object(self.after),
            "warmup_epochs": self.warmup_epochs,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["after"] = keras.saving.deserialize_keras_object(config["after"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="bstf")
class LinearWarmup(_Wrapper):
    """Goyal et al.'s gradual warmup: linear from ``start_value`` to ``after``.

    For ``epoch < warmup_epochs`` the value is
    ``start_value + (after(warmup_epochs) - start_value) · epoch / warmup_epochs``;
    afterwards it is ``after(epoch)``.
    """

    def __init__(self, after, warmup_epochs, start_value):
        super().__init__(after, warmup_epochs)
        self.start_value = _check_number("start_value", start_value)

    def value(self, epoch):
        epoch = _epoch(epoch)
        target = tf.cast(self.after.value(self.warmup_epochs), tf.float32)
        ramp = self.start_value + (target - self.start_value) * epoch / self.warmup_epochs
        return tf.where(epoch < self.warmup_epochs, ramp, tf.cast(self.after.value(epoch), tf.float32))

    def get_config(self):
        return {**self._base_config(), "start_value": self.start_value}


@keras.saving.register_keras_serializable(package="bstf")
class ConstantWarmup(_Wrapper):
    """Goyal et al.'s constant warmup: ``warmup_value`` then a jump to ``after``."""

    def __init__(self, after, warmup_epochs, warmup_value):
        super().__init__(after, warmup_epochs)
        self.warmup_value = _check_number("warmup_value", warmup_value)

    def value(self, epoch):
        epoch = _epoch(epoch)
        return tf.where(
            epoch < self.warmup_epochs,
            tf.constant(self.warmup_value, tf.float32),
            tf.cast(self.after.value(epoch), tf.float32),
        )

    def get_config(self):
        return {**self._base_config(), "warmup_value": self.warmup_value}


@keras.saving.register_keras_serializable(package="bstf")
class CosineDecay(Schedule):
    """``initial · ((1 − alpha)·½(1 + cos(π·min(epoch, decay_epochs)/decay_epochs)) + alpha)``."""

    def __init__(self, initial, decay_epochs, alpha=0.0):
        self.initial = _check_number("initial", initial)
        self.decay_epochs = _check_number("decay_epochs", decay_epochs, low=0, low_open=True, high=None)
        self.alpha = _check_number("alpha", alpha, low=0, high=1, high_open=False)

    def value(self, epoch):
        t = tf.minimum(_epoch(epoch), self.decay_epochs) / self.decay_epochs
        cosine = 0.5 * (1.0 + tf.cos(math.pi * t))
        return self.initial * ((1.0 - self.alpha) * cosine + self.alpha)

    def get_config(self):
        return {"initial": self.initial, "decay_epochs": self.decay_epochs, "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="bstf")
class PolynomialDecay(Schedule):
    """``(initial − end_value)·(1 − min(epoch, decay_epochs)/decay_epochs)^power + end_value``."""

    def __init__(self, initial, decay_epochs, end_value=0.0, power=1.0):
        self.initial = _check_number("initial", initial)
        self.decay_epochs = _check_number("decay_epochs", decay_epochs, low=0, low_open=True, high=None)
        self.end_value = _check_number("end_value", end_value)
        self.power = _check_number("power", power, low=0, low_open=True, high=None)

    def value(self, epoch):
        t = tf.minimum(_epoch(epoch), self.decay_epochs) / self.decay_epochs
        return (self.initial - self.end_value) * tf.pow(1.0 - t, self.power) + self.end_value

    def get_config(self):
        return {
            "initial": self.initial,
            "decay_epochs": self.decay_epochs,
            "end_value": self.end_value,
            "power": self.power,
        }


@keras.saving.register_keras_serializable(package="bstf")
class LinearBatchRamp(Schedule):
    """Batch-size ramp-up in examples, as large-LM training does (Megatron).

    The batch starts at ``start`` and grows by ``increment`` in equal slices
    of ``ramp_examples`` until it reaches ``max_batch``:
    ``min(max_batch, start + increment · floor(examples / (ramp_examples / n)))``
    with ``n = (max_batch − start) / increment`` increments
    (``examples = epoch · train_size``).
    """

    def __init__(self, start, increment, ramp_examples, max_batch, train_size):
        self.start = _check_number("start", start, low=1, high=None, integer=True)
        self.increment = _check_number("increment", increment, low=1, high=None, integer=True)
        self.ramp_examples = _check_number("ramp_examples", ramp_examples, low=1, high=None, integer=True)
        self.max_batch = _check_number("max_batch", max_batch, low=1, high=None, integer=True)
        self.train_size = _check_number("train_size", train_size, low=1, high=None, integer=True)
        if self.max_batch < self.start:
            raise ValueError(f"max_batch must be >= start ({self.start}), got {self.max_batch}.")
        if (self.max_batch - self.start) % self.increment:
            raise ValueError(
                f"max_batch - start ({self.max_batch - self.start}) must be a multiple of "
                f"increment ({self.increment})."
            )

    def value(self, epoch):
        steps = (self.max_batch - self.start) // self.increment
        if steps == 0:
            return tf.constant(self.start, tf.int64)
        examples = tf.cast(epoch, tf.float64) * self.train_size
        per_step = self.ramp_examples / steps
        k = tf.cast(tf.floor(examples / per_step + 1e-9), tf.int64)
        return tf.minimum(tf.constant(self.max_batch, tf.int64), self.start + self.increment * k)

    def get_config(self):
        return {
            "start": self.start,
            "increment": self.increment,
            "ramp_examples": self.ramp_examples,
            "max_batch": self.max_batch,
            "train_size": self.train_size,
        }
