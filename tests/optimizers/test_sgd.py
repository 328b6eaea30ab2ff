import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import bstf
from bstf.optimizers import SGD, Accumulate
from bstf.schedules import PiecewiseConstant, PiecewiseMomentum

RNG = np.random.RandomState(0)
W0 = RNG.randn(4, 3).astype("float32")
B0 = RNG.randn(3).astype("float32")
GRADS = [(RNG.randn(4, 3).astype("float32"), RNG.randn(3).astype("float32")) for _ in range(6)]
X = RNG.randn(64, 6).astype("float32")
Y = RNG.randint(0, 3, 64)


def _run(opt, steps=len(GRADS), between=None):
    w, b = keras.Variable(W0, name="kernel"), keras.Variable(B0, name="bias")
    for i, (gw, gb) in enumerate(GRADS[:steps]):
        opt.apply([tf.constant(gw), tf.constant(gb)], [w, b])
        if between:
            between(i)
    return w.numpy(), b.numpy()


CASES = {
    "plain": dict(),
    "momentum": dict(momentum=0.9),
    "nesterov": dict(momentum=0.9, nesterov=True),
    "weight_decay": dict(momentum=0.8, weight_decay=0.05),
    "nesterov_weight_decay_clipnorm": dict(momentum=0.95, nesterov=True, weight_decay=0.01, clipnorm=1.0),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_keras_sgd(case):
    ours = _run(SGD(0.1, **CASES[case]))
    theirs = _run(keras.optimizers.SGD(0.1, **CASES[case]))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-7, rtol=0)


def _numpy_sgd(momenta, lr=0.1, nesterov=False):
    """v = m v - lr g; w += v (or m v - lr g): Keras's rule with a per-step momentum."""
    w, b = W0.astype("float64"), B0.astype("float64")
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for m, (gw, gb) in zip(momenta, GRADS):
        vw, vb = m * vw - lr * gw, m * vb - lr * gb
        if nesterov:
            w, b = w + m * vw - lr * gw, b + m * vb - lr * gb
        else:
            w, b = w + vw, b + vb
    return w, b


def test_golden_numbers_single_step():
    # One step from zero velocity: w - lr g whatever m; second step adds m * v.
    opt = SGD(0.5, momentum=0.5)
    w = keras.Variable([1.0, 2.0])
    opt.apply([tf.constant([1.0, -2.0])], [w])
    np.testing.assert_allclose(w.numpy(), [0.5, 3.0])
    opt.apply([tf.constant([1.0, -2.0])], [w])  # v = 0.5*[-0.5, 1] - 0.5*[1, -2] = [-0.75, 1.5]
    np.testing.assert_allclose(w.numpy(), [-0.25, 4.5])


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_schedule_on_clock_against_numpy(nesterov):
    clock = bstf.Clock(train_size=100)
    schedule = PiecewiseMomentum([0.02, 0.04], [0.5, 0.9, 0.95]).bind(clock)  # changes after steps 2 and 4
    opt = SGD(0.1, momentum=schedule, nesterov=nesterov)
    w, b = keras.Variable(W0), keras.Variable(B0)
    opt.build([w, b])  # otherwise slots are created in the first trace and tf.function traces twice
    traces = []

    @tf.function
    def step(gw, gb):
        traces.append(1)
        opt.apply([gw, gb], [w, b])
        clock.advance(1)

    for gw, gb in GRADS:
        step(tf.constant(gw), tf.constant(gb))
    ref = _numpy_sgd([0.5, 0.5, 0.9, 0.9, 0.95, 0.95], nesterov=nesterov)
    np.testing.assert_allclose(w.numpy(), ref[0], atol=1e-6)
    np.testing.assert_allclose(b.numpy(), ref[1], atol=1e-6)
    assert len(traces) == 1  # the momentum changed twice without a retrace


def test_momentum_assigned_after_build_and_float_reassigned_without_retrace():
    opt = SGD(0.1)  # momentum 0.0
    w, b = keras.Variable(W0), keras.Variable(B0)
    opt.build([w, b])
    traces = []

    @tf.function
    def step(gw, gb):
        traces.append(1)
        opt.apply([gw, gb], [w, b])

    momenta = [0.0, 0.0, 0.9, 0.9, 0.5, 0.5]
    for i, (gw, gb) in enumerate(GRADS):
        opt.momentum = momenta[i]
        step(tf.constant(gw), tf.constant(gb))
    ref = _numpy_sgd(momenta)
    np.testing.assert_allclose(w.numpy(), ref[0], atol=1e-6)
    assert len(traces) == 1
    assert opt.momentum == 0.5


def test_schedule_assigned_after_build():
    clock = bstf.Clock(train_size=1)
    opt = SGD(0.1, momentum=0.9)
    w, b = keras.Variable(W0), keras.Variable(B0)
    opt.build([w, b])
    opt.momentum = PiecewiseConstant([3.0], [0.9, 0.0]).bind(clock)
    for gw, gb in GRADS:
        opt.apply([tf.constant(gw), tf.constant(gb)], [w, b])
        clock.advance(1)
    np.testing.assert_allclose(w.numpy(), _numpy_sgd([0.9] * 3 + [0.0] * 3)[0], atol=1e-6)


def test_callable_and_keras_schedule_momentum():
    m = tf.Variable(0.3)
    ours = _run(SGD(0.1, momentum=lambda: m), between=lambda i: m.assign(0.6 if i >= 2 else 0.3))
    np.testing.assert_allclose(ours[0], _numpy_sgd([0.3, 0.3, 0.3, 0.6, 0.6, 0.6])[0], atol=1e-6)
    # A Keras LearningRateSchedule is called with the update count.
    sched = keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.2, 0.7])
    ours = _run(SGD(0.1, momentum=sched))
    np.testing.assert_allclose(ours[0], _numpy_sgd([0.2, 0.2] + [0.7] * 4)[0], atol=1e-6)


def test_supports_momentum_schedule_contract():
    assert SGD.supports_momentum_schedule is True
    assert SGD(momentum=0.9).momentum == 0.9
    sched = PiecewiseMomentum([1.0], [0.9, 0.95])
    assert SGD(momentum=sched).momentum is sched


def test_fit_matches_keras_sgd_under_mirrored():
    # ReductionToOneDevice, not collectives: a later MirroredStrategy in the same process reuses
    # collective group/instance keys and fails with "Shape mismatch in the collective instance"
    # when its model has other shapes.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    weights = []
    for make in (lambda: SGD(0.1, momentum=0.9, nesterov=True), lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)):
        with strategy.scope():
            keras.utils.set_random_seed(1)
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
            model.compile(make(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(X, Y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_under_accumulate_momentum_schedule_sees_updates():
    # Keras schedule on the update count: inside Accumulate it counts updates, not micro-batches.
    sched = keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.5, 0.9])
    acc = Accumulate(SGD(0.1, momentum=sched), steps=2)
    w, b = keras.Variable(W0), keras.Variable(B0)
    for gw, gb in GRADS:
        acc.apply([tf.constant(gw), tf.constant(gb)], [w, b])
    lr, vw, ww = 0.1, np.zeros_like(W0, "float64"), W0.astype("float64")
    for u, m in enumerate([0.5, 0.5, 0.9]):
        g = (GRADS[2 * u][0] + GRADS[2 * u + 1][0]) / 2
        vw = m * vw - lr * g
        ww = ww + vw
    np.testing.assert_allclose(w.numpy(), ww, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.9, "schedule"])
def test_config_round_trip(momentum):
    if momentum == "schedule":
        momentum = PiecewiseMomentum([1.0, 2.0], [0.5, 0.9, 0.95])
    opt = SGD(0.05, momentum=momentum, nesterov=True, weight_decay=1e-4, clipnorm=2.0, name="mine")
    config = opt.get_config()
    again = SGD.from_config(config)
    assert again.get_config() == config
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(restored, SGD) and restored.get_config() == config
    if not isinstance(momentum, float):
        assert isinstance(restored.momentum, PiecewiseMomentum)
        assert restored.momentum.values == [0.5, 0.9, 0.95]


def test_model_save_and_load(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    model.compile(SGD(0.1, momentum=PiecewiseMomentum([1.0], [0.8, 0.9])), "mse")
    clock = bstf.Clock(train_size=64)
    model.optimizer.momentum.bind(clock)
    model.fit(X, np.eye(3)[Y], batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, SGD)
    assert loaded.optimizer.momentum.values == [0.8, 0.9]
    np.testing.assert_allclose(loaded.predict(X, verbose=0), model.predict(X, verbose=0), atol=1e-6)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "value, error, match",
    [
        (1.0, ValueError, r"momentum must be in \[0, 1\), got 1.0"),
        (-0.1, ValueError, r"momentum must be in \[0, 1\), got -0.1"),
        (math.nan, ValueError, r"momentum must be in \[0, 1\), got nan"),
        (math.inf, ValueError, r"momentum must be in \[0, 1\), got inf"),
        (PiecewiseConstant([1.0], [0.5, 1.5]), ValueError, r"momentum schedule PiecewiseConstant must stay in \[0, 1\), got 1.5"),
        (PiecewiseConstant([], [-0.5]), ValueError, r"momentum schedule PiecewiseConstant must stay in \[0, 1\), got -0.5"),
        ("0.9", TypeError, r"momentum must be a float in \[0, 1\), a bstf.schedules.Schedule or a callable"),
        (True, TypeError, r"momentum must be a float in \[0, 1\)"),
        (None, TypeError, r"momentum must be a float in \[0, 1\)"),
    ],
)
def test_bad_momentum(value, error, match):
    with pytest.raises(error, match=match):
        SGD(0.1, momentum=value)
    opt = SGD(0.1, momentum=0.5)
    with pytest.raises(error, match=match):
        opt.momentum = value
    assert opt.momentum == 0.5  # unchanged after a rejected assignment


def test_bad_momentum_from_callable_fails_in_graph():
    opt = SGD(0.1, momentum=lambda: tf.constant(1.2))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"momentum from function must be in \[0, 1\)"):
        _run(opt, steps=1)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(nesterov="yes"), TypeError, "nesterov must be True or False"),
        (dict(learning_rate=0.0), ValueError, "learning_rate must be > 0, got 0.0"),
        (dict(learning_rate=-1.0), ValueError, "learning_rate must be > 0, got -1.0"),
        (dict(weight_decay=-1e-4), ValueError, "weight_decay must be >= 0, got -0.0001"),
        (dict(weight_decay="0.1"), TypeError, "weight_decay must be None or a float >= 0"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SGD(**kwargs)
