"""Input checks shared by every instrument (bstf/analysis/_common.py), table-driven over the instruments."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from bstf import analysis
from bstf.analysis import _common

X = np.random.RandomState(0).randn(64, 3).astype("float32")
Y = X[:, :1] * 2.0

INSTRUMENTS = {
    "noise_scale": lambda model, data: analysis.noise_scale(model, data, small_batch=4, big_batch=16,
                                                            num_batches=1),
    "sharpness": lambda model, data: analysis.sharpness(model, data, max_iter=1),
    "hessian_top_eigenvalue": lambda model, data: analysis.hessian_top_eigenvalue(model, data, num_iters=1),
    "interpolate": lambda model, data: analysis.interpolate(model, model, model, data, alphas=[0.0]),
    "gradient_histogram": lambda model, data: analysis.gradient_histogram(model, data, batch_size=4, trials=1),
}


def _model(trainable=True):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, trainable=trainable)])
    model.compile(loss="mse")
    return model


@pytest.mark.parametrize("name", INSTRUMENTS)
def test_model_without_trainable_weights(name):
    with pytest.raises(ValueError, match="model 'sequential.*' has no trainable weights; there is no gradient"):
        INSTRUMENTS[name](_model(trainable=False), (X, Y))


@pytest.mark.parametrize("name", INSTRUMENTS)
@pytest.mark.parametrize("data,error,match", [
    ((X[:0], Y[:0]), ValueError, r"has 0 examples, fewer than"),
    ((X, Y[:10]), ValueError, r"x has 64 examples but y has 10"),
    (X, TypeError, r"must be a bstf.data.Data, an unbatched tf.data.Dataset of \(x, y\) or a tuple"),
    (tf.data.Dataset.from_tensor_slices(X), ValueError, r"must yield \(x, y\) pairs"),
    (tf.data.Dataset.from_tensor_slices((X, Y)).repeat(), ValueError, r"is an infinite tf.data.Dataset"),
])
def test_bad_data(name, data, error, match):
    with pytest.raises(error, match=match):
        INSTRUMENTS[name](_model(), data)


@pytest.mark.parametrize("name", INSTRUMENTS)
def test_model_without_loss(name):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=r"has no compiled loss: compile it with a loss .* or pass loss="):
        INSTRUMENTS[name](model, (X, Y))


def test_dataset_and_arrays_agree():
    ds = tf.data.Dataset.from_tensor_slices((X, Y))
    for _, size in (_common.as_dataset(ds), _common.as_dataset((X, Y))):
        assert size == 64
    x, y = _common.as_arrays(ds.filter(lambda *_: True), num_examples=10)
    np.testing.assert_array_equal(x, X[:10])
    np.testing.assert_array_equal(y, Y[:10])


@pytest.mark.parametrize("call,error,match", [
    (lambda: _common.check_int("n", True), TypeError, "n must be an integer >= 1, got True of type bool"),
    (lambda: _common.check_int("n", 0), ValueError, "n must be an integer >= 1, got 0"),
    (lambda: _common.check_float("eps", float("nan"), low=0.0, low_open=True), ValueError,
     r"eps must be in \(0.0, inf\), got nan"),
    (lambda: _common.check_float("eps", "1e-3"), TypeError, "eps must be a number, got '1e-3'"),
    (lambda: _common.check_ema(-0.1), ValueError, r"ema must be in \[0.0, 1.0\), got -0.1"),
])
def test_argument_checks(call, error, match):
    with pytest.raises(error, match=match):
        call()
