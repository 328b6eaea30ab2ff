"""Mixed precision through Accumulate, the noise-scale measurement and the finder.

Tolerances: float16 keeps an 11-bit significand (relative rounding 2**-11 ~ 4.9e-4 per value), bfloat16 an
8-bit one (2**-8 ~ 3.9e-3). Two runs whose float16 gradients are summed over different partitions (one batch
of 64 against 4 micro-batches of 16) differ by that rounding, not by the algorithm; measured on these tiny
models after 8 updates: <= 2e-5 (SGD) and 1e-4 (Adam) in the weights for float16, 7e-4 for bfloat16, and
6e-8 for the same comparison in float32 (test_accumulate.py asserts 1e-5 there).
"""

import contextlib
import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from bstf import analysis, find_batch_size
from bstf.optimizers import Accumulate, LossScaledAccumulate

LSO = keras.optimizers.LossScaleOptimizer
noise_scale_module = importlib.import_module("bstf.analysis.noise_scale")  # the package exports the function
FP16_ATOL = 5e-4  # ~ one float16 rounding of a weight-sized value; measured differences are 5-25x smaller
BF16_ATOL = 5e-3  # ~ one bfloat16 rounding

RNG = np.random.RandomState(0)
X = RNG.randn(128, 6).astype("float32")
Y = RNG.randint(0, 3, 128)
XR = RNG.randn(128, 6).astype("float32")  # regression data for the overflow tests
YR = RNG.randn(128, 1).astype("float32")


@pytest.fixture(autouse=True)
def float32_policy_after():
    """Every test leaves the global dtype policy as it found it (float32 for the rest of the suite)."""
    before = keras.config.dtype_policy().name
    yield
    keras.mixed_precision.set_dtype_policy(before)


@contextlib.contextmanager
def policy(name):
    before = keras.config.dtype_policy().name
    keras.mixed_precision.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(before)


def _classifier(opt, dtype="float32", seed=1):
    with policy(dtype):
        keras.utils.set_random_seed(seed)
        m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    m.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def _regressor(opt, seed=1):
    with policy("mixed_float16"):
        keras.utils.set_random_seed(seed)
        m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    m.compile(opt, "mse")
    return m


def _pinned(inner, scale=1024.0):
    """A loss scale fixed at a power of two (it would only halve on an overflow, and none happens)."""
    return LSO(inner, initial_scale=scale, dynamic_growth_steps=10**9)


def _mirrored():
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())


def _max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a.get_weights(), b.get_weights()))


INNER = {
    "sgd_momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(0.01),
}


# ------------------------------------------------------------------------------------------- composition
def test_accumulate_around_a_loss_scale_optimizer_is_one_and_compile_keeps_it():
    acc = Accumulate(LSO(keras.optimizers.SGD(0.1)), steps=4)
    assert isinstance(acc, LossScaledAccumulate) and isinstance(acc, LSO) and isinstance(acc, Accumulate)
    assert type(Accumulate(keras.optimizers.SGD(0.1), 4)) is Accumulate
    model = _classifier(acc, "mixed_float16")
    assert model.optimizer is acc  # not wrapped in a second LossScaleOptimizer
    config = acc.get_config()
    again = Accumulate.from_config(config)
    assert type(again) is LossScaledAccumulate and again.get_config() == config


def test_the_other_order_is_refused():
    # model.compile under mixed_float16 wraps a plain Accumulate in a LossScaleOptimizer: refused there.
    with pytest.raises(TypeError, match="must not be wrapped in a LossScaleOptimizer.*Put the loss scale inside"):
        _classifier(Accumulate(keras.optimizers.SGD(0.1), 4), "mixed_float16")
    with pytest.raises(TypeError, match="must not be wrapped in a LossScaleOptimizer"):
        LSO(Accumulate(keras.optimizers.SGD(0.1), 4))
    with pytest.raises(TypeError, match="must wrap a plain optimizer .* got a LossScaleOptimizer around"):
        Accumulate(LSO(LSO(keras.optimizers.SGD(0.1))), 4)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        Accumulate(LSO(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2)), 4)


def test_float16_accumulation_without_a_loss_scale_warns():
    acc = Accumulate(keras.optimizers.SGD(0.1), 4)
    model = _classifier(keras.optimizers.SGD(0.1))
    with policy("mixed_float16"), pytest.warns(UserWarning, match="without loss scaling: small float16 gradients"):
        acc.build(model.trainable_variables)


# ------------------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("inner", INNER)
def test_float16_k_micro_batches_equal_one_big_batch(inner):
    big = _classifier(_pinned(INNER[inner]()), "mixed_float16")
    acc = Accumulate(_pinned(INNER[inner]()), steps=4)
    small = _classifier(acc, "mixed_float16")
    f32 = _classifier(Accumulate(INNER[inner](), steps=4), "float32")
    big.fit(X, Y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    small.fit(X, Y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    f32.fit(X, Y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert _max_diff(big, small) < FP16_ATOL
    assert _max_diff(f32, small) < FP16_ATOL  # the same run in float32
    assert _max_diff(f32, small) > 0  # float16 compute did happen
    assert int(acc.updates.numpy()) == 4 and int(acc.iterations.numpy()) == 16
    assert float(acc.loss_scale.numpy()) == 1024.0 and int(acc.skipped_updates.numpy()) == 0


def test_float16_mirrored_equals_single_device():
    with _mirrored().scope():
        mirrored = _classifier(Accumulate(_pinned(INNER["sgd_momentum"]()), steps=4), "mixed_float16")
    single = _classifier(Accumulate(_pinned(INNER["sgd_momentum"]()), steps=4), "mixed_float16")
    mirrored.fit(X, Y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    single.fit(X, Y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert _max_diff(mirrored, single) < FP16_ATOL


@pytest.mark.parametrize("inner", INNER)
def test_bfloat16_k_micro_batches_equal_one_big_batch(inner):
    big = _classifier(INNER[inner](), "mixed_bfloat16")
    small = _classifier(Accumulate(INNER[inner](), steps=4), "mixed_bfloat16")
    assert not isinstance(big.optimizer, LSO)  # bfloat16 needs no loss scale
    big.fit(X, Y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    small.fit(X, Y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert 0 < _max_diff(big, small) < BF16_ATOL


# ------------------------------------------------------------------------------------------- overflow
def _overflowing(index):
    """Regression data whose example ``index`` overflows a float16 gradient at scale 1024 (not the loss)."""
    x = XR.copy()
    x[index] = 3e3  # forward finite in float16; d(loss)/d(output) * 1024 ~ 4e5 > 65504
    return x


def _replica_finite(strategy, variable):
    return [bool(np.isfinite(v.numpy()).all()) for v in strategy.experimental_local_results(variable)]


def _scaled_sgd(k, scale=1024.0, statistics=False):
    return Accumulate(LSO(keras.optimizers.SGD(0.1, momentum=0.9), initial_scale=scale), steps=k,
                      statistics=statistics)


def test_overflow_in_one_micro_batch_on_one_replica_skips_the_whole_update():
    """k = 4, global micro-batch 16 = 8 per replica: example 24 is in replica 1's half of micro-batch 2."""
    strategy = _mirrored()
    with strategy.scope():
        acc = _scaled_sgd(4, statistics=True)
        model = _regressor(acc)
    x = _overflowing(24)
    initial = model.get_weights()
    model.fit(x[:32], YR[:32], batch_size=16, shuffle=False, verbose=0)  # micro-batches 1 and 2 of 4
    assert _replica_finite(strategy, acc._accumulators[0]) == [True, False]  # only replica 1 overflowed
    model.fit(x[32:64], YR[32:64], batch_size=16, shuffle=False, verbose=0)  # 3 and 4: the update
    for w, w0 in zip(model.get_weights(), initial):
        np.testing.assert_array_equal(w, w0)  # skipped on both replicas: the weights are exactly unchanged
    assert int(acc.updates.numpy()) == 0 and int(acc.skipped_updates.numpy()) == 1
    assert int(acc.iterations.numpy()) == 4 and int(acc.micro_step.numpy()) == 0
    assert float(acc.loss_scale.numpy()) == 512.0  # halved once, not per micro-batch or per replica
    assert int(acc.step_counter.numpy()) == 0
    for a in acc._accumulators:
        assert all(not v.numpy().any() for v in strategy.experimental_local_results(a))  # cleared
    assert np.isnan(acc.micro_batch_sq_norm.numpy()) and np.isnan(acc.update_sq_norm.numpy())  # no measurement

    # Training goes on: the next update is the one a fresh model at scale 512 makes on the same data.
    model.fit(XR[64:128], YR[64:128], batch_size=16, shuffle=False, verbose=0)
    with strategy.scope():
        fresh_acc = _scaled_sgd(4, scale=512.0, statistics=True)
        fresh = _regressor(fresh_acc)
    fresh.fit(XR[64:128], YR[64:128], batch_size=16, shuffle=False, verbose=0)
    assert _max_diff(model, fresh) == 0.0
    assert int(acc.updates.numpy()) == 1 and int(acc.step_counter.numpy()) == 1
    assert float(acc.loss_scale.numpy()) == 512.0
    assert float(acc.update_sq_norm.numpy()) == float(fresh_acc.update_sq_norm.numpy()) > 0


def test_overflow_on_replica_1_is_seen_with_k_1():
    """Without accumulation too: the decision is taken on the all-reduced gradient."""
    with _mirrored().scope():
        acc = _scaled_sgd(1)
        model = _regressor(acc)
    initial = model.get_weights()
    model.fit(_overflowing(24)[16:32], YR[16:32], batch_size=16, shuffle=False, verbose=0)
    for w, w0 in zip(model.get_weights(), initial):
        np.testing.assert_array_equal(w, w0)
    assert int(acc.skipped_updates.numpy()) == 1 and float(acc.loss_scale.numpy()) == 512.0


def test_overflow_with_jit_compile():
    acc = _scaled_sgd(4)
    model = _regressor(acc)
    model.compile(acc, "mse", jit_compile=True)
    initial = model.get_weights()
    model.fit(_overflowing(20)[:64], YR[:64], batch_size=16, shuffle=False, verbose=0)
    for w, w0 in zip(model.get_weights(), initial):
        np.testing.assert_array_equal(w, w0)
    assert int(acc.skipped_updates.numpy()) == 1 and float(acc.loss_scale.numpy()) == 512.0
    model.fit(XR[64:128], YR[64:128], batch_size=16, shuffle=False, verbose=0)
    assert int(acc.updates.numpy()) == 1 and all(np.isfinite(w).all() for w in model.get_weights())


def test_keras_loss_scale_optimizer_alone_decides_on_replica_0():
    """Keras 3.15's LossScaleOptimizer under MirroredStrategy checks replica 0's unreduced gradients only.

    Documents why bstf wraps a LossScaleOptimizer in Accumulate even for k = 1 (above): an overflow on
    replica 1 reaches the weights. If a Keras upgrade makes this fail, Keras checks the reduced gradient.
    """
    with _mirrored().scope():
        model = _regressor(LSO(keras.optimizers.SGD(0.1), initial_scale=1024.0))
    model.fit(_overflowing(24)[16:32], YR[16:32], batch_size=16, shuffle=False, verbose=0)
    assert float(model.optimizer.dynamic_scale.numpy()) == 1024.0  # no overflow seen
    assert not all(np.isfinite(w).all() for w in model.get_weights())


# ------------------------------------------------------------------------------------------- state
def test_checkpoint_and_saved_model_keep_the_scale_and_counters(tmp_path):
    def make(seed=1):
        acc = Accumulate(LSO(keras.optimizers.SGD(0.1, momentum=0.9), initial_scale=1024.0, dynamic_growth_steps=3),
                         steps=2)
        return acc, _regressor(acc, seed=seed)

    acc, model = make()
    x = _overflowing(3)
    model.fit(x[:112], YR[:112], batch_size=16, shuffle=False, verbose=0)  # skip, update, update, 1 micro-batch
    state = lambda a: (float(a.loss_scale.numpy()), int(a.step_counter.numpy()), int(a.skipped_updates.numpy()),
                       int(a.updates.numpy()), int(a.micro_step.numpy()))
    assert state(acc) == (512.0, 2, 1, 2, 1)
    path = tf.train.Checkpoint(model=model, optimizer=acc).save(str(tmp_path / "ckpt"))
    acc2, model2 = make(seed=7)
    acc2.build(model2.trainable_variables)
    tf.train.Checkpoint(model=model2, optimizer=acc2).restore(path).assert_consumed()
    assert state(acc2) == state(acc)
    model.save(str(tmp_path / "m.keras"))
    with policy("mixed_float16"):  # load_model recompiles: the LossScaledAccumulate is not wrapped again
        loaded = keras.saving.load_model(str(tmp_path / "m.keras"))
    assert type(loaded.optimizer) is LossScaledAccumulate and state(loaded.optimizer) == state(acc)
    # Resume: the next micro-batch completes the third finite update since the halving, so the scale grows.
    for m in (model, model2, loaded):
        m.fit(XR[112:128], YR[112:128], batch_size=16, shuffle=False, verbose=0)
    assert state(acc) == state(acc2) == state(loaded.optimizer) == (1024.0, 0, 1, 3, 0)
    assert _max_diff(model, model2) == 0.0 and _max_diff(model, loaded) == 0.0


# ------------------------------------------------------------------------------------------- measurement
def test_in_fit_statistics_are_of_unscaled_gradients():
    f32 = Accumulate(keras.optimizers.SGD(0.1), steps=4, statistics=True)
    f16 = Accumulate(_pinned(keras.optimizers.SGD(0.1)), steps=4, statistics=True)
    for opt, dtype in ((f32, "float32"), (f16, "mixed_float16")):
        _classifier(opt, dtype).fit(X[:64], Y[:64], batch_size=16, shuffle=False, verbose=0)
    # Scaled gradients would be 1024**2 times larger; float16 rounding moves the norms by ~1e-4.
    np.testing.assert_allclose(f16.micro_batch_sq_norm.numpy(), f32.micro_batch_sq_norm.numpy(), rtol=1e-3)
    np.testing.assert_allclose(f16.update_sq_norm.numpy(), f32.update_sq_norm.numpy(), rtol=1e-3)


XN = RNG.randn(512, 8).astype("float32")
YN = (XN @ RNG.randn(8, 1) + 0.5 * RNG.randn(512, 1)).astype("float32")


def _tiny_mse(y, p):
    """An MSE 1e7 times smaller: its unscaled float16 gradients are subnormal (< 6.1e-5) or zero."""
    return 1e-7 * keras.ops.mean(keras.ops.square(y - p))


def _measured_model(dtype):
    with policy(dtype):
        keras.utils.set_random_seed(1)
        m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    m.compile(keras.optimizers.SGD(0.1, momentum=0.9), _tiny_mse)
    return m


def _noise_scale(dtype):
    return analysis.noise_scale(_measured_model(dtype), (XN, YN), small_batch=16, big_batch=256, num_batches=4)


@pytest.mark.parametrize("dtype, rtol", [("mixed_float16", 1e-3), ("mixed_bfloat16", 2e-2)])
def test_noise_scale_under_mixed_precision_matches_float32(dtype, rtol):
    ref, got = _noise_scale("float32"), _noise_scale(dtype)
    for name in ("b_simple", "grad_norm_sq", "trace_sigma"):
        np.testing.assert_allclose(getattr(got, name), getattr(ref, name), rtol=rtol, err_msg=name)


def test_noise_scale_float16_without_loss_scale_would_be_off(monkeypatch):
    """The tolerance above is tight enough to catch unscaled float16 gradients."""
    ref = _noise_scale("float32")
    monkeypatch.setattr(noise_scale_module, "_initial_loss_scale", lambda model: 1.0)
    got = _noise_scale("mixed_float16")
    assert abs(got.b_simple / ref.b_simple - 1) > 1e-2


def test_finder_under_float16_matches_float32():
    reports = {}
    for dtype in ("float32", "mixed_float16"):
        model = _measured_model(dtype)
        reports[dtype] = find_batch_size(model, (XN, YN), min_batch=32, max_batch=64, num_updates=2,
                                         noise_scale_batches=(16, 256), noise_scale_num_batches=4)
        # The optimizer's state is restored: no update counted, momentum slots zero, the loss scale unchanged.
        fresh = _measured_model(dtype)
        fresh.optimizer.build(fresh.trainable_variables)
        assert len(model.optimizer.variables) == len(fresh.optimizer.variables)
        for v, f in zip(model.optimizer.variables, fresh.optimizer.variables):
            np.testing.assert_array_equal(v.numpy(), f.numpy(), err_msg=v.path)
    np.testing.assert_allclose(reports["mixed_float16"].noise_scale, reports["float32"].noise_scale, rtol=1e-3)
    assert [m.status for m in reports["mixed_float16"].measurements] == ["ok", "ok"]
    assert isinstance(_measured_model("mixed_float16").optimizer, LSO)  # what the float16 run measured with
