
import keras
import numpy as np
import pytest
import tensorflow as tf

import bstf
from bstf import schedules as S


@pytest.mark.parametrize(
    "rule, batch, expected",
    [("linear", 8192, 3.2), ("linear", 64, 0.025), ("sqrt", 1024, 0.2), ("sqrt", 64, 0.05), ("none", 8192, 0.1)],
)
def test_scaled_learning_rate(rule, batch, expected):
    assert S.scaled_learning_rate(0.1, 256, batch, rule) == pytest.approx(expected)


def _goyal():
    return S.LinearWarmup(S.PiecewiseConstant([30, 60, 80], [3.2, 0.32, 0.032, 0.0032]), 5, 0.1)


@pytest.mark.parametrize(
    "epoch, expected",
    [(0, 0.1), (1, 0.1 + 3.1 / 5), (2.5, 1.65), (4.99, 0.1 + 3.1 * 4.99 / 5), (5, 3.2), (29.99, 3.2),
     (30, 0.32), (59.9, 0.32), (60, 0.032), (80, 0.0032), (90, 0.0032)],
)
def test_goyal_8k_recipe(epoch, expected):
    np.testing.assert_allclose(_goyal().numpy(epoch), expected, rtol=1e-6)


def test_constant_warmup():
    s = S.ConstantWarmup(S.Constant(3.2), 5, 0.1)
    assert [round(s.numpy(e), 6) for e in (0, 4.999, 5, 50)] == [0.1, 0.1, 3.2, 3.2]


def test_cosine_and_polynomial_against_numpy():
    e = np.array([0.0, 10, 25, 50, 80, 100, 120])
    cos = S.CosineDecay(0.4, 100, alpha=0.1)
    ref = 0.4 * (0.9 * 0.5 * (1 + np.cos(np.pi * np.minimum(e, 100) / 100)) + 0.1)
    np.testing.assert_allclose([cos.numpy(x) for x in e], ref, rtol=1e-5, atol=1e-7)
    poly = S.PolynomialDecay(0.4, 100, end_value=0.01, power=2.0)
    ref = 0.39 * (1 - np.minimum(e, 100) / 100) ** 2 + 0.01
    np.testing.assert_allclose([poly.numpy(x) for x in e], ref, rtol=1e-5, atol=1e-7)


def test_piecewise_batch_is_integer():
    s = S.PiecewiseBatch([60, 120], [128, 640, 3200])
    assert [s.numpy(e) for e in (0, 59.999, 60, 130)] == [128, 128, 640, 3200]
    assert s.value(1.0).dtype == tf.int64


def test_linear_batch_ramp_megatron():
    # Megatron rampup_batch_size=(32, 32, 1000): 7 increments to 256, one per 1000/7 examples.
    s = S.LinearBatchRamp(start=32, increment=32, ramp_examples=1000, max_batch=256, train_size=100)
    examples = np.array([0, 142, 143, 500, 999, 1000, 5000])
    ref = np.minimum(256, 32 + 32 * np.floor(examples / (1000 / 7)))
    assert [s.numpy(x / 100) for x in examples] == list(ref.astype(int))


def test_schedules_in_graph_and_bound_to_clock():
    clock = bstf.Clock(train_size=100)
    s = _goyal().bind(clock)
    clock.advance(250)  # epoch 2.5
    np.testing.assert_allclose(float(tf.function(lambda: s(0))()), 1.65, rtol=1e-6)
    # Inside a Keras optimizer the step argument is ignored: time is the clock.
    opt = keras.optimizers.SGD(learning_rate=s)
    np.testing.assert_allclose(float(opt.learning_rate), 1.65, rtol=1e-6)


ALL = [
    S.Constant(0.3),
    S.PiecewiseConstant([1.5, 3], [0.1, 0.01, 0.001]),
    S.PiecewiseBatch([10], [128, 640]),
    S.PiecewiseMomentum([10], [0.9, 0.95]),
    _goyal(),
    S.ConstantWarmup(S.CosineDecay(1.0, 10), 2, 0.1),
    S.CosineDecay(0.1, 90, alpha=0.01),
    S.PolynomialDecay(0.1, 90, end_value=0.001, power=2),
    S.LinearBatchRamp(32, 32, 1000, 256, 100),
]


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: type(s).__name__)
def test_serialization_round_trip(schedule):
    config = schedule.get_config()
    clone = type(schedule).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(restored) is type(schedule) and restored.get_config() == config
    for e in (0.0, 1.0, 2.5, 7.0, 50.0):
        assert restored.numpy(e) == pytest.approx(schedule.numpy(e))


def test_round_trip_inside_keras_optimizer():
    opt = keras.optimizers.SGD(learning_rate=_goyal())
    clone = keras.optimizers.SGD.from_config(opt.get_config())
    assert isinstance(clone._learning_rate, S.LinearWarmup)
    assert clone._learning_rate.get_config() == _goyal().get_config()


@pytest.mark.parametrize(
    "make, err, match",
    [
        (lambda: S.scaled_learning_rate(0.0, 256, 512), ValueError, "base_lr must be > 0, got 0.0"),
        (lambda: S.scaled_learning_rate(0.1, 0, 512), ValueError, "base_batch must be >= 1, got 0"),
        (lambda: S.scaled_learning_rate(0.1, 256, -8), ValueError, "batch must be >= 1, got -8"),
        (lambda: S.scaled_learning_rate(0.1, 256, 512, "cubic"), ValueError, "rule must be one of"),
        (lambda: S.scaled_learning_rate(0.1, 256, 12.5), TypeError, "batch must be an integer"),
        (lambda: S.PiecewiseConstant([30, 10], [1, 2, 3]), ValueError, "boundaries must be strictly increasing"),
        (lambda: S.PiecewiseConstant([-1], [1, 2]), ValueError, "boundaries must be >= 0, got -1"),
        (lambda: S.PiecewiseConstant([1], [1.0]), ValueError, "values must have len"),
        (lambda: S.PiecewiseBatch([1], [128, 0]), ValueError, "values must be >= 1, got 0"),
        (lambda: S.PiecewiseMomentum([1], [0.9, 1.2]), ValueError, r"values must be in \[0, 1\), got 1.2"),
        (lambda: S.LinearWarmup(S.Constant(1.0), 0, 0.1), ValueError, "warmup_epochs must be > 0"),
        (lambda: S.CosineDecay(0.1, 90, alpha=2), ValueError, r"alpha must be in \[0, 1\]"),
        (lambda: S.LinearBatchRamp(64, 32, 1000, 32, 100), ValueError, r"max_batch must be >= start \(64\)"),
        (lambda: S.LinearBatchRamp(32, 48, 1000, 256, 100), ValueError, "must be a multiple of increment"),
        (lambda: S.Constant(float("nan")), ValueError, "value must be finite"),
    ],
)
def test_bad_arguments(make, err, match):
    with pytest.raises(err, match=match):
        make()
