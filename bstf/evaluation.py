"""``bstf.evaluate``: a model's compiled loss and metrics on a data set, under any strategy.

Keras 3.15's ``model.evaluate`` fails under ``MultiWorkerMirroredStrategy`` and, with a batch that
does not divide the data, feeds TPUs a last batch of another shape. :func:`evaluate` runs the
model's own ``test_step`` on every replica (no strategy, Mirrored, MultiWorkerMirrored, TPU) and
counts every example exactly once:

* **dynamic shapes** (the default except on TPU): the last batch is the remainder; tf.distribute
  splits it over the replicas (a replica may get none), and Keras weights every replica's loss by
  its own example count.
* **static shapes** (``static_shapes=True``, the default under ``TPUStrategy``): every batch has
  ``batch_size`` examples; the last one is padded and the padding masked. A zero sample weight is
  not enough: Keras passes sample weights only to ``weighted_metrics`` (``metrics=["accuracy"]``
  would count the padding) and its loss tracker weights a batch by its size, padding included. So
  the padded step marks the padding in the predictions' Keras mask — which Keras's losses and its
  ``MeanMetricWrapper`` metrics (accuracy, crossentropy, MSE, ...) read — passes it as sample
  weight to ``weighted_metrics``, and weights the loss by the real examples of each replica.
  Metrics that read neither (e.g. ``AUC`` in ``metrics=``, per-output losses) and overridden
  ``test_step`` methods cannot be masked: that case is refused with an error, never miscounted.
"""

import inspect
import math
import weakref

import keras
import numpy as np
import tensorflow as tf
from keras.src.backend import get_keras_mask, set_keras_mask  # Keras's mask attribute (no public API)

from bstf import distribute
from bstf._checks import check_int
from bstf.fitting.checks import as_dataset, check_labelled
from bstf.fitting.steps import is_multi_worker

__all__ = ["evaluate"]

DEFAULT_BATCH_SIZE = 32
_STEPS = weakref.WeakKeyDictionary()  # model -> (key, traced step): one trace per model, not per call


def evaluate(model, data, strategy=None, batch_size=None, *, static_shapes=None, verbose=0):
    """The compiled loss and metrics of ``model`` on ``data``, each example counted once.

    Args:
      model: a compiled ``keras.Model`` (created and compiled in ``strategy.scope()`` under a
        strategy).
      data: the *unbatched* data: a ``tf.data.Dataset`` of ``(x, y)`` or ``(x, y, sample_weight)``,
        or a :class:`bstf.data.Data`.
      strategy: the model's ``tf.distribute.Strategy`` (default: the one it was created under).
      batch_size: global batch (default 32, rounded up to a multiple of the replicas); it must
        divide by the number of replicas.
      static_shapes: pad the last batch to ``batch_size`` and mask the padding, so every step has
        one shape (default: True under ``TPUStrategy``, else False).
      verbose: 0 silent, 1 progress bar, 2 one line at the end (chief only).

    Returns:
      ``{name: value}`` like ``model.evaluate(..., return_dict=True)``: ``"loss"`` and the
      compiled metrics, as Python floats (arrays for metrics with vector results).

    Raises:
      TypeError: ``model``, ``data``, ``strategy``, ``static_shapes`` of the wrong type.
      ValueError: an uncompiled model, a model from another strategy's scope, batched or
        unlabelled data, a ``batch_size`` that does not divide by the replicas, an unknown
        ``verbose``; with padding, metrics that cannot be masked.
    """
    strategy, batch_size, static = _check_arguments(model, strategy, batch_size, static_shapes, verbose)
    dataset, size = as_dataset(data, "data")
    check_labelled(dataset, "data")
    if size == 0:
        raise ValueError("data is empty: there is nothing to evaluate (check its filters and splits).")
    pad = static and (size is None or size % batch_size != 0)
    _build(model, strategy, dataset.batch(batch_size).element_spec)
    if pad:
        _check_maskable(model, batch_size, size)
        batches = dataset.map(_with_mask).batch(batch_size).map(_padding_to(batch_size))
    else:
        batches = dataset.batch(batch_size, drop_remainder=static)
    step = _step(model, strategy, pad)
    model.reset_metrics()
    bar = None
    if verbose and distribute.is_chief(strategy):
        bar = keras.utils.Progbar(None if size is None else math.ceil(size / batch_size), verbose=verbose)
    done = 0
    for batch in _distributed(strategy, batches):
        step(batch)
        done += 1
        if bar is not None and verbose == 1:
            bar.update(done)
    if done == 0:
        raise ValueError("data is empty: there is nothing to evaluate (check its filters and splits).")
    results = {name: _python(value) for name, value in model.get_metrics_result().items()}
    if bar is not None:
        bar.update(done, [(k, v) for k, v in results.items() if isinstance(v, float)], finalize=True)
    return results


# ============================================================================ arguments
def _check_arguments(model, strategy, batch_size, static_shapes, verbose):
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}.")
    if not model.compiled:
        raise ValueError("model is not compiled: call model.compile(loss=..., metrics=...) before bstf.evaluate.")
    if strategy is None:
        strategy = model.distribute_strategy
    elif not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(f"strategy must be a tf.distribute.Strategy, got {type(strategy).__name__}.")
    elif strategy is not model.distribute_strategy:
        raise ValueError(
            f"the model was created outside strategy.scope() of the given {type(strategy).__name__}; "
            "create and compile the model inside `with strategy.scope():`.")
    replicas = strategy.num_replicas_in_sync
    if batch_size is None:
        batch_size = replicas * math.ceil(DEFAULT_BATCH_SIZE / replicas)
    batch_size = check_int("batch_size", batch_size)
    if batch_size % replicas:
        raise ValueError(
            f"batch_size={batch_size} is the global batch and must divide by the {replicas} replicas; "
            f"use a multiple of {replicas} (e.g. {replicas * math.ceil(batch_size / replicas)}).")
    if static_shapes is None:
        static_shapes = isinstance(strategy, tf.distribute.TPUStrategy)
    if not isinstance(static_shapes, bool):
        raise TypeError(f"static_shapes must be True, False or None, got {static_shapes!r}.")
    if verbose not in (0, 1, 2) or isinstance(verbose, bool):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}.")
    return strategy, batch_size, static_shapes


def _check_maskable(model, batch_size, size):
    """Refuses what the padded step cannot mask (see the module docstring)."""
    fix = (f"evaluate with static_shapes=False, or with a batch_size that divides the {size} examples"
           if size is not None else "evaluate with static_shapes=False, or data of known size "
           "(dataset.apply(tf.data.experimental.assert_cardinality(n))) and a batch_size that divides it")
    if type(model).test_step is not keras.Model.test_step:
        raise ValueError(
            f"{type(model).__name__} overrides test_step, so bstf.evaluate cannot mask the padding of the "
            f"last batch of {batch_size}; {fix}.")
    loss = _loss_tracker(model)
    for metric in _leaf_metrics(model.metrics):
        if metric is not loss and not isinstance(metric, keras.metrics.MeanMetricWrapper):
            raise ValueError(
                f"metric {metric.name!r} ({type(metric).__name__}) does not read the padding mask of a "
                f"static-shape last batch (only MeanMetricWrapper metrics such as accuracy, crossentropy "
                f"or MSE do), so it would count padded examples; {fix}.")


def _leaf_metrics(metrics):
    for metric in metrics:
        children = getattr(metric, "metrics", None)  # Keras's CompileMetrics holds the compiled ones
        if isinstance(children, (list, tuple)):
            yield from _leaf_metrics(children)
        else:
            yield metric


def _loss_tracker(model):
    return next((m for m in model.metrics if m.name == "loss"), None)


# ============================================================================ data
def _with_mask(*element):
    """``(x, y, sample_weight, mask)``: weight 1 when the data has none, mask 1 (real example)."""
    x, y = element[0], element[1]
    weight = element[2] if len(element) == 3 else tf.constant(1.0)
    return x, y, tf.cast(weight, tf.float32), tf.constant(1.0)


def _padding_to(batch_size):
    """Pads every component of a batch with zero rows to ``batch_size`` (the mask is 0 there)."""

    def pad_batch(*batch):
        missing = batch_size - tf.shape(tf.nest.flatten(batch)[0])[0]

        def pad(t):
            out = tf.pad(t, [[0, missing]] + [[0, 0]] * (t.shape.rank - 1))
            return tf.ensure_shape(out, [batch_size] + t.shape.as_list()[1:])

        return tf.nest.map_structure(pad, batch)

    return pad_batch


def _distributed(strategy, batches):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    batches = batches.prefetch(tf.data.AUTOTUNE).with_options(options)
    if strategy.num_replicas_in_sync > 1 or is_multi_worker(strategy):
        return strategy.experimental_distribute_dataset(batches)
    return batches


def _build(model, strategy, batch_spec):
    """Creates the model's and the compiled metrics' variables (in scope) before the first trace."""
    symbolic = getattr(model, "_symbolic_build", None)  # what model.evaluate does first
    if symbolic is not None:
        with strategy.scope():
            symbolic(data_batch=tf.nest.map_structure(lambda s: keras.KerasTensor(s.shape, s.dtype.name), batch_spec))


# ============================================================================ steps
def _step(model, strategy, masked):
    """The traced distributed step, cached per model (retraced when the strategy or metrics change)."""
    key = (strategy, masked, *model.metrics)
    cached = _STEPS.get(model)
    if cached is not None and len(cached[0]) == len(key) and all(a is b for a, b in zip(cached[0], key)):
        return cached[1]
    ref = weakref.ref(model)  # the cache must not keep the model alive

    def replica_step(data):
        return _masked_test_step(ref(), data) if masked else ref().test_step(data)

    @tf.function(reduce_retracing=True)
    def step(data):
        strategy.run(replica_step, args=(data,))

    _STEPS[model] = (key, step)
    return step


def _masked_test_step(model, data):
    """Keras's ``test_step`` with the padding rows (``mask`` 0) excluded from the loss and metrics."""
    x, y, weight, mask = data
    y_pred = model(x, training=False)
    for output in tf.nest.flatten(y_pred):
        _mask_output(output, mask)
    weight = weight * tf.reshape(mask, [-1] + [1] * (weight.shape.rank - 1))
    if "training" in inspect.signature(model.compute_loss).parameters:
        loss = model.compute_loss(x, y, y_pred, sample_weight=weight, training=False)
    else:
        loss = model.compute_loss(x, y, y_pred, sample_weight=weight)
    tracker = _loss_tracker(model)
    if tracker is not None:  # the mean over this replica's real examples, weighted by their count
        replicas = tf.distribute.get_strategy().num_replicas_in_sync  # Keras scales losses by 1/replicas
        tracker.update_state(loss * tf.cast(replicas, loss.dtype), sample_weight=tf.reduce_sum(mask))
    model.compute_metrics(x, y, y_pred, sample_weight=weight)


def _mask_output(output, mask):
    keep = tf.cast(mask, tf.bool)
    if output.shape.rank >= 2:  # one mask entry per prediction: all axes but the last
        keep = tf.broadcast_to(tf.reshape(keep, [-1] + [1] * (output.shape.rank - 2)), tf.shape(output)[:-1])
    previous = get_keras_mask(output)
    set_keras_mask(output, keep if previous is None else tf.logical_and(tf.cast(previous, tf.bool), keep))


def _python(value):
    array = np.asarray(keras.ops.convert_to_numpy(value))
    return float(array.reshape(-1)[0]) if array.size == 1 else array
