"""The gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish et al. 2018).

``G`` is the full-batch gradient and ``Σ`` the per-example gradient
covariance. A batch gradient of ``B`` examples has
``E|G_B|² = |G|² + tr(Σ)/B``, so two batch sizes ``B_small < B_big`` give
unbiased estimates (McCandlish et al., App. A.1)::

    |G|²  ≈ (B_big·|G_big|² − B_small·|G_small|²) / (B_big − B_small)
    tr(Σ) ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big)

Each pair of measurements is noisy (either estimate may even be negative), so
numerator and denominator are averaged over many pairs *separately* and the
ratio is taken last.

How a pair is measured here: one batch of ``big_batch`` examples is split into
micro-batches of ``small_batch``; the micro-batch gradients give ``|G_small|²``
(their mean squared norm — several unbiased estimates at once) and their
example-weighted mean is the gradient of the whole batch, giving ``|G_big|²``.
The cost is one forward/backward pass over ``big_batch`` examples.

Under ``mixed_float16`` the loss is multiplied by a loss scale before the
backward pass (small float16 gradients would otherwise underflow to zero) and
every micro-batch gradient is cast to float32 and divided by the scale before
anything is summed or squared: the norms are those of the unscaled gradients,
as in float32. The scale starts at the model's optimizer's current dynamic
scale (Keras's initial ``2**15`` without a ``LossScaleOptimizer``) and halves
while a measurement overflows.
"""

import dataclasses
import math
import time

import keras
import numpy as np
import tensorflow as tf

from bstf.analysis import _common


@dataclasses.dataclass(frozen=True)
class NoiseScaleEstimate:
    """The three McCandlish quantities (Python floats or NumPy arrays)."""

    b_simple: object
    grad_norm_sq: object
    trace_sigma: object


def estimate_grad_norm_sq(g_small_sq, g_big_sq, b_small, b_big):
    """Unbiased |G|² from the squared norms of gradients at two batch sizes."""
    b_small, b_big = _check_batches(b_small, b_big)
    g_small_sq, g_big_sq = np.asarray(g_small_sq, np.float64), np.asarray(g_big_sq, np.float64)
    return _scalar((b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small))


def estimate_trace_sigma(g_small_sq, g_big_sq, b_small, b_big):
    """Unbiased tr(Σ) from the squared norms of gradients at two batch sizes."""
    b_small, b_big = _check_batches(b_small, b_big)
    g_small_sq, g_big_sq = np.asarray(g_small_sq, np.float64), np.asarray(g_big_sq, np.float64)
    return _scalar((g_small_sq - g_big_sq) / (1.0 / b_small - 1.0 / b_big))


def ratio(trace_sigma, grad_norm_sq):
    """B_simple = tr(Σ)/|G|² (``inf``/``nan`` where |G|² is 0; negative if an estimate is)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _scalar(np.divide(np.asarray(trace_sigma, np.float64), np.asarray(grad_norm_sq, np.float64)))


def estimate_noise_scale(g_small_sq, g_big_sq, b_small, b_big):
    """McCandlish's two-batch estimators on numbers (scalars or arrays, elementwise).

    Args:
      g_small_sq: |G_small|², squared norm of a gradient over ``b_small`` examples.
      g_big_sq: |G_big|², squared norm of a gradient over ``b_big`` examples.
      b_small, b_big: the two batch sizes, ``1 <= b_small < b_big``.

    Returns:
      :class:`NoiseScaleEstimate` ``(b_simple, grad_norm_sq, trace_sigma)``.
      To average many measurements, average ``grad_norm_sq`` and
      ``trace_sigma`` first (:class:`NoiseScaleAverager`), then take the ratio.
    """
    g2 = estimate_grad_norm_sq(g_small_sq, g_big_sq, b_small, b_big)
    tr = estimate_trace_sigma(g_small_sq, g_big_sq, b_small, b_big)
    return NoiseScaleEstimate(ratio(tr, g2), g2, tr)


def _scalar(a):
    a = np.asarray(a)
    return float(a) if a.ndim == 0 else a


def _check_batches(b_small, b_big):
    b_small = _common.check_int("small_batch", b_small)
    b_big = _common.check_int("big_batch", b_big)
    if b_small >= b_big:
        raise ValueError(f"small_batch ({b_small}) must be smaller than big_batch ({b_big}).")
    return b_small, b_big


class NoiseScaleAverager:
    """Running average of |G|² and tr(Σ) estimates; B_simple is their ratio.

    Args:
      ema: ``None`` for the plain mean of all measurements, or a decay in
        [0, 1) for an exponential moving average (bias-corrected as in Adam, so
        the first value is the first measurement; ``0`` keeps only the last).
    """

    def __init__(self, ema=None):
        self.ema = _common.check_ema(ema)
        self.count = 0
        self._g2 = 0.0
        self._tr = 0.0
        self._weight = 0.0

    def update(self, grad_norm_sq, trace_sigma):
        """Adds one pair of estimates; returns the current :class:`NoiseScaleEstimate`."""
        self.count += 1
        if self.ema is None:
            self._g2 += float(grad_norm_sq)
            self._tr += float(trace_sigma)
            self._weight += 1.0
        else:
            b = self.ema
            self._g2 = b * self._g2 + (1 - b) * float(grad_norm_sq)
            self._tr = b * self._tr + (1 - b) * float(trace_sigma)
            self._weight = b * self._weight + (1 - b)
        return self.estimate

    def get_state(self):
        """The running sums as a JSON-able list (checkpointed by ``bstf.fit``)."""
        return [self.count, self._g2, self._tr, self._weight]

    def set_state(self, state):
        """Restores :meth:`get_state`'s list."""
        self.count, self._g2, self._tr, self._weight = int(state[0]), *(float(v) for v in state[1:])

    @property
    def grad_norm_sq(self):
        return self._g2 / self._weight if self._weight else float("nan")

    @property
    def trace_sigma(self):
        return self._tr / self._weight if self._weight else float("nan")

    @property
    def b_simple(self):
        return ratio(self._tr, self._g2) if self._weight else float("nan")

    @property
    def estimate(self):
        return NoiseScaleEstimate(self.b_simple, self.grad_norm_sq, self.trace_sigma)


_FLOAT16_INITIAL_SCALE = 2.0**15  # keras.optimizers.LossScaleOptimizer's default initial_scale


def _initial_loss_scale(model):
    """1 unless the model computes in float16; then its optimizer's loss scale (or 2**15)."""
    layers = model._flatten_layers(include_self=True, recursive=True)
    if not any(layer.compute_dtype == "float16" for layer in layers):
        return 1.0
    optimizer = getattr(model, "optimizer", None)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):  # bstf's LossScaledAccumulate too
        return float(optimizer.dynamic_scale.numpy()) if optimizer.built else float(optimizer.initial_scale)
    if optimizer is not None and optimizer.loss_scale_factor:
        return float(optimizer.loss_scale_factor)
    return _FLOAT16_INITIAL_SCALE


class GradientNormPairs:
    """Measures (|G_small|², |G_big|²) on one big batch in one ``tf.function``.

    The batch of ``big_batch`` examples is split into ``big_batch //
    small_batch`` micro-batches of ``small_batch`` (plus a remainder if it does
    not divide): returns the mean squared norm of the full micro-batch
    gradients and the squared norm of their example-weighted mean (= the
    gradient of the mean loss over the whole batch). The model's variables are
    not changed by the caller's measurement only if it restores non-trainable
    state (BN statistics, RNG) itself — see :func:`noise_scale`.

    Under data parallelism or accumulation the same pair is available for free
    (per-replica and all-reduced gradients); this class is the portable way
    that needs only the model.

    ``loss_scale``: the loss is multiplied by it before the backward pass and
    each gradient divided by it in float32 (see the module docstring); it
    halves while a measurement is not finite, down to 1. Default: 1, or for a
    model computing in float16 its optimizer's current loss scale (``2**15``
    without one).
    """

    def __init__(self, model, small_batch, big_batch, loss=None, training=True, loss_scale=None):
        self.small_batch, self.big_batch = _check_batches(small_batch, big_batch)
        self.model = model
        if loss_scale is None:
            loss_scale = _initial_loss_scale(model)
        self.loss_scale = _common.check_float("loss_scale", loss_scale, low=1.0)
        loss_fn = _common.make_loss_fn(model, loss)
        k, r = divmod(self.big_batch, self.small_batch)
        s, n = self.small_batch, self.big_batch

        def grads_of(xb, yb, scale):
            variables = model.trainable_variables
            with tf.GradientTape() as tape:
                value = loss_fn(xb, yb, training)
                scaled = value * tf.cast(scale, value.dtype)
            grads = _common.dense_gradients(tape.gradient(scaled, variables), variables)
            return [tf.cast(g, tf.float32) / scale for g in grads]  # unscaled, in float32

        @tf.function
        def pairs(x, y, scale):
            variables = model.trainable_variables
            acc = [tf.zeros(v.shape, tf.float32) for v in variables]
            small_sq = tf.constant(0.0, tf.float32)
            for i in tf.range(k):
                start = i * s
                xb = tf.nest.map_structure(lambda a: a[start:start + s], x)
                g = grads_of(xb, y[start:start + s], scale)
                small_sq += _common.sum_of_squares(g)
                acc = [a + gi for a, gi in zip(acc, g)]
            total = [a * float(s) for a in acc]
            if r:
                xb = tf.nest.map_structure(lambda a: a[k * s:], x)
                g = grads_of(xb, y[k * s:], scale)
                total = [t + gi * float(r) for t, gi in zip(total, g)]
            big = [t / float(n) for t in total]
            return small_sq / float(k), _common.sum_of_squares(big)

        self._pairs = pairs

    def __call__(self, x, y):
        """(|G_small|², |G_big|²) as Python floats for one batch of ``big_batch`` examples."""
        while True:
            g_small_sq, g_big_sq = self._pairs(x, y, tf.constant(self.loss_scale, tf.float32))
            g_small_sq, g_big_sq = float(g_small_sq), float(g_big_sq)
            if (math.isfinite(g_small_sq) and math.isfinite(g_big_sq)) or self.loss_scale <= 1.0:
                return g_small_sq, g_big_sq
            self.loss_scale = max(1.0, self.loss_scale / 2.0)  # the scaled gradient overflowed


@dataclasses.dataclass
class NoiseScaleResult:
    """Result of :func:`noise_scale`.

    ``b_simple``, ``grad_norm_sq`` and ``trace_sigma`` are the averaged
    estimates (ratio taken after averaging); the ``*_per_batch`` arrays hold
    the raw measurements and per-pair estimates, one per big batch.
    """

    b_simple: float
    grad_norm_sq: float
    trace_sigma: float
    small_batch: int
    big_batch: int
    num_batches: int
    g_small_sq: np.ndarray
    g_big_sq: np.ndarray
    grad_norm_sq_per_batch: np.ndarray
    trace_sigma_per_batch: np.ndarray
    seconds: float

    @property
    def standard_error(self):
        """Delta-method standard error of ``b_simple`` from the per-pair spread (plain mean)."""
        n = len(self.g_small_sq)
        if n < 2:
            return float("nan")
        g2, tr = self.grad_norm_sq_per_batch, self.trace_sigma_per_batch
        mg, mt = g2.mean(), tr.mean()
        cov = np.cov(np.stack([tr, g2])) / n
        grad = np.array([1.0 / mg, -mt / mg**2])
        return float(np.sqrt(max(grad @ cov @ grad, 0.0)))


def noise_scale(model, data, small_batch=32, big_batch=512, num_batches=32, loss=None, ema=None, seed=0,
                training=True):
    """Measures the gradient noise scale B_simple of ``model`` on ``data``.

    Args:
      model: a built Keras model (its current weights are the point measured).
      data: a :class:`bstf.data.Data`, an unbatched ``tf.data.Dataset`` of
        ``(x, y)`` or a tuple ``(x, y)`` of arrays; shuffled with ``seed`` and
        repeated if ``num_batches · big_batch`` exceeds its size.
      small_batch, big_batch: the two batch sizes, ``small_batch < big_batch
        <= len(data)``. ``big_batch`` examples are split into micro-batches of
        ``small_batch``.
      num_batches: number of big batches (pairs of measurements) averaged.
      loss: a Keras loss to use instead of the compiled one (default: the
        compiled loss, with the model's regularisation losses). It must average
        over the batch.
      ema: ``None`` (default) averages the pairs with a plain mean; a decay in
        [0, 1) uses a bias-corrected exponential moving average instead.
      seed: shuffling seed.
      training: run the model in training mode (dropout, batch statistics), as
        the optimizer sees it. BN moving statistics and RNG state are restored
        afterwards; the weights are never changed.

    Returns:
      :class:`NoiseScaleResult`.
    """
    small_batch, big_batch = _check_batches(small_batch, big_batch)
    num_batches = _common.check_int("num_batches", num_batches)
    averager = NoiseScaleAverager(ema)
    seed = _common.check_int("seed", seed, minimum=0)
    ds, size = _common.as_dataset(data)
    _common.check_enough(ds, size, big_batch, f"big_batch={big_batch}")
    buffer = size if size is not None and size <= 100_000 else 100_000
    stream = (ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
              .batch(big_batch, drop_remainder=True).take(num_batches))
    start = time.perf_counter()
    small, big = [], []
    first = True
    with _common.preserved_state(model, trainable=False):
        for x, y in stream:
            if first:
                _common.ensure_built(model, tf.nest.map_structure(lambda a: a[:1], x))
                pairs = GradientNormPairs(model, small_batch, big_batch, loss=loss, training=training)
                first = False
            s, b = pairs(x, y)
            small.append(s)
            big.append(b)
    if first:
        raise ValueError(f"data yielded no batch of big_batch={big_batch} examples.")
    small, big = np.array(small), np.array(big)
    per = estimate_noise_scale(small, big, small_batch, big_batch)
    for g2, tr in zip(np.atleast_1d(per.grad_norm_sq), np.atleast_1d(per.trace_sigma)):
        averager.update(g2, tr)
    est = averager.estimate
    return NoiseScaleResult(
        b_simple=float(est.b_simple), grad_norm_sq=float(est.grad_norm_sq), trace_sigma=float(est.trace_sigma),
        small_batch=small_batch, big_batch=big_batch, num_batches=len(small),
        g_small_sq=small, g_big_sq=big,
        grad_norm_sq_per_batch=np.atleast_1d(per.grad_norm_sq), trace_sigma_per_batch=np.atleast_1d(per.trace_sigma),
        seconds=time.perf_counter() - start,
    )
