import numpy as np
import pytest
import tensorflow as tf
import keras

from bstf import analysis
from bstf.analysis.noise_scale import GradientNormPairs


def half_mse(y_true, y_pred):
    return 0.5 * tf.reduce_mean(tf.square(y_true - y_pred))


def _regression(n=60_000, d=10, sigma=1.0, seed=0):
    """y = w*ᵀx + σξ, x ~ N(0, I); a linear model at w = w* + Δ with |Δ| ≈ 1."""
    rng = np.random.RandomState(seed)
    w_star = rng.randn(d)
    x = rng.randn(n, d).astype("float32")
    y = (x @ w_star + sigma * rng.randn(n)).astype("float32")[:, None]
    w = (w_star + rng.randn(d) / np.sqrt(d)).astype("float32")
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].kernel.assign(w[:, None])
    delta2 = float(np.sum((w.astype(np.float64) - w_star) ** 2))
    # For ½(wᵀx − y)²: G = Δ, E|g|² = (d+2)|Δ|² + dσ², so tr Σ = (d+1)|Δ|² + dσ².
    return model, x, y, delta2, (d + 1) * delta2 + d * sigma**2


def test_estimators_on_numbers():
    est = analysis.estimate_noise_scale(5.0, 2.0, 4, 16)
    # |G|² = (16·2 − 4·5)/12 = 1, tr Σ = 3/(1/4 − 1/16) = 16.
    assert est.grad_norm_sq == pytest.approx(1.0)
    assert est.trace_sigma == pytest.approx(16.0)
    assert est.b_simple == pytest.approx(16.0)
    # Exact expectations E|G_B|² = |G|² + tr/B are inverted exactly, elementwise on arrays.
    g2, tr = np.array([3.0, 0.5]), np.array([40.0, 100.0])
    est = analysis.estimate_noise_scale(g2 + tr / 8, g2 + tr / 64, 8, 64)
    np.testing.assert_allclose(est.grad_norm_sq, g2, rtol=1e-12)
    np.testing.assert_allclose(est.trace_sigma, tr, rtol=1e-12)
    np.testing.assert_allclose(est.b_simple, tr / g2, rtol=1e-12)


def test_averager_takes_ratio_after_averaging():
    plain = analysis.NoiseScaleAverager()
    plain.update(1.0, 10.0)
    est = plain.update(4.0, 10.0)
    assert est.b_simple == pytest.approx(10.0 / 2.5)  # not the mean of ratios (6.25)
    ema = analysis.NoiseScaleAverager(ema=0.5)
    assert ema.update(1.0, 2.0).grad_norm_sq == pytest.approx(1.0)  # bias-corrected
    est = ema.update(3.0, 2.0)
    assert est.grad_norm_sq == pytest.approx((0.25 * 1 + 0.5 * 3) / 0.75)
    assert est.b_simple == pytest.approx(2.0 / ((0.25 * 1 + 0.5 * 3) / 0.75))


def test_linear_regression_ground_truth():
    model, x, y, g2, tr = _regression()
    res = analysis.noise_scale(model, (x, y), small_batch=16, big_batch=512, num_batches=60, loss=half_mse, seed=1)
    assert res.grad_norm_sq == pytest.approx(g2, rel=0.1)
    assert res.trace_sigma == pytest.approx(tr, rel=0.1)
    assert res.b_simple == pytest.approx(tr / g2, rel=0.1)
    assert res.g_small_sq.shape == res.g_big_sq.shape == res.trace_sigma_per_batch.shape == (60,)
    assert np.mean(res.g_small_sq) > np.mean(res.g_big_sq)
    # The compiled Keras MSE is mean (ŷ − y)²: gradients ×2, so |G|² and tr Σ ×4, B_simple unchanged.
    model.compile(loss="mse")
    res2 = analysis.noise_scale(model, (x, y), small_batch=16, big_batch=512, num_batches=60, seed=1)
    assert res2.grad_norm_sq == pytest.approx(4 * res.grad_norm_sq, rel=1e-4)
    assert res2.b_simple == pytest.approx(res.b_simple, rel=1e-4)


def _softmax_problem(n=20_000, d=10, k=4, seed=0):
    """Softmax regression part-way to a noisy teacher (a non-quadratic loss)."""
    rng = np.random.RandomState(seed)
    x = rng.randn(n, d).astype("float32")
    teacher = rng.randn(d, k)
    y = np.argmax(x @ teacher + rng.gumbel(size=(n, k)), axis=1).astype("int64")
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(k)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.layers[0].kernel.assign((0.3 * teacher + 0.3 * rng.randn(d, k)).astype("float32"))
    model.layers[0].bias.assign((0.2 * rng.randn(k)).astype("float32"))
    return model, x, y


def _per_example_gradients(model, x, y):
    """NumPy float64 per-example gradients of the cross-entropy: x ⊗ (softmax(z) − onehot(y)), bias part."""
    W, b = (v.numpy().astype(np.float64) for v in model.layers[0].weights)
    z = x.astype(np.float64) @ W + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    r = p - np.eye(W.shape[1])[y]
    return np.concatenate([(x[:, :, None] * r[:, None, :]).reshape(len(x), -1), r], axis=1)


def test_softmax_regression_against_numpy_per_example_gradients():
    model, x, y = _softmax_problem()
    g = _per_example_gradients(model, x, y)
    G = g.mean(axis=0)
    g2, tr = G @ G, np.mean(np.sum((g - G) ** 2, axis=1))  # the data set is the population
    assert 20 < tr / g2 < 100  # B_simple ≈ 42 at these weights
    res = analysis.noise_scale(model, (x, y), small_batch=16, big_batch=512, num_batches=40, seed=2)
    assert res.grad_norm_sq == pytest.approx(g2, rel=0.1)
    assert res.trace_sigma == pytest.approx(tr, rel=0.1)
    assert res.b_simple == pytest.approx(tr / g2, rel=0.1)
    assert res.standard_error < 0.05 * tr / g2
    # The summary is the NumPy ratio of the means of the per-pair estimates (plain mean by default) ...
    s, b = res.g_small_sq, res.g_big_sq
    g2_pairs, tr_pairs = (512 * b - 16 * s) / (512 - 16), (s - b) / (1 / 16 - 1 / 512)
    np.testing.assert_allclose(res.grad_norm_sq_per_batch, g2_pairs, rtol=1e-12)
    np.testing.assert_allclose(res.trace_sigma_per_batch, tr_pairs, rtol=1e-12)
    assert res.b_simple == pytest.approx(tr_pairs.mean() / g2_pairs.mean(), rel=1e-12)
    # ... or of their bias-corrected EMAs.
    ema = analysis.noise_scale(model, (x, y), small_batch=16, big_batch=512, num_batches=40, seed=2, ema=0.9)
    np.testing.assert_allclose(ema.g_small_sq, s, rtol=1e-6)
    w = 0.1 * 0.9 ** np.arange(39, -1, -1)
    assert ema.grad_norm_sq == pytest.approx(np.sum(w * g2_pairs) / np.sum(w), rel=1e-4)
    assert ema.b_simple == pytest.approx(np.sum(w * tr_pairs) / np.sum(w * g2_pairs), rel=1e-4)


@pytest.mark.parametrize("small,big", [(8, 32), (16, 50)])
def test_gradient_pairs_match_numpy(small, big):
    model, x, y, _, _ = _regression(n=big)
    w = model.layers[0].kernel.numpy().astype(np.float64)[:, 0]
    xs, ys = x.astype(np.float64), y[:, 0].astype(np.float64)

    def grad(i, j):  # gradient of ½ mean (xw − y)² over rows i..j
        return xs[i:j].T @ (xs[i:j] @ w - ys[i:j]) / (j - i)

    k = big // small
    expected_small = np.mean([np.sum(grad(i * small, (i + 1) * small) ** 2) for i in range(k)])
    expected_big = np.sum(grad(0, big) ** 2)
    got = GradientNormPairs(model, small, big, loss=half_mse)(x, y)
    np.testing.assert_allclose(got, (expected_small, expected_big), rtol=1e-4)


def test_data_forms_agree_and_model_state_is_kept():
    rng = np.random.RandomState(0)
    x = rng.randn(256, 6).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                              keras.layers.Dropout(0.2), keras.layers.Dense(2)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [v.numpy().copy() for v in model.variables]
    a = analysis.noise_scale(model, (x, y), small_batch=8, big_batch=64, num_batches=4)
    b = analysis.noise_scale(model, tf.data.Dataset.from_tensor_slices((x, y)), small_batch=8, big_batch=64,
                             num_batches=4)
    np.testing.assert_allclose(a.g_small_sq, b.g_small_sq, rtol=1e-5)
    np.testing.assert_allclose(a.g_big_sq, b.g_big_sq, rtol=1e-5)
    for v, value in zip(model.variables, before):  # weights, BN statistics and the dropout RNG state
        np.testing.assert_array_equal(v.numpy(), value)


def test_bad_input():
    model, x, y, _, _ = _regression(n=100)
    with pytest.raises(ValueError, match=r"small_batch \(32\) must be smaller than big_batch \(32\)"):
        analysis.noise_scale(model, (x, y), small_batch=32, big_batch=32, loss=half_mse)
    with pytest.raises(ValueError, match="data has 100 examples, fewer than big_batch=128"):
        analysis.noise_scale(model, (x, y), small_batch=8, big_batch=128, loss=half_mse)
    unknown_size = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda *_: True)
    with pytest.raises(ValueError, match="data has 100 examples, fewer than big_batch=128"):
        analysis.noise_scale(model, unknown_size, small_batch=8, big_batch=128, loss=half_mse)
    with pytest.raises(ValueError, match="data is an infinite tf.data.Dataset"):
        analysis.noise_scale(model, tf.data.Dataset.from_tensor_slices((x, y)).repeat(), 8, 32, loss=half_mse)
    with pytest.raises(ValueError, match="data: x has 100 examples but y has 99"):
        analysis.noise_scale(model, (x, y[:99]), 8, 32, loss=half_mse)
    with pytest.raises(ValueError, match="num_batches must be an integer >= 1, got 0"):
        analysis.noise_scale(model, (x, y), 8, 32, loss=half_mse, num_batches=0)
    with pytest.raises(TypeError, match="small_batch must be an integer >= 1, got 8.0"):
        analysis.noise_scale(model, (x, y), 8.0, 32, loss=half_mse)
    with pytest.raises(ValueError, match="has no compiled loss"):
        analysis.noise_scale(model, (x, y), small_batch=8, big_batch=32)
    with pytest.raises(ValueError, match="loss reduction must average over the batch"):
        analysis.noise_scale(model, (x, y), 8, 32, loss=keras.losses.MeanSquaredError(reduction="sum"))
    with pytest.raises(ValueError, match=r"ema must be in \[0.0, 1.0\), got 1.0"):
        analysis.noise_scale(model, (x, y), 8, 32, loss=half_mse, ema=1.0)
    frozen = keras.Sequential([keras.Input((10,)), keras.layers.Dense(1, trainable=False)])
    with pytest.raises(ValueError, match="has no trainable weights"):
        analysis.noise_scale(frozen, (x, y), 8, 32, loss=half_mse)
    with pytest.raises(ValueError, match="small_batch .* must be smaller"):
        analysis.estimate_noise_scale(1.0, 2.0, 64, 16)


def test_averager_state_round_trip():
    a = analysis.NoiseScaleAverager(ema=0.9)
    for g2, tr in [(1.0, 30.0), (0.8, 35.0), (1.2, 20.0)]:
        a.update(g2, tr)
    b = analysis.NoiseScaleAverager(ema=0.9)
    b.set_state(a.get_state())
    assert b.estimate == a.estimate and b.count == 3
    assert b.update(1.0, 25.0) == a.update(1.0, 25.0)
