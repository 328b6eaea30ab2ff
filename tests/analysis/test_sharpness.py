import importlib
import itertools

import numpy as np
import pytest
import keras

from bstf import analysis


def quadratic(H, c=0.0):
    def fn(x):
        return 0.5 * x @ H @ x + c, H @ x
    return fn


def box_max(f, center, half_width, A=None):
    """Brute force: a convex function's maximum over a box is at a vertex."""
    best = -np.inf
    for signs in itertools.product((-1.0, 1.0), repeat=len(half_width)):
        y = np.array(signs) * half_width
        best = max(best, f(center + (y if A is None else A @ y)))
    return best


def phi(f0, fmax):
    return (fmax - f0) / (1 + f0) * 100


def test_full_space_diagonal_quadratic_is_exact():
    h = np.array([4.0, 1.0, 0.25, 9.0])
    x0 = np.array([0.5, -2.0, 1.0, -0.1])
    eps = 0.05
    res = analysis.sharpness_of(quadratic(np.diag(h), c=0.3), x0, epsilon=eps, max_iter=50)
    # Separable: each coordinate moves to the box end away from 0, |x_i| + ε(|x_i| + 1).
    f0 = 0.5 * np.sum(h * x0**2) + 0.3
    fmax = 0.5 * np.sum(h * (np.abs(x0) + eps * (np.abs(x0) + 1)) ** 2) + 0.3
    assert res.loss == pytest.approx(f0)
    assert res.max_loss == pytest.approx(fmax, rel=1e-10)
    assert res.sharpness == pytest.approx(phi(f0, fmax), rel=1e-8)
    np.testing.assert_allclose(np.abs(res.perturbation), eps * (np.abs(x0) + 1), rtol=1e-10)


def test_full_space_rotated_quadratic_matches_vertex_brute_force():
    rng = np.random.RandomState(3)
    q, _ = np.linalg.qr(rng.randn(4, 4))
    H = q @ np.diag([3.0, 1.0, 0.5, 0.2]) @ q.T
    x0 = rng.randn(4)
    eps = 0.1
    f = quadratic(H)
    res = analysis.sharpness_of(f, x0, epsilon=eps, max_iter=100)
    fmax = box_max(lambda x: f(x)[0], x0, eps * (np.abs(x0) + 1))
    assert res.max_loss == pytest.approx(fmax, rel=1e-8)


def test_subspace_bounds_use_pseudo_inverse():
    rng = np.random.RandomState(0)
    H = np.diag([2.0, 1.0, 3.0, 0.5, 1.5])
    x0 = rng.randn(5)
    A = rng.randn(5, 2)
    eps = 0.2
    f = quadratic(H)
    res = analysis.sharpness_of(f, x0, epsilon=eps, subspace_matrix=A, max_iter=100)
    half = eps * (np.abs(np.linalg.pinv(A) @ x0) + 1)
    fmax = box_max(lambda x: f(x)[0], x0, half, A=A)
    assert res.subspace_dim == 2
    assert res.max_loss == pytest.approx(fmax, rel=1e-8)
    # A random subspace is the seed's float32 A (standard normal by default).
    a = analysis.random_subspace(5, 3, seed=7)
    assert a.shape == (5, 3) and a.dtype == np.float32
    r1 = analysis.sharpness_of(f, x0, epsilon=eps, subspace_dim=3, seed=7, max_iter=20)
    r2 = analysis.sharpness_of(f, x0, epsilon=eps, subspace_matrix=a, max_iter=20)
    assert r1.sharpness == pytest.approx(r2.sharpness, rel=1e-12)


def test_random_subspace_scales_and_blocks(monkeypatch):
    module = importlib.import_module("bstf.analysis.sharpness")

    monkeypatch.setattr(module, "_BLOCK_ROWS", 4000)
    a = analysis.random_subspace(10_000, 50, seed=3)
    unit = analysis.random_subspace(10_000, 50, seed=3, subspace_scale="unit")
    np.testing.assert_allclose(unit, a / np.sqrt(10_000), rtol=1e-6)
    # standard normal: mean 0, variance 1 over 500k entries (5 sigma bounds); unit columns have norm ~1
    assert abs(a.mean()) < 5 / np.sqrt(a.size) and abs(a.var() - 1) < 5 * np.sqrt(2 / a.size)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=0), 1, atol=0.05)
    # every block comes from its own seed: an A with more rows extends this one
    np.testing.assert_array_equal(analysis.random_subspace(12_000, 50, seed=3)[:10_000], a)
    assert not np.array_equal(analysis.random_subspace(10_000, 50, seed=4), a)
    with pytest.raises(ValueError, match=r"subspace_scale must be one of \('standard', 'unit'\), got 'big'"):
        analysis.random_subspace(5, 2, subspace_scale="big")


@pytest.mark.parametrize("scale", ["standard", "unit"])
def test_streamed_subspace_equals_the_dense_one(monkeypatch, scale):
    # A too large to hold is regenerated block by block for every product; A⁺x from the normal equations
    module = importlib.import_module("bstf.analysis.sharpness")

    monkeypatch.setattr(module, "_BLOCK_ROWS", 7)
    rng = np.random.RandomState(1)
    H = np.diag(rng.uniform(0.5, 3.0, 30))
    x0 = rng.randn(30)
    kw = dict(epsilon=0.05, subspace_dim=4, seed=11, max_iter=15, subspace_scale=scale)
    dense = analysis.sharpness_of(quadratic(H), x0, **kw)
    monkeypatch.setattr(module, "MAX_DENSE_ENTRIES", 10)
    streamed = analysis.sharpness_of(quadratic(H), x0, **kw)
    assert streamed.sharpness == pytest.approx(dense.sharpness, rel=1e-9)
    np.testing.assert_allclose(streamed.perturbation, dense.perturbation, rtol=1e-7, atol=1e-12)
    # and the explicit matrix gives the same as the random one drawn from the seed
    a = analysis.random_subspace(30, 4, seed=11, subspace_scale=scale)
    explicit = analysis.sharpness_of(quadratic(H), x0, epsilon=0.05, subspace_matrix=a, max_iter=15)
    assert explicit.sharpness == pytest.approx(dense.sharpness, rel=1e-12)


def test_standard_subspace_box_is_larger_than_the_unit_one():
    # the same subspace directions, sqrt(n) x longer columns: A⁺x shrinks by sqrt(n), the +1 term does not,
    # so the standard-normal box reaches further in weight space and the loss rise is at least as large
    rng = np.random.RandomState(2)
    n = 400
    H = np.diag(rng.uniform(0.5, 2.0, n))
    x0 = rng.randn(n) * 0.1
    kw = dict(epsilon=1e-2, subspace_dim=5, seed=0, max_iter=30)
    std = analysis.sharpness_of(quadratic(H), x0, **kw)
    unit = analysis.sharpness_of(quadratic(H), x0, subspace_scale="unit", **kw)
    assert std.sharpness > 10 * unit.sharpness > 0


def _linear_model(n=200, d=3, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, d).astype("float32")
    y = (x @ rng.randn(d) + 0.3 * rng.randn(n)).astype("float32")[:, None]
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    model.layers[0].kernel.assign(rng.randn(d, 1).astype("float32"))
    model.layers[0].bias.assign([0.5])
    return model, x, y


def test_model_sharpness_on_linear_regression_matches_brute_force():
    model, x, y = _linear_model()
    before = [w.copy() for w in model.get_weights()]
    eps = 0.05
    res = analysis.sharpness(model, (x, y), epsilon=eps, max_iter=50, batch_size=64)
    # f(w, b) = mean((x w + b − y)²), w = (kernel, bias): a convex quadratic in 4 parameters.
    X = np.hstack([x, np.ones((len(x), 1))]).astype(np.float64)
    w0 = np.concatenate([before[0][:, 0], before[1]]).astype(np.float64)

    def f(w):
        return np.mean((X @ w - y[:, 0]) ** 2)

    f0, fmax = f(w0), box_max(f, w0, eps * (np.abs(w0) + 1))
    assert res.loss == pytest.approx(f0, rel=1e-5)
    assert res.max_loss == pytest.approx(fmax, rel=1e-4)
    assert res.sharpness == pytest.approx(phi(f0, fmax), rel=1e-3)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    sub = analysis.sharpness(model, (x, y), epsilon=eps, subspace_dim=2, max_iter=5, subspace_scale="unit")
    assert 0 <= sub.sharpness <= res.sharpness + 1e-6  # a unit-column subspace box lies within the full one
    # an explicit A = I (the whole space as a "subspace": A⁺x = x, the same box) gives the full-space value
    ident = analysis.sharpness(model, (x, y), epsilon=eps, max_iter=50, batch_size=64, subspace_matrix=np.eye(4))
    assert ident.subspace_dim == 4 and ident.sharpness == pytest.approx(res.sharpness, rel=1e-4)


def test_bad_input():
    model, x, y = _linear_model(n=20)
    with pytest.raises(ValueError, match=r"epsilon must be in \(0.0, inf\), got 0.0"):
        analysis.sharpness(model, (x, y), epsilon=0.0)
    with pytest.raises(ValueError, match="subspace_dim must be an integer >= 1, got 0"):
        analysis.sharpness(model, (x, y), subspace_dim=0)
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
        analysis.sharpness_of(quadratic(np.eye(2)), np.ones(2), max_iter=0)
    with pytest.raises(ValueError, match=r"subspace_matrix must have shape \(2, p\)"):
        analysis.sharpness_of(quadratic(np.eye(2)), np.ones(2), subspace_matrix=np.ones((3, 1)))
    frozen = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, trainable=False)])
    frozen.compile(loss="mse")
    with pytest.raises(ValueError, match="has no trainable weights"):
        analysis.sharpness(frozen, (x, y))
