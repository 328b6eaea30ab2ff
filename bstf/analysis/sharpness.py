"""Keskar et al.'s (2017) sharpness of a minimiser: the largest loss rise in a small box.

For weights ``x ∈ ℝⁿ``, a matrix ``A ∈ ℝ^{n×p}`` and a box ``C_ε``::

    φ(ε, A) = (max_{y ∈ C_ε} f(x + A·y) − f(x)) / (1 + f(x)) × 100

* Full space (``A = I``): ``C_ε = {y ∈ ℝⁿ : |y_i| ≤ ε(|x_i| + 1)}`` — each
  weight may move by ε of its magnitude (plus ε, so zeros can move).
* Random subspace (``p = subspace_dim``, 100 in the paper): Keskar et al. bound
  the subspace coordinates through the pseudo-inverse,
  ``C_ε = {y ∈ ℝᵖ : |y_j| ≤ ε(|(A⁺x)_j| + 1)}``. The paper calls ``A``
  "randomly generated" without its distribution; bstf reads it as i.i.d.
  standard-normal entries (``subspace_scale="standard"``, the default), so
  a step ``A·y`` moves every weight on the scale of the full-space box.
  ``subspace_scale="unit"`` draws ``N(0, 1/n)`` entries instead (unit-norm
  columns, ``A⁺ ≈ Aᵀ``: the box is ``√n`` times smaller in weight space).
  ``A`` is generated from ``seed`` in float32 blocks of rows; when ``n·p``
  exceeds ``MAX_DENSE_ENTRIES`` it is never held whole: every product
  regenerates it block by block (``A⁺x`` then comes from the normal
  equations, accumulated in float64), so the paper networks (millions of
  weights, p = 100) fit in memory. Pass your own matrix to
  :func:`sharpness_of` as ``subspace_matrix``.

The maximisation is solved inexactly, as in the paper, with ``max_iter``
iterations of L-BFGS-B (``scipy.optimize.minimize`` on ``−f`` with exact
gradients), started at ``y = 0``. The tolerances are zero, so it runs the full
``max_iter`` iterations unless a line search fails; the reported maximum is the
largest loss at any point L-BFGS-B evaluated (all inside the box).
"""

import dataclasses

import numpy as np
import scipy.optimize

from bstf.analysis import _common


@dataclasses.dataclass
class SharpnessResult:
    """Result of :func:`sharpness` / :func:`sharpness_of`.

    ``sharpness`` is φ in percent; ``loss`` is f(x), ``max_loss`` the largest
    f found in the box, ``perturbation`` the maximising ``A·y`` (length n),
    ``iterations``/``evaluations`` the L-BFGS-B counts.
    """

    sharpness: float
    loss: float
    max_loss: float
    epsilon: float
    subspace_dim: object
    iterations: int
    evaluations: int
    perturbation: np.ndarray = dataclasses.field(repr=False)


def _check_epsilon(epsilon):
    return _common.check_float("epsilon", epsilon, low=0.0, low_open=True)


SUBSPACE_SCALES = ("standard", "unit")
MAX_DENSE_ENTRIES = 2**25  # a random A with more entries (128 MiB in float32) is streamed, not stored
_BLOCK_ROWS = 65536  # rows of A generated together (each block from its own seed)


def _check_scale(scale):
    if scale not in SUBSPACE_SCALES:
        raise ValueError(f"subspace_scale must be one of {SUBSPACE_SCALES}, got {scale!r}.")
    return scale


def _blocks(n, p, seed, scale):
    """The row blocks ``(start, A[start:start + rows])`` of the random ``A``, float32."""
    factor = np.float32(1.0 / np.sqrt(n))
    for start in range(0, n, _BLOCK_ROWS):
        rows = min(_BLOCK_ROWS, n - start)
        block = np.random.default_rng([seed, start // _BLOCK_ROWS]).standard_normal((rows, p), dtype=np.float32)
        yield start, block if scale == "standard" else block * factor


def random_subspace(n, p, seed=0, subspace_scale="standard"):
    """The ``n × p`` float32 matrix ``A`` of the random subspace with ``seed`` (see the module docstring)."""
    n = _common.check_int("n", n)
    p = _common.check_int("subspace_dim", p)
    _check_scale(subspace_scale)
    return np.concatenate([b for _, b in _blocks(n, p, seed, subspace_scale)])


class _StreamedSubspace:
    """``A`` as an operator that regenerates its float32 row blocks for every product."""

    def __init__(self, n, p, seed, scale):
        self.n, self.p, self.seed, self.scale = n, p, seed, scale

    def __matmul__(self, y):  # A·y
        out = np.empty(self.n)
        for start, block in _blocks(self.n, self.p, self.seed, self.scale):
            out[start:start + len(block)] = block.astype(np.float64) @ y
        return out

    def rmatvec(self, g):  # Aᵀ·g
        return sum(block.astype(np.float64).T @ g[start:start + len(block)]
                   for start, block in _blocks(self.n, self.p, self.seed, self.scale))

    def coordinates(self, x):  # A⁺x from the normal equations (AᵀA) c = Aᵀx
        gram, rhs = np.zeros((self.p, self.p)), np.zeros(self.p)
        for start, block in _blocks(self.n, self.p, self.seed, self.scale):
            b = block.astype(np.float64)
            gram += b.T @ b
            rhs += b.T @ x[start:start + len(b)]
        return np.linalg.solve(gram, rhs)


class _DenseSubspace:
    """An ``A`` held in memory (explicit, or random and small enough)."""

    def __init__(self, matrix):
        self.matrix = np.asarray(matrix, np.float64)

    def __matmul__(self, y):
        return self.matrix @ y

    def rmatvec(self, g):
        return self.matrix.T @ g

    def coordinates(self, x):
        return np.linalg.lstsq(self.matrix, x, rcond=None)[0]


def _subspace(n, subspace_dim, seed, scale, matrix):
    """The operator for ``A``: the explicit ``matrix``, a random one, or None for the full space."""
    if matrix is not None:
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != n:
            raise ValueError(f"subspace_matrix must have shape ({n}, p), got {matrix.shape}.")
        if subspace_dim is not None and subspace_dim != matrix.shape[1]:
            raise ValueError(f"subspace_dim ({subspace_dim}) does not match subspace_matrix's "
                             f"{matrix.shape[1]} columns.")
        return _DenseSubspace(matrix), matrix.shape[1]
    if subspace_dim is None:
        return None, None
    p = _common.check_int("subspace_dim", subspace_dim)
    if n * p > MAX_DENSE_ENTRIES:
        return _StreamedSubspace(n, p, seed, scale), p
    return _DenseSubspace(random_subspace(n, p, seed, scale)), p


def sharpness_of(loss_and_grad_fn, x0, epsilon=1e-3, subspace_dim=None, max_iter=10, seed=0,
                 subspace_matrix=None, subspace_scale="standard"):
    """Keskar's φ for a function of a flat vector (pure NumPy/SciPy).

    Args:
      loss_and_grad_fn: ``fn(x) -> (f(x), ∇f(x))`` for a float64 vector ``x``.
      x0: the point (minimiser) to measure, shape ``(n,)``.
      epsilon: box size ε > 0.
      subspace_dim: ``None`` for the full space, or ``p >= 1`` for a random
        ``n × p`` subspace (see the module docstring).
      max_iter: L-BFGS-B iterations (10 in the paper).
      seed: seed of the random subspace.
      subspace_matrix: an explicit ``A`` of shape ``(n, p)`` instead of a random one.
      subspace_scale: entries of the random ``A``: ``"standard"`` N(0, 1)
        (default) or ``"unit"`` N(0, 1/n).

    Returns:
      :class:`SharpnessResult`.
    """
    epsilon = _check_epsilon(epsilon)
    max_iter = _common.check_int("max_iter", max_iter)
    x0 = np.asarray(x0, np.float64).reshape(-1)
    n = x0.size
    _check_scale(subspace_scale)
    A, subspace_dim = _subspace(n, subspace_dim, seed, subspace_scale, subspace_matrix)

    if A is None:
        half_width = epsilon * (np.abs(x0) + 1.0)

        def point(y):
            return x0 + y

        def pull_back(g):
            return g
    else:
        half_width = epsilon * (np.abs(A.coordinates(x0)) + 1.0)  # ε(|A⁺x| + 1)

        def point(y):
            return x0 + A @ y

        def pull_back(g):
            return A.rmatvec(g)

    f0, _ = loss_and_grad_fn(x0)
    f0 = float(f0)
    best = {"f": f0, "y": np.zeros_like(half_width), "evals": 0}

    def negative(y):
        f, g = loss_and_grad_fn(point(y))
        f = float(f)
        best["evals"] += 1
        if f > best["f"]:
            best["f"], best["y"] = f, np.array(y)
        return -f, -pull_back(np.asarray(g, np.float64).reshape(-1))

    res = scipy.optimize.minimize(
        negative, np.zeros_like(half_width), jac=True, method="L-BFGS-B",
        bounds=np.stack([-half_width, half_width], axis=1),
        options={"maxiter": max_iter, "ftol": 0.0, "gtol": 0.0},
    )
    y = best["y"]
    perturbation = y if A is None else A @ y
    return SharpnessResult(
        sharpness=(best["f"] - f0) / (1.0 + f0) * 100.0, loss=f0, max_loss=best["f"], epsilon=epsilon,
        subspace_dim=subspace_dim, iterations=int(res.nit), evaluations=best["evals"], perturbation=perturbation,
    )


def sharpness(model, data, epsilon=1e-3, subspace_dim=None, max_iter=10, seed=0, num_examples=None, batch_size=1024,
              loss=None, subspace_matrix=None, subspace_scale="standard"):
    """Keskar's sharpness φ of ``model``'s trainable weights on ``data``.

    ``f`` is the mean loss (compiled, or ``loss``; plus regularisation) over the
    first ``num_examples`` examples of ``data`` (all by default) in inference
    mode (deterministic: no dropout, BN moving statistics), evaluated in
    batches of ``batch_size``. Only trainable weights are perturbed; the
    model's weights are restored afterwards.

    Args:
      model: a built, compiled Keras model (or pass ``loss``).
      data: a :class:`bstf.data.Data`, an unbatched ``tf.data.Dataset`` of
        ``(x, y)`` or a tuple ``(x, y)`` of arrays (Keskar use the training set).
      epsilon: box size ε > 0 (1e-3 and 5e-4 in the paper).
      subspace_dim: ``None`` = full space; ``p >= 1`` = random subspace.
      max_iter: L-BFGS-B iterations (10 in the paper).
      seed: seed of the random subspace.
      num_examples: use only the first this many examples.
      batch_size: evaluation batch size (does not change the result).
      loss: optional loss replacing the compiled one.
      subspace_matrix: an explicit ``A`` of shape ``(n, p)`` (``n`` trainable
        weights) instead of the random one.
      subspace_scale: entries of the random ``A`` — ``"standard"`` N(0, 1)
        (default; the common reading of the paper's "randomly generated") or
        ``"unit"`` N(0, 1/n) (unit-norm columns). The paper does not say.

    Returns:
      :class:`SharpnessResult` (``perturbation`` is the flat maximising step).
    """
    epsilon = _check_epsilon(epsilon)
    if subspace_dim is not None:
        subspace_dim = _common.check_int("subspace_dim", subspace_dim)
    _check_scale(subspace_scale)
    batch_size = _common.check_int("batch_size", batch_size)
    x, y = _common.as_arrays(data, num_examples)
    _common.ensure_built(model, _common.slice_structure(x, 0, 1))
    flat = _common.FlatWeights(model.trainable_variables)
    objective = _common.MeanLoss(model, x, y, batch_size, loss=loss, training=False)

    def loss_and_grad(w):
        flat.set(w)
        value, grads = objective.value_and_grad()
        return value, flat.flatten(grads)

    with _common.preserved_state(model):
        return sharpness_of(loss_and_grad, flat.get(), epsilon=epsilon, subspace_dim=subspace_dim,
                            max_iter=max_iter, seed=seed, subspace_matrix=subspace_matrix,
                            subspace_scale=subspace_scale)
