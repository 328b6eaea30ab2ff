import keras
import numpy as np
import pytest
import tensorflow as tf

import bstf
from bstf.layers import GhostBatchNormalization

RNG = np.random.RandomState(0)
X = (RNG.randn(12, 5, 3) * 2 + 1).astype("float32")  # (batch, time, features)


def _pair(virtual_batch_size, **kw):
    ghost = GhostBatchNormalization(virtual_batch_size, momentum=0.9, **kw)
    bn = keras.layers.BatchNormalization(momentum=0.9, **kw)
    for layer in (ghost, bn):
        layer.build(X.shape)
        layer.gamma.assign(RNG.rand(3).astype("float32") + 0.5 if layer is ghost else ghost.gamma)
        layer.beta.assign(RNG.randn(3).astype("float32") if layer is ghost else ghost.beta)
    return ghost, bn


def test_equals_batch_normalization_when_virtual_batch_is_the_batch():
    ghost, bn = _pair(12)
    for _ in range(3):
        with tf.GradientTape(persistent=True) as tape:
            xg, xb = tf.constant(X), tf.constant(X)
            tape.watch([xg, xb])
            yg, yb = ghost(xg, training=True), bn(xb, training=True)
            lg, lb = tf.reduce_sum(yg**3), tf.reduce_sum(yb**3)
        np.testing.assert_allclose(yg, yb, atol=1e-6)
        np.testing.assert_allclose(tape.gradient(lg, xg), tape.gradient(lb, xb), atol=1e-5)
        np.testing.assert_allclose(tape.gradient(lg, ghost.gamma), tape.gradient(lb, bn.gamma), rtol=1e-5)
    np.testing.assert_allclose(ghost.moving_mean, bn.moving_mean, atol=1e-6)
    np.testing.assert_allclose(ghost.moving_variance, bn.moving_variance, atol=1e-6)
    np.testing.assert_allclose(ghost(X, training=False), bn(X, training=False), atol=1e-6)


def test_equals_batch_normalization_applied_chunk_by_chunk():
    ghost, bn = _pair(4)
    for _ in range(2):
        y = ghost(X, training=True)
        chunks = np.concatenate([bn(X[i : i + 4], training=True) for i in range(0, 12, 4)])
        np.testing.assert_allclose(y, chunks, atol=1e-6)
    np.testing.assert_allclose(ghost.moving_mean, bn.moving_mean, atol=1e-6)
    np.testing.assert_allclose(ghost.moving_variance, bn.moving_variance, atol=1e-6)


def _numpy_ghost_bn(x, v, gamma, beta, mean, var, momentum=0.9, eps=1e-3):
    """Hoffer et al. Algorithm 1 in float64, feature axis last, ghost batches in sequence."""
    x = x.astype("float64")
    out = []
    for i in range(0, len(x), v):
        chunk = x[i : i + v]
        axes = tuple(range(chunk.ndim - 1))
        mu, sigma2 = chunk.mean(axes), chunk.var(axes)
        out.append(gamma * (chunk - mu) / np.sqrt(sigma2 + eps) + beta)
        mean = momentum * mean + (1 - momentum) * mu
        var = momentum * var + (1 - momentum) * sigma2
    return np.concatenate(out), mean, var


@pytest.mark.parametrize("virtual_batch_size", [2, 3, 6])
def test_numpy_golden(virtual_batch_size):
    ghost = GhostBatchNormalization(virtual_batch_size, momentum=0.9)
    ghost.build(X.shape)
    gamma, beta = RNG.rand(3) + 0.5, RNG.randn(3)
    ghost.gamma.assign(gamma.astype("float32"))
    ghost.beta.assign(beta.astype("float32"))
    mean, var = np.zeros(3), np.ones(3)
    for _ in range(2):
        y = ghost(X, training=True)
        ref, mean, var = _numpy_ghost_bn(X, virtual_batch_size, ghost.gamma.numpy(), ghost.beta.numpy(), mean, var)
        np.testing.assert_allclose(y, ref, atol=1e-5)
    np.testing.assert_allclose(ghost.moving_mean, mean, atol=1e-6)
    np.testing.assert_allclose(ghost.moving_variance, var, atol=1e-6)
    # Inference: the moving statistics.
    expected = ghost.gamma.numpy() * (X - mean) / np.sqrt(var + 1e-3) + ghost.beta.numpy()
    np.testing.assert_allclose(ghost(X, training=False), expected, atol=1e-5)


def test_channels_first_images():
    x = RNG.randn(8, 3, 4, 4).astype("float32")
    ghost = GhostBatchNormalization(2, axis=1, momentum=0.9)
    bn = keras.layers.BatchNormalization(axis=1, momentum=0.9)
    y = ghost(x, training=True)
    ref = np.concatenate([bn(x[i : i + 2], training=True) for i in range(0, 8, 2)])
    np.testing.assert_allclose(y, ref, atol=1e-5)
    np.testing.assert_allclose(ghost.moving_variance, bn.moving_variance, atol=1e-6)


def _model(layer_kwargs=None, jit=False):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8), GhostBatchNormalization(4, **(layer_kwargs or {})),
         keras.layers.Activation("relu"), keras.layers.Dense(2)]
    )
    model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=jit)
    return model


XS = RNG.randn(64, 6).astype("float32")
YS = RNG.randn(64, 2).astype("float32")


def test_fit_with_jit_compile_matches_without():
    eager, jit = _model(), _model(jit=True)
    eager.fit(XS, YS, batch_size=16, epochs=2, shuffle=False, verbose=0)
    jit.fit(XS, YS, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(eager.get_weights(), jit.get_weights()):  # includes the moving statistics
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_config_round_trip_and_model_save_load(tmp_path):
    layer = GhostBatchNormalization(8, axis=1, momentum=0.95, epsilon=1e-5, center=False, name="gbn")
    config = layer.get_config()
    assert config["virtual_batch_size"] == 8
    again = GhostBatchNormalization.from_config(config)
    assert again.get_config() == config

    model = _model()
    model.fit(XS, YS, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "ghost.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[1], GhostBatchNormalization)
    assert loaded.layers[1].virtual_batch_size == 4
    np.testing.assert_allclose(loaded.predict(XS, verbose=0), model.predict(XS, verbose=0), atol=1e-6)
    np.testing.assert_allclose(loaded(XS[:8], training=True), model(XS[:8], training=True), atol=1e-6)


def test_exported_from_bstf():
    assert bstf.layers.GhostBatchNormalization is GhostBatchNormalization


def test_batch_not_divisible_static_shape():
    layer = GhostBatchNormalization(5)
    with pytest.raises(ValueError, match="The batch size 12 is not a multiple of virtual_batch_size=5"):
        layer(X, training=True)
    layer(X, training=False)  # inference does not split the batch


def test_batch_not_divisible_dynamic_shape():
    layer = GhostBatchNormalization(5)
    fn = tf.function(lambda x: layer(x, training=True), input_signature=[tf.TensorSpec([None, 5, 3])])
    fn(tf.constant(X[:10]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="batch size must be a multiple of virtual_batch_size=5"):
        fn(tf.constant(X))


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((0,), {}, ValueError, "virtual_batch_size must be an integer >= 1, got 0"),
        ((2.5,), {}, TypeError, "virtual_batch_size must be an integer >= 1, got 2.5"),
        ((True,), {}, TypeError, "virtual_batch_size must be an integer >= 1, got True"),
        ((4,), dict(axis=0), ValueError, "axis must not be 0"),
        ((4,), dict(axis=1.0), TypeError, "axis must be an integer"),
        ((4,), dict(momentum=1.0), ValueError, r"momentum must be a float in \[0, 1\), got 1.0"),
        ((4,), dict(epsilon=0.0), ValueError, "epsilon must be a float > 0, got 0.0"),
        ((4,), dict(renorm=True), ValueError, "does not support renorm=True"),
        ((4,), dict(synchronized=True), ValueError, "does not support synchronized=True"),
    ],
)
def test_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        GhostBatchNormalization(*args, **kwargs)


def test_negative_axis_resolving_to_batch_axis_and_masks():
    with pytest.raises(ValueError, match="axis must not be the batch axis 0, got axis=-3 for rank 3"):
        GhostBatchNormalization(4, axis=-3).build(X.shape)
    with pytest.raises(ValueError, match="does not support masks in training"):
        GhostBatchNormalization(4)(X, training=True, mask=np.ones((12, 5), bool))
