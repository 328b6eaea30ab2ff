"""SGD whose momentum may be a schedule (Keras's SGD fixes it at construction).

Smith et al. 2017 ("Don't Decay the Learning Rate, Increase the Batch Size")
keep the noise scale ``g = εN/(B(1−m))`` while growing ``m`` with the batch;
this optimizer makes ``m`` a function of training time.
"""

import numbers

import keras
from keras import ops

from bstf.optimizers._momentum import ScheduledMomentumMixin, check_bool


@keras.saving.register_keras_serializable(package="bstf")
class SGD(ScheduledMomentumMixin, keras.optimizers.Optimizer):
    """Gradient descent with (Nesterov) momentum that may follow a schedule.

    The update is Keras's, term for term (with constant momentum it equals
    ``keras.optimizers.SGD`` to float round-off)::

        v = m·v − lr·g
        w = w + v                   # nesterov=False
        w = w + m·v − lr·g          # nesterov=True

    **Momentum** may be a float in [0, 1), a :class:`bstf.schedules.Schedule`
    bound to a :class:`bstf.Clock` (e.g. ``PiecewiseMomentum``), any Keras
    ``LearningRateSchedule`` (called with the update count), or a callable
    without arguments returning a scalar. It can be given here or assigned
    later (``opt.momentum = schedule``), before or after ``build``; it is
    evaluated in-graph once per update, so a schedule on the clock changes
    ``m`` without retracing. ``bstf.fit`` relies on this through the class
    attribute ``supports_momentum_schedule``.

    **When m changes.** The velocity buffer is kept as it is; the new ``m``
    applies from the next update on. Because the learning rate sits inside
    the velocity (``v = m·v − lr·g``), a learning-rate change needs no
    correction of ``v`` (Goyal et al.'s "momentum correction" concerns the
    ``v = m·v + g; w −= lr·v`` form). A momentum change does not act at
    once: for a steady gradient the step tends to ``lr·g/(1−m)``, and ``v``
    approaches the new steady state geometrically, in about ``1/(1−m_new)``
    updates (10 at m = 0.9, 20 at 0.95). This is the transient behind Smith
    et al.'s note that raising momentum (instead of the batch) slightly lowers
    test accuracy; the effective learning rate ``lr/(1−m)``, and so the noise
    scale ``εN/(B(1−m))``, follows the schedule only after it.

    Unlike Keras's SGD, the velocity slot is always created (also for
    ``momentum=0.0``), so momentum can be switched on later.

    Args:
      learning_rate: float > 0, a ``LearningRateSchedule`` or a callable.
      momentum: see above; default 0.0.
      nesterov: use Nesterov momentum.

    The other arguments (``weight_decay``, ``clipnorm``, ``clipvalue``,
    ``global_clipnorm``, ``use_ema``, ``ema_momentum``,
    ``ema_overwrite_frequency``, ``loss_scale_factor``,
    ``gradient_accumulation_steps``, ``name``) are as for every Keras
    optimizer (``weight_decay`` is Keras's decoupled decay ``w −= lr·wd·w``).

    Raises:
      ValueError: momentum outside [0, 1) (also for a schedule's values),
        learning_rate <= 0, weight_decay < 0.
      TypeError: momentum not a number, schedule or callable; nesterov not a bool.
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        nesterov=False,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name="sgd",
        **kwargs,
    ):
        _check_common(learning_rate, weight_decay)
        super().__init__(
            learning_rate=learning_rate,
            name=name,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            **kwargs,
        )
        self.nesterov = check_bool("nesterov", nesterov)
        self._init_momentum(momentum)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = self.add_optimizer_variables(variables, "velocity")

    def update_step(self, gradient, variable, learning_rate):
        learning_rate, momentum = self._unpack(learning_rate)
        lr = ops.cast(learning_rate, variable.dtype)
        m = ops.cast(momentum, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        v = self.velocities[self._get_variable_index(variable)]
        self.assign(v, ops.subtract(ops.multiply(v, m), ops.multiply(gradient, lr)))
        if self.nesterov:
            self.assign_add(variable, ops.subtract(ops.multiply(v, m), ops.multiply(gradient, lr)))
        else:
            self.assign_add(variable, v)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self._momentum_config(), "nesterov": self.nesterov})
        return config


def _check_common(learning_rate, weight_decay):
    """learning_rate > 0 (when a number) and weight_decay >= 0 (when given)."""
    if isinstance(learning_rate, numbers.Real) and not isinstance(learning_rate, bool):
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}.")
    if weight_decay is not None:
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real):
            raise TypeError(f"weight_decay must be None or a float >= 0, got {weight_decay!r}.")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
