"""NoiseScaleMonitor: the gradient noise scale B_simple tracked during training."""

import time

import keras
import tensorflow as tf

from bstf.analysis import _common
from bstf.analysis.noise_scale import GradientNormPairs, NoiseScaleAverager, estimate_noise_scale
from bstf.clock import Clock
from bstf.optimizers import Accumulate

TAGS = ("b_simple", "grad_norm_sq", "trace_sigma")


def as_writer(log_dir, name="log_dir"):
    """A tf.summary writer from ``None``, a directory or a writer."""
    if log_dir is None or isinstance(log_dir, tf.summary.SummaryWriter):
        return log_dir
    if isinstance(log_dir, str) or hasattr(log_dir, "__fspath__"):
        return tf.summary.create_file_writer(str(log_dir))
    raise TypeError(f"{name} must be None, a directory or a tf.summary.SummaryWriter, got {type(log_dir).__name__}.")


def update_count(optimizer):
    """Parameter updates applied so far: ``optimizer.iterations``, but for :class:`bstf.optimizers.Accumulate`
    (whose ``iterations`` counts micro-steps) the inner optimizer's count, ``updates``."""
    counter = optimizer.updates if isinstance(optimizer, Accumulate) else optimizer.iterations
    return int(counter.numpy())


def serialize_loss(loss):
    """A loss for ``get_config``: names as is, Keras ``Loss`` objects serialized, anything else ``None``."""
    if loss is None or isinstance(loss, str):
        return loss
    if isinstance(loss, keras.losses.Loss):
        return keras.losses.serialize(loss)
    return None  # a plain function: pass it again to from_config(config, loss=...)


def deserialize_loss(config):
    """Inverse of :func:`serialize_loss` on a config dict (in place)."""
    if isinstance(config.get("loss"), dict):
        config["loss"] = keras.losses.deserialize(config["loss"])
    return config


@keras.saving.register_keras_serializable(package="bstf")
class NoiseScaleMonitor(keras.callbacks.Callback):
    """Measures McCandlish's B_simple every ``every_n_updates`` updates of ``model.fit``.

    Keras callbacks do not see the training batch, so the monitor holds its
    own reference stream of training data (``data``, shuffled and repeated).
    Every ``every_n_updates`` optimizer updates it takes one batch of
    ``big_batch`` examples, computes the gradients of its ``small_batch``
    micro-batches in one ``tf.function`` (:class:`bstf.analysis.noise_scale.
    GradientNormPairs`) and feeds the pair ``(|G_small|², |G_big|²)`` to the
    unbiased estimators, averaged by an EMA of numerator and denominator.
    The weights are not changed; BN moving statistics and RNG state are
    restored after each measurement, so training follows the same trajectory
    as without the monitor.

    Cost: one forward/backward pass over ``big_batch`` examples (in micro-
    batches) every ``every_n_updates`` updates — with the defaults (256
    examples every 100 updates) a few percent of the training time at batch
    64–256; see ``bench/noise_scale.py`` and docs/performance.md.

    Logged: TensorBoard scalars ``noise_scale/b_simple``,
    ``noise_scale/grad_norm_sq``, ``noise_scale/trace_sigma`` against the
    optimizer update count, and, if a ``clock`` is given,
    ``noise_scale_vs_examples/<same>`` against the examples seen; the latest
    averaged values as ``b_simple``, ``grad_norm_sq``, ``trace_sigma`` in the
    epoch logs (so in ``History``); every measurement in ``self.history``.

    Args:
      data: reference training data: a :class:`bstf.data.Data`, an unbatched
        ``tf.data.Dataset`` of ``(x, y)`` or a tuple ``(x, y)`` of arrays with
        at least ``big_batch`` examples.
      every_n_updates: measure at the first update and then every this many updates.
      small_batch: micro-batch size B_small (default ``big_batch // 8``).
      big_batch: examples per measurement, B_big.
      ema: EMA decay in [0, 1) for numerator and denominator, or ``None`` for
        the plain mean of all measurements.
      log_dir: ``None`` (no TensorBoard), a directory, or a ``tf.summary`` writer.
      clock: optional :class:`bstf.Clock`; its examples seen are logged as a
        second time axis (the training loop must advance it; ``bstf.fit`` does).
      loss: loss to use instead of the compiled one (must average over the batch).
      seed: shuffling seed of the reference stream.
      training: measure in training mode (dropout, batch statistics).
    """

    def __init__(self, data, every_n_updates=100, small_batch=None, big_batch=256, ema=0.9, log_dir=None, clock=None,
                 loss=None, seed=0, training=True):
        super().__init__()
        self.every_n_updates = _common.check_int("every_n_updates", every_n_updates)
        self.big_batch = _common.check_int("big_batch", big_batch, minimum=2)
        if small_batch is None:
            small_batch = max(1, self.big_batch // 8)
        self.small_batch = _common.check_int("small_batch", small_batch)
        if self.small_batch >= self.big_batch:
            raise ValueError(f"small_batch ({self.small_batch}) must be smaller than big_batch ({self.big_batch}).")
        self.ema = _common.check_ema(ema)
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a bstf.Clock or None, got {type(clock).__name__}.")
        self.clock = clock
        self.seed = _common.check_int("seed", seed, minimum=0)
        self.training = bool(training)
        self.loss = loss
        self._log_dir = None if log_dir is None or isinstance(log_dir, tf.summary.SummaryWriter) else str(log_dir)
        self.writer = as_writer(log_dir)
        ds, size = _common.as_dataset(data)
        _common.check_enough(ds, size, self.big_batch, f"big_batch={self.big_batch}")
        buffer = size if size is not None and size <= 100_000 else 100_000
        self._dataset = (ds.shuffle(buffer, seed=self.seed, reshuffle_each_iteration=True).repeat()
                         .batch(self.big_batch, drop_remainder=True))
        self._iterator = None
        self._pairs = None
        self._last = None
        self.averager = NoiseScaleAverager(self.ema)
        self.seconds = 0.0
        self.history = {k: [] for k in ("updates", "examples", "g_small_sq", "g_big_sq", *TAGS)}

    # -- Keras hooks -----------------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        if self._iterator is None:
            self._iterator = iter(self._dataset)

    def on_train_batch_end(self, batch, logs=None):
        updates = update_count(self.model.optimizer)
        if self._last is not None and updates < self._last + self.every_n_updates:
            return
        self._last = updates
        self.measure(updates)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.averager.count:
            est = self.averager.estimate
            logs.update(b_simple=est.b_simple, grad_norm_sq=est.grad_norm_sq, trace_sigma=est.trace_sigma)
        if self.writer is not None:
            self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.flush()

    # -- measurement -----------------------------------------------------------------------------------
    def measure(self, updates=None):
        """Takes one measurement now; returns the averaged :class:`NoiseScaleEstimate`."""
        start = time.perf_counter()
        if self._iterator is None:
            self._iterator = iter(self._dataset)
        x, y = next(self._iterator)
        with _common.preserved_state(self.model, trainable=False):
            if self._pairs is None:
                _common.ensure_built(self.model, tf.nest.map_structure(lambda a: a[:1], x))
                self._pairs = GradientNormPairs(self.model, self.small_batch, self.big_batch, self.loss, self.training)
            g_small_sq, g_big_sq = self._pairs(x, y)
        raw = estimate_noise_scale(g_small_sq, g_big_sq, self.small_batch, self.big_batch)
        est = self.averager.update(raw.grad_norm_sq, raw.trace_sigma)
        if updates is None:
            updates = update_count(self.model.optimizer)
        examples = int(self.clock.numpy()[0]) if self.clock is not None else None
        h = self.history
        h["updates"].append(updates)
        h["examples"].append(examples)
        h["g_small_sq"].append(g_small_sq)
        h["g_big_sq"].append(g_big_sq)
        for tag in TAGS:
            h[tag].append(float(getattr(est, tag)))
        if self.writer is not None:
            with self.writer.as_default():
                for tag in TAGS:
                    tf.summary.scalar(f"noise_scale/{tag}", getattr(est, tag), step=updates)
                    if examples is not None:
                        tf.summary.scalar(f"noise_scale_vs_examples/{tag}", getattr(est, tag), step=examples)
        self.seconds += time.perf_counter() - start
        return est

    @property
    def b_simple(self):
        """The current averaged B_simple (nan before the first measurement)."""
        return float(self.averager.b_simple)

    def get_config(self):
        """The arguments except ``data`` and ``clock`` (pass them again to :meth:`from_config`).

        ``log_dir`` is kept when it is a path (a writer object is not); ``loss``
        when it is a name or a Keras ``Loss`` object (a plain function is stored
        as ``None``: pass it again).
        """
        return {
            "every_n_updates": self.every_n_updates,
            "small_batch": self.small_batch,
            "big_batch": self.big_batch,
            "ema": self.ema,
            "log_dir": self._log_dir,
            "loss": serialize_loss(self.loss),
            "seed": self.seed,
            "training": self.training,
        }

    @classmethod
    def from_config(cls, config, **kwargs):
        """``from_config(config, data=..., clock=...)``: the data and clock are not part of the config."""
        return cls(**{**deserialize_loss(dict(config)), **kwargs})
