"""Training-dynamics callbacks (Shen's measures): distance from init and gradient histograms."""

import keras
import numpy as np
import tensorflow as tf

from bstf.analysis import _common
from bstf.analysis.dynamics import BatchGradients, distance_from_init, trainable_weights
from bstf.callbacks.noise_scale import as_writer, deserialize_loss, serialize_loss


@keras.saving.register_keras_serializable(package="bstf")
class DistanceFromInit(keras.callbacks.Callback):
    """Logs the L2 distance of the trainable weights from their initial values each epoch.

    The initial weights are captured at the start of the first ``fit`` (or
    given). TensorBoard scalars (step = epochs completed, 0 at the start):
    ``distance_from_init/total`` and, with ``per_layer=True``,
    ``distance_from_init/<layer path>``. ``distance_from_init`` is added to
    the epoch logs (so to ``History``); ``self.history`` keeps every value.

    Args:
      log_dir: ``None``, a directory or a ``tf.summary`` writer.
      per_layer: also log one scalar per layer.
      initial_weights: ``{variable path: array}`` (see
        :func:`bstf.analysis.trainable_weights`) to measure from instead of the
        weights at the start of training.
    """

    def __init__(self, log_dir=None, per_layer=True, initial_weights=None):
        super().__init__()
        self._log_dir = None if log_dir is None or isinstance(log_dir, tf.summary.SummaryWriter) else str(log_dir)
        self.writer = as_writer(log_dir)
        self.per_layer = bool(per_layer)
        if initial_weights is not None and not isinstance(initial_weights, dict):
            raise TypeError(
                f"initial_weights must be a dict {{variable path: array}} or None, got {type(initial_weights).__name__}."
            )
        self.initial_weights = initial_weights
        self.history = {"epoch": [], "total": [], "per_layer": []}

    def on_train_begin(self, logs=None):
        if self.initial_weights is None:
            self.initial_weights = trainable_weights(self.model)
            self._log(0, distance_from_init(self.initial_weights, self.initial_weights))

    def on_epoch_end(self, epoch, logs=None):
        distance = distance_from_init(self.initial_weights, trainable_weights(self.model))
        self._log(epoch + 1, distance)
        if logs is not None:
            logs["distance_from_init"] = distance.total

    def _log(self, step, distance):
        self.history["epoch"].append(step)
        self.history["total"].append(distance.total)
        self.history["per_layer"].append(distance.per_layer)
        if self.writer is None:
            return
        with self.writer.as_default():
            tf.summary.scalar("distance_from_init/total", distance.total, step=step)
            if self.per_layer:
                for layer, value in distance.per_layer.items():
                    tf.summary.scalar(f"distance_from_init/{layer}", value, step=step)
        self.writer.flush()

    def get_config(self):
        """The arguments except ``initial_weights`` (``log_dir`` only when it is a path, not a writer)."""
        return {"log_dir": self._log_dir, "per_layer": self.per_layer}

    @classmethod
    def from_config(cls, config, **kwargs):
        return cls(**{**config, **kwargs})


@keras.saving.register_keras_serializable(package="bstf")
class GradientHistogram(keras.callbacks.Callback):
    """Writes histograms of raw gradient values to TensorBoard every ``every_n_epochs`` epochs.

    At the end of every ``every_n_epochs``-th epoch, computes the gradient of
    the mean loss on ``trials`` random batches of ``batch_size`` examples from
    ``data`` (at the current weights; BN statistics and RNG state restored)
    and writes ``tf.summary.histogram`` summaries (TensorBoard's Histograms
    and Distributions tabs; step = epochs completed): ``gradients/all``
    (every value of every trial pooled) and, with ``per_variable=True``,
    ``gradients/<variable path>``; plus the scalar ``gradients/norm`` (mean
    gradient norm over the trials), also added to the epoch logs as
    ``gradient_norm``.

    Args:
      data: a :class:`bstf.data.Data`, unbatched ``tf.data.Dataset`` of ``(x, y)``
        or a tuple ``(x, y)`` of arrays with at least ``batch_size`` examples.
      batch_size: examples per gradient.
      every_n_epochs: interval in epochs.
      log_dir: ``None``, a directory or a ``tf.summary`` writer.
      trials: random batches pooled per histogram.
      buckets: histogram buckets.
      per_variable: also one histogram per trainable variable.
      seed: seed of the batch sampling.
      loss: optional loss replacing the compiled one.
      training: training-mode forward pass.
    """

    def __init__(self, data, batch_size=32, every_n_epochs=1, log_dir=None, trials=1, buckets=30, per_variable=True,
                 seed=0, loss=None, training=True):
        super().__init__()
        self.batch_size = _common.check_int("batch_size", batch_size)
        self.every_n_epochs = _common.check_int("every_n_epochs", every_n_epochs)
        self.trials = _common.check_int("trials", trials)
        self.buckets = _common.check_int("buckets", buckets)
        self.per_variable = bool(per_variable)
        self.seed = _common.check_int("seed", seed, minimum=0)
        self.training = bool(training)
        self.loss = loss
        self._log_dir = None if log_dir is None or isinstance(log_dir, tf.summary.SummaryWriter) else str(log_dir)
        self.writer = as_writer(log_dir)
        self.x, self.y = _common.as_arrays(data)
        if len(self.y) < self.batch_size:
            raise ValueError(f"data has {len(self.y)} examples, fewer than batch_size={self.batch_size}.")
        self._rng = np.random.default_rng(self.seed)
        self._engine = None
        self.history = {"epoch": [], "norms": []}

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        norm = self.measure(epoch + 1)
        if logs is not None:
            logs["gradient_norm"] = norm

    def measure(self, step):
        """Computes and writes the histograms now (at ``step``); returns the mean gradient norm."""
        if self._engine is None:
            _common.ensure_built(self.model, _common.slice_structure(self.x, 0, 1))
            self._engine = BatchGradients(self.model, self.loss, self.training)
        variables = self.model.trainable_variables
        pooled = [[] for _ in variables]
        norms = []
        with _common.preserved_state(self.model, trainable=False):
            for _ in range(self.trials):
                idx = np.sort(self._rng.choice(len(self.y), self.batch_size, replace=False))
                x = tf.nest.map_structure(lambda a: a[idx], self.x)
                grads = [g.numpy() for g in self._engine.per_variable(x, self.y[idx])]
                norms.append(float(np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads))))
                for p, g in zip(pooled, grads):
                    p.append(g.reshape(-1))
        self.history["epoch"].append(step)
        self.history["norms"].append(norms)
        if self.writer is not None:
            with self.writer.as_default():
                flat = [np.concatenate(p) for p in pooled]
                tf.summary.histogram("gradients/all", np.concatenate(flat), step=step, buckets=self.buckets)
                if self.per_variable:
                    for v, values in zip(variables, flat):
                        tf.summary.histogram(f"gradients/{v.path}", values, step=step, buckets=self.buckets)
                tf.summary.scalar("gradients/norm", float(np.mean(norms)), step=step)
            self.writer.flush()
        return float(np.mean(norms))

    def get_config(self):
        """The arguments except ``data`` (pass it again to :meth:`from_config`).

        ``log_dir`` is kept when it is a path (a writer object is not); ``loss``
        when it is a name or a Keras ``Loss`` object (a plain function is stored
        as ``None``: pass it again).
        """
        return {
            "batch_size": self.batch_size,
            "every_n_epochs": self.every_n_epochs,
            "log_dir": self._log_dir,
            "trials": self.trials,
            "buckets": self.buckets,
            "per_variable": self.per_variable,
            "seed": self.seed,
            "loss": serialize_loss(self.loss),
            "training": self.training,
        }

    @classmethod
    def from_config(cls, config, **kwargs):
        """``from_config(config, data=...)``: the data is not part of the config."""
        return cls(**{**deserialize_loss(dict(config)), **kwargs})
