"""Keskar et al.'s (2017) sharpness of a minimiser: the largest loss rise in a small box.

For weights ``x ∈ ℝⁿ``, a matrix ``A ∈ ℝ^{n×p}`` and a box ``C_ε``::

    φ(ε, A) = (max_{y ∈ C_ε} f(x + A·y) − f(x)) / (1 + f(x)) × 100

* Full space (``A = I``): ``C_ε = {y ∈ ℝⁿ : |y_i| ≤ ε(|x_i| + 1)}`` — each
  weight may move by ε of its magnitude (plus ε, so zeros can move).
* Random subspace (``p = subspace_dim``, 100 in the paper): Keskar et al. bound
  the subspace coordinates through the pseudo-inverse,
  ``C_ε = {y ∈ ℝᵖ : |y_j| ≤ ε(|(A⁺x)_j| + 1)}``. The paper does not state the
  distribution of ``A``; bstf draws i.i.d. ``N(0, 1/n)`` entries so the
  columns have unit norm in expectation (then ``A⁺ ≈ Aᵀ`` and ``A⁺x`` are
  the coordinates of ``x`` in the subspace) and applies ``A⁺`` exactly by
  least squares. ``A`` is generated from ``seed``; pass your own matrix to
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


def random_subspace(n, p, seed=0):
    """An ``n × p`` matrix with i.i.d. ``N(0, 1/n)`` entries (the default ``A``)."""
    n = _common.check_int("n", n)
    p = _common.check_int("subspace_dim", p)
    return np.random.default_rng(seed).standard_normal((n, p)) / np.sqrt(n)


def sharpness_of(loss_and_grad_fn, x0, epsilon=1e-3, subspace_dim=None, max_iter=10, seed=0,
                 subspace_matrix=None):
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

    Returns:
      :class:`SharpnessResult`.
    """
    epsilon = _check_epsilon(epsilon)
    max_iter = _common.check_int("max_iter", max_iter)
    x0 = np.asarray(x0, np.float64).reshape(-1)
    n = x0.size
    if subspace_matrix is not None:
        A = np.asarray(subspace_matrix, np.float64)
        if A.ndim != 2 or A.shape[0] != n:
            raise ValueError(f"subspace_matrix must have shape ({n}, p), got {A.shape}.")
        if subspace_dim is not None and subspace_dim != A.shape[1]:
            raise ValueError(f"subspace_dim ({subspace_dim}) does not match subspace_matrix's {A.shape[1]} columns.")
        subspace_dim = A.shape[1]
    elif subspace_dim is not None:
        subspace_dim = _common.check_int("subspace_dim", subspace_dim)
        A = random_subspace(n, subspace_dim, seed)
    else:
        A = None

    if A is None:
        half_width = epsilon * (np.abs(x0) + 1.0)

        def point(y):
            return x0 + y

        def pull_back(g):
            return g
    else:
        coords = np.linalg.lstsq(A, x0, rcond=None)[0]  # A⁺x
        half_width = epsilon * (np.abs(coords) + 1.0)

        def point(y):
            return x0 + A @ y

        def pull_back(g):
            return A.T @ g

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
              loss=None, subspace_matrix=None):
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
        weights) instead of the random one — e.g. to choose its scale: the
        random ``A`` has N(0, 1/n) entries (unit-norm columns), which the
        paper does not specify.

    Returns:
      :class:`SharpnessResult` (``perturbation`` is the flat maximising step).
    """
    epsilon = _check_epsilon(epsilon)
    if subspace_dim is not None:
        subspace_dim = _common.check_int("subspace_dim", subspace_dim)
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
                            max_iter=max_iter, seed=seed, subspace_matrix=subspace_matrix)
