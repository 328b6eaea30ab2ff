import numpy as np
import pytest
import tensorflow as tf
import keras

from bstf import analysis


def _rotated(eigenvalues, seed=0):
    q, _ = np.linalg.qr(np.random.RandomState(seed).randn(len(eigenvalues), len(eigenvalues)))
    return q @ np.diag(eigenvalues) @ q.T


def test_quadratic_top_eigenvalue():
    H = _rotated([5.0, 2.0, 1.0, 0.5, -0.3])
    Ht = tf.constant(H)
    x0 = np.random.RandomState(1).randn(5)
    res = analysis.top_eigenvalue_of(lambda x: 0.5 * tf.tensordot(x, tf.linalg.matvec(Ht, x), 1) + 3.0, x0,
                                     num_iters=200, tol=1e-10)
    assert res.eigenvalue == pytest.approx(5.0, abs=1e-3)
    assert res.converged
    top = np.linalg.eigh(H)[1][:, -1]
    assert abs(res.eigenvector @ top) == pytest.approx(1.0, abs=1e-3)


def test_dominant_eigenvalue_may_be_negative():
    H = _rotated([-6.0, 2.0, 1.0], seed=2)
    Ht = tf.constant(H)
    res = analysis.top_eigenvalue_of(lambda x: 0.5 * tf.tensordot(x, tf.linalg.matvec(Ht, x), 1), np.zeros(3),
                                     num_iters=200, tol=1e-10)
    assert res.eigenvalue == pytest.approx(-6.0, abs=1e-3)


def test_power_iteration_on_matrix():
    H = _rotated([3.0, 1.0, 0.1], seed=4)
    res = analysis.power_iteration(lambda v: H @ v, np.ones(3), num_iters=100, tol=1e-12)
    assert res.eigenvalue == pytest.approx(3.0, abs=1e-6)
    assert res.history[-1] == res.eigenvalue and res.iterations == len(res.history)


def test_model_hessian_of_linear_regression():
    rng = np.random.RandomState(0)
    x = (rng.randn(300, 4) * [1.0, 2.0, 0.5, 1.0]).astype("float32")
    y = rng.randn(300, 1).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    before = [w.copy() for w in model.get_weights()]
    res = analysis.hessian_top_eigenvalue(model, (x, y), num_iters=200, tol=1e-9, batch_size=128)
    # mean((Xw + b − y)²) has Hessian 2 X̃ᵀX̃ / N with X̃ = [X, 1], at any weights.
    X = np.hstack([x, np.ones((300, 1))]).astype(np.float64)
    expected = np.linalg.eigvalsh(2 * X.T @ X / 300)[-1]
    assert res.eigenvalue == pytest.approx(expected, rel=1e-3)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_bad_input():
    with pytest.raises(ValueError, match="num_iters must be an integer >= 1, got 0"):
        analysis.power_iteration(lambda v: v, np.ones(2), num_iters=0)
    with pytest.raises(ValueError, match=r"tol must be in \(0.0, inf\), got 0.0"):
        analysis.power_iteration(lambda v: v, np.ones(2), tol=0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="has no compiled loss"):
        analysis.hessian_top_eigenvalue(model, (np.ones((4, 2), "float32"), np.ones((4, 1), "float32")))
