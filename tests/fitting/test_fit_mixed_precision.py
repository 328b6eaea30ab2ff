"""bstf.fit under mixed precision: mixed_float16 (a LossScaleOptimizer) and mixed_bfloat16.

The compiled LossScaleOptimizer always runs inside an Accumulate (k >= 1), so an overflow anywhere — any
micro-batch, any replica — skips the whole update once, on the gradient reduced over replicas. Overflows
are injected deterministically: one example of an unshuffled data set with a huge feature (its float16
gradient overflows at the loss scale, its float32 loss stays finite), so they fall at a known update.

Tolerances (tiny MLP, 3 epochs, batch 8 -> 16 -> 32 with max_physical_batch=8, i.e. k = 1, 2, 4; measured
on this machine): mixed_float16 ends within 1.6e-4 of float32 in the weights (asserted: 1e-3, about two
float16 roundings of these weights, 2**-11 relative), mixed_bfloat16 within 3.6e-3 (asserted: 2e-2,
bfloat16 keeping an 8-bit significand, 2**-8 relative, over 21 updates).
"""

import json
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import bstf
from bstf import tags
from bstf.fitting.state import RunState

LSO = keras.optimizers.LossScaleOptimizer
N = 96
RNG = np.random.RandomState(0)
X = RNG.randn(N, 6).astype("float32")
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype("int64")
YR = (X[:, :1] - 0.5 * X[:, 1:2]).astype("float32")  # regression targets (the overflow tests)
HUGE = 54  # unshuffled, batch 16 as 2 x 8: update 4 (examples 48-63), micro-batch 1, replica 1 of 2 (52-55)
X_HUGE = X.copy()
X_HUGE[HUGE, 0] = 3e3  # its scaled float16 gradient overflows; its float32 loss is finite
X_NAN = X.copy()
X_NAN[HUGE, 2] = np.nan
FP16_ATOL, BF16_ATOL = 1e-3, 2e-2


@pytest.fixture(autouse=True)
def float32_policy_after():
    before = keras.config.dtype_policy().name
    yield
    keras.mixed_precision.set_dtype_policy(before)


def _mirrored():
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs 2 logical CPUs")
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())


def _model(policy="float32", scale=None, growth=10**9, strategy=None, regression=False):
    """A tiny MLP under ``policy``; with ``scale`` its SGD is wrapped in a LossScaleOptimizer."""
    with (strategy or tf.distribute.get_strategy()).scope():
        keras.mixed_precision.set_dtype_policy(policy)
        keras.utils.set_random_seed(1)
        m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu" if regression else "tanh"),
                              keras.layers.Dense(1 if regression else 2)])
        keras.mixed_precision.set_dtype_policy("float32")
        opt = keras.optimizers.SGD(0.05 if regression else 0.1, momentum=0.9)
        if scale is not None:
            opt = LSO(opt, initial_scale=scale, dynamic_growth_steps=growth)
        loss = "mse" if regression else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        m.compile(opt, loss)
    return m


def _data(x=X, y=Y):
    return tf.data.Dataset.from_tensor_slices((x, y))


GROWING = bstf.NoiseScalePlan(N, 0.05, 8, milestones=[1, 2], factor=2, mode="increase_batch")  # 8, 16, 32
ACCUMULATED = bstf.NoiseScalePlan(N, 0.01, 16, base_momentum=0.9)  # 6 updates of 2 x 8 per epoch


def _max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a.get_weights(), b.get_weights()))


class Record(keras.callbacks.Callback):
    """The weights (every replica's copy) and the loss scale after every update."""

    def __init__(self, strategy=None):
        super().__init__()
        self.strategy, self.weights, self.scales = strategy or tf.distribute.get_strategy(), [], []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append([[np.array(r) for r in self.strategy.experimental_local_results(v.value)]
                             for v in self.model.trainable_variables])
        self.scales.append(float(self.model.optimizer.loss_scale.numpy()))


# ============================================================================ equivalence with float32
def _growing_run(policy, scale=None):
    model = _model(policy, scale)
    h = bstf.fit(model, _data(), GROWING, 3, max_physical_batch=8, shuffle=False, verbose=0, seed=0)
    return model, h


@pytest.fixture(scope="module")
def float32_run():
    return _growing_run("float32")


def test_mixed_float16_growing_accumulated_plan_ends_near_float32(float32_run):
    reference, h32 = float32_run
    model, h = _growing_run("mixed_float16", scale=2.0**10)
    assert [p["accumulation"] for p in h.phases] == [1, 2, 4] and h.updates == h32.updates == 21
    assert isinstance(model.optimizer, LSO)
    assert float(model.optimizer.inner_optimizer.learning_rate.numpy()) == pytest.approx(0.05)  # the plan's
    assert model.layers[0].compute_dtype == "float16" and model.layers[0].kernel.dtype == "float32"
    assert _max_diff(model, reference) < FP16_ATOL  # measured 1.6e-4
    np.testing.assert_allclose(h.history["loss"], h32.history["loss"], rtol=1e-3)
    assert h.skipped_updates == 0 and h.history["skipped_updates"] == [0, 0, 0]
    assert h.history["loss_scale"] == [1024.0] * 3


def test_mixed_bfloat16_growing_accumulated_plan_ends_near_float32(float32_run):
    reference, h32 = float32_run
    model, h = _growing_run("mixed_bfloat16")
    assert model.layers[0].compute_dtype == "bfloat16" and model.layers[0].kernel.dtype == "float32"
    assert h.updates == 21 and np.isfinite(h.history["loss"]).all()
    assert "loss_scale" not in h.history and "skipped_updates" not in h.history
    assert 0 < _max_diff(model, reference) < BF16_ATOL  # measured 3.6e-3


# ============================================================================ an overflow
def test_overflow_on_one_replica_skips_the_update_on_all_and_halves_the_scale_once(tmp_path):
    strategy = _mirrored()
    model, record = _model("mixed_float16", 2.0**10, strategy=strategy, regression=True), Record(strategy)
    h = bstf.fit(model, _data(X_HUGE, YR), ACCUMULATED, 1, max_physical_batch=8, shuffle=False, verbose=0,
                 strategy=strategy, callbacks=[record], logdir=str(tmp_path), log_every_n_updates=1)
    assert (h.updates, h.skipped_updates, h.history["skipped_updates"]) == (6, 1, [1])
    assert record.scales == [1024.0, 1024.0, 1024.0, 512.0, 512.0, 512.0]  # halved once, at update 4
    for update in record.weights:  # every replica holds the same weights after every update
        for replicas in update:
            np.testing.assert_array_equal(replicas[0], replicas[1])
    unchanged = [np.array_equal(a[0], b[0]) for a, b in zip(record.weights[2], record.weights[3])]
    moved = [np.array_equal(a[0], b[0]) for a, b in zip(record.weights[3], record.weights[4])]
    assert all(unchanged) and not any(moved)  # update 4 skipped, update 5 applied
    inner = model.optimizer.inner_optimizer
    assert int(inner.iterations.numpy()) == 5 and int(model.optimizer.step_counter.numpy()) == 2
    assert np.isfinite(h.history["loss"]).all()
    events = _events(str(tmp_path / tags.TRAIN))
    assert [v for _, v in events[tags.LOSS_SCALE]] == [1024.0, 1024.0, 1024.0, 1024.0, 512.0, 512.0]  # as used
    assert [v for _, v in events[tags.SKIPPED_UPDATES]] == [0, 0, 0, 1, 1, 1]


_WORKER = textwrap.dedent("""
    import bstf, keras, tensorflow as tf, workers
    strategy = bstf.distribute.get_strategy("multi_worker")
    x, y = workers.data({data!r})
    with strategy.scope():
        keras.mixed_precision.set_dtype_policy("mixed_float16")
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
        keras.mixed_precision.set_dtype_policy("float32")
        opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), initial_scale=1024.0,
                                                  dynamic_growth_steps=10**9)
        model.compile(opt, "mse")
    plan = bstf.NoiseScalePlan(len(x), 0.01, 16, base_momentum=0.9)
    h = bstf.fit(model, tf.data.Dataset.from_tensor_slices((x, y)), plan, 1, shuffle=False, verbose=0,
                 max_physical_batch=8)
    workers.save({out!r}, model, updates=h.updates, skipped=h.skipped_updates, scale=h.history["loss_scale"])
""")


@pytest.mark.slow
def test_overflow_on_one_of_two_workers_skips_the_update_on_both(tmp_path, local_workers):
    import workers

    np.savez(tmp_path / "data.npz", x=X_HUGE, y=YR)
    local_workers().run_script(tmp_path, _WORKER.format(data=str(tmp_path / "data.npz"), out=str(tmp_path)))
    single = _model("mixed_float16", 2.0**10, regression=True)
    h = bstf.fit(single, _data(X_HUGE, YR), ACCUMULATED, 1, max_physical_batch=8, shuffle=False, verbose=0)
    assert (h.updates, h.skipped_updates, h.history["loss_scale"]) == (6, 1, [512.0])
    for task in range(2):  # micro-batch 48-55 is split 4 + 4: only worker 1 held the huge example
        weights, fields = workers.results(str(tmp_path), task)
        assert fields == {"updates": 6, "skipped": 1, "scale": [512.0]}
        for a, b in zip(single.get_weights(), weights):
            np.testing.assert_allclose(a, b, atol=FP16_ATOL)


def _events(logdir):
    """{tag: [(step, value)]} of the event files directly in ``logdir``."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [(e.step, tf.make_ndarray(e.tensor_proto).item()) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"] if tag not in (tags.PLAN, "_hparams_/session_start_info")}


def test_noise_scale_measurement_skips_the_overflowed_update():
    model = _model("mixed_float16", 2.0**10, regression=True)
    h = bstf.fit(model, _data(X_HUGE, YR), ACCUMULATED, 2, max_physical_batch=8, shuffle=False, verbose=0,
                 noise_scale_every_n_updates=1)
    assert h.skipped_updates == 2  # the huge example's update, in each epoch
    assert np.isfinite(h.history["b_simple"]).all() and len(h.history["b_simple"]) == 2


# ============================================================================ resume
CKPT_KW = dict(max_physical_batch=8, shuffle=False, verbose=0, seed=0, checkpoint_every_n_updates=2)


class Killed(BaseException):
    """Stands for SIGKILL."""


def _resumable(d, callbacks=()):
    model = _model("mixed_float16", 2.0**10, growth=2, regression=True)
    return model, bstf.fit(model, _data(X_HUGE, YR), ACCUMULATED, 2, checkpoint_dir=d, callbacks=callbacks,
                           **CKPT_KW)


def test_resume_after_a_kill_keeps_the_loss_scale_and_the_skipped_count(tmp_path, monkeypatch):
    record = Record()
    reference, h_ref = _resumable(str(tmp_path / "uninterrupted"), [record])
    scale_ref = float(reference.optimizer.dynamic_scale.numpy())
    assert h_ref.skipped_updates == 2 and len(set(record.scales)) > 2  # it halved and grew (every 2 updates)
    real_save, saves = RunState.save, []

    def save(self, number, record):
        real_save(self, number, record)
        saves.append(number)
        if number == 8:  # after update 8 of 12: one overflow behind, one ahead
            raise Killed()

    d = str(tmp_path / "killed")
    monkeypatch.setattr(RunState, "save", save)
    with pytest.raises(Killed):
        _resumable(d)
    monkeypatch.undo()
    reader = tf.train.load_checkpoint(f"{d}/ckpt-8")  # the loss scale's variables are the optimizer's
    assert reader.get_tensor("optimizer/dynamic_scale/.ATTRIBUTES/VARIABLE_VALUE") == record.scales[7]
    assert json.loads(reader.get_tensor("record/.ATTRIBUTES/py_state"))["skipped_updates"] == 1
    model, h = _resumable(d)
    assert float(model.optimizer.dynamic_scale.numpy()) == scale_ref
    assert int(model.optimizer.step_counter.numpy()) == int(reference.optimizer.step_counter.numpy())
    assert (h.updates, h.skipped_updates, h.history["skipped_updates"]) == (12, 2, h_ref.history["skipped_updates"])
    assert h.history["loss_scale"] == h_ref.history["loss_scale"]
    assert _max_diff(model, reference) < 1e-6


# ============================================================================ divergence
def _expected_message(update, examples):
    return (f"bstf.fit stopped: the training loss or its gradient was not finite (NaN or infinite) at update "
            f"{update} (epoch 1, {examples} examples seen)")


@pytest.mark.parametrize("mirrored", [False, True])
def test_nan_that_survives_unscaling_raises(mirrored):
    strategy = _mirrored() if mirrored else None
    model = _model("mixed_float16", 2.0**10, strategy=strategy, regression=True)
    with pytest.raises(bstf.NonFiniteLossError, match="Nothing was saved") as info:
        bstf.fit(model, _data(X_NAN, YR), ACCUMULATED, 1, max_physical_batch=8, shuffle=False, verbose=0,
                 strategy=strategy)
    assert str(info.value).startswith(_expected_message(4, 48))
    assert (info.value.update, info.value.examples) == (4, 48)


X_DIVERGED = X * 3e3  # every update overflows even unscaled: the loss scale collapses, the loss stays finite


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_a_collapsing_loss_scale_raises_in_both_modes(on_nonfinite):
    model = _model("mixed_float16", 4.0, regression=True)
    with pytest.raises(bstf.NonFiniteLossError) as info:
        bstf.fit(model, _data(X_DIVERGED, YR), ACCUMULATED, 1, max_physical_batch=8, shuffle=False, verbose=0,
                 on_nonfinite=on_nonfinite)
    assert str(info.value).startswith(_expected_message(3, 32))  # 4 -> 2 -> 1 -> 0.5 at update 3
    assert str(info.value).endswith("or pass on_nonfinite='skip' to skip such updates." if on_nonfinite == "raise"
                                    else "the loss scale fell below 1 (every update overflowed): skipping cannot "
                                         "get past it.")
    assert int(model.optimizer.inner_optimizer.iterations.numpy()) == 0  # nothing was ever applied


def test_skip_mode_keeps_a_nan_loss_out_of_the_epoch_mean():
    model = _model("mixed_float16", 2.0**10, regression=True)
    h = bstf.fit(model, _data(X_NAN, YR), ACCUMULATED, 2, max_physical_batch=8, shuffle=False, verbose=0,
                 on_nonfinite="skip")
    assert (h.updates, h.skipped_updates, h.history["skipped_updates"]) == (12, 2, [1, 2])
    assert np.isfinite(h.history["loss"]).all()
    assert h.history["loss_scale"] == [512.0, 256.0]  # each skipped update halved it once


# ============================================================================ the inner optimizer follows the plan
def _wrapped(optimizer, jit=False):
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    keras.utils.set_random_seed(1)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)])
    keras.mixed_precision.set_dtype_policy("float32")
    m.compile(LSO(optimizer, initial_scale=2.0**10), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              jit_compile=jit)
    return m


def test_the_plan_sets_the_inner_optimizers_learning_rate_and_momentum():
    keras_sgd, ours = _wrapped(keras.optimizers.SGD(0.1, momentum=0.9)), _wrapped(bstf.optimizers.SGD(0.1))
    for model in (keras_sgd, ours):
        bstf.fit(model, _data(), GROWING, 2, max_physical_batch=8, shuffle=False, verbose=0, seed=0)
    assert _max_diff(keras_sgd, ours) < 1e-6  # bstf's SGD got the plan's momentum 0.9
    inner = ours.optimizer.inner_optimizer
    assert float(inner.momentum) == 0.0 and float(inner.learning_rate.numpy()) == pytest.approx(0.05)  # as left
    assert isinstance(ours.optimizer, LSO) and not isinstance(ours.optimizer, bstf.optimizers.Accumulate)


def test_jit_compile_under_mixed_float16():
    h = bstf.fit(_wrapped(keras.optimizers.SGD(0.1, momentum=0.9), jit=True), _data(), GROWING, 3,
                 max_physical_batch=8, shuffle=False, verbose=0, seed=0)
    assert h.updates == 21 and h.skipped_updates == 0 and np.isfinite(h.history["loss"]).all()
