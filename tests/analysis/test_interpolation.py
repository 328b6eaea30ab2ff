import numpy as np
import pytest
import tensorflow as tf
import keras

from bstf import analysis


def _data(n, seed):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 6).astype("float32")
    return x, (np.argmax(x[:, :3], axis=1)).astype("int64")


def _model(seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(12, activation="tanh"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(3)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def two_solutions():
    train, test = _data(256, 0), _data(128, 1)
    a, b = _model(0), _model(1)
    a.fit(*train, batch_size=16, epochs=2, verbose=0)
    b.fit(*train, batch_size=128, epochs=2, verbose=0)
    return a, b, train, test


def test_endpoints_equal_model_evaluate(two_solutions):
    a, b, train, test = two_solutions
    wa = a.get_weights()
    res = analysis.interpolate(a, wa, b, {"train": train, "test": tf.data.Dataset.from_tensor_slices(test)},
                               alphas=[0.0, 0.5, 1.0], batch_size=50)
    for name, (x, y) in (("train", train), ("test", test)):
        loss_a, acc_a = a.evaluate(x, y, batch_size=64, verbose=0)
        loss_b, acc_b = b.evaluate(x, y, batch_size=64, verbose=0)
        np.testing.assert_allclose(res.loss[name][[0, 2]], [loss_a, loss_b], rtol=1e-5)
        np.testing.assert_allclose(res.accuracy[name][[0, 2]], [acc_a, acc_b], atol=1e-7)
    for w, w0 in zip(a.get_weights(), wa):  # restored
        np.testing.assert_array_equal(w, w0)


def test_midpoint_is_the_averaged_model(two_solutions):
    a, b, train, _ = two_solutions
    res = analysis.interpolate(a, a, b, train, alphas=[0.5, -1.0], non_trainable="interpolate")
    mid = _model(0)
    mid.set_weights([(wa + wb) / 2 for wa, wb in zip(a.get_weights(), b.get_weights())])
    loss, acc = mid.evaluate(*train, verbose=0)
    assert res.loss["data"][0] == pytest.approx(loss, rel=1e-5)
    assert res.accuracy["data"][0] == pytest.approx(acc, abs=1e-7)
    far = _model(0)
    far.set_weights([2 * wa - wb for wa, wb in zip(a.get_weights(), b.get_weights())])
    assert res.loss["data"][1] == pytest.approx(far.evaluate(*train, verbose=0)[0], rel=1e-5)


def test_one_hot_labels_regression_and_plot(two_solutions, tmp_path):
    a, b, train, _ = two_solutions
    x, y = train
    onehot = np.eye(3, dtype="float32")[y]
    a2 = _model(0)
    a2.set_weights(a.get_weights())
    a2.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    res = analysis.interpolate(a2, a, b, (x, onehot), alphas=[0.0])
    expected = np.mean(np.argmax(a.predict(x, verbose=0), axis=1) == y)
    assert res.accuracy["data"][0] == pytest.approx(expected)
    reg = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1)])
    reg.compile(loss="mse")
    w = reg.get_weights()
    out = analysis.interpolate(reg, w, [v + 1 for v in w], (x, y[:, None].astype("float32")), alphas=[0, 1])
    assert out.accuracy["data"] is None
    fig = analysis.plot_interpolation(res, path=tmp_path / "interp.png", labels=("SB", "LB"))
    assert (tmp_path / "interp.png").stat().st_size > 1000
    assert fig.axes[0].get_xlabel().startswith("α")


def test_bad_input(two_solutions):
    a, b, train, _ = two_solutions
    weights = a.get_weights()
    bad = [w.copy() for w in weights]
    bad[0] = np.zeros((5, 12), "float32")
    with pytest.raises(ValueError, match=r"weights_b\[0\] \(.*kernel\) has shape \(5, 12\), the model's weight has shape \(6, 12\)"):
        analysis.interpolate(a, weights, bad, train)
    with pytest.raises(ValueError, match="weights_a has 2 arrays but the model has"):
        analysis.interpolate(a, weights[:2], weights, train)
    with pytest.raises(ValueError, match="alphas must be a non-empty sequence"):
        analysis.interpolate(a, weights, weights, train, alphas=[])
    with pytest.raises(ValueError, match="non_trainable must be 'clamp' or 'interpolate'"):
        analysis.interpolate(a, weights, weights, train, non_trainable="freeze")


def test_batch_norm_statistics_are_clamped_outside_the_segment(two_solutions):
    a, b, train, _ = two_solutions
    wa, wb = a.get_weights(), b.get_weights()
    trainable = [v.trainable for v in a.weights]
    assert not all(trainable)  # BN moving mean and variance
    res = analysis.interpolate(a, wa, wb, train, alphas=[-0.5, 0.5, 1.5])
    both = analysis.interpolate(a, wa, wb, train, alphas=[-0.5, 0.5, 1.5], non_trainable="interpolate")
    probe = _model(0)
    for i, (alpha, nearer) in enumerate([(-0.5, wa), (1.5, wb)]):  # trainable on the line, statistics at the end
        line = analysis.interpolate_weights(wa, wb, alpha)
        probe.set_weights([w if t else s for w, s, t in zip(line, nearer, trainable)])
        expected = probe.evaluate(*train, verbose=0)[0]
        assert res.loss["data"][2 * i] == pytest.approx(expected, rel=1e-5)
    assert res.loss["data"][1] == both.loss["data"][1]  # inside [0, 1] both modes are the same
    assert res.loss["data"][0] != both.loss["data"][0]
