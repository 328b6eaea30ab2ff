import keras
import numpy as np
import pytest
import tensorflow as tf

import bstf
from bstf.optimizers import LARS, SGD, Accumulate, Lamb
from bstf.optimizers.lars import DEFAULT_EXCLUDE
from bstf.schedules import PiecewiseMomentum

RNG = np.random.RandomState(0)
SHAPES = {"dense/kernel": (5, 4), "dense/bias": (4,), "batch_normalization/gamma": (4,), "out/kernel": (4, 2)}
INIT = {k: RNG.randn(*s).astype("float32") for k, s in SHAPES.items()}
GRADS = [{k: (RNG.randn(*s) * 0.1).astype("float32") for k, s in SHAPES.items()} for _ in range(5)]


def _variables():
    out = {}
    for path, value in INIT.items():
        layer, name = path.split("/")
        with keras.name_scope(layer):
            out[path] = keras.Variable(value, name=name)
    assert [v.path for v in out.values()] == list(SHAPES)
    return out


def _run(opt, steps=len(GRADS), momenta=None):
    variables = _variables()
    for i in range(steps):
        if momenta is not None:
            opt.momentum = momenta[i]
        opt.apply([tf.constant(GRADS[i][k]) for k in SHAPES], list(variables.values()))
    return {k: v.numpy() for k, v in variables.items()}


def _numpy_lars(lr=0.1, momenta=(0.9,) * 5, wd=0.0, eta=0.001, eps=0.0, nesterov=False,
                no_decay=DEFAULT_EXCLUDE, no_adapt=DEFAULT_EXCLUDE, steps=len(GRADS)):
    """You et al. 2017, Algorithm 1, in float64: λ = η‖w‖/(‖g‖ + β‖w‖ + ε); v = m v − lr λ (g + β w)."""
    import re

    out = {}
    for path in SHAPES:
        w = INIT[path].astype("float64")
        v = np.zeros_like(w)
        beta = 0.0 if any(re.search(p, path) for p in no_decay) else wd
        adapt = not any(re.search(p, path) for p in no_adapt)
        for i in range(steps):
            g = GRADS[i][path].astype("float64")
            m = momenta[i]
            trust = 1.0
            if adapt:
                wn, gn = np.linalg.norm(w), np.linalg.norm(g)
                denominator = gn + beta * wn + eps
                if wn > 0 and denominator > 0:
                    trust = eta * wn / denominator
            d = g + beta * w
            v = m * v - lr * trust * d
            w = w + (m * v - lr * trust * d if nesterov else v)
        out[path] = w
    return out


CASES = {
    "defaults": dict(),
    "weight_decay": dict(wd=1e-2),
    "nesterov_wd_eps": dict(wd=5e-3, nesterov=True, eps=1e-3),
    "large_eta": dict(eta=0.5, wd=1e-3),
    "no_exclusions": dict(wd=1e-2, no_decay=(), no_adapt=()),
    "adapt_bias_but_no_decay": dict(wd=1e-2, no_decay=("bias",), no_adapt=("gamma",)),
}


def _lars_kwargs(case):
    c = CASES[case]
    kw = dict(weight_decay=c.get("wd", 0.0), trust_coefficient=c.get("eta", 0.001), epsilon=c.get("eps", 0.0),
              nesterov=c.get("nesterov", False))
    if "no_decay" in c:
        kw["exclude_from_weight_decay"] = list(c["no_decay"])
        kw["exclude_from_layer_adaptation"] = list(c["no_adapt"])
    return kw


@pytest.mark.parametrize("case", CASES)
def test_matches_numpy_reference(case):
    ours = _run(LARS(0.1, momentum=0.9, **_lars_kwargs(case)))
    ref = _numpy_lars(**CASES[case])
    for path in SHAPES:
        np.testing.assert_allclose(ours[path], ref[path], rtol=1e-5, atol=1e-7, err_msg=path)


def test_golden_single_step():
    # w = [3, 4] (‖w‖ = 5), g = [0, 1], β = 0.1: λ = 0.001·5/(1 + 0.5) = 1/300;
    # update = lr·λ·(g + βw) = 1·(1/300)·[0.3, 1.4].
    w = keras.Variable([3.0, 4.0], name="kernel")
    LARS(1.0, momentum=0.9, weight_decay=0.1).apply([tf.constant([0.0, 1.0])], [w])
    np.testing.assert_allclose(w.numpy(), [3.0 - 0.3 / 300, 4.0 - 1.4 / 300], rtol=1e-6)


def test_default_exclusions_are_plain_momentum_sgd():
    opt = LARS(0.1, momentum=0.9, weight_decay=1e-2)
    ours = _run(opt)
    ref = _run(SGD(0.1, momentum=0.9))
    for path in ("dense/bias", "batch_normalization/gamma"):
        np.testing.assert_allclose(ours[path], ref[path], atol=1e-7)
    assert not np.allclose(ours["dense/kernel"], ref["dense/kernel"], atol=1e-3)
    flags = {v.path: (opt.uses_weight_decay(v), opt.uses_layer_adaptation(v)) for v in opt._trainable_variables}
    assert flags == {
        "dense/kernel": (True, True), "dense/bias": (False, False),
        "batch_normalization/gamma": (False, False), "out/kernel": (True, True),
    }


def test_zero_weights_and_zero_gradients_use_trust_one():
    w = keras.Variable(np.zeros(3, "float32"), name="kernel")
    u = keras.Variable(np.ones(3, "float32"), name="kernel")
    LARS(0.5, momentum=0.0).apply([tf.constant([1.0, 2.0, 3.0]), tf.zeros(3)], [w, u])
    np.testing.assert_allclose(w.numpy(), [-0.5, -1.0, -1.5])  # ‖w‖ = 0: λ = 1
    np.testing.assert_allclose(u.numpy(), [1.0, 1.0, 1.0])  # ‖g‖ = 0 and β = 0: λ = 1, no step


def test_momentum_schedule_against_numpy_and_contract():
    assert LARS.supports_momentum_schedule is True
    momenta = [0.5, 0.5, 0.9, 0.9, 0.95]
    ours = _run(LARS(0.1, weight_decay=1e-3), momenta=momenta)  # floats assigned between updates
    ref = _numpy_lars(momenta=momenta, wd=1e-3)
    for path in SHAPES:
        np.testing.assert_allclose(ours[path], ref[path], rtol=1e-5, atol=1e-7)
    clock = bstf.Clock(train_size=100)
    opt = LARS(0.1, weight_decay=1e-3, momentum=PiecewiseMomentum([0.02, 0.04], [0.5, 0.9, 0.95]).bind(clock))
    variables = _variables()
    opt.build(list(variables.values()))
    traces = []

    @tf.function
    def step(grads):
        traces.append(1)
        opt.apply(grads, list(variables.values()))
        clock.advance(1)

    for g in GRADS:
        step([tf.constant(g[k]) for k in SHAPES])
    for path in SHAPES:
        np.testing.assert_allclose(variables[path].numpy(), ref[path], rtol=1e-5, atol=1e-7)
    assert len(traces) == 1


X = RNG.randn(128, 6).astype("float32")
Y = RNG.randint(0, 3, 128)


def _model(opt, seed=1):
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    m.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def test_accumulated_micro_batches_equal_one_big_batch():
    big = _model(LARS(0.5, momentum=0.9, weight_decay=1e-3))
    small = _model(Accumulate(LARS(0.5, momentum=0.9, weight_decay=1e-3), steps=4))
    big.fit(X, Y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    small.fit(X, Y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(big.get_weights(), small.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: LARS(0.5, momentum=0.9, weight_decay=1e-3), lambda: Lamb(0.01)],
                         ids=["lars", "lamb"])
def test_runs_under_mirrored_like_single_device(make):
    single = _model(make())
    single.fit(X, Y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()).scope():
        mirrored = _model(make())
    mirrored.fit(X, Y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_config_round_trip_and_save_load(tmp_path):
    opt = LARS(0.2, momentum=PiecewiseMomentum([1.0], [0.9, 0.95]), weight_decay=1e-4, trust_coefficient=0.02,
               epsilon=1e-9, nesterov=True, exclude_from_weight_decay=["bias"], name="lars_x")
    config = opt.get_config()
    assert LARS.from_config(config).get_config() == config
    assert keras.optimizers.deserialize(keras.optimizers.serialize(opt)).get_config() == config
    assert LARS().get_config()["exclude_from_weight_decay"] is None  # the defaults stay the defaults

    model = _model(LARS(0.5, momentum=0.9, weight_decay=1e-3, exclude_from_layer_adaptation=[]))
    model.fit(X, Y, batch_size=32, epochs=1, verbose=0)
    path = str(tmp_path / "lars.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, LARS)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b))
    # Training continues identically from the restored state.
    model.fit(X, Y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    loaded.fit(X, Y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(trust_coefficient=0.0), ValueError, "trust_coefficient must be > 0, got 0.0"),
        (dict(trust_coefficient=-0.001), ValueError, "trust_coefficient must be > 0, got -0.001"),
        (dict(trust_coefficient=float("nan")), ValueError, "trust_coefficient must be > 0, got nan"),
        (dict(trust_coefficient="0.001"), TypeError, "trust_coefficient must be a float"),
        (dict(epsilon=-1e-8), ValueError, "epsilon must be >= 0, got -1e-08"),
        (dict(weight_decay=-1e-4), ValueError, "weight_decay must be >= 0, got -0.0001"),
        (dict(learning_rate=0.0), ValueError, "learning_rate must be > 0, got 0.0"),
        (dict(momentum=1.0), ValueError, r"momentum must be in \[0, 1\), got 1.0"),
        (dict(momentum="high"), TypeError, r"momentum must be a float in \[0, 1\)"),
        (dict(nesterov=1), TypeError, "nesterov must be True or False"),
        (dict(exclude_from_weight_decay="bias"), TypeError, "exclude_from_weight_decay must be a list of name patterns"),
        (dict(exclude_from_layer_adaptation=[3]), TypeError, "exclude_from_layer_adaptation must contain strings"),
        (dict(exclude_from_weight_decay=["bias("]), ValueError, "exclude_from_weight_decay contains an invalid regular expression"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LARS(**kwargs)
