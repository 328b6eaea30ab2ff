"""The one train–evaluate–record path of the reproductions.

Every training run of every script is a :class:`Run` (its name, plan, epochs,
seed and the paper-specific settings) passed to :func:`fit_and_evaluate`:

1. seed, build the script's network in the strategy's scope, copy the shared
   initial weights;
2. ``bstf.fit`` through the run's plan — its TensorBoard logs (per-update and
   per-epoch curves on the examples axis) go to ``<workdir>/tensorboard/<name>``;
3. ``bstf.evaluate`` on the training and the test set (correct under every
   strategy, no example dropped or counted twice);
4. the script's measurements of the trained model (``measure(model)``:
   sharpness, distance from the initial weights, ...);
5. one **run record** with the fixed :data:`RESULT_KEYS` (then the
   measurements), which :class:`Board` — the only TensorBoard writer besides
   bstf.fit's — records in the run's logdir as hparams and final scalars.

:func:`summarise` averages run records over seeds into summary entries with
fixed keys too. Accuracies are percentages everywhere; times are
``train_seconds`` (``bstf.fit``) and ``<study>_seconds``.
"""

import dataclasses
import json
import numbers
import os
import time

import keras
import numpy as np
import tensorflow as tf

import bstf
from bstf import tags
from reproductions import common, report

# TensorBoard tags: bstf.fit's vocabulary (bstf.tags) — the run summary's numbers are bstf.tags.final_metric(key).
RESULTS_TEXT_TAG = "results"  # the results.md table on the summary board

RESULT_KEYS = ("name", "seed", "hparams", "epochs", "updates", "examples", "train_seconds", "batch_size",
               "max_batch", "accumulation", "learning_rate", "momentum", "train_loss", "train_accuracy",
               "test_loss", "test_accuracy", "curves", "phases", "diverged_update")
"""The keys of every run record (in this order; a script's measurements follow them).

* ``name``, ``seed``, ``hparams``: the :class:`Run` (``hparams``: what the paper varies — schedule, variant, regime).
* ``epochs`` (trained: examples / training-set size; fewer than the budget when a callback stopped the run),
  ``updates``, ``examples``, ``train_seconds`` (wall clock of ``bstf.fit``).
* ``batch_size`` (the first phase's global batch), ``max_batch``, ``accumulation`` (the largest k), the plan's
  ``learning_rate`` (the first phase's, after warmup) and ``momentum`` (its base).
* ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``: ``bstf.evaluate`` of the trained model.
* ``curves``: per-epoch lists from ``bstf.fit``'s history — :data:`CURVE_KEYS`.
* ``phases``: ``bstf.fit``'s phases — :data:`PHASE_KEYS`.
* ``diverged_update``: None, or the update whose training loss was not finite when ``bstf.fit`` stopped with
  :class:`bstf.NonFiniteLossError` (a diverged run: its weights are set to NaN, so every evaluation and
  measurement of it is NaN or chance; ``curves`` hold the finished epochs, then the evaluation of the NaN
  weights up to the budget; ``phases`` are the plan's).
"""
CURVE_KEYS = ("examples", "updates", "batch_size", "learning_rate", "loss", "accuracy", "val_loss", "val_accuracy")
PHASE_KEYS = ("start_epoch", "end_epoch", "batch_size", "physical_batch", "accumulation", "learning_rate",
              "momentum", "sgd_noise", "updates")
_PERCENT = ("accuracy", "val_accuracy")
SPREAD_KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
"""Summary entries give ``<key>_std`` and ``<key>_per_seed`` for these."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of an experiment.

    Attributes:
      name: the run's directory under ``<workdir>/tensorboard`` (e.g. ``"seed0/decay_lr"``).
      plan: the :class:`bstf.NoiseScalePlan` it follows (batch, LR and momentum on the example clock).
      epochs: epoch budget.
      seed: the seed set before building the model and the data order of ``bstf.fit``.
      hparams: the paper-specific settings (schedule, variant, regime, ...), recorded with the run.
      callbacks: Keras callbacks for ``bstf.fit`` (e.g. ``EarlyStopping``).
      max_physical_batch: largest global batch fed at once (bigger ones accumulate; None: never).
      curves: write ``bstf.fit``'s TensorBoard curves (False for throwaway runs such as LR sweeps).
    """

    name: str
    plan: bstf.NoiseScalePlan
    epochs: float
    seed: int
    hparams: dict = dataclasses.field(default_factory=dict)
    callbacks: tuple = ()
    max_physical_batch: int = None
    curves: bool = True


def compile_classifier(model, optimizer, jit_compile=False):
    """Compiles a logits classifier: sparse cross-entropy (from logits) and ``accuracy``."""
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")], jit_compile=jit_compile)
    return model


def initial_weights(setup, build, seed):
    """The weights ``build()`` makes after ``set_seed(seed)`` (every run of a seed starts from them)."""
    common.set_seed(seed)
    with setup.strategy.scope():
        return build().get_weights()


def evaluate(model, data, setup):
    """{"loss", "accuracy" (%)} of a compiled classifier on ``data`` by ``bstf.evaluate`` (every example once)."""
    # With jit_compile (the TPU proxy) the last batch is padded as on a TPU: one shape, one trace.
    out = bstf.evaluate(model, data, strategy=setup.strategy, batch_size=setup.config.eval_batch,
                        static_shapes=True if setup.config.jit_compile else None)
    return {"loss": float(out["loss"]), "accuracy": 100 * float(out["accuracy"])}


def fit_and_evaluate(setup, run, build, workdir, init=None, measure=None):
    """Trains, evaluates, measures and records one run; returns ``(record, model)``.

    Args:
      setup: the :class:`reproductions.common.Setup` (config, strategy, train and test data).
      run: the :class:`Run`.
      build: ``build() -> compiled keras.Model`` (called in the strategy's scope).
      workdir: the experiment's directory (logs under ``tensorboard/<run.name>``).
      init: weights to start from (default: ``build()``'s after seeding).
      measure: ``measure(model) -> dict`` of paper-specific numbers, added to the record.
    """
    common.set_seed(run.seed)
    with setup.strategy.scope():
        model = build()
        if init is not None:
            model.set_weights(init)
    logdir = os.path.join(workdir, "tensorboard", run.name)
    epoch_logs = _EpochLogs()
    start = time.perf_counter()
    try:
        history = bstf.fit(model, setup.train, run.plan, run.epochs, validation_data=setup.test,
                           strategy=setup.strategy, max_physical_batch=run.max_physical_batch,
                           callbacks=[*run.callbacks, epoch_logs], logdir=logdir if run.curves else None,
                           seed=run.seed, verbose=0)
        diverged = None
    except bstf.NonFiniteLossError as error:  # the run diverged: a result of the protocol, not a failure
        common.log("%s diverged at update %d (epoch %d): weights set to NaN", run.name, error.update, error.epoch)
        model.set_weights([np.full(np.shape(w), np.nan, np.asarray(w).dtype) for w in model.get_weights()])
        history, diverged = None, error
    seconds = time.perf_counter() - start
    train, test = evaluate(model, setup.train, setup), evaluate(model, setup.test, setup)
    if diverged is None:
        record = _record(run, history, seconds, setup.train.size)
    else:
        record = _diverged_record(run, diverged, epoch_logs.logs, seconds, setup.train.size, test["accuracy"])
    record.update(train_loss=train["loss"], train_accuracy=train["accuracy"], test_loss=test["loss"],
                  test_accuracy=test["accuracy"])
    if measure is not None:
        extra = measure(model)
        clash = set(extra) & set(RESULT_KEYS)
        if clash:
            raise ValueError(f"measure may not overwrite the run record's keys {sorted(clash)}.")
        record.update(extra)
    with Board(logdir) as board:
        board.run_summary(_hparams(run, setup.config, record), record)
    return record, model


def _record(run, history, seconds, train_size):
    h = history.history
    phases = [{k: p[k] for k in PHASE_KEYS} for p in history.phases]
    curves = {k: [float(v) * (100 if k in _PERCENT else 1) for v in h.get(k, [])] for k in CURVE_KEYS}
    examples = int(history.examples)
    return {
        "name": run.name, "seed": int(run.seed), "hparams": dict(run.hparams), "epochs": examples / train_size,
        "updates": int(history.updates), "examples": examples, "train_seconds": seconds,
        "batch_size": phases[0]["batch_size"], "max_batch": max(p["batch_size"] for p in phases),
        "accumulation": max(p["accumulation"] for p in phases),
        "learning_rate": float(run.plan.phases(run.epochs)[0].learning_rate),
        "momentum": float(run.plan.momentum_value),
        "train_loss": None, "train_accuracy": None, "test_loss": None, "test_accuracy": None,
        "curves": curves, "phases": phases, "diverged_update": None,
    }


class _EpochLogs(keras.callbacks.Callback):
    """The epoch logs ``bstf.fit`` reports (a run that stops with NonFiniteLossError returns no history)."""

    def __init__(self):
        super().__init__()
        self.logs = []

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs or {}))


def _diverged_record(run, error, logs, seconds, train_size, nan_accuracy):
    """The run record of a run stopped by ``error`` (:class:`bstf.NonFiniteLossError`).

    ``curves`` hold the finished epochs' logs, then (to the budget, so seeds average element-wise) no more
    examples or updates, NaN losses and ``nan_accuracy`` — the test accuracy of the NaN weights.
    """
    planned = run.plan.phases(run.epochs)
    phases = [{k: getattr(p, k) for k in PHASE_KEYS} for p in planned]
    first = {"examples": 0, "updates": 0, "batch_size": planned[0].batch_size,
             "learning_rate": planned[0].learning_rate}
    last = {**first, **(logs[-1] if logs else {})}
    pad = {k: float(last[k]) if k in first else nan_accuracy if k == "val_accuracy" else float("nan")
           for k in CURVE_KEYS}
    curves = {k: [float(log.get(k, np.nan)) * (100 if k in _PERCENT else 1) for log in logs] for k in CURVE_KEYS}
    for k in CURVE_KEYS:
        curves[k] += [pad[k]] * max(0, int(np.ceil(run.epochs)) - len(logs))
    examples = int(error.examples)
    return {
        "name": run.name, "seed": int(run.seed), "hparams": dict(run.hparams), "epochs": examples / train_size,
        "updates": int(error.update) - 1, "examples": examples, "train_seconds": seconds,
        "batch_size": phases[0]["batch_size"], "max_batch": max(p["batch_size"] for p in phases),
        "accumulation": max(p["accumulation"] for p in phases),
        "learning_rate": float(planned[0].learning_rate), "momentum": float(run.plan.momentum_value),
        "train_loss": None, "train_accuracy": None, "test_loss": None, "test_accuracy": None,
        "curves": curves, "phases": phases, "diverged_update": int(error.update),
    }


def _hparams(run, config, record):
    return {**run.hparams, "seed": run.seed, "dataset": config.dataset, "epochs": run.epochs,
            "batch_size": record["batch_size"], "max_batch": record["max_batch"],
            "learning_rate": record["learning_rate"], "momentum": record["momentum"],
            "max_physical_batch": run.max_physical_batch}


def summarise(records):
    """One summary entry from the run records of one setting over seeds.

    The mean of every numeric entry (curves element-wise; integers equal in
    every seed stay integers), ``<key>_std`` (sample std) and
    ``<key>_per_seed`` for :data:`SPREAD_KEYS`, and the first seed's
    ``hparams`` and ``phases``. Curves of unequal length (runs stopped early)
    are NaN-padded: their mean is NaN after the shortest run's last epoch.
    """
    if not records:
        raise ValueError("summarise needs at least one run record.")
    means, stds = report.aggregate([{k: v for k, v in r.items() if k not in ("name", "hparams", "phases")}
                                    for r in _padded_curves(records)])
    out = {k: v for k, v in means.items() if k != "seed"}
    out["seeds"] = [r["seed"] for r in records]
    out["hparams"], out["phases"] = records[0]["hparams"], records[0]["phases"]
    for key in SPREAD_KEYS:
        out[f"{key}_std"] = stds[key]
        out[f"{key}_per_seed"] = [r[key] for r in records]
    return out


def _padded_curves(records):
    """The records with every curve NaN-padded to the longest (early stopping ends seeds at different epochs)."""
    n = max(len(v) for r in records for v in r["curves"].values())
    return [{**r, "curves": {k: list(v) + [float("nan")] * (n - len(v)) for k, v in r["curves"].items()}}
            for r in records]


def run_records(tree):
    """Every run record (a dict with all :data:`RESULT_KEYS`) inside a results tree, depth first."""
    if isinstance(tree, dict):
        if all(k in tree for k in RESULT_KEYS):
            return [tree]
        return [r for v in tree.values() for r in run_records(v)]
    if isinstance(tree, (list, tuple)):
        return [r for v in tree for r in run_records(v)]
    return []


# ============================================================================ TensorBoard
def hparam_value(value):
    """bstf.fit's coercion: bool/int/float/str as they are, anything else as JSON text."""
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(report.to_jsonable(value))


def final_scalars(values, prefix=""):
    """{tag: float} of the finite numbers in a (nested) dict; nested keys are joined with ``_``."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(final_scalars(value, f"{prefix}{key}_"))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


class Board:
    """The reproductions' TensorBoard writer (chief only; a no-op writer elsewhere).

    Run summaries (:meth:`run_summary`: hparams and final scalars) go into a
    run's logdir beside ``bstf.fit``'s ``train/`` and ``validation/`` curves;
    the experiment's PNGs and results table into ``tensorboard/summary``.
    """

    def __init__(self, logdir):
        self.logdir = logdir
        chief = common.is_chief()
        self._writer = tf.summary.create_file_writer(logdir) if chief else tf.summary.create_noop_writer()

    def run_summary(self, hparams, record):
        """The run's hparams (None dropped) and ``final_<key>`` scalars of the record's numbers."""
        from tensorboard.plugins.hparams import api as hp

        params = {k: hparam_value(v) for k, v in hparams.items() if v is not None}
        finals = final_scalars({k: v for k, v in record.items() if k not in ("seed", "hparams", "curves", "phases")})
        with self._writer.as_default(step=0):
            hp.hparams(params)
            for key, value in finals.items():
                tf.summary.scalar(tags.final_metric(key), value)
        self._writer.flush()

    def images(self, paths, step=0):
        """Writes PNG files as images (tag: the file name without extension)."""
        if not common.is_chief():
            return
        with self._writer.as_default(step=step):
            for path in paths:
                image = tf.io.decode_png(tf.io.read_file(path), channels=4)
                tf.summary.image(os.path.splitext(os.path.basename(path))[0], image[None])
        self._writer.flush()

    def text(self, markdown, tag=RESULTS_TEXT_TAG, step=0):
        """Writes markdown text (the results table)."""
        with self._writer.as_default(step=step):
            tf.summary.text(tag, markdown)
        self._writer.flush()

    def close(self):
        self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_summary_board(workdir, pngs, markdown):
    """The experiment's PNGs and results table under ``<workdir>/tensorboard/summary``."""
    with Board(os.path.join(workdir, "tensorboard", "summary")) as board:
        board.images(pngs)
        board.text(markdown)
