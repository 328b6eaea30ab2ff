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

Loss scaling (``mixed_float16``: the compiled optimizer is a ``LossScaleOptimizer``, which the run wraps
in a :class:`bstf.optimizers.LossScaledAccumulate`): skipping an overflowing update is the loss scale's job
— it skips the whole update on every replica and halves the scale once — so in neither mode does the
guard skip anything itself. It watches instead: every micro-batch's unscaled loss (``scale_loss``) and,
after the loss-scale optimizer's once-per-update ``apply``, whether a loss was non-finite on any replica
(one scalar all-reduce per update) and whether the scale fell below 1. Overflows are not divergence.
Divergence is what survives unscaling: a NaN or infinite *unscaled* loss ("raise" stops the run as above;
"skip" lets the loss scale skip the update and keeps its loss out of the epoch's mean), or a loss scale
below 1, i.e. updates that overflow even unscaled, which stops the run in both modes (skipping them would
skip every update from then on). ``skipped_updates`` then counts the loss scale's skips.
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
        # loss scaling: a non-finite unscaled loss on this replica since the last update (0. or 1.)
        self._loss_bad = tf.Variable(0.0, trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self._scaled = None  # the run's LossScaledAccumulate, if the optimizer is a LossScaleOptimizer
        self._skipped_base = (0, 0)  # loss scaling: (the run's skipped updates, acc.skipped_updates) at reset
        self._patched = None  # [(object, attribute name, the instance attribute it replaced or None)]

    # ------------------------------------------------------------------ the host side
    def reset(self, skipped):
        """Before the run (after :meth:`install`): no non-finite update seen; ``skipped`` updates skipped so
        far (a resumed run's)."""
        self.first_bad.assign(-1)
        self.skipped.assign(skipped)
        if self._scaled is not None:
            self._skipped_base = (skipped, int(self._scaled.skipped_updates.numpy()))

    def bad_examples(self):
        """The clock at the start of the first update that was not finite, or None (one host read).

        Without loss scaling only in "raise" mode; with it, in both modes when the loss scale fell below
        1 (and in "raise" mode at a non-finite unscaled loss)."""
        if self.mode != "raise" and self._scaled is None:
            return None
        x = int(self.first_bad.numpy())
        return None if x < 0 else x

    def skipped_updates(self):
        """Updates skipped so far: by the guard ("skip"), or by the loss scale (overflows and non-finite
        losses) when there is one."""
        if self._scaled is not None:
            start, base = self._skipped_base
            return start + int(self._scaled.skipped_updates.numpy()) - base
        return int(self.skipped.numpy())

    @property
    def loss_scaled(self):
        return self._scaled is not None

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
        return tf.constant(True)

    # ------------------------------------------------------------------ the optimizer hooks
    def install(self, optimizer, accumulate=None):
        """Hooks the run's optimizer: "raise" watches its reduced gradients, "skip" guards its ``apply``.

        A ``LossScaleOptimizer`` (``optimizer``, inside the run's ``accumulate``) skips overflowing updates
        itself; in both modes the guard only watches it: ``accumulate.scale_loss`` (the unscaled loss of
        every micro-batch) and the loss-scale optimizer's ``apply`` (once per update, see
        :meth:`_watched_loss_scale`).
        """
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            self._scaled = accumulate
            hooks = [(accumulate, "scale_loss", self._watched_loss), (optimizer, "apply", self._watched_loss_scale)]
        elif self.mode == "skip":
            hooks = [(optimizer, "apply", self._guarded_apply)]
        else:
            hooks = [(optimizer, "_all_reduce_sum_gradients", self._watched_reduction)]
        self._patched = [(obj, name, vars(obj).get(name)) for obj, name, _ in hooks]
        for obj, name, hook in hooks:
            object.__setattr__(obj, name, hook(getattr(obj, name)))

    def uninstall(self):
        for obj, name, previous in reversed(self._patched or []):
            if previous is None:
                object.__delattr__(obj, name)
            else:
                object.__setattr__(obj, name, previous)
        self._patched = None

    def _record_bad(self, bad):
        """Replica context: the clock (the update's start) becomes ``first_bad`` at the first ``bad`` update."""
        bad = tf.logical_and(self.first_bad < 0, bad)
        self.first_bad.assign(tf.where(bad, self.clock.examples, self.first_bad))

    # ------------------------------------------------------------------ "raise": the watched reduction
    def _watched_reduction(self, reduce):
        def reduce_and_watch(grads_and_vars):
            grads_and_vars = reduce(grads_and_vars)
            self._record_bad(tf.logical_not(_finite([g for g, _ in grads_and_vars])))
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
        return self._restore_tracker()

    def _restore_tracker(self):
        for s, v in zip(self._shadow, self._tracked):
            v.assign(s)
        return tf.constant(False)

    # ------------------------------------------------------------------ loss scaling: the watched loss scale
    def _watched_loss(self, scale_loss):
        # Replica context, every micro-batch: remember a non-finite unscaled loss on this replica.
        def scale_and_watch(loss):
            bad = tf.cast(tf.logical_not(tf.reduce_all(tf.math.is_finite(loss))), tf.float32)
            self._loss_bad.assign(tf.maximum(self._loss_bad, bad))
            return scale_loss(loss)

        return scale_and_watch

    def _watched_loss_scale(self, apply):
        # Replica context, once per update (Accumulate calls it with the reduced mean gradient). The loss
        # scale optimizer decides itself (skip and halve the scale on an overflow); afterwards every replica
        # learns whether a micro-batch's unscaled loss was non-finite anywhere (one scalar all-reduce per
        # update) and reads the same new scale, so all reach the same verdict.
        def apply_and_watch(grads, trainable_variables=None):
            apply(grads, trainable_variables)
            loss_bad = self._loss_bad.read_value()
            context = tf.distribute.get_replica_context()
            if context is not None and tf.distribute.get_strategy().num_replicas_in_sync > 1:
                loss_bad = context.all_reduce(tf.distribute.ReduceOp.SUM, loss_bad)
            self._loss_bad.assign(0.0)
            scale = self._scaled.loss_scale
            scale = tf.convert_to_tensor(scale.value if isinstance(scale, keras.Variable) else scale)
            collapsed = tf.cast(scale, tf.float32) < 1.0
            loss_ok = tf.equal(loss_bad, 0.0)
            if self.mode == "skip":  # the loss scale skipped a non-finite loss: keep it out of the epoch's mean
                tf.cond(loss_ok, self._keep_tracker, self._restore_tracker)
                self._record_bad(collapsed)
            else:
                self._record_bad(tf.logical_or(tf.logical_not(loss_ok), collapsed))

        return apply_and_watch
