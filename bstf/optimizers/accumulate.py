"""Gradient accumulation that is correct on every tf.distribute strategy.

``Accumulate(optimizer, steps)`` wraps any Keras optimizer. Each call of
``apply``/``apply_gradients`` (one micro-batch) adds the gradient to
replica-local accumulators; every ``k``-th call the inner optimizer applies
the mean of the ``k`` micro-batch gradients, which is the update of one batch
of ``k·b`` examples.

How one update works (see docs/design.md, "Gradient accumulation"):

1. *Replica context, every micro-step.* Each replica adds its gradient to its
   own accumulators (``synchronization=ON_READ`` variables: no communication)
   and advances its micro-step counter. ``k`` is read from ``steps`` when a
   cycle starts and held in a variable for the cycle.
2. *The decision.* Whether this micro-step completes the cycle depends only
   on counters that every replica and every worker advances identically, so
   all of them take the same branch. On strategies that use ``merge_call``
   (Mirrored, MultiWorkerMirrored on CPU, OneDevice, TPU) the ``tf.cond`` is
   built in *cross-replica* context inside one unconditional ``merge_call``;
   its apply branch re-enters replica context with
   ``strategy.extended.call_for_each_replica`` — the pattern Keras's own
   ``LossScaleOptimizer`` uses. Keras's ``gradient_accumulation_steps`` puts
   the cond in replica context with a ``merge_call`` in its branch, which
   tf.distribute forbids. Without a strategy (and on strategies that need no
   ``merge_call``) the cond is a plain replica-context ``tf.cond``.
3. *The update, only in the apply branch.* Each replica divides its
   accumulated sum by ``k``; one batched ``all_reduce(SUM)`` — the only
   cross-replica reduction of the update — gives the mean gradient of the
   global ``k·b`` batch; the inner optimizer applies it (its own all-reduce is
   skipped: the gradient is already reduced, so clipping and weight decay act
   on the global gradient as they would for one big batch); accumulators and
   the micro-step counter are reset.

Counters: ``acc.iterations`` counts micro-steps (calls, i.e. batches seen by
``model.fit``, which is what Keras callbacks that read
``optimizer.iterations`` — TensorBoard's steps/s, Orbax's batches seen —
expect); ``acc.updates`` (the inner optimizer's ``iterations``) counts
updates, so the inner learning-rate schedule, momentum and Adam's bias
correction see updates, not micro-steps.

Loss scaling (``mixed_float16``): put Keras's ``LossScaleOptimizer`` *inside*,
``Accumulate(keras.optimizers.LossScaleOptimizer(inner), steps)``. That call
returns a :class:`LossScaledAccumulate`, an Accumulate that is also a
``LossScaleOptimizer``, so ``model.compile`` under ``mixed_float16`` (and
``keras.saving.load_model``'s recompile) does not wrap it in a second one. Then:

* the train step scales each micro-batch's loss by the current scale
  (``acc.scale_loss`` delegates to the loss-scale optimizer); the accumulators
  hold the *scaled* gradients, summed in float32 (the variables' dtype);
* the scale changes only when the loss-scale optimizer applies an update, so
  it is the same for the ``k`` micro-batches of one update (convention: scale
  held fixed for the cycle, unscaled once, after the sum — exact, the scale
  being a power of two);
* at the update the all-reduced mean goes to the loss-scale optimizer, whose
  one finiteness check therefore sees every micro-batch of every replica: an
  inf/NaN anywhere skips the whole update on all replicas, halves the scale
  once, and leaves ``updates`` unchanged; its growth counter counts updates.
  The accumulators are cleared either way; :attr:`skipped_updates` counts the
  skips.

The other order, ``LossScaleOptimizer(Accumulate(...))`` (what ``compile``
builds by itself under ``mixed_float16``), is refused with a ``TypeError``: it
would take a decision per micro-batch — halving the scale up to ``k`` times
per update and counting growth in micro-batches — and, Keras 3 reducing
gradients only inside the inner optimizer, from replica 0's gradients alone.

Loss convention: the per-replica gradients must sum over replicas to the
micro-batch mean gradient (Keras's ``model.fit`` divides each replica's loss
by the replica count; custom loops divide the summed loss by the global
batch). Micro-batches must have equal sizes for the mean of means to equal
the big-batch mean (batch with ``drop_remainder=True`` or a size that
divides the data).
"""

import contextlib
import copy
import inspect
import numbers
import warnings

import keras
import tensorflow as tf

from bstf.clock import Clock
from bstf.schedules import Schedule


def _tf_variable(v):
    """The tf.Variable behind a keras.Variable."""
    return v.value if isinstance(v, keras.Variable) else v


def _sq_norm(tensors):
    return tf.add_n([tf.reduce_sum(tf.square(tf.cast(tf.convert_to_tensor(t), tf.float32))) for t in tensors])


def _all_finite(tensors):
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])


_LossScaleOptimizer = keras.optimizers.LossScaleOptimizer

_WRAPPED_ERROR = (
    "Accumulate must not be wrapped in a LossScaleOptimizer (model.compile does so under a mixed_float16 "
    "policy): the wrapper would decide on overflow for every micro-batch, halving the loss scale up to k "
    "times per update, from replica 0's gradients only. Put the loss scale inside: "
    "bstf.optimizers.Accumulate(keras.optimizers.LossScaleOptimizer(inner), steps) is itself a "
    "LossScaleOptimizer, which model.compile leaves as it is."
)


def _is_loss_scale_optimizer(optimizer):
    if isinstance(optimizer, dict):  # a serialized optimizer (Accumulate accepts those too)
        return optimizer.get("class_name") == "LossScaleOptimizer"
    return isinstance(optimizer, _LossScaleOptimizer)


def _check_optimizer(optimizer):
    """The optimizer that reduces gradients across replicas (a LossScaleOptimizer's inner one), checked."""
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            f"optimizer must be a keras.optimizers.Optimizer, got {type(optimizer).__name__}: {optimizer!r}."
        )
    if isinstance(optimizer, Accumulate):
        raise TypeError("optimizer must not be an Accumulate; wrap the inner optimizer once.")
    reducer = optimizer.inner_optimizer if isinstance(optimizer, _LossScaleOptimizer) else optimizer
    if isinstance(reducer, (Accumulate, _LossScaleOptimizer)):
        raise TypeError(
            "a LossScaleOptimizer given to Accumulate must wrap a plain optimizer (SGD, Adam, ...), "
            f"got a LossScaleOptimizer around {type(reducer).__name__}."
        )
    if not callable(getattr(reducer, "_all_reduce_sum_gradients", None)):
        raise TypeError(
            f"optimizer {type(reducer).__name__} is not a TensorFlow-backend Keras optimizer "
            "(it lacks _all_reduce_sum_gradients); bstf needs the TensorFlow backend."
        )
    if reducer.gradient_accumulation_steps:
        raise ValueError(
            "optimizer has Keras's gradient_accumulation_steps="
            f"{reducer.gradient_accumulation_steps}; use Accumulate's steps instead "
            "(Keras's accumulation fails under MirroredStrategy)."
        )
    return reducer


@keras.saving.register_keras_serializable(package="bstf")
class Accumulate(keras.optimizers.Optimizer):
    """Accumulates ``steps`` micro-batch gradients, then applies their mean.

    Use it like any Keras optimizer::

        acc = bstf.optimizers.Accumulate(keras.optimizers.SGD(0.1, momentum=0.9), steps=4)
        model.compile(optimizer=acc, loss=...)
        model.fit(x, y, batch_size=64)   # the updates of batch_size=256

    or in a custom loop, calling ``acc.apply_gradients(zip(grads, vars))``
    once per micro-batch (inside ``strategy.run`` under a strategy).

    Args:
      optimizer: the ``keras.optimizers.Optimizer`` that applies the averaged
        gradient (SGD, Adam, LARS, ...). Its learning rate, clipping, weight
        decay and EMA act once per update, on the global mean gradient. It
        belongs to this wrapper from now on (do not also use it alone). For
        ``mixed_float16``, a ``keras.optimizers.LossScaleOptimizer`` around
        it: one overflow check and one loss-scale change per update, and the
        result is a :class:`LossScaledAccumulate` (see the module docstring).
      steps: ``k``, micro-batches per update: an integer >= 1, or an
        integer-valued :class:`bstf.schedules.Schedule` (e.g.
        ``PiecewiseConstant`` with integer values) bound to a
        :class:`bstf.Clock`. It is read when a cycle starts, so ``k`` may
        change between updates without retracing the train function.
      clock: binds a ``steps`` schedule to this clock (same as
        ``steps.bind(clock)``; ``bstf.fit`` binds it for you). Ignored for an
        integer ``steps``. A schedule must be bound before training; after
        ``keras.saving.load_model`` bind ``model.optimizer.steps`` again.
      statistics: also track, per update, the squared norms McCandlish et
        al.'s gradient-noise-scale estimator needs (see
        :attr:`micro_batch_sq_norm`, :attr:`update_sq_norm`). Costs one
        extra pass over the gradients per micro-step; no communication.
      name: optimizer name.

    Raises:
      TypeError: ``optimizer`` is not a Keras optimizer, is an ``Accumulate``
        or a ``LossScaleOptimizer`` around anything but a plain optimizer;
        ``steps`` is not an integer or a Schedule, ``clock`` is not a Clock;
        later, a ``LossScaleOptimizer`` wraps this Accumulate.
      ValueError: ``steps < 1``; a steps schedule whose value at epoch 0 is
        not an integer >= 1; an inner optimizer using Keras's own
        ``gradient_accumulation_steps``.

    A schedule returning a non-integer or a value < 1 later in training
    fails in-graph with a ``tf.debugging`` assertion naming the value (XLA
    removes assertions: with ``jit_compile=True`` validate the schedule up
    front).
    """

    def __new__(cls, optimizer=None, *args, **kwargs):
        # Around a LossScaleOptimizer an Accumulate is one too (LossScaledAccumulate), so that Keras does
        # not wrap it in another when it compiles a mixed_float16 model.
        if cls is Accumulate and _is_loss_scale_optimizer(optimizer):
            cls = LossScaledAccumulate
        return super().__new__(cls)

    def __init__(self, optimizer, steps, clock=None, statistics=False, name="accumulate"):
        if isinstance(optimizer, dict):
            optimizer = keras.optimizers.deserialize(optimizer)
        reducer = _check_optimizer(optimizer)
        if isinstance(steps, dict):
            steps = keras.saving.deserialize_keras_object(steps)
        if isinstance(steps, Schedule):
            first = tf.convert_to_tensor(steps.value(0.0))
            value = first.numpy().item()
            if not float(value).is_integer():
                raise ValueError(
                    f"steps schedule {type(steps).__name__} must be integer-valued, got {value} at epoch 0."
                )
            if value < 1:
                raise ValueError(f"steps schedule {type(steps).__name__} must be >= 1, got {value} at epoch 0.")
            for v in getattr(steps, "values", ()):  # PiecewiseConstant: check every value up front
                if not float(v).is_integer() or v < 1:
                    raise ValueError(f"steps schedule values must be integers >= 1, got {v}.")
        elif isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
            raise TypeError(f"steps must be an integer >= 1 or a bstf.schedules.Schedule, got {steps!r}.")
        elif steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps}.")
        if clock is not None:
            if not isinstance(clock, Clock):
                raise TypeError(f"clock must be a bstf.Clock, got {type(clock).__name__}.")
            if isinstance(steps, Schedule):
                steps.bind(clock)
        if not isinstance(statistics, bool):
            raise TypeError(f"statistics must be True or False, got {statistics!r}.")
        # Named, not super(): in a LossScaledAccumulate the next class is LossScaleOptimizer.
        keras.optimizers.Optimizer.__init__(self, learning_rate=0.0, name=name)
        self.inner = optimizer
        self.steps = steps if isinstance(steps, Schedule) else int(steps)
        self.statistics = statistics
        self._accumulators = []
        self._reduced_depth = 0  # > 0 while the inner optimizer applies an already reduced gradient
        original = reducer._all_reduce_sum_gradients

        def all_reduce_sum_gradients(grads_and_vars):
            if self._reduced_depth > 0:
                return list(grads_and_vars)
            return original(grads_and_vars)

        object.__setattr__(reducer, "_all_reduce_sum_gradients", all_reduce_sum_gradients)
        object.__setattr__(self, "_constructed", True)

    # -- delegation to the inner optimizer ------------------------------------------------------
    @property
    def learning_rate(self):
        """The inner optimizer's learning rate (settable, e.g. by Keras callbacks)."""
        return self.inner.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.inner.learning_rate = value

    @property
    def updates(self):
        """Updates applied so far: the inner optimizer's ``iterations``."""
        return self.inner.iterations

    @property
    def variables(self):
        return self._variables[:] + list(self.inner.variables)

    def scale_loss(self, loss):
        """The inner optimizer's ``scale_loss``: multiplies by the current loss scale, if any."""
        return self.inner.scale_loss(loss)

    @property
    def loss_scale(self):
        """The scale the next micro-batch's loss is multiplied by.

        The ``LossScaleOptimizer``'s ``dynamic_scale`` variable, the inner
        optimizer's ``loss_scale_factor`` (a float), or ``None`` without loss
        scaling.
        """
        if isinstance(self.inner, _LossScaleOptimizer):
            return self.inner.dynamic_scale if self.inner.built else self.inner.initial_scale
        return self.inner.loss_scale_factor

    @property
    def skipped_updates(self):
        """Updates skipped because a micro-batch's scaled gradient overflowed (int64; 0 without a loss scale)."""
        if getattr(self, "_skipped", None) is None:
            return tf.constant(0, tf.int64)
        return self._skipped

    def finalize_variable_values(self, var_list):
        self.inner.finalize_variable_values(var_list)

    # -- state ----------------------------------------------------------------------------------
    def build(self, var_list):
        if self.built:
            return
        keras.optimizers.Optimizer.build(self, var_list)  # named, as in __init__
        self.inner.build(var_list)
        strategy = tf.distribute.get_strategy()

        def local(dtype, name, aggregation, shape=()):
            # ON_READ: every replica keeps and updates its own copy without communicating.
            return tf.Variable(
                tf.zeros(shape, dtype),
                trainable=False,
                name=name,
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=aggregation,
            )

        first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        with tf.name_scope(self.name):
            self._micro_step = local(tf.int64, "micro_step", first)
            self._current_k = local(tf.int64, "current_k", first)
            own = [self._micro_step, self._current_k]
            if isinstance(self.inner, _LossScaleOptimizer):
                self._skipped = local(tf.int64, "skipped_updates", first)
                own.append(self._skipped)
            elif self.inner.loss_scale_factor is None and keras.config.dtype_policy().name == "mixed_float16":
                warnings.warn(
                    "Accumulate under a mixed_float16 policy without loss scaling: small float16 gradients "
                    "underflow to zero. Wrap the inner optimizer in keras.optimizers.LossScaleOptimizer.",
                    stacklevel=2,
                )
            if self.statistics:
                mean = tf.VariableAggregation.MEAN
                self._micro_sq_sum = local(tf.float32, "micro_sq_sum", mean)
                self._micro_sq = local(tf.float32, "micro_batch_sq_norm", mean)
                self._update_sq = local(tf.float32, "update_sq_norm", first)
                own += [self._micro_sq_sum, self._micro_sq, self._update_sq]
            accumulators = []
            for v in var_list:
                with strategy.extended.colocate_vars_with(_tf_variable(v)):
                    accumulators.append(local(v.dtype, "accumulator", tf.VariableAggregation.SUM, v.shape))
            self._accumulators = accumulators
        self._variables.extend(own + accumulators)  # saved and restored with the optimizer
        self.built = True

    @property
    def micro_step(self):
        """Micro-batches accumulated in the current cycle (0 right after an update)."""
        return self._micro_step

    @property
    def steps_value(self):
        """``k`` of the current cycle (set when its first micro-batch arrives)."""
        return self._current_k

    def will_apply(self):
        """Whether the next micro-step completes a cycle (and so applies an update).

        A bool tensor, read in the same context the training loop advances the
        clock in; for a new cycle it reads ``k`` from ``steps`` now.
        """
        k = tf.where(tf.equal(self._micro_step, 0), self._k_from_steps(), self._current_k)
        return self._micro_step + 1 >= k

    @property
    def micro_batch_sq_norm(self):
        """Mean over the last cycle's micro-batches and replicas of ``|g_b|²`` (``statistics=True``).

        ``g_b`` is the mean gradient of one replica's micro-batch,
        ``b = global micro-batch / num_replicas`` examples. Read it in
        cross-replica context (eagerly, e.g. from a callback). Both norms are
        of unscaled gradients (divided by the loss scale, in float32); after a
        skipped update (loss-scale overflow) both are NaN: no measurement.
        """
        self._require_statistics()
        return self._micro_sq.read_value()

    @property
    def update_sq_norm(self):
        """``|G_B|²`` of the last applied mean gradient, ``B = k × global micro-batch`` (``statistics=True``).

        With :attr:`micro_batch_sq_norm` this gives McCandlish et al.'s
        unbiased estimates (their appendix A.1):
        ``|G|² ≈ (B·|G_B|² − b·|g_b|²)/(B − b)``,
        ``tr Σ ≈ (|g_b|² − |G_B|²)/(1/b − 1/B)``, ``B_simple = tr Σ/|G|²``.
        """
        self._require_statistics()
        return self._update_sq.read_value()

    def _require_statistics(self):
        if not self.statistics:
            raise AttributeError("Accumulate tracks gradient norms only with statistics=True.")
        if not self.built:
            raise AttributeError("Accumulate has not applied any gradient yet (not built).")

    def _k_from_steps(self):
        if not isinstance(self.steps, Schedule):
            return tf.constant(self.steps, tf.int64)
        k = tf.convert_to_tensor(self.steps(None))
        name = type(self.steps).__name__
        checks = []
        if k.dtype.is_floating:
            checks.append(tf.debugging.assert_equal(
                k, tf.round(k), message=f"Accumulate: steps schedule {name} must be integer-valued, got"))
        k = tf.cast(k, tf.int64)
        checks.append(tf.debugging.assert_greater_equal(
            k, tf.constant(1, tf.int64), message=f"Accumulate: steps schedule {name} must be >= 1, got"))
        with tf.control_dependencies(checks):
            return tf.identity(k)

    # -- the update ---------------------------------------------------------------------------
    def apply(self, grads, trainable_variables=None):
        """Accumulates one micro-batch gradient; applies the mean every ``k`` calls."""
        grads = list(grads)
        if not grads:
            return
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "When passing grads without variables, the optimizer must already be built: "
                    "call acc.build(trainable_variables) first."
                )
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if len(grads) != len(trainable_variables):
            raise ValueError(
                f"got {len(grads)} gradients for {len(trainable_variables)} variables; they must match."
            )
        if not self.built:
            with tf.init_scope():
                self.build(trainable_variables)
        self._check_variables_are_known(trainable_variables)
        pairs = [
            (g, self._accumulators[self._get_variable_index(v)], v)
            for g, v in zip(grads, trainable_variables)
            if g is not None
        ]
        if not pairs:
            raise ValueError(f"No gradients provided for any variable: {[v.name for v in trainable_variables]}.")
        if tf.distribute.in_cross_replica_context():
            strategy = tf.distribute.get_strategy()
            if strategy.num_replicas_in_sync != 1:
                raise RuntimeError(
                    "Accumulate.apply must run in replica context under a strategy with "
                    f"{strategy.num_replicas_in_sync} replicas: call it inside strategy.run(...)."
                )
            strategy.extended.call_for_each_replica(self._apply_in_replica, args=(pairs,))
        else:
            self._apply_in_replica(pairs)

    def _apply_in_replica(self, pairs):
        # 1. Replica-local accumulation; k is fixed when a cycle starts.
        k = tf.where(tf.equal(self._micro_step, 0), self._k_from_steps(), self._current_k)
        self._current_k.assign(k)
        for g, acc, _ in pairs:
            if isinstance(g, tf.IndexedSlices):
                acc.scatter_add(tf.IndexedSlices(tf.cast(g.values, acc.dtype), g.indices, g.dense_shape))
            else:
                acc.assign_add(tf.cast(g, acc.dtype))
        if self.statistics:
            # |g_b|² of this replica's micro-batch mean gradient (the sum over replicas of the
            # per-replica gradients is the global mean, so the replica's own mean is R·g), unscaled.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            factor = float(replicas**2) / self._squared_scale()
            self._micro_sq_sum.assign_add(_sq_norm([g for g, _, _ in pairs]) * factor)
        step = self._micro_step.assign_add(1)
        should_apply = step >= k

        # 2. The decision: in cross-replica context when the strategy uses merge_call.
        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            self._iterations.assign_add(1)
            tf.cond(should_apply, lambda: self._update(pairs), lambda: tf.constant(False))
        else:
            tf.distribute.get_replica_context().merge_call(self._decide, args=(should_apply, pairs))

    def _decide(self, strategy, should_apply, pairs):
        # Cross-replica context. Every replica computed the same decision; take the first one's
        # (local, no communication).
        should_apply = strategy.experimental_local_results(should_apply)[0]
        self._iterations.assign_add(1)

        def apply_update():
            strategy.extended.call_for_each_replica(self._update, args=(pairs,))
            return tf.constant(True)

        return tf.cond(should_apply, apply_update, lambda: tf.constant(False))

    def _squared_scale(self):
        """(loss scale)² as a float32 tensor, 1 without loss scaling; constant during a cycle."""
        scale = self.loss_scale
        if scale is None:
            return tf.constant(1.0, tf.float32)
        scale = tf.cast(tf.convert_to_tensor(_tf_variable(scale)), tf.float32)
        return scale * scale

    def _update(self, pairs):
        # 3. Replica context, apply branch only.
        k = tf.cast(self._current_k, tf.float32)
        means = [acc.read_value() / tf.cast(k, acc.dtype) for _, acc, _ in pairs]
        replica_context = tf.distribute.get_replica_context()
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            means = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, means)  # the one reduction
        # The same on every replica (the means are reduced): an overflow in any micro-batch anywhere.
        finite = _all_finite(means)
        if self.statistics:
            nan = tf.constant(float("nan"), tf.float32)
            self._update_sq.assign(tf.where(finite, _sq_norm(means) / self._squared_scale(), nan))
            self._micro_sq.assign(tf.where(finite, self._micro_sq_sum / k, nan))
            self._micro_sq_sum.assign(0.0)
        if getattr(self, "_skipped", None) is not None:
            self._skipped.assign_add(tf.cast(tf.logical_not(finite), tf.int64))
        with self._already_reduced():
            # A LossScaleOptimizer checks the same finiteness once: skips the update and halves its
            # scale, or unscales, applies and counts towards growth.
            self.inner.apply(means, [v for _, _, v in pairs])
        for _, acc, _ in pairs:
            acc.assign(tf.zeros_like(acc))
        self._micro_step.assign(0)
        return tf.constant(True)

    @contextlib.contextmanager
    def _already_reduced(self):
        self._reduced_depth += 1
        try:
            yield
        finally:
            self._reduced_depth -= 1

    def __setattr__(self, name, value):
        if name == "_reduced_depth":  # a trace-time counter, not state to track
            object.__setattr__(self, name, value)
            return
        if name == "loss_scale_factor" and getattr(self, "_constructed", False):
            # LossScaleOptimizer.__init__ sets its inner optimizer's loss_scale_factor: the only hook
            # that catches the wrong order when it is built (model.compile under mixed_float16).
            caller = inspect.currentframe().f_back.f_locals.get("self")
            if isinstance(caller, _LossScaleOptimizer):
                raise TypeError(_WRAPPED_ERROR)
            if value is not None:
                raise TypeError(
                    "Accumulate does not scale losses itself; set loss_scale_factor on the inner optimizer."
                )
        super().__setattr__(name, value)

    # -- serialization --------------------------------------------------------------------------
    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner),
            "steps": keras.saving.serialize_keras_object(self.steps)
            if isinstance(self.steps, Schedule)
            else self.steps,
            "statistics": self.statistics,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = copy.deepcopy(config)  # LossScaleOptimizer.from_config pops from the dict it is given
        config["optimizer"] = keras.saving.deserialize_keras_object(config["optimizer"], custom_objects=custom_objects)
        if isinstance(config["steps"], dict):
            config["steps"] = keras.saving.deserialize_keras_object(config["steps"], custom_objects=custom_objects)
        return cls(**config)


@keras.saving.register_keras_serializable(package="bstf")
class LossScaledAccumulate(Accumulate, keras.optimizers.LossScaleOptimizer):
    """What ``Accumulate(keras.optimizers.LossScaleOptimizer(inner), steps)`` returns.

    An :class:`Accumulate` (all its behaviour, arguments and counters) whose
    inner optimizer is a ``LossScaleOptimizer``; it is also an instance of
    ``LossScaleOptimizer``, so that ``model.compile`` under a
    ``mixed_float16`` policy — and ``keras.saving.load_model``, which
    recompiles — does not wrap it in a second loss-scale optimizer. The
    ``LossScaleOptimizer`` attributes Keras's callbacks read
    (``inner_optimizer``, ``dynamic_scale``, ...) are those of the inner one.
    Build it through ``Accumulate``.
    """

    @property
    def iterations(self):
        """Micro-steps, as for every Accumulate (:attr:`updates` counts applied updates)."""
        return self._iterations

    @property
    def inner_optimizer(self):
        """The optimizer that applies the updates (inside the loss-scale optimizer)."""
        return self.inner.inner_optimizer

    @property
    def dynamic_scale(self):
        return self.inner.dynamic_scale

    @property
    def step_counter(self):
        """Finite updates since the scale last changed (it doubles after ``dynamic_growth_steps``)."""
        return self.inner.step_counter

    @property
    def initial_scale(self):
        return self.inner.initial_scale

    @property
    def dynamic_growth_steps(self):
        return self.inner.dynamic_growth_steps
