"""FollowPlan: model.fit at a fixed physical batch follows a plan exactly as bstf.fit does."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import bstf
from bstf.callbacks import FollowPlan

N, B = 200, 8  # 25 micro-batches per epoch; phase 1's updates of 16 straddle the end of epoch 2
RNG = np.random.RandomState(0)
X = RNG.randn(N, 6).astype("float32")
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype("int64") + (X[:, 2] > 1).astype("int64")
DATA = tf.data.Dataset.from_tensor_slices((X, Y))
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _plan(**kw):
    # batches 8 | 16 | 32 at epochs 1 and 2, a linear LR warmup over the first half epoch
    return bstf.NoiseScalePlan(**{"train_size": N, "base_lr": 0.05, "base_batch": B, "base_momentum": 0.9,
                                  "milestones": [1, 2], "factor": 2, "mode": "increase_batch",
                                  "warmup_epochs": 0.5, **kw})


def _model(optimizer=None, strategy=None):
    with (strategy or tf.distribute.get_strategy()).scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
        model.compile(optimizer or keras.optimizers.SGD(0.1, momentum=0.9), LOSS, metrics=["accuracy"])
    return model


class RecordUpdates(keras.callbacks.Callback):
    """Clock and learning rate when every update starts (read before its first micro-batch)."""

    def __init__(self, follow):
        super().__init__()
        self.follow, self.starts, self.lrs = follow, [], []

    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.optimizer.micro_step.numpy()) == 0:
            self.starts.append(int(self.follow.clock.examples.numpy()))
            self.lrs.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def test_model_fit_follows_the_plan_as_bstf_fit_does():
    plan = _plan()
    reference = _model()
    h = bstf.fit(reference, DATA, plan, 3, max_physical_batch=B, shuffle=False, seed=0, verbose=0)
    model = _model()
    follow = FollowPlan(plan, batch_size=B)
    record = RecordUpdates(follow)
    history = model.fit(X, Y, batch_size=B, epochs=3, shuffle=False, verbose=0, callbacks=[follow, record])
    for a, b in zip(reference.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # the same updates: 25 of 8, 13 of 16 (the last one straddles epoch 2's end), 6 of 32
    assert [p["updates"] for p in h.phases] == [25, 13, 6]
    assert int(model.optimizer.updates.numpy()) == h.updates == 44
    want = list(range(0, 200, 8)) + list(range(200, 408, 16)) + list(range(408, 600, 32))
    assert record.starts == want
    assert int(follow.clock.examples.numpy()) == 600
    # the LR of every update is the plan's at the clock when it starts (warmup, then the phases)
    np.testing.assert_allclose(record.lrs, [plan.at(float(np.float32(x / N))).learning_rate for x in want],
                               rtol=1e-6)
    # the clock counts applied updates: epoch 2 ends inside the update of 16 that starts at 392
    assert history.history["examples"] == [200, 392, 600]
    assert history.history["updates"] == [25, 37, 44]
    assert history.history["batch_size"] == [16, 16, 32]  # the batch of the update in progress or next


def test_a_further_fit_continues_the_plan():
    plan = _plan()
    reference = _model()
    bstf.fit(reference, DATA, plan, 3, max_physical_batch=B, shuffle=False, seed=0, verbose=0)
    model = _model()
    follow = FollowPlan(plan, batch_size=B)
    with pytest.warns(UserWarning, match="1 of its 2 micro-batches were accumulated but not applied"):
        model.fit(X, Y, batch_size=B, epochs=2, shuffle=False, verbose=0, callbacks=[follow])
    model.fit(X, Y, batch_size=B, epochs=1, shuffle=False, verbose=0, callbacks=[follow])  # applies it first
    for a, b in zip(reference.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_momentum_follows_the_plan_with_bstf_sgd():
    plan = _plan(target_momentum=0.95)  # B ∝ 1/(1 − m): batches 16 | 32 | 64
    model = _model(bstf.optimizers.SGD(0.1, momentum=0.0))
    follow = FollowPlan(plan, batch_size=B)
    with pytest.warns(UserWarning, match="ended inside an update"):  # 200 = 12 x 16 + 8
        model.fit(X, Y, batch_size=B, epochs=1, shuffle=False, verbose=0, callbacks=[follow])
    assert follow.steps == [2, 4, 8]
    np.testing.assert_allclose(float(model.optimizer.inner.current_momentum()), 0.95, rtol=1e-6)


def test_mixed_float16_follows_the_plan_as_bstf_fit_does():
    """A LossScaleOptimizer: the plan drives its inner SGD, Accumulate makes one loss-scale decision per update."""
    before = keras.config.dtype_policy().name
    models = []
    try:
        for _ in range(2):
            keras.mixed_precision.set_dtype_policy("mixed_float16")
            models.append(_model(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1, momentum=0.9),
                                                                     initial_scale=2.0**10)))
    finally:
        keras.mixed_precision.set_dtype_policy(before)
    reference, model = models
    h = bstf.fit(reference, DATA, _plan(), 3, max_physical_batch=B, shuffle=False, seed=0, verbose=0)
    follow = FollowPlan(_plan(), batch_size=B)
    model.fit(X, Y, batch_size=B, epochs=3, shuffle=False, verbose=0, callbacks=[follow])
    assert isinstance(model.optimizer, bstf.optimizers.LossScaledAccumulate)
    assert int(model.optimizer.updates.numpy()) == h.updates == 44 and h.skipped_updates == 0
    inner = model.optimizer.inner.inner_optimizer
    assert float(inner.learning_rate) == pytest.approx(_plan().at(3.0).learning_rate, rel=1e-6)
    for a, b in zip(reference.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_mirrored_equals_one_device():
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs 2 logical CPUs (tests/conftest.py)")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    single, mirrored = _model(), _model(strategy=strategy)
    mirrored.set_weights(single.get_weights())
    for model in (single, mirrored):
        model.fit(X, Y, batch_size=B, epochs=3, shuffle=False, verbose=0, callbacks=[FollowPlan(_plan(), B)])
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_ending_inside_an_update_warns():
    plan = _plan(milestones=[], batch=24, base_batch=24)  # 200 is not a multiple of 24 = 3 x 8
    with pytest.warns(UserWarning, match="model.fit ended inside an update: 1 of its 3 micro-batches"):
        _model().fit(X, Y, batch_size=B, epochs=1, shuffle=False, verbose=0, callbacks=[FollowPlan(plan, B)])


def test_get_config_round_trip():
    follow = FollowPlan(_plan(), batch_size=4)
    again = FollowPlan.from_config(follow.get_config())
    assert again.plan == follow.plan and again.batch_size == 4 and again.steps == [2, 4, 8]
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(follow)).get_config() \
        == follow.get_config()


@pytest.mark.parametrize("args, error, match", [
    (("plan", 8), TypeError, "plan must be a bstf.NoiseScalePlan, got str"),
    ((_plan(), 0), ValueError, "batch_size must be an integer >= 1, got 0"),
    ((_plan(), 8.0), TypeError, "batch_size must be an integer"),
    ((_plan(), 16), ValueError, r"the plan's batches \[8\] are not multiples of batch_size=16, .* \(e.g. 8\)"),
    ((_plan(base_batch=12), 8), ValueError, r"batches \[12\] are not multiples of batch_size=8, .*divides \[12, 24, 48\] \(e.g. 12\)"),
    ((_plan(), 8, "clock"), TypeError, "clock must be a bstf.Clock, got str"),
    ((_plan(), 8, bstf.Clock(100)), ValueError, r"clock.train_size \(100\) differs from plan.train_size \(200\)"),
])
def test_init_validates(args, error, match):
    with pytest.raises(error, match=match):
        FollowPlan(*args)


@pytest.mark.parametrize("optimizer, match", [
    (keras.optimizers.SGD(0.1, momentum=0.5), r"plan assumes momentum 0.9 .* optimizer's momentum is 0.5"),
    (keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5), momentum=0.9),
     "the optimizer was created with its own learning-rate schedule; FollowPlan sets the learning rate"),
    (bstf.optimizers.Accumulate(keras.optimizers.SGD(0.1, momentum=0.9), 2),
     "compiled with a bstf.optimizers.Accumulate; FollowPlan accumulates by itself"),
])
def test_an_optimizer_the_plan_cannot_drive_is_refused_before_the_first_step(optimizer, match):
    model = _model(optimizer)
    before = model.get_weights()
    with pytest.raises(ValueError, match=match):
        model.fit(X, Y, batch_size=B, epochs=1, verbose=0, callbacks=[FollowPlan(_plan(), B)])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_steps_per_execution_is_refused():
    model = _model()
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), LOSS, steps_per_execution=5)
    with pytest.raises(ValueError, match="FollowPlan needs steps_per_execution=1 .got 5."):
        model.fit(X, Y, batch_size=B, epochs=1, verbose=0, callbacks=[FollowPlan(_plan(), B)])
