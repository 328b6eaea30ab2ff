"""The non-finite guard of :func:`bstf.fit`: stop at (``"raise"``) or skip (``"skip"``) a non-finite update.

Both modes look at the update's gradient **after it is reduced over replicas and workers** — every
replica holds the same values, so every replica reaches the same verdict — inside the traced step: no
extra function call and no host sync per update. A non-finite loss gives a non-finite gradient (and a
finite loss with a non-finite gradient would corrupt the weights just the same).

``on_nonfinite="raise"`` (default): the optimizer's gradient reduction (Keras's
``_all_reduce_sum_gradients``, which :class:`bstf.optimizers.Accumulate` also hooks) records, in a
variable, the clock at the first update whose reduced gradient is NaN or infinite. The host reads that
variable only where it stops anyway — every ``log_every_n_updates`` updates, at each epoch end, phase
end and before every checkpoint — so no checkpoint, epoch-end callback or history entry ever follows a
non-finite update. The run then raises :class:`NonFiniteLossError` naming the update, the epoch and the
last good checkpoint. (Between the bad update and the next look, at most ``log_every_n_updates`` updates
run on NaN weights; they are thrown away.)

``on_nonfinite="skip"``: the run always accumulates (``k = 1`` where the plan needs no accumulation), and
the inner optimizer's ``apply`` — which :class:`bstf.optimizers.Accumulate` calls once per update with the
mean gradient already reduced — applies the update only if that gradient is finite (the decision is made
in cross-replica context on strategies that use ``merge_call``, as Keras's ``LossScaleOptimizer`` does). A
skipped update changes no weight and no optimizer slot (momentum, iterations); the clock still advances
over its examples, so the data order does not shift. Its batches are also taken out of the epoch's mean
loss (the loss tracker is put back to its value after the last applied update), so the history and the
checkpoints stay finite. Skipped updates are counted (``history.skipped_updates``, TensorBoard
``skipped_updates``).
"""

import keras
import tensorflow as tf

__all__ = ["NonFiniteLossError", "Guard"]


class NonFiniteLossError(FloatingPointError):
    """``bstf.fit`` stopped because the training loss was NaN or infinite (``on_nonfinite="raise"``).

    Attributes:
      update: the 1-based number of the first update whose loss was not finite.
      epoch: the 1-based epoch it started in.
      examples: the examples seen when it started.
      checkpoint: the last good checkpoint (the one a rerun of the same call resumes from), or None.
    """

    def __init__(self, message, *, update, epoch, examples, checkpoint):
        super().__init__(message)
        self.update, self.epoch, self.examples, self.checkpoint = update, epoch, examples, checkpoint


def _replica_value(value):
    # Written in replica context, where every replica holds the same value (computed from the reduced
    # gradient); read on the host (the first replica's copy).
    return tf.Variable(value, dtype=tf.int64, trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


def _finite(grads):
    grads = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads if g is not None]
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])


class Guard:
    """The run's non-finite guard. Create it in the strategy's scope.

    Args:
      mode: "raise" or "skip".
      clock: the run's :class:`bstf.Clock` (a bad update is recorded by the clock when it started).
      loss_tracker: the model's loss metric (Keras's ``Mean`` named ``"loss"``) or None; "skip" keeps it
        finite.
    """

    def __init__(self, mode, clock, loss_tracker):
        self.mode, self.clock = mode, clock
        self.first_bad = _replica_value(-1)  # the clock at the first non-finite update ("raise"); -1: none
        self.skipped = _replica_value(0)  # updates skipped ("skip")
        self._tracked = [v.value if isinstance(v, keras.Variable) else v
                         for v in (loss_tracker.variables if loss_tracker is not None and mode == "skip" else [])]
        self._shadow = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, aggregation=v.aggregation,
                                    synchronization=tf.VariableSynchronization.ON_READ) for v in self._tracked]
        self._patched = None  # (optimizer, attribute name, the instance attribute it replaced or None)

    # ------------------------------------------------------------------ the host side
    def reset(self, skipped):
        """Before the run: no non-finite update seen; ``skipped`` updates skipped so far (a resumed run's)."""
        self.first_bad.assign(-1)
        self.skipped.assign(skipped)

    def bad_examples(self):
        """The clock at the start of the first update that was not finite, or None (one host read)."""
        if self.mode != "raise":
            return None
        x = int(self.first_bad.numpy())
        return None if x < 0 else x

    def skipped_updates(self):
        return int(self.skipped.numpy())

    def sync_tracker(self, strategy):
        """After the metrics were reset or restored ("skip"): the loss tracker's copy is its value, per replica."""
        if self._shadow:
            self._copy(strategy)

    @tf.function
    def _copy(self, strategy):
        strategy.run(self._keep_tracker)

    def _keep_tracker(self):
        for s, v in zip(self._shadow, self._tracked):
            s.assign(v)

    # ------------------------------------------------------------------ the optimizer hook
    def install(self, optimizer):
        """Hooks the run's (inner) optimizer: "raise" watches its reduced gradients, "skip" guards ``apply``."""
        name = "apply" if self.mode == "skip" else "_all_reduce_sum_gradients"
        hook = self._guarded_apply if self.mode == "skip" else self._watched_reduction
        self._patched = (optimizer, name, vars(optimizer).get(name))
        object.__setattr__(optimizer, name, hook(getattr(optimizer, name)))

    def uninstall(self):
        if self._patched is None:
            return
        optimizer, name, previous = self._patched
        if previous is None:
            object.__delattr__(optimizer, name)
        else:
            object.__setattr__(optimizer, name, previous)
        self._patched = None

    # ------------------------------------------------------------------ "raise": the watched reduction
    def _watched_reduction(self, reduce):
        def reduce_and_watch(grads_and_vars):
            grads_and_vars = reduce(grads_and_vars)
            bad = tf.logical_and(self.first_bad < 0, tf.logical_not(_finite([g for g, _ in grads_and_vars])))
            self.first_bad.assign(tf.where(bad, self.clock.examples, self.first_bad))
            return grads_and_vars

        return reduce_and_watch

    # ------------------------------------------------------------------ "skip": the guarded apply
    def _guarded_apply(self, apply):
        # Accumulate calls its inner optimizer's apply with the mean gradient already reduced.
        def guarded(grads, trainable_variables=None):
            finite = _finite(grads)
            if tf.__internal__.distribute.strategy_supports_no_merge_call():
                tf.cond(finite, lambda: self._apply(apply, grads, trainable_variables), self._skip)
            else:
                tf.distribute.get_replica_context().merge_call(
                    self._decide, args=(finite, apply, grads, trainable_variables))

        return guarded

    def _decide(self, strategy, finite, apply, grads, trainable_variables):
        # Cross-replica context: every replica computed the same `finite` from the same reduced gradient.
        finite = strategy.experimental_local_results(finite)[0]

        def apply_update():
            strategy.extended.call_for_each_replica(self._apply, args=(apply, grads, trainable_variables))
            return tf.constant(True)

        def skip_update():
            strategy.extended.call_for_each_replica(self._skip)
            return tf.constant(False)

        return tf.cond(finite, apply_update, skip_update)

    def _apply(self, apply, grads, trainable_variables):
        apply(grads, trainable_variables)
        self._keep_tracker()  # the loss tracker after the last applied update
        return tf.constant(True)

    def _skip(self):
        self.skipped.assign_add(1)
        for s, v in zip(self._shadow, self._tracked):
            v.assign(s)
        return tf.constant(False)
