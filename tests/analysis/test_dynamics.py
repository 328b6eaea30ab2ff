import numpy as np
import pytest
import keras

from bstf import analysis


def test_distance_from_init_matches_numpy():
    rng = np.random.RandomState(0)
    init = {"m/dense/kernel": rng.randn(3, 4), "m/dense/bias": rng.randn(4), "m/out/kernel": rng.randn(4, 2)}
    now = {k: v + rng.randn(*v.shape) * 0.1 for k, v in init.items()}
    total, per_layer = analysis.distance_from_init(init, now)
    dense = np.sqrt(np.sum((now["m/dense/kernel"] - init["m/dense/kernel"]) ** 2)
                    + np.sum((now["m/dense/bias"] - init["m/dense/bias"]) ** 2))
    out = np.linalg.norm(now["m/out/kernel"] - init["m/out/kernel"])
    assert per_layer == {"m/dense": pytest.approx(dense), "m/out": pytest.approx(out)}
    assert total == pytest.approx(np.sqrt(dense**2 + out**2))
    # Lists: one entry per array.
    d = analysis.distance_from_init(list(init.values()), list(now.values()))
    assert d.total == pytest.approx(total)
    assert list(d.per_layer) == ["weight_0", "weight_1", "weight_2"]


def test_distance_from_init_of_models():
    keras.utils.set_random_seed(0)
    a = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")], name="net")
    w0 = analysis.trainable_weights(a)
    a.layers[0].kernel.assign(a.layers[0].kernel + 1.0)
    d = analysis.distance_from_init(w0, a)
    assert d.total == pytest.approx(np.sqrt(6.0), rel=1e-6)
    assert list(d.per_layer) == ["net/d"]
    # Another model of the same architecture with auto-generated names: matched in order, named by `weights`.
    b = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    b.set_weights(a.get_weights())
    b.layers[0].bias.assign([3.0, 4.0])
    d2 = analysis.distance_from_init(a, b)
    assert d2.total == pytest.approx(5.0) and list(d2.per_layer) == [b.layers[0].kernel.path.rsplit("/", 1)[0]]
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"has shape \(3, 2\) but its initial value has shape \(3, 3\)"):
        analysis.distance_from_init(other, a)


def test_distance_bad_input():
    with pytest.raises(ValueError, match=r"weight 'l/k' has shape \(3,\) but its initial value has shape \(2,\)"):
        analysis.distance_from_init({"l/k": np.zeros(2)}, {"l/k": np.zeros(3)})
    with pytest.raises(ValueError, match=r"missing \['l/b'\], unexpected \[\]"):
        analysis.distance_from_init({"l/k": np.zeros(2), "l/b": np.zeros(1)}, {"l/k": np.zeros(2)})


def _regression(n=64):
    rng = np.random.RandomState(0)
    x = rng.randn(n, 5).astype("float32")
    y = (x @ rng.randn(5) + 0.5 * rng.randn(n)).astype("float32")[:, None]
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model, x, y


def test_gradient_histogram_counts_and_norms():
    model, x, y = _regression()
    res = analysis.gradient_histogram(model, (x, y), batch_size=16, trials=7, bins=20)
    assert res.counts.sum() == 7 * 6 and res.num_values == 6 and res.outside == 0
    assert res.edges.shape == (21,) and res.norms.shape == (7,)
    np.testing.assert_allclose(np.sum(res.density * np.diff(res.edges)), 1.0)
    # Full batch: every trial is the full gradient 2 X̃ᵀ(X̃w − y)/N; histogram = trials × its histogram.
    w = np.concatenate([model.layers[0].kernel.numpy()[:, 0], model.layers[0].bias.numpy()]).astype(np.float64)
    X = np.hstack([x, np.ones((64, 1))]).astype(np.float64)
    g = 2 * X.T @ (X @ w - y[:, 0]) / 64
    full = analysis.gradient_histogram(model, (x, y), batch_size=64, trials=3, bins=4, range=(-10.0, 10.0))
    np.testing.assert_allclose(full.norms, np.linalg.norm(g), rtol=1e-5)
    np.testing.assert_array_equal(full.counts, 3 * np.histogram(g, bins=4, range=(-10, 10))[0])
    narrow = analysis.gradient_histogram(model, (x, y), batch_size=64, trials=2, bins=4, range=(-1e-9, 1e-9))
    assert narrow.outside + narrow.counts.sum() == 2 * 6


def test_gradient_histogram_bad_input():
    model, x, y = _regression(n=10)
    with pytest.raises(ValueError, match="data has 10 examples, fewer than batch_size=32"):
        analysis.gradient_histogram(model, (x, y), batch_size=32)
    with pytest.raises(ValueError, match="range must be"):
        analysis.gradient_histogram(model, (x, y), batch_size=4, range=(1.0, 1.0))
