"""``bstf.fit``: training that follows a :class:`bstf.NoiseScalePlan`.

Keras ``fit`` assumes one batch size per run. ``bstf.fit`` trains a compiled
Keras model through the plan's *phases* (segments of constant global batch),
on the example clock:

* The data is one stream of examples: epoch ``e`` is the training set
  shuffled with seed ``(seed, e)``; the stream is cut into batches of the
  phase's physical batch ``b`` with ``drop_remainder`` (static shapes, so TPU
  and ``jit_compile`` see one shape per phase). An update may straddle an
  epoch boundary, exactly as the plan counts updates.
* A phase whose global batch ``B`` exceeds ``max_physical_batch`` runs ``k =
  B / b`` micro-batches per update through :class:`bstf.optimizers.Accumulate`,
  whose ``k`` is a schedule on the same clock (no retrace when ``k``
  changes).
* The learning rate (and the momentum, for optimizers with
  ``supports_momentum_schedule``) are the plan's schedules bound to the run's
  :class:`bstf.Clock`, read in-graph at every update; the clock advances by
  the ``B`` examples of every update, after it. So update ``u`` that starts at
  ``x`` examples uses exactly ``plan.at(x / N)``.
* The model is compiled once, by the caller; a phase change costs at most one
  new trace per distinct physical batch shape.

Checkpoints (``checkpoint_dir``) are one ``tf.train.Checkpoint`` each: the
model, the optimizer's state, the clock, the metric accumulators *and* the
run record (plan, epochs, seed, history, phases, controller states), written
together so they never disagree. Rerunning the same call after a crash
resumes at the last usable checkpoint — same point of the plan, same data
order — and refuses a checkpoint written for a different plan. A non-finite
loss stops the run (:class:`NonFiniteLossError`) before anything is saved
after it, or, with ``on_nonfinite="skip"``, skips that update.

Under ``jit_compile`` or on GPU some ops are not bitwise deterministic; on CPU
with a fixed ``seed`` an interrupted and resumed run ends within 1e-6 of an
uninterrupted one (tests/test_training.py).

Mixed precision: a model built under ``mixed_bfloat16`` trains as is; under
``mixed_float16`` compile it with a ``keras.optimizers.LossScaleOptimizer``
(``model.compile`` adds one): bstf.fit wraps it in
:class:`bstf.optimizers.Accumulate` even where ``k = 1``, so each update takes
one loss-scale decision on the replica-reduced gradient. A skipped update's
examples still advance the clock (it counts examples consumed: epochs stay
epochs of the data, a resume reads the data where it stopped);
``history.updates`` counts updates run, ``history.skipped_updates`` those the
loss scale skipped. See docs/large_batch.md, "Mixed precision".

The parts live in :mod:`bstf.fitting` (spec, stream, trainer, guard, state,
report); this module holds ``fit`` and the loop.
"""

import contextlib
import math
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from bstf import distribute
from bstf.evaluation import evaluate
from bstf.fitting.guard import NonFiniteLossError
from bstf.fitting.report import Board, Ledger, Progress
from bstf.fitting.spec import make_spec, physical_batch, segments
from bstf.fitting.state import RunState
from bstf.fitting.steps import is_multi_worker, scalar
from bstf.fitting.stream import ExampleStream
from bstf.fitting.trainer import NoiseMeter, Trainer

__all__ = ["fit", "NonFiniteLossError", "physical_batch", "segments"]


def fit(model, train_data, plan, epochs, *, validation_data=None, strategy=None, max_physical_batch=None,
        callbacks=(), logdir=None, checkpoint_dir=None, seed=None, verbose="auto", log_every_n_updates=10,
        checkpoint_every_n_updates=None, validation_batch_size=None, shuffle=True, shuffle_buffer=None,
        noise_scale_every_n_updates=None, noise_scale_ema=0.9, adaptive=None, on_nonfinite="raise"):
    """Trains a compiled ``model`` on ``train_data`` following ``plan`` for ``epochs`` epochs.

    Args:
      model: a compiled ``keras.Model`` (any loss and metrics, a float
        learning rate). Under a strategy, create and compile it in
        ``strategy.scope()``.
      train_data: the *unbatched* training set: a ``tf.data.Dataset`` of
        ``(x, y)`` (or ``(x, y, sample_weight)``) or a :class:`bstf.data.Data`;
        it must have ``plan.train_size`` examples.
      plan: a :class:`bstf.NoiseScalePlan` (global batches, LR, momentum).
      epochs: epochs to train (> 0; a float ends mid-epoch).
      validation_data: unbatched data evaluated after every epoch.
      strategy: the model's ``tf.distribute.Strategy`` (default: the one the
        model was created under).
      max_physical_batch: largest global batch fed to the model at once (the
        physical batch b); bigger plan batches accumulate ``k = B / b``
        micro-batches.
      callbacks: Keras callbacks; ``on_train_batch_*`` fire once per update.
      logdir: TensorBoard directory (``train/`` and ``validation/`` runs; the
        tags are those of :mod:`bstf.tags`).
      checkpoint_dir: where to save every epoch (and every
        ``checkpoint_every_n_updates``) and resume from. One run at a time:
        a second run on the same directory is refused while the first lives.
      seed: shuffle seed (default: drawn at random and saved for resuming).
      verbose: 0 silent, 1 progress bar, 2 one line per epoch; "auto" is 1.
      log_every_n_updates: interval of the per-update TensorBoard scalars
        (also written for the first update of every phase) and of the host's
        look at the non-finite guard.
      checkpoint_every_n_updates: extra checkpoints within epochs.
      validation_batch_size: batch of the evaluation (default: the largest
        physical batch).
      shuffle: reshuffle the data every epoch (seeded).
      shuffle_buffer: shuffle buffer (default: the whole training set).
      noise_scale_every_n_updates: measure the gradient noise scale B_simple
        (McCandlish et al.) every n updates from gradients the update computes
        anyway — the micro-batches of an accumulated update and the replicas'
        batches are the small batches, the update's mean gradient the big one
        (no extra passes; phases with one micro-batch on one replica have no
        small batch and are skipped). Logged as ``measured_b_simple``,
        ``measured_grad_norm_sq``, ``measured_trace_sigma`` and added to
        ``history.history["b_simple"]`` per epoch. Callbacks with a ``clock``
        attribute left ``None`` (e.g. ``NoiseScaleMonitor``) get the run's
        clock either way.
      noise_scale_ema: EMA decay of the measurements' numerator and
        denominator (None: plain mean).
      adaptive: a batch controller; the plan must then have no milestones
        (it supplies ``train_size`` and the momentum), the controller sets
        the batch and the LR (held in variables the traced step reads, see
        :mod:`bstf.fitting.control`), measurements every
        ``noise_scale_every_n_updates`` (default ``adaptive.every_n_updates
        // 10``) feed it, and its state is checkpointed with the run.
        A :class:`bstf.analysis.AdaptiveBatch` sets B ≈ c·B_simple (the
        AdaptDL idea) with its LR rule; ``max_physical_batch`` is its
        micro-batch and must leave at least 2 micro-batches (or replicas) at
        ``min_batch``. A :class:`bstf.analysis.GoodputBatch` picks the batch
        and its realisation physical batch × accumulation that maximise
        throughput × statistical efficiency (Pollux), with AdaScale's LR;
        ``max_physical_batch`` must be its throughput model's, whose replicas
        must be the strategy's. The loop times every update (callbacks
        excluded) and feeds the controller the sum of every
        ``log_every_n_updates`` updates of one realisation, averaged over
        workers, so every worker decides the same; each decision is logged
        (:func:`bstf.tags.decision`), and AdaScale's progress every
        ``log_every_n_updates`` updates (:data:`bstf.tags.ADASCALE_PROGRESS`).
      on_nonfinite: "raise" (default): a NaN or infinite training loss stops
        the run with :class:`NonFiniteLossError` naming the update, the epoch
        and the last good checkpoint; nothing is saved after it. "skip": an
        update whose (replica-reduced) gradient is not finite is not applied —
        weights and optimizer state stay as they were, the clock moves on —
        and counted in ``history.skipped_updates`` (see
        :mod:`bstf.fitting.guard`). Under ``mixed_float16`` (the model
        compiled with a ``keras.optimizers.LossScaleOptimizer``) overflowing
        updates are skipped by the loss scale in either mode — once per
        update, on every replica, the scale halved once — and counted in
        ``history.skipped_updates``; only a non-finite *unscaled* loss
        ("raise") or a loss scale below 1 (both modes) is a divergence.

    Returns:
      The ``keras.callbacks.History``: ``history.history`` has per-epoch
      lists of the metrics (``val_`` too), ``examples``, ``updates``,
      ``learning_rate``, ``batch_size`` and ``momentum`` (and
      ``skipped_updates`` with ``on_nonfinite="skip"`` or a loss scale, and
      ``loss_scale`` with a loss scale); ``history.phases`` a
      dict per phase (the fields of :class:`bstf.plan.Phase`, with
      ``updates`` the updates run and ``wall_time`` their seconds);
      ``history.updates``, ``history.examples``, ``history.seed`` and
      ``history.skipped_updates``.

    Raises:
      TypeError, ValueError: a bad argument, before anything is trained.
      NonFiniteLossError: the training loss became NaN or infinite
        (``on_nonfinite="raise"``).
      bstf.fitting.state.CheckpointError: ``checkpoint_dir`` holds
        checkpoints of which none can be used, or is in use by another run.
    """
    spec = make_spec(
        model, train_data, plan, epochs, validation_data=validation_data, strategy=strategy,
        max_physical_batch=max_physical_batch, callbacks=callbacks, logdir=logdir, checkpoint_dir=checkpoint_dir,
        seed=seed, verbose=verbose, log_every_n_updates=log_every_n_updates,
        checkpoint_every_n_updates=checkpoint_every_n_updates, validation_batch_size=validation_batch_size,
        shuffle=shuffle, shuffle_buffer=shuffle_buffer, noise_scale_every_n_updates=noise_scale_every_n_updates,
        noise_scale_ema=noise_scale_ema, adaptive=adaptive, on_nonfinite=on_nonfinite)
    with Trainer(spec) as trainer, _run_state(spec, trainer) as state:
        return _Run(spec, trainer, state).train()


def _run_state(spec, trainer):
    if spec.checkpoint_dir is None:
        return contextlib.nullcontext()
    return RunState(spec.checkpoint_dir, trainer.trackables(), chief=spec.chief)


class _Run:
    """One run: its parts, restored from the checkpoint if there is one, and the loop (:meth:`train`)."""

    def __init__(self, spec, trainer, state):
        self.spec, self.trainer, self.state, self.model = spec, trainer, state, spec.model
        record = state.restore(spec.identity()) if state is not None else None
        self.seed = _seed(spec, record)
        self.ledger = Ledger(spec, record)
        self.noise = NoiseMeter(spec, trainer, (record or {}).get("state"))
        trainer.guard.reset(self.ledger.skipped)
        self.stream = ExampleStream(spec.dataset, spec.train_size, self.seed, math.ceil(spec.end_examples),
                                    shuffle=spec.shuffle, shuffle_buffer=spec.shuffle_buffer)
        self.board, self.progress = Board(spec), Progress(spec)
        for callback in spec.callbacks:
            if getattr(callback, "clock", False) is None:
                callback.clock = trainer.clock
        self.callbacks = keras.callbacks.CallbackList(
            [*spec.callbacks, self.ledger.history], add_history=False, add_progbar=False, model=self.model,
            verbose=spec.verbose, epochs=math.ceil(spec.epochs), steps=None)

    def train(self):
        """The loop: phase by phase, update by update; epoch ends, checkpoints and stops where they fall."""
        ledger, logs, phase = self.ledger, None, self.spec.phases[-1]
        self.board.start(self.spec, self.seed)
        self.model.stop_training = False
        self.callbacks.on_train_begin()
        ledger.resume_history()
        if ledger.epoch <= ledger.last_epoch:
            self._begin_epoch(fresh=not ledger.mid_epoch)
        for phase in self._phases():
            self.progress.phase(phase, self.spec.adaptive is not None)
            iterator = self.stream.iterator(self.spec.strategy, ledger.examples, phase.end_examples,
                                            phase.physical_batch)
            for _ in range(ledger.begin_phase(phase)):
                logs = self._update(iterator, phase)
                changed = self._measure_noise(phase)
                crossed = ledger.epoch_ended()
                while ledger.epoch_ended():
                    with ledger.paused():
                        self._end_epoch(phase, logs)
                if crossed or self._checkpoint_due():
                    with ledger.paused():
                        self._save(phase)
                if self.model.stop_training or changed:
                    break
            ledger.end_phase(adaptive=self.spec.adaptive is not None)
            self._check_finite(phase)
            if self.model.stop_training:
                break
        if not self.model.stop_training and ledger.epoch <= ledger.last_epoch:  # the plan ended mid-epoch
            self._end_epoch(phase, logs)
            self._save(phase)
        return self._finish()

    def _phases(self):
        """The planned phases from the clock on, or the adaptive controller's as it decides them."""
        if self.spec.adaptive is None:
            yield from (p for p in self.spec.phases if p.end_examples > self.ledger.examples)
            return
        while self.ledger.examples < self.spec.end_examples and not self.model.stop_training:
            yield self.spec.phase_at(self.ledger.examples)

    def _update(self, iterator, phase):
        ledger, trainer = self.ledger, self.trainer
        self.callbacks.on_train_batch_begin(ledger.updates)
        started = time.perf_counter()
        used = trainer.values() if self.board.due(ledger.updates + 1, phase) else None  # before the update runs
        logs = trainer.update(iterator, phase)
        if used is not None:
            self.board.update(phase, used, ledger, logs, self._count_skipped())
            if trainer.control is not None:
                self.board.adascale(trainer.control.progress_at(ledger.updates), ledger.examples)
        ledger.count(phase)
        if trainer.control is not None:  # the update's seconds (callbacks excluded) for the throughput model
            trainer.control.timed(time.perf_counter() - started)
        self.callbacks.on_train_batch_end(ledger.updates - 1, logs)
        if self.progress.due():
            self.progress.update(ledger.epoch_examples()[0], logs, scalar(trainer.optimizer.learning_rate))
        if ledger.updates % self.spec.log_every_n_updates == 0:
            self._check_finite(phase)
        return logs

    def _measure_noise(self, phase):
        """B_simple from this update's gradients (when due); True if the adaptive controller changed the batch."""
        estimate = self.noise.measure(phase, self.ledger.updates)
        if estimate is not None:
            self.board.measured(estimate, self.ledger.examples)
        changed = self.noise.decide(estimate, self.ledger.updates)
        if estimate is not None and self.trainer.control is not None:
            self.board.decision(self.trainer.control.decision(), self.ledger.examples)
        return changed

    def _begin_epoch(self, fresh=True):
        ledger = self.ledger
        if fresh:
            self.model.reset_metrics()
        self.trainer.guard.sync_tracker(self.spec.strategy)
        self.callbacks.on_epoch_begin(ledger.epoch)
        self.progress.begin_epoch(ledger.epoch, self.spec.phase_at(ledger.examples), ledger.epoch_examples()[1])

    def _end_epoch(self, phase, logs):
        self._check_finite(phase)
        spec, ledger = self.spec, self.ledger
        metrics = {k: scalar(v) for k, v in self.model.get_metrics_result().items()} if logs else {}
        if spec.val_dataset is not None:
            val = evaluate(self.model, spec.val_dataset, spec.strategy, spec.validation_batch_size)
            metrics.update({f"val_{k}": float(v) for k, v in val.items()})
        epoch_logs = {**metrics, **({"b_simple": self.noise.b_simple} if self.noise.b_simple is not None else {}),
                      "examples": ledger.examples, "updates": ledger.updates,
                      "learning_rate": scalar(self.trainer.optimizer.learning_rate),
                      "batch_size": phase.batch_size, "momentum": float(spec.plan.momentum_value)}
        if spec.on_nonfinite == "skip" or spec.loss_scaled:
            epoch_logs["skipped_updates"] = self._count_skipped()
        if spec.loss_scaled:
            epoch_logs["loss_scale"] = self.trainer.loss_scale()
        self.progress.end_epoch(ledger.epoch, ledger, metrics)
        self.board.epoch(metrics, ledger.epoch + 1, ledger.examples)
        self.callbacks.on_epoch_end(ledger.epoch, epoch_logs)
        ledger.epoch += 1
        if ledger.epoch <= ledger.last_epoch and not self.model.stop_training:
            self._begin_epoch()

    def _checkpoint_due(self):
        every = self.spec.checkpoint_every_n_updates
        return bool(every) and self.ledger.updates % every == 0

    def _save(self, phase):
        self._check_finite(phase)
        if self.state is None:
            return
        self._count_skipped()
        self.state.save(self.ledger.updates, {**self.spec.identity(), "seed": self.seed,
                                              "tf_global_seed": _tf_global_seed(), **self.ledger.record(),
                                              "state": self.noise.state()})

    def _count_skipped(self):
        if self.spec.on_nonfinite == "skip" or self.spec.loss_scaled:
            self.ledger.skipped = self.trainer.guard.skipped_updates()
        return self.ledger.skipped

    def _check_finite(self, phase):
        """Raises NonFiniteLossError if an update so far was not finite ("raise"; one host read)."""
        examples = self.trainer.guard.bad_examples()
        if examples is None:
            return
        update, epoch = self.ledger.update_of(examples, phase), int(examples // self.spec.train_size) + 1
        latest = self.state.latest if self.state is not None else None
        where = (f"The last good checkpoint is {latest}: rerunning the same call resumes from it."
                 if latest else "No checkpoint was saved before it." if self.state is not None
                 else "Nothing was saved (no checkpoint_dir).")
        fix = ("or pass on_nonfinite='skip' to skip such updates." if self.spec.on_nonfinite == "raise" else
               "the loss scale fell below 1 (every update overflowed): skipping cannot get past it.")
        raise NonFiniteLossError(
            f"bstf.fit stopped: the training loss or its gradient was not finite (NaN or infinite) at update {update} "
            f"(epoch {epoch}, {examples} examples seen); no checkpoint was written after it. {where} "
            f"Lower the learning rate (or its warmup target), check the data for NaN/inf, {fix}",
            update=update, epoch=epoch, examples=examples, checkpoint=latest)

    def _finish(self):
        self._count_skipped()
        history = self.ledger.history
        self.board.close(history, self.ledger.examples)
        self.model.optimizer.finalize_variable_values(self.model.trainable_weights)
        self.callbacks.on_train_end(logs={k: v[-1] for k, v in history.history.items() if v})
        return self.ledger.finish(self.seed)


def _seed(spec, record):
    """The run's shuffle seed: the checkpoint's (which a given ``seed`` must equal), the given one, or random."""
    if record is None:
        return spec.seed if spec.seed is not None else _random_seed(spec.strategy)
    if spec.seed is not None and record["seed"] != spec.seed:
        raise ValueError(
            f"checkpoint_dir {spec.checkpoint_dir!r} holds a run with seed {record['seed']}, now seed={spec.seed}; "
            "refusing to mix them. Use another checkpoint_dir or the same seed.")
    now = _tf_global_seed()
    if record.get("tf_global_seed", now) != now:
        raise ValueError(
            f"checkpoint_dir {spec.checkpoint_dir!r} holds a run whose data order was drawn under TensorFlow's global "
            f"seed {record['tf_global_seed']}; it is now {now}, which would reorder the examples after "
            "the resume point. Call keras.utils.set_random_seed (or tf.random.set_seed) as the first run did before "
            "bstf.fit, or use another checkpoint_dir.")
    return record["seed"]


def _tf_global_seed():
    """The global seed TensorFlow combines with the stream's shuffle seeds (its default when none was set)."""
    return int(tf.compat.v1.random.get_seed(1)[0])


def _random_seed(strategy):
    """A random seed; under a multi-worker strategy the chief's, on every worker (they must read one stream)."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    if not is_multi_worker(strategy):
        return seed
    mine = tf.constant(seed if distribute.is_chief(strategy) else 0, tf.float64)  # exact below 2**53
    total = strategy.reduce("SUM", strategy.run(tf.function(lambda: tf.identity(mine))), axis=None)
    return int(round(float(total) / len(strategy.extended.worker_devices)))  # the chief's replicas gave it


def __getattr__(name):
    if name == "Segment":
        warnings.warn("bstf.training.Segment is deprecated: the phases bstf.fit runs are bstf.plan.Phase objects "
                      "(see bstf.training.segments).", DeprecationWarning, stacklevel=2)
        from bstf.plan import Phase

        return Phase
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
