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

Checkpoints (``checkpoint_dir``) hold the model, the optimizer's state, the
clock and the metric accumulators; ``run.json`` beside them holds the plan,
the epochs, the shuffle seed and the history so far. Rerunning the same call
after a crash resumes at the last checkpoint — same point of the plan, same
data order — and refuses a checkpoint written for a different plan.

Under ``jit_compile`` or on GPU some ops are not bitwise deterministic; on CPU
with a fixed ``seed`` an interrupted and resumed run ends within 1e-6 of an
uninterrupted one (tests/test_training.py).
"""

import json
import math
import os
import tempfile
import time
import weakref

import keras
import numpy as np
import tensorflow as tf

from bstf import distribute
from bstf._checks import check_int
from bstf import schedules
from bstf.clock import Clock
from bstf.fitting.steps import is_multi_worker, scalar, strategy_step
from bstf.analysis.noise_scale import NoiseScaleAverager, estimate_grad_norm_sq, estimate_trace_sigma
from bstf.optimizers.accumulate import Accumulate
from bstf.plan import NoiseScalePlan

__all__ = ["fit", "Segment", "physical_batch", "segments"]

_RUN_FILE = "run.json"
_REPLAY_LIMIT = 20_000_000  # runs up to this many examples replay one reshuffled stream (see _stream)
_CACHE = weakref.WeakKeyDictionary()  # model -> the clock, Accumulate and traced step of its last bstf.fit
_CKPT_PREFIX = "ckpt"


# ============================================================================ the loop's arithmetic
class Segment:
    """One phase as the loop runs it.

    Attributes:
      index: plan phase index (position in ``plan.milestones`` + 1).
      start_examples: the clock when the phase's first update starts.
      updates: updates that start in the phase.
      batch_size: global batch B.
      physical_batch: global micro-batch b fed to the model per step.
      accumulation: k = B / b micro-batches per update.
    """

    def __init__(self, index, start_examples, updates, batch_size, physical_batch):
        self.index = index
        self.start_examples = start_examples
        self.updates = updates
        self.batch_size = batch_size
        self.physical_batch = physical_batch
        self.accumulation = batch_size // physical_batch

    @property
    def end_examples(self):
        return self.start_examples + self.updates * self.batch_size

    def __repr__(self):
        return (f"Segment(index={self.index}, start_examples={self.start_examples}, updates={self.updates}, "
                f"batch_size={self.batch_size}, physical_batch={self.physical_batch}, "
                f"accumulation={self.accumulation})")


def physical_batch(batch, max_physical_batch=None, replicas=1):
    """The largest micro-batch ``b <= max_physical_batch`` with ``b | batch`` and ``replicas | b``.

    Returns ``batch`` itself when it fits (or ``max_physical_batch`` is None).

    Raises:
      ValueError: no such ``b`` exists (the message names valid choices).
    """
    if max_physical_batch is None or batch <= max_physical_batch:
        if batch % replicas:
            raise ValueError(
                f"the plan's global batch {batch} is not divisible by the {replicas} replicas; "
                f"choose a plan whose batches are multiples of {replicas}."
            )
        return batch
    for k in range(math.ceil(batch / max_physical_batch), batch + 1):
        b = batch // k
        if batch % k == 0 and b % replicas == 0:
            return b
    raise ValueError(
        f"the plan's global batch {batch} cannot be split into equal micro-batches of at most "
        f"max_physical_batch={max_physical_batch} examples that divide by the {replicas} replicas; "
        f"use a batch that is a multiple of replicas x micro-batch (e.g. {replicas * max(1, max_physical_batch // replicas)}·k)."
    )


def _f32_epoch(examples, train_size):
    # Exactly what Clock.epoch computes in-graph: float64 division, float32 cast.
    return np.float32(np.float64(examples) / float(train_size))


def segments(plan, epochs, max_physical_batch=None, replicas=1):
    """The :class:`Segment` list of a run of ``epochs`` epochs of ``plan``.

    An update starting at ``x`` examples belongs to the phase of epoch
    ``x / N`` computed as the clock computes it (float32), so the Python loop
    and the in-graph schedules agree at every boundary.
    """
    n = plan.train_size
    end = epochs * n
    batches = list(plan.batch_size.values)
    bounds = [np.float32(m) for m in plan.milestones]
    out, x = [], 0
    for i, batch in enumerate(batches):
        if x >= end:
            break
        limit = bounds[i] if i < len(bounds) else None

        def inside(v, limit=limit):
            return v < end and (limit is None or _f32_epoch(v, n) < limit)

        if not inside(x):
            continue
        stop = end if limit is None else min(end, float(limit) * n)
        count = max(1, math.ceil((stop - x) / batch - 1e-9))
        while count > 1 and not inside(x + (count - 1) * batch):
            count -= 1
        while inside(x + count * batch):
            count += 1
        out.append(Segment(i, x, count, batch, physical_batch(batch, max_physical_batch, replicas)))
        x += count * batch
    return out


# ============================================================================ argument checks
def _check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}.")
    if not model.compiled:
        raise ValueError(
            "model is not compiled: call model.compile(optimizer=..., loss=..., metrics=...) "
            "before bstf.fit (bstf.fit drives the optimizer's learning rate from the plan)."
        )
    optimizer = model.optimizer
    if isinstance(optimizer, Accumulate):
        raise ValueError(
            "model is compiled with a bstf.optimizers.Accumulate; bstf.fit accumulates by itself when a "
            "phase's batch exceeds max_physical_batch. Compile with the inner optimizer instead."
        )
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            "bstf.fit does not support a LossScaleOptimizer (mixed_float16) yet; use float32 or "
            "mixed_bfloat16, which needs no loss scaling."
        )
    if isinstance(optimizer._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        raise ValueError(
            f"the optimizer was created with its own learning-rate schedule "
            f"({type(optimizer._learning_rate).__name__}); bstf.fit sets the learning rate from the plan. "
            "Compile with a float learning_rate and put the schedule in the plan."
        )
    return optimizer


def _check_momentum(optimizer, plan):
    values = sorted(set(plan.momentum.values))
    if getattr(optimizer, "supports_momentum_schedule", False):
        return True
    if isinstance(optimizer, keras.optimizers.SGD):
        if len(values) > 1:
            raise ValueError(
                f"the plan changes the momentum ({values}) but keras.optimizers.SGD's momentum is fixed; "
                "compile with bstf.optimizers.SGD, whose momentum follows the plan."
            )
        if not math.isclose(optimizer.momentum, values[0], rel_tol=0, abs_tol=1e-9):
            raise ValueError(
                f"the plan assumes momentum {values[0]} (its noise scale is eps*N/(B(1-m))) but the "
                f"optimizer's momentum is {optimizer.momentum}; compile with "
                f"keras.optimizers.SGD(momentum={values[0]}) or bstf.optimizers.SGD, or make the plan's "
                f"base_momentum {optimizer.momentum}."
            )
    return False


def _as_dataset(data, name):
    from bstf.data import Data

    if isinstance(data, Data):
        return data.dataset, data.size
    if isinstance(data, tf.data.Dataset):
        card = int(data.cardinality())
        return data, (card if card >= 0 else None)
    raise TypeError(
        f"{name} must be an unbatched tf.data.Dataset or a bstf.data.Data (what bstf.data.load returns), "
        f"got {type(data).__name__}. For NumPy arrays use tf.data.Dataset.from_tensor_slices((x, y))."
    )


def _looks_batched(dataset):
    shapes = [s.shape for s in tf.nest.flatten(dataset.element_spec) if hasattr(s, "shape")]
    return bool(shapes) and all(s.rank is not None and s.rank >= 1 and s[0] is None for s in shapes)


def _check_train_data(train_data, plan):
    dataset, size = _as_dataset(train_data, "train_data")
    if _looks_batched(dataset):
        raise ValueError(
            "train_data looks batched (every component has a leading None dimension); bstf.fit batches "
            "the data itself with the plan's batch. Pass the unbatched dataset (e.g. dataset.unbatch())."
        )
    if size is not None and size != plan.train_size:
        hint = " (it looks batched: pass dataset.unbatch())" if size < plan.train_size else ""
        raise ValueError(
            f"train_data has {size} examples but plan.train_size is {plan.train_size}{hint}; "
            "the plan's epochs are epochs of this data set."
        )
    return dataset


def _resolve_strategy(strategy, model):
    model_strategy = model.distribute_strategy
    if strategy is None:
        return model_strategy
    if isinstance(strategy, str):
        if strategy not in distribute.NAMES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(distribute.NAMES)}.")
        if strategy == "default" and not tf.distribute.has_strategy() and model_strategy is tf.distribute.get_strategy():
            return model_strategy
        raise ValueError(
            f"strategy={strategy!r}: a strategy must exist before the model, which has to be created and "
            "compiled in its scope. Do: strategy = bstf.distribute.get_strategy(" + repr(strategy) + "); "
            "with strategy.scope(): model = ...; model.compile(...); then bstf.fit(model, ..., strategy=strategy)."
        )
    if not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(f"strategy must be a tf.distribute.Strategy or a name, got {type(strategy).__name__}.")
    if strategy is not model_strategy:
        raise ValueError(
            f"the model was created outside strategy.scope() of the given {type(strategy).__name__}; "
            "create and compile the model inside `with strategy.scope():`."
        )
    return strategy


# ============================================================================ data stream
def _epoch_seed(seed, epoch):
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] % (2**31 - 1)) + 1


def _stream(dataset, train_size, seed, start_examples, end_examples, shuffle, shuffle_buffer, run_examples):
    """Examples ``start_examples`` to (at least) ``end_examples`` of the run's stream of epochs.

    The order is a function of ``seed`` and the position only, so a stream rebuilt at a phase change
    or after a resume continues exactly where the run was. Two constructions, chosen by the run's
    size (``run_examples``, the same for every stream of a run):

    * up to ``_REPLAY_LIMIT`` examples: one seeded ``shuffle`` reshuffled every epoch and repeated,
      replayed from the start and skipped to ``start_examples`` — Keras's own pipeline shape, the
      cheapest per example; a rebuild replays at most the run's examples;
    * beyond: epoch ``e`` is ``dataset`` shuffled with a seed derived from ``(seed, e)``, so any epoch
      is rebuilt without replaying the ones before it (Python-int seeds: tensor seeds break when the
      global seed is 0).
    """
    buffer = min(shuffle_buffer or train_size, train_size)
    if run_examples <= _REPLAY_LIMIT:
        stream = (dataset.shuffle(buffer, seed=_epoch_seed(seed, 0), reshuffle_each_iteration=True)
                  if shuffle else dataset).repeat()
        return stream.skip(start_examples) if start_examples else stream
    first_epoch, offset = divmod(int(start_examples), train_size)
    last_epoch = -(-int(end_examples) // train_size)  # exclusive
    epochs = [dataset.shuffle(buffer, seed=_epoch_seed(seed, e), reshuffle_each_iteration=False) if shuffle
              else dataset for e in range(first_epoch, last_epoch)]
    if len(epochs) == 1:
        stream = epochs[0]
    else:  # flat concatenation: epoch i's examples in order, then epoch i + 1's
        choice = tf.data.Dataset.range(len(epochs)).flat_map(
            lambda i: tf.data.Dataset.from_tensors(i).repeat(train_size))
        stream = tf.data.Dataset.choose_from_datasets(epochs, choice, stop_on_empty_dataset=True)
    return stream.skip(offset) if offset else stream


def _batches(dataset, train_size, seed, start_examples, end_examples, shuffle, shuffle_buffer, run_examples,
             physical):
    """The stream's batches of ``physical`` examples (static shape) from example ``start_examples`` on."""
    stream = _stream(dataset, train_size, seed, start_examples, end_examples, shuffle, shuffle_buffer,
                     run_examples)
    return stream.batch(physical, drop_remainder=True)


def _distributed_iterator(strategy, batches):
    ds = batches.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.with_options(options)
    if strategy.num_replicas_in_sync > 1 or strategy.extended._in_multi_worker_mode():
        ds = strategy.experimental_distribute_dataset(ds)
    return iter(ds)


# ============================================================================ logging
class _Board:
    """tf.summary writers (chief only): ``train`` and ``validation`` runs under ``logdir``."""

    def __init__(self, logdir, chief):
        self.enabled = bool(logdir) and chief
        if self.enabled:
            self.train = tf.summary.create_file_writer(os.path.join(logdir, "train"))
            self.validation = tf.summary.create_file_writer(os.path.join(logdir, "validation"))

    def scalars(self, writer, values, step):
        if not self.enabled:
            return
        with getattr(self, writer).as_default(step=int(step)):
            for tag, value in values.items():
                tf.summary.scalar(tag, float(value))

    def start(self, plan, epochs, extra, png):
        if not self.enabled:
            return
        from tensorboard.plugins.hparams import api as hp

        params = {k: (v if isinstance(v, (bool, int, float, str)) else json.dumps(v))
                  for k, v in {**plan.get_config(), "epochs": epochs, **extra}.items() if v is not None}
        with self.train.as_default(step=0):
            hp.hparams(params)
            if png is not None:
                tf.summary.image("plan", tf.image.decode_png(tf.io.read_file(png))[None])

    def close(self):
        if self.enabled:
            self.train.close()
            self.validation.close()


# ============================================================================ checkpoints
def _run_record(plan, epochs, seed, max_physical_batch, replicas, shuffle, adaptive):
    return {"plan": plan.get_config(), "epochs": epochs, "seed": seed, "max_physical_batch": max_physical_batch,
            "replicas": replicas, "shuffle": shuffle,
            "adaptive": adaptive.get_config() if adaptive is not None else None}


def _load_run(checkpoint_dir, record):
    path = os.path.join(checkpoint_dir, _RUN_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        saved = json.load(f)
    for key in ("plan", "epochs", "max_physical_batch", "replicas", "shuffle", "adaptive"):
        if json.dumps(saved["run"].get(key), sort_keys=True) != json.dumps(record[key], sort_keys=True):
            raise ValueError(
                f"checkpoint_dir {checkpoint_dir!r} holds a run with a different {key} "
                f"({saved['run'].get(key)!r} vs now {record[key]!r}); refusing to mix them. Use another "
                "checkpoint_dir, or delete it to start over."
            )
    return saved


def _save_run(checkpoint_dir, record, state):
    path = os.path.join(checkpoint_dir, _RUN_FILE)
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump({"run": record, **state}, f)
    tf.io.gfile.rename(tmp, path, overwrite=True)


# ============================================================================ fit
def fit(model, train_data, plan, epochs, *, validation_data=None, strategy=None, max_physical_batch=None,
        callbacks=(), logdir=None, checkpoint_dir=None, seed=None, verbose="auto", log_every_n_updates=10,
        checkpoint_every_n_updates=None, validation_batch_size=None, shuffle=True, shuffle_buffer=None,
        noise_scale_every_n_updates=None, noise_scale_ema=0.9, adaptive=None):
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
      max_physical_batch: largest global batch fed to the model at once;
        bigger plan batches accumulate ``k = B / b`` micro-batches.
      callbacks: Keras callbacks; ``on_train_batch_*`` fire once per update.
      logdir: TensorBoard directory (``train/`` and ``validation/`` runs).
      checkpoint_dir: where to save every epoch (and every
        ``checkpoint_every_n_updates``) and resume from.
      seed: shuffle seed (default: drawn at random and saved for resuming).
      verbose: 0 silent, 1 progress bar, 2 one line per epoch; "auto" is 1.
      log_every_n_updates: interval of the per-update TensorBoard scalars.
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
      adaptive: a :class:`bstf.analysis.AdaptiveBatch` controller: the batch
        follows the measured noise scale (B ≈ c·B_simple, the AdaptDL/Pollux
        idea) with the LR coupled by the controller's rule. The plan must have
        no milestones (it supplies ``train_size`` and the momentum);
        ``max_physical_batch`` is the micro-batch the noise scale is measured
        with and must leave at least 2 micro-batches (or replicas) at
        ``min_batch``; measurements every ``noise_scale_every_n_updates``
        (default ``adaptive.every_n_updates // 10``). The controller's state is
        checkpointed with the run.

    Returns:
      The ``keras.callbacks.History``: ``history.history`` has per-epoch
      lists of the metrics (``val_`` too), ``examples``, ``updates``,
      ``learning_rate``, ``batch_size`` and ``momentum``;
      ``history.phases`` a dict per phase (``start_epoch``, ``end_epoch``,
      ``batch_size``, ``physical_batch``, ``accumulation``,
      ``learning_rate``, ``momentum``, ``updates``, ``wall_time``);
      ``history.updates`` the parameter updates.
    """
    # ---------------------------------------------------------------- checks
    optimizer = _check_model(model)
    if not isinstance(plan, NoiseScalePlan):
        raise TypeError(f"plan must be a bstf.NoiseScalePlan, got {type(plan).__name__}.")
    epochs = schedules._check_number("epochs", epochs, low=0, low_open=True)
    if isinstance(epochs, float) and epochs.is_integer():
        epochs = int(epochs)
    strategy = _resolve_strategy(strategy, model)
    replicas = strategy.num_replicas_in_sync
    if max_physical_batch is not None:
        max_physical_batch = check_int("max_physical_batch", max_physical_batch)
        if max_physical_batch < replicas:
            raise ValueError(
                f"max_physical_batch={max_physical_batch} is smaller than the {replicas} replicas; every "
                f"replica needs at least one example: use max_physical_batch >= {replicas}."
            )
    log_every_n_updates = check_int("log_every_n_updates", log_every_n_updates)
    if checkpoint_every_n_updates is not None:
        checkpoint_every_n_updates = check_int("checkpoint_every_n_updates", checkpoint_every_n_updates)
    if seed is not None:
        seed = check_int("seed", seed, minimum=0)
    if verbose == "auto":
        verbose = 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}.")
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be True or False, got {shuffle!r}.")
    if shuffle_buffer is not None:
        shuffle_buffer = check_int("shuffle_buffer", shuffle_buffer)
    dataset = _check_train_data(train_data, plan)
    val_dataset = None
    if validation_data is not None:
        val_dataset, _ = _as_dataset(validation_data, "validation_data")
        if _looks_batched(val_dataset):
            raise ValueError("validation_data looks batched; pass the unbatched dataset (e.g. dataset.unbatch()).")
    if noise_scale_every_n_updates is not None:
        noise_scale_every_n_updates = check_int("noise_scale_every_n_updates", noise_scale_every_n_updates)
    NoiseScaleAverager(noise_scale_ema)  # validates the EMA decay now, not mid-run
    if isinstance(callbacks, keras.callbacks.Callback) or not all(
            isinstance(c, keras.callbacks.Callback) for c in callbacks):
        raise TypeError(f"callbacks must be a list of keras.callbacks.Callback, got {callbacks!r}.")
    momentum_follows = _check_momentum(optimizer, plan)
    if adaptive is not None:
        _check_adaptive(adaptive, plan, max_physical_batch, replicas)
        if noise_scale_every_n_updates is None:
            noise_scale_every_n_updates = max(1, adaptive.every_n_updates // 10)
        adaptive.reset()
        segs = [Segment(0, 0, 0, adaptive.batch, max_physical_batch)]  # the first; later ones are decided as it runs
    else:
        segs = segments(plan, epochs, max_physical_batch, replicas)
    chief = distribute.is_chief(strategy)
    if validation_batch_size is None:
        validation_batch_size = max(s.physical_batch for s in segs)
    validation_batch_size = check_int("validation_batch_size", validation_batch_size)

    # ---------------------------------------------------------------- resume
    record = _run_record(plan, epochs, seed, max_physical_batch, replicas, shuffle, adaptive)
    saved = None
    if checkpoint_dir is not None:
        if not isinstance(checkpoint_dir, (str, os.PathLike)):
            raise TypeError(f"checkpoint_dir must be a path, got {type(checkpoint_dir).__name__}.")
        checkpoint_dir = os.fspath(checkpoint_dir)
        tf.io.gfile.makedirs(checkpoint_dir)
        saved = _load_run(checkpoint_dir, record)
        if saved is not None:
            if seed is not None and saved["run"]["seed"] != seed:
                raise ValueError(
                    f"checkpoint_dir {checkpoint_dir!r} holds a run with seed {saved['run']['seed']}, now "
                    f"seed={seed}; refusing to mix them. Use another checkpoint_dir or the same seed."
                )
            seed = saved["run"]["seed"]
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % 2**31)
    record["seed"] = seed

    # ---------------------------------------------------------------- state
    measure = noise_scale_every_n_updates is not None
    accumulate = measure or any(s.accumulation > 1 for s in segs)
    ks = None
    if accumulate and adaptive is None:
        ks = [b // physical_batch(b, max_physical_batch, replicas) for b in plan.batch_size.values]
    # A later bstf.fit of the same model, optimizer and plan reuses the clock and the traced step (as
    # model.fit reuses its train_function): the trace captured the clock and the plan's constants.
    key = (id(optimizer), id(strategy), json.dumps(plan.get_config(), sort_keys=True), ks, momentum_follows, measure)
    cache = _CACHE.get(model)
    held = None
    if adaptive is not None:  # batch and LR change at run time: held in variables the trace reads
        key = None
        with strategy.scope():
            clock = Clock(plan.train_size)
            held = (_Held(tf.Variable(adaptive.learning_rate, dtype=tf.float32, trainable=False)),
                    _Held(tf.Variable(adaptive.batch // max_physical_batch, dtype=tf.int64, trainable=False)))
            for h in held:
                h.bind(clock)
            wrapper = Accumulate(optimizer, held[1], clock=clock, statistics=True)
        train_function = None
    elif cache is not None and cache["key"] == key and model.optimizer is optimizer:
        clock, wrapper, train_function = cache["clock"], cache["wrapper"], cache["train_function"]
        clock.reset(0)
    else:
        with strategy.scope():
            clock = Clock(plan.train_size)
        wrapper, train_function = None, None
        if accumulate:
            steps = schedules.PiecewiseConstant(plan.milestones, ks) if len(set(ks)) > 1 else ks[0]
            with strategy.scope():
                wrapper = Accumulate(optimizer, steps, clock=clock, statistics=measure)
    plan.bind(clock)
    original_lr = optimizer._learning_rate
    original_momentum = getattr(optimizer, "momentum", None)
    original_train_function = model.train_function
    # The plan's LR schedule replaces the LR variable for the run (the variable stays tracked, so the
    # optimizer's variable list — and saved files — keep their layout; it gets the final LR at the end).
    optimizer._learning_rate = plan.learning_rate if held is None else held[0]
    if momentum_follows:
        optimizer.momentum = plan.momentum
    if wrapper is not None:
        model.optimizer = wrapper
    model.train_function = train_function
    try:
        return _train(
            model, optimizer, plan, epochs, segs, strategy, clock, dataset, val_dataset, seed, shuffle,
            shuffle_buffer, validation_batch_size, callbacks, logdir, checkpoint_dir, checkpoint_every_n_updates,
            log_every_n_updates, verbose, chief, record, saved, max_physical_batch, momentum_follows,
            (noise_scale_every_n_updates, noise_scale_ema, wrapper), (adaptive, held))
    finally:
        _CACHE[model] = {"key": key, "clock": clock, "wrapper": wrapper, "train_function": model.train_function}
        final_lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        optimizer._learning_rate = original_lr
        if isinstance(original_lr, keras.Variable):
            original_lr.assign(final_lr)
        if momentum_follows:
            optimizer.momentum = original_momentum
        model.optimizer = optimizer
        # model.fit must not run bstf's step (it reads the run's clock): give Keras its own function back.
        model.train_function = None if wrapper is not None else original_train_function


class _Held(schedules.Schedule):
    """A value held in a variable (set by the training loop), read in-graph like a schedule."""

    def __init__(self, variable):
        self.variable = variable

    def value(self, epoch):
        return self.variable.read_value()

    def get_config(self):
        return {"value": self.variable.numpy().item()}


def _check_adaptive(adaptive, plan, max_physical_batch, replicas):
    from bstf.analysis.adaptive import AdaptiveBatch

    if not isinstance(adaptive, AdaptiveBatch):
        raise TypeError(f"adaptive must be a bstf.analysis.AdaptiveBatch, got {type(adaptive).__name__}.")
    if plan.milestones:
        raise ValueError(
            f"with adaptive=..., the controller sets the batch and the LR; the plan must have no milestones "
            f"(got {list(plan.milestones)}): it supplies train_size and the momentum.")
    if max_physical_batch is None:
        raise ValueError(
            "adaptive needs max_physical_batch: the micro-batch the noise scale is measured with; at most "
            f"adaptive.min_batch / 2 = {adaptive.min_batch // 2} on one replica.")
    if adaptive.granularity % max_physical_batch:
        raise ValueError(
            f"adaptive.granularity ({adaptive.granularity}) must be a multiple of max_physical_batch "
            f"({max_physical_batch}) so that every batch is a whole number of micro-batches.")
    if max_physical_batch % replicas:
        raise ValueError(f"max_physical_batch ({max_physical_batch}) must divide by the {replicas} replicas.")
    if (adaptive.min_batch // max_physical_batch) * replicas < 2:
        raise ValueError(
            f"at adaptive.min_batch={adaptive.min_batch} one micro-batch of {max_physical_batch} on "
            f"{replicas} replica(s) leaves no small batch to measure the noise scale with; use "
            f"max_physical_batch <= {adaptive.min_batch // 2}.")


def _evaluate(model, strategy, dataset):
    """``model.evaluate`` (its own loop under multi-worker strategies, where Keras's fails)."""
    if not is_multi_worker(strategy):
        return model.evaluate(dataset, verbose=0, return_dict=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    step = strategy_step(model, strategy, "test_step")
    model.reset_metrics()
    for batch in strategy.experimental_distribute_dataset(dataset.with_options(options)):
        step(batch)
    return {k: scalar(v) for k, v in model.get_metrics_result().items()}


def _build(model, strategy, batch_spec):
    """Creates the model's, metrics' and optimizer's variables before the first trace."""
    with strategy.scope():
        symbolic = getattr(model, "_symbolic_build", None)
        if symbolic is not None:
            data_batch = tf.nest.map_structure(lambda s: keras.KerasTensor(s.shape, s.dtype.name), batch_spec)
            symbolic(data_batch=data_batch)
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)


def _metric_variables(model):
    out = []
    for m in model.metrics:
        for v in m.variables:
            out.append(v.value if isinstance(v, keras.Variable) else v)
    return out


def _current_momentum(optimizer):
    m = optimizer.momentum
    return m() if callable(m) else m


def _train(model, optimizer, plan, epochs, segs, strategy, clock, dataset, val_dataset, seed, shuffle,
           shuffle_buffer, validation_batch_size, callbacks, logdir, checkpoint_dir, checkpoint_every_n_updates,
           log_every_n_updates, verbose, chief, record, saved, max_physical_batch, momentum_follows, noise,
           adapt):
    n = plan.train_size
    replicas = strategy.num_replicas_in_sync
    first_spec = dataset.batch(segs[0].physical_batch, drop_remainder=True).element_spec
    _build(model, strategy, first_spec)

    # ---------------------------------------------------------------- checkpoint and resume
    manager = None
    history_so_far, phases_so_far, restored_state = {}, [], {}
    if checkpoint_dir is not None:
        ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, clock=clock,
                                   metrics=_metric_variables(model))
        directory = checkpoint_dir if chief else os.path.join(tempfile.mkdtemp(), "worker")
        manager = tf.train.CheckpointManager(ckpt, directory, max_to_keep=2, checkpoint_name=_CKPT_PREFIX)
        if saved is not None and manager.latest_checkpoint:
            ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
            history_so_far = saved.get("history", {})
            phases_so_far = saved.get("phases", [])
            restored_state = saved.get("state", {})
    start = int(clock.examples.numpy())

    history = keras.callbacks.History()
    for callback in callbacks:
        if getattr(callback, "clock", False) is None:
            callback.clock = clock
    noise_every, noise_ema, wrapper = noise
    averager = None
    if noise_every is not None:
        averager = NoiseScaleAverager(noise_ema)
        if "averager" in restored_state:
            averager.set_state(restored_state["averager"])
    adaptive, held = adapt
    if adaptive is not None and "adaptive" in restored_state:
        adaptive.set_state(restored_state["adaptive"])
        held[0].variable.assign(adaptive.learning_rate)
        held[1].variable.assign(adaptive.batch // max_physical_batch)
    cb = keras.callbacks.CallbackList([*callbacks, history], add_history=False, add_progbar=False, model=model,
                                      verbose=verbose, epochs=math.ceil(epochs), steps=None)
    board = _Board(logdir, chief)
    png = None
    if board.enabled:
        png = os.path.join(logdir, "plan.png")
        plan.plot(epochs, png)
    board.start(plan, epochs, {"max_physical_batch": max_physical_batch, "seed": seed}, png)

    updates = sum(p["updates"] for p in phases_so_far)
    examples = start
    epoch = int(examples // n)
    epoch_end = lambda e: min((e + 1) * n, epochs * n)  # noqa: E731
    last_epoch = math.ceil(epochs) - 1
    metric_vars_restored = start % n != 0
    model.stop_training = False
    cb.on_train_begin()
    history.history = {k: list(v) for k, v in history_so_far.items()}
    history.epoch = list(range(len(next(iter(history_so_far.values()), []))))
    model.history = history
    progbar = None

    def begin_epoch(e, fresh=True):
        nonlocal progbar
        if fresh:
            model.reset_metrics()
        cb.on_epoch_begin(e)
        if verbose == 1 and chief:
            now = (next((s for s in segs if s.end_examples > examples), segs[-1]) if adaptive is None
                   else Segment(len(adaptive.changes), examples, 0, adaptive.batch, max_physical_batch))
            print(f"Epoch {e + 1}/{math.ceil(epochs)} - phase {now.index} - batch {now.batch_size}"
                  + (f" ({now.accumulation} x {now.physical_batch})" if now.accumulation > 1 else ""))
            progbar = keras.utils.Progbar(int(epoch_end(e) - e * n), verbose=1, unit_name="example",
                                          stateful_metrics=["lr"])

    def end_epoch(e, logs, seg):
        epoch_logs = {k: scalar(v) for k, v in model.get_metrics_result().items()} if logs else {}
        if val_dataset is not None:
            val = _evaluate(model, strategy, val_dataset.batch(validation_batch_size))
            epoch_logs.update({f"val_{k}": float(v) for k, v in val.items()})
        metrics_only = dict(epoch_logs)
        epoch_logs.update({
            **({"b_simple": averager.b_simple} if averager is not None else {}),
            "examples": examples, "updates": updates, "learning_rate": scalar(optimizer.learning_rate),
            "batch_size": seg.batch_size, "momentum": float(plan.momentum_value)})
        if progbar is not None:
            progbar.update(progbar.target, [(k, v) for k, v in metrics_only.items() if not k.startswith("val_")],
                           finalize=True)
        elif verbose == 2 and chief:
            print(f"Epoch {e + 1}/{math.ceil(epochs)} - examples {examples} - updates {updates} - "
                  + " - ".join(f"{k}: {v:.4f}" for k, v in metrics_only.items()))
        for k, v in metrics_only.items():
            run, tag = ("validation", k[4:]) if k.startswith("val_") else ("train", k)
            board.scalars(run, {f"epoch_{tag}": v}, e + 1)
            board.scalars(run, {f"examples_{tag}": v}, examples)
        cb.on_epoch_end(e, epoch_logs)
        return epoch_logs

    def save(state_phases):
        if manager is None:
            return
        manager.save(checkpoint_number=updates)
        if chief:
            state = {}
            if averager is not None:
                state["averager"] = averager.get_state()
            if adaptive is not None:
                state["adaptive"] = adaptive.get_state()
            _save_run(checkpoint_dir, record, {"history": history.history, "phases": state_phases,
                                               "examples": examples, "updates": updates, "state": state})

    phases = [dict(p) for p in phases_so_far]
    logs = None
    begin_epoch(epoch, fresh=not metric_vars_restored)
    stopped = False
    def segment_source():
        if adaptive is None:
            yield from segs
            return
        while examples < epochs * n and not stopped:
            batch = adaptive.batch
            yield Segment(len(adaptive.changes), examples, math.ceil((epochs * n - examples) / batch), batch,
                          max_physical_batch)

    seg = segs[0]
    for seg in segment_source():
        if seg.end_examples <= examples:
            continue
        done = (examples - seg.start_examples) // seg.batch_size
        if examples < seg.start_examples or (examples - seg.start_examples) % seg.batch_size:
            raise ValueError(f"the checkpoint's clock ({examples} examples) is not at an update boundary of the "
                             "plan; the checkpoint belongs to another run.")
        if phases and phases[-1]["index"] == seg.index:
            phase = phases[-1]
        else:
            lr0 = (plan.at(float(_f32_epoch(examples, n))).learning_rate if adaptive is None
                   else adaptive.learning_rate)
            phase = {"index": seg.index, "start_epoch": seg.start_examples / n, "end_epoch": seg.end_examples / n,
                     "batch_size": seg.batch_size, "physical_batch": seg.physical_batch,
                     "accumulation": seg.accumulation, "learning_rate": lr0, "momentum": plan.momentum_value,
                     "noise_scale": n * lr0 / (seg.batch_size * (1 - plan.momentum_value)),
                     "updates": 0, "wall_time": 0.0}
            phases.append(phase)
            if verbose and chief and (len(segs) > 1 or adaptive is not None):
                span = (f"epochs {phase['start_epoch']:.3g}-{phase['end_epoch']:.3g}" if adaptive is None
                        else f"from epoch {phase['start_epoch']:.3g} (adaptive)")
                print(f"Phase {seg.index}: {span}, batch {seg.batch_size} ({seg.accumulation} x "
                      f"{seg.physical_batch}), lr {lr0:.4g}, momentum {plan.momentum_value:g}"
                      + (f", {seg.updates} updates" if adaptive is None else ""))
        iterator = _distributed_iterator(strategy, _batches(
            dataset, n, seed, examples, seg.end_examples, shuffle, shuffle_buffer, math.ceil(epochs * n),
            seg.physical_batch))
        if model.train_function is None and is_multi_worker(strategy):
            step = strategy_step(model, strategy, "train_step")
            model.train_function = lambda it: step(next(it))
        train_function = model.make_train_function() or model.train_function
        t0 = time.perf_counter()
        last_bar = 0.0
        advance = tf.constant(seg.batch_size, tf.int64)  # one eager op per update: assign_add(constant)
        changed = False
        for _ in range(seg.updates - done):
            cb.on_train_batch_begin(updates)
            log_now = board.enabled and (updates + 1) % log_every_n_updates == 0
            if log_now:  # the values this update uses, read from the optimizer before it runs
                used = {"learning_rate": scalar(optimizer.learning_rate),
                        "momentum": scalar(_current_momentum(optimizer)) if momentum_follows
                        else plan.momentum_value}
            for _ in range(seg.accumulation):
                logs = train_function(iterator)
            if log_now:
                board.scalars("train", {
                    **used, "batch_size": seg.batch_size, "accumulation": seg.accumulation,
                    "physical_batch": seg.physical_batch,
                    "noise_scale": n * used["learning_rate"] / (seg.batch_size * (1 - used["momentum"])),
                    "epoch": examples / n, "updates": updates + 1, "examples_seen": examples,
                    "batch_loss": scalar(logs["loss"])}, examples)
            clock.examples.assign_add(advance, read_value=False)
            examples += seg.batch_size
            updates += 1
            phase["updates"] += 1
            cb.on_train_batch_end(updates - 1, logs)
            if progbar is not None and (time.perf_counter() - last_bar > 0.2):
                last_bar = time.perf_counter()
                progbar.update(int(min(examples, epoch_end(epoch)) - epoch * n), [
                    ("loss", scalar(logs["loss"])), ("lr", scalar(optimizer.learning_rate))])
            if averager is not None and updates % noise_every == 0 and seg.accumulation * replicas > 1:
                b_small, b_big = seg.physical_batch // replicas, seg.batch_size
                g_small, g_big = scalar(wrapper.micro_batch_sq_norm), scalar(wrapper.update_sq_norm)
                est = averager.update(estimate_grad_norm_sq(g_small, g_big, b_small, b_big),
                                      estimate_trace_sigma(g_small, g_big, b_small, b_big))
                board.scalars("train", {"measured_b_simple": est.b_simple, "measured_grad_norm_sq": est.grad_norm_sq,
                                        "measured_trace_sigma": est.trace_sigma}, examples)
                if adaptive is not None and math.isfinite(est.b_simple):
                    batch, lr = adaptive.update(est.b_simple, updates)
                    if batch != seg.batch_size:
                        held[0].variable.assign(lr)
                        held[1].variable.assign(batch // seg.physical_batch)
                        changed = True
            crossed = False
            while examples >= epoch_end(epoch) and epoch <= last_epoch:
                phase["wall_time"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                end_epoch(epoch, logs, seg)
                crossed = True
                epoch += 1
                if epoch <= last_epoch and not model.stop_training:
                    begin_epoch(epoch)
            if crossed or (checkpoint_every_n_updates and updates % checkpoint_every_n_updates == 0):
                phase["wall_time"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                save(phases)
            if model.stop_training:
                stopped = True
                break
            if changed:  # the controller chose another batch: next segment
                break
        phase["wall_time"] += time.perf_counter() - t0
        phase["end_epoch"] = examples / n
        if stopped:
            break
    if not stopped and epoch <= last_epoch:  # the plan ended mid-epoch (float epochs)
        end_epoch(epoch, logs, seg)
        save(phases)

    if board.enabled:
        final = {k: v[-1] for k, v in history.history.items() if v}
        board.scalars("train", {f"final_{k}": v for k, v in final.items()}, examples)
        board.close()
    model.optimizer.finalize_variable_values(model.trainable_weights)
    cb.on_train_end(logs={k: v[-1] for k, v in history.history.items() if v})
    history.phases = [{k: v for k, v in p.items() if k != "index"} | {"index": p["index"]} for p in phases]
    history.updates = updates
    history.examples = examples
    history.seed = seed
    return history
