"""Helpers shared by the analysis instruments and the measuring callbacks.

Data conversion (a ``bstf.data.Data``, an unbatched ``tf.data.Dataset`` of
``(x, y)`` or a tuple of arrays), the loss whose gradient is measured, flat
views of a model's trainable weights, and a guard that restores a model's
variables after a measurement.
"""

import contextlib
import numbers

import keras
import numpy as np
import tensorflow as tf

from bstf._checks import check_float, check_int  # noqa: F401  (re-exported for the instruments)


def check_ema(ema, name="ema"):
    """``None`` (plain mean) or a decay in [0, 1)."""
    if ema is None:
        return None
    return check_float(name, ema, low=0.0, high=1.0, high_open=True)


def as_dataset(data, name="data"):
    """(unbatched dataset of (x, y), size or None) from the accepted data forms.

    Accepts a :class:`bstf.data.Data`, an unbatched ``tf.data.Dataset`` whose
    elements are ``(x, y)`` pairs, or a tuple/list ``(x, y)`` of arrays.
    The size is ``None`` when the dataset's cardinality is unknown.
    """
    if hasattr(data, "dataset") and hasattr(data, "size"):
        return data.dataset, int(data.size)
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise ValueError(
                f"{name} must yield (x, y) pairs; its elements are {spec}."
            )
        size = int(data.cardinality())
        if size == tf.data.INFINITE_CARDINALITY:
            raise ValueError(
                f"{name} is an infinite tf.data.Dataset; pass a finite one (e.g. `dataset.take(n)`)."
            )
        return data, (None if size < 0 else size)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        n = _length(x, name)
        if n != _length(y, name):
            raise ValueError(f"{name}: x has {n} examples but y has {_length(y, name)}.")
        return tf.data.Dataset.from_tensor_slices((x, y)), n
    raise TypeError(
        f"{name} must be a bstf.data.Data, an unbatched tf.data.Dataset of (x, y) or a "
        f"tuple (x, y) of arrays; got {type(data).__name__}."
    )


def check_enough(ds, size, needed, what, name="data"):
    """ValueError unless the dataset has at least ``needed`` examples (``what`` names the need).

    ``size`` is the known size (or ``None``: then at most ``needed`` elements
    are read to count them, so a filtered dataset is checked too).
    """
    if size is None:
        size = int(ds.take(needed).reduce(np.int64(0), lambda count, _: count + 1))
    if size < needed:
        raise ValueError(f"{name} has {size} examples, fewer than {what}.")
    return size


def _length(a, name):
    leaves = tf.nest.flatten(a)
    if not leaves:
        raise ValueError(f"{name} contains no arrays.")
    return len(leaves[0])


def as_arrays(data, num_examples=None, name="data", minimum=1):
    """The first ``num_examples`` examples of ``data`` as NumPy ``(x, y)``.

    ``x`` may be a nested structure of arrays (multi-input models).
    Raises ValueError when ``data`` has fewer than ``minimum`` examples.
    """
    if num_examples is not None:
        num_examples = check_int("num_examples", num_examples)
    if hasattr(data, "arrays") and getattr(data, "arrays", None) is not None:
        x, y = data.arrays
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        as_dataset(data, name)  # validates
        x, y = data
    else:
        ds, _ = as_dataset(data, name)
        if num_examples is not None:
            ds = ds.take(num_examples)
        batches = list(ds.batch(4096).as_numpy_iterator())
        if not batches:
            raise ValueError(f"{name} is empty.")
        x = tf.nest.map_structure(lambda *a: np.concatenate(a), *[b[0] for b in batches])
        y = np.concatenate([b[1] for b in batches])
    x = tf.nest.map_structure(np.asarray, x)
    y = np.asarray(y)
    n = _length(x, name)
    if num_examples is not None and n > num_examples:
        x = tf.nest.map_structure(lambda a: a[:num_examples], x)
        y = y[:num_examples]
        n = num_examples
    if n < minimum:
        raise ValueError(f"{name} has {n} examples, fewer than the {minimum} needed.")
    return x, y


def slice_structure(x, start, stop):
    return tf.nest.map_structure(lambda a: a[start:stop], x)


def batches(x, y, batch_size):
    """Yields (x_batch, y_batch, size) covering the arrays in order."""
    n = len(y)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        yield slice_structure(x, start, stop), y[start:stop], stop - start


def ensure_built(model, x_example):
    """Builds ``model`` on a batch if needed and checks it has trainable weights."""
    if not model.built:
        model(x_example, training=False)
    if not model.trainable_variables:
        raise ValueError(
            f"model {model.name!r} has no trainable weights; there is no gradient to measure."
        )


_BAD_REDUCTIONS = ("sum", None, "none")


def make_loss_fn(model, loss=None):
    """``fn(x, y, training) -> scalar`` : the mean loss over the batch + regularisation.

    See :func:`make_loss_from_predictions`; this variant runs the forward pass.
    """
    from_pred = make_loss_from_predictions(model, loss)

    def fn(x, y, training):
        return from_pred(x, y, model(x, training=training))

    return fn


def make_loss_from_predictions(model, loss=None):
    """``fn(x, y, y_pred) -> scalar`` : the mean loss over the batch + regularisation.

    With ``loss=None`` the model's compiled loss is used (``model.compute_loss``,
    which adds the model's regularisation losses); otherwise ``loss`` is a Keras
    loss (object, name or ``fn(y_true, y_pred)``) and ``model.losses`` are added.
    The loss must average over the batch (the Keras default): the estimators
    assume a batch gradient is the mean of per-example gradients. Call it right
    after the forward pass that produced ``y_pred`` (regularisation losses are
    those of the last call).
    """
    if loss is None:
        if getattr(model, "_compile_loss", None) is None:
            raise ValueError(
                f"model {model.name!r} has no compiled loss: compile it with a loss "
                "(model.compile(loss=...)) or pass loss=."
            )
        _check_reduction(getattr(model, "loss", None))

        def fn(x, y, y_pred):
            return model.compute_loss(x=x, y=y, y_pred=y_pred)

        return fn
    loss_obj = keras.losses.get(loss) if isinstance(loss, (str, dict)) else loss
    if not callable(loss_obj):
        raise TypeError(f"loss must be a Keras loss, a loss name or a callable, got {loss!r}.")
    _check_reduction(loss_obj)

    def fn(x, y, y_pred):
        del x
        value = loss_obj(y, y_pred)
        extra = model.losses
        if extra:
            value = value + tf.add_n([tf.cast(e, value.dtype) for e in extra])
        return value

    return fn


def _check_reduction(loss):
    if isinstance(loss, keras.losses.Loss) and getattr(loss, "reduction", "sum_over_batch_size") in _BAD_REDUCTIONS:
        raise ValueError(
            f"loss reduction must average over the batch ('sum_over_batch_size' or 'mean'), "
            f"got {loss.reduction!r} for {type(loss).__name__}."
        )


def sum_of_squares(tensors):
    """Σ‖t‖² over a list of tensors (None entries count as zero), float32."""
    parts = [tf.reduce_sum(tf.square(tf.cast(tf.convert_to_tensor(t), tf.float32))) for t in tensors if t is not None]
    return tf.add_n(parts) if parts else tf.constant(0.0, tf.float32)


def dense_gradients(grads, variables):
    """Gradients as dense tensors, zeros for variables the loss does not reach."""
    return [
        tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
        for g, v in zip(grads, variables)
    ]


class FlatWeights:
    """Flat float64 NumPy view of a model's trainable weights (built once)."""

    def __init__(self, variables):
        self.variables = list(variables)
        self.shapes = [tuple(v.shape) for v in self.variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = np.cumsum([0] + self.sizes)
        self.size = int(self.offsets[-1])

    def get(self):
        return np.concatenate([np.asarray(v.numpy(), np.float64).reshape(-1) for v in self.variables])

    def split(self, flat):
        return [
            np.asarray(flat[a:b]).reshape(s)
            for a, b, s in zip(self.offsets[:-1], self.offsets[1:], self.shapes)
        ]

    def set(self, flat):
        for v, value in zip(self.variables, self.split(flat)):
            v.assign(value.astype(v.dtype))

    def flatten(self, tensors):
        return np.concatenate([np.asarray(t, np.float64).reshape(-1) for t in tensors])


@contextlib.contextmanager
def preserved_state(model, trainable=True):
    """Restores the model's variables (weights, BN statistics, RNG state) on exit."""
    variables = list(model.non_trainable_variables)
    if trainable:
        variables += list(model.trainable_variables)
    saved = [v.numpy() for v in variables]
    try:
        yield
    finally:
        for v, value in zip(variables, saved):
            v.assign(value)


class MeanLoss:
    """Mean loss (and its gradient) over fixed arrays, evaluated in batches."""

    def __init__(self, model, x, y, batch_size, loss=None, training=False):
        self.model = model
        self.x, self.y = x, y
        self.n = len(y)
        self.batch_size = batch_size
        self.training = training
        loss_fn = make_loss_fn(model, loss)
        variables = model.trainable_variables

        @tf.function(reduce_retracing=True)
        def value(xb, yb):
            return tf.cast(loss_fn(xb, yb, training), tf.float32)

        @tf.function(reduce_retracing=True)
        def value_and_grad(xb, yb):
            with tf.GradientTape() as tape:
                loss_value = tf.cast(loss_fn(xb, yb, training), tf.float32)
            grads = dense_gradients(tape.gradient(loss_value, variables), variables)
            return loss_value, grads

        self._value = value
        self._value_and_grad = value_and_grad

    def value(self):
        total = 0.0
        for xb, yb, m in batches(self.x, self.y, self.batch_size):
            total += float(self._value(xb, yb)) * m
        return total / self.n

    def value_and_grad(self):
        """(mean loss, list of NumPy gradients per trainable variable)."""
        total, acc = 0.0, None
        for xb, yb, m in batches(self.x, self.y, self.batch_size):
            loss_value, grads = self._value_and_grad(xb, yb)
            total += float(loss_value) * m
            grads = [g.numpy().astype(np.float64) * m for g in grads]
            acc = grads if acc is None else [a + g for a, g in zip(acc, grads)]
        return total / self.n, [a / self.n for a in acc]


def check_batch_bounds(min_batch, max_batch, granularity):
    """``(min_batch, max_batch, granularity)`` of a batch controller, validated (multiples, order)."""
    granularity = check_int("granularity", granularity)
    min_batch = check_int("min_batch", min_batch)
    max_batch = check_int("max_batch", max_batch)
    for name, value in (("min_batch", min_batch), ("max_batch", max_batch)):
        if value % granularity:
            raise ValueError(f"{name} must be a multiple of granularity ({granularity}), got {value}.")
    if max_batch < min_batch:
        raise ValueError(f"max_batch must be >= min_batch ({min_batch}), got {max_batch}.")
    return min_batch, max_batch, granularity


def check_updates(updates, last_updates):
    """The update count fed to a controller: an integer >= 0 that never decreases."""
    if isinstance(updates, bool) or not isinstance(updates, numbers.Integral) or updates < 0:
        raise ValueError(f"updates must be an integer >= 0, got {updates!r}.")
    if last_updates is not None and updates < last_updates:
        raise ValueError(f"updates must not decrease: got {updates} after {last_updates}.")
    return int(updates)
