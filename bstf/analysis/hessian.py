"""Top Hessian eigenvalue by power iteration on Hessian-vector products.

``H·v`` is computed by double backpropagation — the gradient of ``∇f·v``
with nested ``tf.GradientTape``\\ s — so the n × n Hessian is never formed.
Power iteration ``v ← Hv/‖Hv‖`` converges to the eigenvector of the
eigenvalue of largest *magnitude*; its Rayleigh quotient ``vᵀHv`` is reported.
At a minimum (H positive semi-definite) that is the largest eigenvalue, the
usual curvature measure of sharpness; far from a minimum it may be a large
negative eigenvalue (the sign tells). Convergence is geometric with ratio
``|λ₂/λ₁|``; iteration stops when the estimate changes by less than
``tol·|λ|``.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from bstf.analysis import _common


@dataclasses.dataclass
class TopEigenvalue:
    """Result of :func:`hessian_top_eigenvalue` / :func:`top_eigenvalue_of`."""

    eigenvalue: float
    iterations: int
    converged: bool
    history: list
    eigenvector: object = dataclasses.field(repr=False, default=None)


def _check(num_iters, tol):
    num_iters = _common.check_int("num_iters", num_iters)
    tol = _common.check_float("tol", tol, low=0.0, low_open=True)
    return num_iters, tol


def power_iteration(hvp, v0, num_iters=20, tol=1e-4):
    """Power iteration with a Hessian-vector product ``hvp(v) -> Hv`` on flat NumPy vectors."""
    num_iters, tol = _check(num_iters, tol)
    v = np.asarray(v0, np.float64)
    norm = np.linalg.norm(v)
    if norm == 0:
        raise ValueError("the starting vector must be non-zero.")
    v = v / norm
    history, eigenvalue, converged = [], None, False
    for i in range(num_iters):
        hv = np.asarray(hvp(v), np.float64)
        new = float(v @ hv)  # Rayleigh quotient, ‖v‖ = 1
        history.append(new)
        if eigenvalue is not None and abs(new - eigenvalue) <= tol * abs(new):
            eigenvalue, converged = new, True
            break
        eigenvalue = new
        norm = np.linalg.norm(hv)
        if norm == 0:  # v is in the null space: the Hessian is 0 along every direction tried
            converged = True
            break
        v = hv / norm
    return TopEigenvalue(eigenvalue, len(history), converged, history, v)


def top_eigenvalue_of(loss_fn, x0, num_iters=50, tol=1e-6, seed=0):
    """Dominant Hessian eigenvalue of ``loss_fn`` (a TF function of a flat vector) at ``x0``."""
    x0 = tf.constant(np.asarray(x0, np.float64).reshape(-1))

    @tf.function
    def hvp(v):
        with tf.GradientTape() as outer:
            outer.watch(x0)
            with tf.GradientTape() as inner:
                inner.watch(x0)
                value = loss_fn(x0)
            grad = inner.gradient(value, x0)
            gv = tf.reduce_sum(grad * v)
        return outer.gradient(gv, x0)

    v0 = np.random.default_rng(seed).standard_normal(int(x0.shape[0]))
    return power_iteration(lambda v: hvp(tf.constant(v)).numpy(), v0, num_iters, tol)


def hessian_top_eigenvalue(model, data, num_iters=20, tol=1e-4, seed=0, num_examples=None, batch_size=1024,
                           loss=None):
    """Dominant eigenvalue of the Hessian of the mean loss w.r.t. the trainable weights.

    The loss (compiled, or ``loss``; plus regularisation) is averaged over the
    first ``num_examples`` examples of ``data`` in inference mode; ``H·v`` is
    accumulated over batches of ``batch_size`` (example-weighted), so the
    result is that of the whole set. Each iteration costs about two
    forward/backward passes over the data. The weights are not changed.

    Args:
      model: a built Keras model, compiled with a loss or given ``loss``.
      data: a :class:`bstf.data.Data`, unbatched ``tf.data.Dataset`` of ``(x, y)``
        or a tuple ``(x, y)`` of arrays.
      num_iters: maximum power iterations.
      tol: relative change of the estimate at which to stop.
      seed: seed of the random starting vector.
      num_examples: use only the first this many examples.
      batch_size: batch size of the Hessian-vector products.
      loss: optional loss replacing the compiled one.

    Returns:
      :class:`TopEigenvalue` (``eigenvector`` flat, in ``model.trainable_variables`` order).
    """
    num_iters, tol = _check(num_iters, tol)
    batch_size = _common.check_int("batch_size", batch_size)
    x, y = _common.as_arrays(data, num_examples)
    _common.ensure_built(model, _common.slice_structure(x, 0, 1))
    loss_fn = _common.make_loss_fn(model, loss)
    variables = model.trainable_variables
    flat = _common.FlatWeights(variables)

    @tf.function(reduce_retracing=True)
    def hvp_batch(xb, yb, vs):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                value = loss_fn(xb, yb, False)
            grads = _common.dense_gradients(inner.gradient(value, variables), variables)
            gv = tf.add_n([tf.reduce_sum(g * tf.cast(v, g.dtype)) for g, v in zip(grads, vs)])
        return _common.dense_gradients(outer.gradient(gv, variables), variables)

    def hvp(v):
        vs = [tf.constant(p, tf.float32) for p in flat.split(v)]
        acc = np.zeros(flat.size)
        for xb, yb, m in _common.batches(x, y, batch_size):
            acc += flat.flatten([h.numpy() for h in hvp_batch(xb, yb, vs)]) * m
        return acc / len(y)

    v0 = np.random.default_rng(seed).standard_normal(flat.size)
    with _common.preserved_state(model, trainable=False):
        return power_iteration(hvp, v0, num_iters, tol)
