"""Schedulable momentum shared by bstf's SGD and LARS.

The protocol ``bstf.fit`` relies on: an optimizer with the class attribute
``supports_momentum_schedule = True`` accepts, as ``momentum``, a float in
[0, 1), a :class:`bstf.schedules.Schedule` (or any Keras
``LearningRateSchedule``, called with the update counter), or any callable
without arguments returning a scalar; given to the constructor or assigned
later with ``opt.momentum = value``, before or after ``build``.

A float lives in a non-trainable variable (like Keras's float learning rate),
so assigning another float never retraces. A schedule or callable is evaluated
in-graph once per update, in the same place Keras evaluates the learning rate,
so a schedule bound to a :class:`bstf.Clock` changes value without retracing.
Switching between a float and a schedule after the train function has been
traced takes effect at the next trace (``model.make_train_function(force=True)``),
as for Keras's learning rate.
"""

import math
import numbers

import keras
import tensorflow as tf

from bstf.schedules import PiecewiseConstant, Schedule

_RANGE = "[0, 1)"


def check_momentum(value):
    """Validates a momentum argument; returns a float or the callable unchanged."""
    if isinstance(value, dict):
        value = keras.saving.deserialize_keras_object(value)
    if isinstance(value, Schedule):
        with tf.init_scope():
            first = tf.convert_to_tensor(value.value(0.0)).numpy().item()
        values = list(value.values) if isinstance(value, PiecewiseConstant) else [first]
        for v in values:
            if not 0.0 <= float(v) < 1.0:
                raise ValueError(
                    f"momentum schedule {type(value).__name__} must stay in {_RANGE}, got {v}."
                )
        return value
    if callable(value):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"momentum must be a float in {_RANGE}, a bstf.schedules.Schedule or a callable returning "
            f"a scalar, got {value!r} of type {type(value).__name__}."
        )
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"momentum must be in {_RANGE}, got {value}.")
    return value


def check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return value


class ScheduledMomentumMixin:
    """Mix into a ``keras.optimizers.Optimizer``; call ``_init_momentum`` after ``super().__init__``.

    ``update_step(gradient, variable, learning_rate)`` then receives
    ``learning_rate`` as the pair ``(learning_rate, momentum)`` (unpack it
    with ``_unpack``), both evaluated once per update.
    """

    supports_momentum_schedule = True

    def _init_momentum(self, momentum):
        with keras.name_scope(self.name, caller=self):
            variable = keras.Variable(
                0.0,
                name="momentum",
                dtype=keras.config.floatx(),
                trainable=False,
                aggregation="only_first_replica",
            )
        self._track_variable(variable)
        self._momentum_variable = variable
        self.momentum = momentum

    @property
    def momentum(self):
        """The momentum as given: a float, or the schedule/callable."""
        return self._momentum

    @momentum.setter
    def momentum(self, value):
        value = check_momentum(value)
        if not callable(value):
            self._momentum_variable.assign(value)
        self._momentum = value

    def current_momentum(self):
        """The momentum of the next update, a float32 scalar tensor (evaluates a schedule)."""
        m = self._momentum
        if not callable(m):
            return tf.convert_to_tensor(self._momentum_variable.value)
        if isinstance(m, keras.optimizers.schedules.LearningRateSchedule):
            value = m(self.iterations)
        else:
            value = m()
        value = tf.cast(value, tf.float32)
        name = type(m).__name__
        checks = [
            tf.debugging.assert_greater_equal(value, 0.0, message=f"momentum from {name} must be in {_RANGE}, got"),
            tf.debugging.assert_less(value, 1.0, message=f"momentum from {name} must be in {_RANGE}, got"),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(value)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Evaluated once per update, in the context Keras evaluates the learning rate in.
        super()._backend_update_step(grads, trainable_variables, (learning_rate, self.current_momentum()))

    def _unpack(self, learning_rate):
        if isinstance(learning_rate, tuple):
            return learning_rate
        return learning_rate, self.current_momentum()  # update_step called directly

    def _momentum_config(self):
        m = self._momentum
        if callable(m):
            return keras.saving.serialize_keras_object(m)
        return m
