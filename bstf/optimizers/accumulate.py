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

Loss convention: the per-replica gradients must sum over replicas to the
micro-batch mean gradient (Keras's ``model.fit`` divides each replica's loss
by the replica count; custom loops divide the summed loss by the global
batch). Micro-batches must have equal sizes for the mean of means to equal
the big-batch mean (batch with ``drop_remainder=True`` or a size that
divides the data).
"""

import contextlib
import numbers

import keras
import tensorflow as tf

from bstf.clock import Clock
from bstf.schedules import Schedule


def _tf_variable(v):
    """The tf.Variable behind a keras.Variable."""
    return v.value if isinstance(v, keras.Variable) else v


def _sq_norm(tensors):
    return tf.add_n([tf.reduce_sum(tf.square(tf.cast(tf.convert_to_tensor(t), tf.float32))) for t in tensors])


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
        belongs to this wrapper from now on (do not also use it alone).
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
      TypeError: ``optimizer`` is not a Keras optimizer (or is an
        ``Accumulate``/``LossScaleOptimizer``), ``steps`` is not an integer
        or a Schedule, ``clock`` is not a Clock.
      ValueError: ``steps < 1``; a steps schedule whose value at epoch 0 is
        not an integer >= 1; an inner optimizer using Keras's own
        ``gradient_accumulation_steps``.

    A schedule returning a non-integer or a value < 1 later in training
    fails in-graph with a ``tf.debugging`` assertion naming the value (XLA
    removes assertions: with ``jit_compile=True`` validate the schedule up
    front).
    """

    def __init__(self, optimizer, steps, clock=None, statistics=False, name="accumulate"):
        if isinstance(optimizer, dict):
            optimizer = keras.optimizers.deserialize(optimizer)
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                f"optimizer must be a keras.optimizers.Optimizer, got {type(optimizer).__name__}: {optimizer!r}."
            )
        if isinstance(optimizer, Accumulate):
            raise TypeError("optimizer must not be an Accumulate; wrap the inner optimizer once.")
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            raise TypeError(
                "optimizer must not be a LossScaleOptimizer; wrap the Accumulate in it instead "
                "(Keras does so itself under a mixed_float16 policy)."
            )
        if not callable(getattr(optimizer, "_all_reduce_sum_gradients", None)):
            raise TypeError(
                f"optimizer {type(optimizer).__name__} is not a TensorFlow-backend Keras optimizer "
                "(it lacks _all_reduce_sum_gradients); bstf needs the TensorFlow backend."
            )
        if optimizer.gradient_accumulation_steps:
            raise ValueError(
                "optimizer has Keras's gradient_accumulation_steps="
                f"{optimizer.gradient_accumulation_steps}; use Accumulate's steps instead "
                "(Keras's accumulation fails under MirroredStrategy)."
            )
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
        super().__init__(learning_rate=0.0, name=name)
        self.inner = optimizer
        self.steps = steps if isinstance(steps, Schedule) else int(steps)
        self.statistics = statistics
        self._accumulators = []
        self._reduced_depth = 0  # > 0 while the inner optimizer applies an already reduced gradient
        original = optimizer._all_reduce_sum_gradients

        def all_reduce_sum_gradients(grads_and_vars):
            if self._reduced_depth > 0:
                return list(grads_and_vars)
            return original(grads_and_vars)

        object.__setattr__(optimizer, "_all_reduce_sum_gradients", all_reduce_sum_gradients)

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
        return self.inner.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner.finalize_variable_values(var_list)

    # -- state ----------------------------------------------------------------------------------
    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
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
        cross-replica context (eagerly, e.g. from a callback).
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
            # per-replica gradients is the global mean, so the replica's own mean is R·g).
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            self._micro_sq_sum.assign_add(_sq_norm([g for g, _, _ in pairs]) * float(replicas**2))
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

    def _update(self, pairs):
        # 3. Replica context, apply branch only.
        k = tf.cast(self._current_k, tf.float32)
        means = [acc.read_value() / tf.cast(k, acc.dtype) for _, acc, _ in pairs]
        replica_context = tf.distribute.get_replica_context()
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            means = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, means)  # the one reduction
        if self.statistics:
            self._update_sq.assign(_sq_norm(means))
            self._micro_sq.assign(self._micro_sq_sum / k)
            self._micro_sq_sum.assign(0.0)
        with self._already_reduced():
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
        else:
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
        config = dict(config)
        config["optimizer"] = keras.saving.deserialize_keras_object(config["optimizer"], custom_objects=custom_objects)
        if isinstance(config["steps"], dict):
            config["steps"] = keras.saving.deserialize_keras_object(config["steps"], custom_objects=custom_objects)
        return cls(**config)
