"""Training dynamics across batch sizes (Shen's study): distance travelled and raw gradients.

* :func:`distance_from_init` — L2 distance of the weights from their
  initial values, in total and per layer. At equal epochs larger batches move
  less far (fewer updates); with the LR scaled up they move further.
* :func:`gradient_histogram` — the distribution of raw gradient values of
  batches of a given size at fixed weights, pooled over many random batches
  (trials) into shared bins, plus the gradient norm of each trial. Smaller
  batches give wider distributions (more noise); pass the same ``range`` for
  several batch sizes to compare their histograms bin by bin.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from bstf.analysis import _common


class Distance(tuple):
    """``(total, per_layer)``: total L2 distance and ``{layer: L2 distance}``."""

    def __new__(cls, total, per_layer):
        return super().__new__(cls, (total, per_layer))

    @property
    def total(self):
        return self[0]

    @property
    def per_layer(self):
        return self[1]

    def __repr__(self):
        return f"Distance(total={self.total!r}, per_layer={self.per_layer!r})"


def trainable_weights(model):
    """``{variable path: NumPy copy}`` of a model's trainable weights (the form used by the callbacks)."""
    return {v.path: np.array(v.numpy()) for v in model.trainable_variables}


def _as_named(weights, name):
    if hasattr(weights, "trainable_variables"):
        return trainable_weights(weights)
    if isinstance(weights, dict):
        return {str(k): np.asarray(v) for k, v in weights.items()}
    if isinstance(weights, (list, tuple)):
        return {f"weight_{i}": np.asarray(w) for i, w in enumerate(weights)}
    raise TypeError(
        f"{name} must be a model, a dict {{path: array}} or a list of arrays, got {type(weights).__name__}."
    )


def _layer_of(path):
    return path.rsplit("/", 1)[0] if "/" in path else path


def distance_from_init(initial_weights, weights):
    """L2 distance ‖w − w₀‖ in total and per layer.

    Args:
      initial_weights, weights: both models (their trainable weights), dicts
        ``{variable path: array}`` (e.g. :func:`trainable_weights`), or lists of
        arrays in the same order. Two models whose variable paths differ (auto-
        generated layer names) are matched in ``trainable_variables`` order and
        named by ``weights``' paths. With paths, weights are grouped into layers by
        the path without its last component (``"seq/dense/kernel"`` and
        ``"seq/dense/bias"`` form layer ``"seq/dense"``); with lists every array
        is its own entry ``"weight_<i>"``.

    Returns:
      :class:`Distance` ``(total, per_layer)`` with Python floats; ``total² =
      Σ per_layer²``.
    """
    a = _as_named(initial_weights, "initial_weights")
    b = _as_named(weights, "weights")
    both_models = all(hasattr(w, "trainable_variables") for w in (initial_weights, weights))
    if both_models and set(a) != set(b) and len(a) == len(b):
        a = dict(zip(b, a.values()))  # two models of one architecture, named apart: matched in order
    if set(a) != set(b):
        missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(f"weights do not match initial_weights: missing {missing}, unexpected {extra}.")
    if not a:
        raise ValueError("there are no weights to compare.")
    grouped = not isinstance(initial_weights, (list, tuple))
    squares = {}
    for key in a:
        if a[key].shape != b[key].shape:
            raise ValueError(f"weight {key!r} has shape {b[key].shape} but its initial value has shape {a[key].shape}.")
        d = np.sum(np.square(b[key].astype(np.float64) - a[key].astype(np.float64)))
        layer = _layer_of(key) if grouped else key
        squares[layer] = squares.get(layer, 0.0) + float(d)
    return Distance(float(np.sqrt(sum(squares.values()))), {k: float(np.sqrt(v)) for k, v in squares.items()})


@dataclasses.dataclass
class GradientHistogramResult:
    """Pooled histogram of raw gradient values.

    ``counts[i]`` values fell in ``[edges[i], edges[i+1])`` (last bin closed);
    ``counts.sum() == trials · num_values`` when ``range`` covers all values
    (always when it is chosen automatically). ``norms`` holds the gradient
    norm of each trial; ``outside`` counts values outside an explicit range.
    """

    counts: np.ndarray
    edges: np.ndarray
    norms: np.ndarray
    batch_size: int
    trials: int
    num_values: int
    outside: int

    @property
    def density(self):
        """Counts normalised to a probability density over the bins."""
        total = self.counts.sum()
        return self.counts / (total * np.diff(self.edges)) if total else self.counts.astype(float)


class BatchGradients:
    """Flat gradient of the mean loss over one batch, in one ``tf.function``."""

    def __init__(self, model, loss=None, training=True):
        loss_fn = _common.make_loss_fn(model, loss)

        @tf.function(reduce_retracing=True)
        def flat_gradient(x, y):
            variables = model.trainable_variables
            with tf.GradientTape() as tape:
                value = loss_fn(x, y, training)
            grads = _common.dense_gradients(tape.gradient(value, variables), variables)
            return tf.concat([tf.reshape(tf.cast(g, tf.float32), [-1]) for g in grads], axis=0)

        self.model = model
        self._flat = flat_gradient

        @tf.function(reduce_retracing=True)
        def gradients(x, y):
            variables = model.trainable_variables
            with tf.GradientTape() as tape:
                value = loss_fn(x, y, training)
            return _common.dense_gradients(tape.gradient(value, variables), variables)

        self._grads = gradients

    def flat(self, x, y):
        """All gradient values as one NumPy vector (``model.trainable_variables`` order)."""
        return self._flat(x, y).numpy()

    def per_variable(self, x, y):
        """Gradient tensors, one per trainable variable."""
        return self._grads(x, y)


def gradient_histogram(model, data, batch_size, trials=100, bins=100, range=None, seed=0, loss=None, training=True):
    """Raw gradient values of batches of ``batch_size``, pooled over ``trials`` random batches.

    Each trial draws ``batch_size`` examples without replacement (a fresh
    random subset per trial) and computes the gradient of the mean loss at the
    model's current weights. All values of all trials go into one
    ``np.histogram`` with common edges: ``range=(low, high)`` fixes them
    (compare batch sizes with the same range); ``None`` uses the min and max
    over all trials, found in a first pass — the second pass recomputes the
    same gradients (same batches, RNG state restored), so memory stays at one
    gradient.

    Args:
      model: a built Keras model (compiled with a loss, or pass ``loss``).
      data: a :class:`bstf.data.Data`, unbatched ``tf.data.Dataset`` of
        ``(x, y)`` or a tuple ``(x, y)`` of arrays (read into memory).
      batch_size: examples per gradient (<= the data size).
      trials: number of random batches.
      bins: number of bins.
      range: ``(low, high)`` of the bins, or ``None``.
      seed: seed of the batch sampling.
      loss: optional loss replacing the compiled one.
      training: training-mode forward pass (dropout, batch statistics); BN
        statistics and RNG state are restored afterwards.

    Returns:
      :class:`GradientHistogramResult`.
    """
    batch_size = _common.check_int("batch_size", batch_size)
    trials = _common.check_int("trials", trials)
    bins = _common.check_int("bins", bins)
    if range is not None:
        low, high = (float(r) for r in range)
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(f"range must be (low, high) with finite low < high, got {range}.")
    x, y = _common.as_arrays(data)
    if len(y) < batch_size:
        raise ValueError(f"data has {len(y)} examples, fewer than batch_size={batch_size}.")
    _common.ensure_built(model, _common.slice_structure(x, 0, 1))
    rng = np.random.default_rng(seed)
    picks = [np.sort(rng.choice(len(y), batch_size, replace=False)) for _ in np.arange(trials)]
    engine = BatchGradients(model, loss, training)

    def take(a, idx):
        return tf.nest.map_structure(lambda t: t[idx], a)

    def each():
        for idx in picks:
            yield engine.flat(take(x, idx), y[idx])

    with _common.preserved_state(model, trainable=False):
        if range is None:
            with _common.preserved_state(model, trainable=False):  # pass 2 sees the same RNG state
                low, high = np.inf, -np.inf
                for g in each():
                    low, high = min(low, float(g.min())), max(high, float(g.max()))
            if low == high:
                low, high = low - 0.5, high + 0.5
            pad = 1e-6 * (high - low)  # guards against last-ulp differences between the passes
            low, high = low - pad, high + pad
        edges = np.histogram_bin_edges([], bins=bins, range=(low, high))
        counts = np.zeros(bins, np.int64)
        norms, outside, num_values = [], 0, 0
        for g in each():
            c, _ = np.histogram(g, bins=edges)
            counts += c
            outside += int(g.size - c.sum())
            num_values = g.size
            norms.append(float(np.linalg.norm(g)))
    return GradientHistogramResult(counts, edges, np.array(norms), batch_size, trials, num_values, outside)
