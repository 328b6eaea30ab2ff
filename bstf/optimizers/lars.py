"""LARS: layer-wise adaptive rate scaling (You, Gitman, Ginsburg 2017).

Each variable ("layer") gets its own local learning rate from the ratio of
its weight norm to its gradient norm, so that no layer's update is large
relative to its weights, which is what lets SGD train at batch 8k-32k.
"""

import math
import numbers
import re

import keras
import tensorflow as tf
from keras import ops

from bstf.optimizers._momentum import ScheduledMomentumMixin, check_bool
from bstf.optimizers.sgd import _check_common

#: Name patterns excluded from weight decay and layer adaptation by default: biases and the
#: scale/offset of batch (and layer) normalization, as Goyal et al., You et al. and MLPerf do.
DEFAULT_EXCLUDE = ("bias", "beta", "gamma", "batch_norm")


def _check_patterns(name, patterns):
    if patterns is None:
        return None
    if isinstance(patterns, str):
        raise TypeError(f"{name} must be a list of name patterns (regular expressions), got the string {patterns!r}.")
    patterns = list(patterns)
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"{name} must contain strings (regular expressions), got {p!r}.")
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"{name} contains an invalid regular expression {p!r}: {e}.") from None
    return patterns


def _matches(patterns, path):
    return any(re.search(p, path) for p in patterns)


@keras.saving.register_keras_serializable(package="bstf")
class LARS(ScheduledMomentumMixin, keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling, with momentum that may follow a schedule.

    For each variable ``w`` with gradient ``g`` (You et al. 2017, Algorithm 1,
    written in Keras's velocity convention)::

        λ = η·‖w‖ / (‖g‖ + β·‖w‖ + ε)      # local LR; 1 if ‖w‖ = 0 or the denominator is 0
        v = m·v − lr·λ·(g + β·w)
        w = w + v                          # nesterov: w = w + m·v − lr·λ·(g + β·w)

    with η = ``trust_coefficient``, β = ``weight_decay`` (L2, added to the
    gradient as in the paper, not Keras's decoupled decay), ε = ``epsilon``,
    lr the global learning rate (warm it up and decay it polynomially, as
    the paper does) and m the momentum.

    The denominator is the paper's ``‖g‖ + β‖w‖``. TF Model Garden and
    optax's ``lars`` use ``‖g + β·w‖`` instead (their update is first made
    ``g + β·w``, then scaled by its trust ratio); the two agree when
    ``weight_decay=0``.

    Variables whose path (``layer_name/variable_name``) matches a pattern of
    ``exclude_from_weight_decay`` get no weight decay; those matching
    ``exclude_from_layer_adaptation`` get λ = 1 (plain momentum SGD). By
    default both exclude :data:`DEFAULT_EXCLUDE`: biases and normalization
    scales/offsets.

    Momentum follows the same protocol as :class:`bstf.optimizers.SGD`
    (``supports_momentum_schedule = True``): a float in [0, 1), a
    :class:`bstf.schedules.Schedule`, or a callable, given here or assigned
    later, evaluated in-graph once per update.

    Args:
      learning_rate: global learning rate: float > 0, a
        ``LearningRateSchedule`` or a callable.
      momentum: default 0.9.
      weight_decay: β >= 0, default 0.0.
      trust_coefficient: η > 0, default 0.001 (the paper's value).
      epsilon: ε >= 0 added to the trust-ratio denominator, default 0.0.
      nesterov: use Nesterov momentum.
      exclude_from_weight_decay: list of regular expressions searched in
        variable paths; ``None`` means :data:`DEFAULT_EXCLUDE`, ``[]`` none.
      exclude_from_layer_adaptation: likewise; ``None`` means the same list
        as ``exclude_from_weight_decay``.

    The other arguments (``clipnorm``, ``clipvalue``, ``global_clipnorm``,
    ``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency``,
    ``loss_scale_factor``, ``gradient_accumulation_steps``, ``name``) are as
    for every Keras optimizer.

    Raises:
      ValueError: trust_coefficient <= 0, epsilon < 0, weight_decay < 0,
        learning_rate <= 0, momentum outside [0, 1), an invalid pattern.
      TypeError: a pattern list that is a string or holds non-strings,
        nesterov not a bool, momentum of another type.
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.9,
        weight_decay=0.0,
        trust_coefficient=0.001,
        epsilon=0.0,
        nesterov=False,
        exclude_from_weight_decay=None,
        exclude_from_layer_adaptation=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name="lars",
        **kwargs,
    ):
        if weight_decay is None:
            weight_decay = 0.0
        _check_common(learning_rate, weight_decay)
        for arg, value, low_open in (("trust_coefficient", trust_coefficient, True), ("epsilon", epsilon, False)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{arg} must be a float, got {value!r}.")
            if not math.isfinite(value) or (value <= 0 if low_open else value < 0):
                raise ValueError(f"{arg} must be {'> 0' if low_open else '>= 0'}, got {value}.")
        wd_patterns = _check_patterns("exclude_from_weight_decay", exclude_from_weight_decay)
        la_patterns = _check_patterns("exclude_from_layer_adaptation", exclude_from_layer_adaptation)
        super().__init__(
            learning_rate=learning_rate,
            name=name,
            weight_decay=float(weight_decay),
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
        self.trust_coefficient = float(trust_coefficient)
        self.epsilon = float(epsilon)
        self.nesterov = check_bool("nesterov", nesterov)
        self._wd_patterns = wd_patterns
        self._la_patterns = la_patterns
        self._init_momentum(momentum)

    @property
    def weight_decay_patterns(self):
        """Patterns excluded from weight decay (defaults resolved)."""
        return list(DEFAULT_EXCLUDE) if self._wd_patterns is None else list(self._wd_patterns)

    @property
    def layer_adaptation_patterns(self):
        """Patterns excluded from layer adaptation (defaults resolved)."""
        return self.weight_decay_patterns if self._la_patterns is None else list(self._la_patterns)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = self.add_optimizer_variables(variables, "velocity")
        wd, la = self.weight_decay_patterns, self.layer_adaptation_patterns
        paths = [getattr(v, "path", v.name) for v in variables]
        # Decided once per variable; Keras's own exclude_from_weight_decay(var_list=...) also applies.
        self._decays = [
            self.weight_decay > 0 and not _matches(wd, p) and super(LARS, self)._use_weight_decay(v)
            for p, v in zip(paths, variables)
        ]
        self._adapts = [not _matches(la, p) for p in paths]

    def uses_weight_decay(self, variable):
        """Whether ``variable`` (of the built optimizer) gets weight decay."""
        return self._decays[self._get_variable_index(variable)]

    def uses_layer_adaptation(self, variable):
        """Whether ``variable`` (of the built optimizer) gets a trust ratio."""
        return self._adapts[self._get_variable_index(variable)]

    def _apply_weight_decay(self, variables):
        # LARS's weight decay is part of its update (added to the gradient), not Keras's decoupled decay.
        return

    def update_step(self, gradient, variable, learning_rate):
        learning_rate, momentum = self._unpack(learning_rate)
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        m = ops.cast(momentum, dtype)
        g = ops.cast(tf.convert_to_tensor(gradient), dtype)  # dense: the norm needs every entry
        w = ops.convert_to_tensor(variable)
        beta = self.weight_decay if self._decays[index] else 0.0
        if self._adapts[index]:
            w_norm = ops.sqrt(ops.sum(ops.square(w)))
            g_norm = ops.sqrt(ops.sum(ops.square(g)))
            denominator = g_norm + ops.cast(beta, dtype) * w_norm + ops.cast(self.epsilon, dtype)
            ok = ops.logical_and(ops.greater(w_norm, 0), ops.greater(denominator, 0))
            safe = ops.where(ok, denominator, ops.ones_like(denominator))
            trust = ops.where(ok, ops.cast(self.trust_coefficient, dtype) * w_norm / safe, ops.ones_like(w_norm))
            lr = lr * trust
        if beta:
            g = g + ops.cast(beta, dtype) * w
        v = self.velocities[index]
        self.assign(v, ops.subtract(ops.multiply(v, m), ops.multiply(g, lr)))
        if self.nesterov:
            self.assign_add(variable, ops.subtract(ops.multiply(v, m), ops.multiply(g, lr)))
        else:
            self.assign_add(variable, v)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self._momentum_config(),
                "trust_coefficient": self.trust_coefficient,
                "epsilon": self.epsilon,
                "nesterov": self.nesterov,
                "exclude_from_weight_decay": self._wd_patterns,
                "exclude_from_layer_adaptation": self._la_patterns,
            }
        )
        return config
