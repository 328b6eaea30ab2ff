import json

import numpy as np
import pytest
import tensorflow as tf
import keras
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import bstf
from bstf import analysis
from bstf.callbacks import NoiseScaleMonitor


def read_events(log_dir):
    """{tag: [(step, value)]} read back with TensorBoard's own event reader."""
    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"]}


def _data(n=512):
    rng = np.random.RandomState(0)
    x = rng.randn(n, 8).astype("float32")
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int64")


def _model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dropout(0.2), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_logs_tensorboard_history_and_examples_axis(tmp_path):
    x, y = _data()
    clock = bstf.Clock(train_size=len(x))
    advance = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: clock.advance(32))
    monitor = NoiseScaleMonitor((x, y), every_n_updates=5, big_batch=64, small_batch=16, ema=None,
                                log_dir=str(tmp_path), clock=clock)
    history = _model().fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[advance, monitor], shuffle=False)
    # 16 updates per epoch: measured after updates 1, 6, 11, ..., 31.
    assert monitor.history["updates"] == [1, 6, 11, 16, 21, 26, 31]
    events = read_events(tmp_path)
    for tag in ("b_simple", "grad_norm_sq", "trace_sigma"):
        steps, values = zip(*events[f"noise_scale/{tag}"])
        assert list(steps) == monitor.history["updates"]
        np.testing.assert_allclose(values, monitor.history[tag], rtol=1e-6)
        steps, _ = zip(*events[f"noise_scale_vs_examples/{tag}"])
        assert list(steps) == [32 * u for u in monitor.history["updates"]]
        assert len(history.history[tag]) == 2
    # ema=None: the logged B_simple is the ratio of the plain means of the raw two-batch estimates.
    small, big = np.array(monitor.history["g_small_sq"]), np.array(monitor.history["g_big_sq"])
    g2 = np.mean((64 * big - 16 * small) / 48)
    tr = np.mean((small - big) / (1 / 16 - 1 / 64))
    assert monitor.history["b_simple"][-1] == pytest.approx(tr / g2, rel=1e-9)
    assert history.history["b_simple"][-1] == pytest.approx(tr / g2, rel=1e-9)


def test_training_trajectory_is_unchanged():
    x, y = _data()
    plain = _model()
    plain.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    monitored = _model()
    monitor = NoiseScaleMonitor((x, y), every_n_updates=3, big_batch=64)
    monitored.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False, callbacks=[monitor])
    assert len(monitor.history["updates"]) == 6
    for a, b in zip(plain.variables, monitored.variables):  # incl. BN statistics and dropout RNG
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_measure_agrees_with_analysis_function():
    x, y = _data()
    model = _model()
    monitor = NoiseScaleMonitor((x, y), big_batch=64, small_batch=8, ema=None, training=False)
    monitor.set_model(model)
    model.optimizer.build(model.trainable_variables)
    for _ in range(3):
        monitor.measure()
    ref = analysis.noise_scale(model, (x, y), small_batch=8, big_batch=64, num_batches=3, training=False)
    # Same seed, same shuffle: the same three batches.
    np.testing.assert_allclose(monitor.history["g_small_sq"], ref.g_small_sq, rtol=1e-5)
    assert monitor.b_simple == pytest.approx(ref.b_simple, rel=1e-5)


def test_counts_parameter_updates_under_bstf_fit_with_accumulation():
    x, y = _data(256)
    model = _model()
    plan = bstf.NoiseScalePlan(train_size=256, base_lr=0.05, base_batch=32, base_momentum=0.0)
    monitor = NoiseScaleMonitor((x, y), every_n_updates=3, big_batch=64, small_batch=8)
    history = bstf.fit(model, tf.data.Dataset.from_tensor_slices((x, y)), plan, 2, max_physical_batch=16,
                       callbacks=[monitor], verbose=0, seed=0)
    # 8 updates of 32 per epoch, each accumulated from 2 micro-batches of 16: the interval and the logged
    # step are parameter updates (Accumulate.updates), not micro-steps (Accumulate.iterations, 2 per update).
    assert monitor.history["updates"] == [1, 4, 7, 10, 13, 16]
    assert history.history["b_simple"][-1] == pytest.approx(monitor.b_simple)


def test_config_round_trip(tmp_path):
    x, y = _data()
    monitor = NoiseScaleMonitor((x, y), every_n_updates=7, big_batch=128, ema=0.8, log_dir=tmp_path, seed=3,
                                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), training=False)
    config = monitor.get_config()
    assert config["log_dir"] == str(tmp_path)
    assert {k: v for k, v in config.items() if k != "loss"} == {
        "every_n_updates": 7, "small_batch": 16, "big_batch": 128, "ema": 0.8, "log_dir": str(tmp_path),
        "seed": 3, "training": False}
    # Through Keras' serialization (JSON and the "bstf>" registry); the data is passed again.
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(monitor)))
    assert serialized["registered_name"] == "bstf>NoiseScaleMonitor"
    cls = keras.saving.get_registered_object(serialized["registered_name"])
    restored = cls.from_config(serialized["config"], data=(x, y))
    assert isinstance(restored.loss, keras.losses.SparseCategoricalCrossentropy) and restored.loss.from_logits
    assert restored.get_config() == config
    # A loss given by name survives; a plain function is not serialized (None) and must be passed again.
    assert NoiseScaleMonitor((x, y), loss="mse").get_config()["loss"] == "mse"
    plain = NoiseScaleMonitor((x, y), loss=lambda a, b: tf.reduce_mean(b)).get_config()
    assert plain["loss"] is None and plain["log_dir"] is None


def test_under_mirrored_strategy_matches_single_device():
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs the 2 logical CPUs of tests/conftest.py")
    x, y = _data()
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()).scope():
        mirrored = _model()
    monitor = NoiseScaleMonitor((x, y), every_n_updates=4, big_batch=64, small_batch=8, ema=None)
    mirrored.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False, callbacks=[monitor])
    assert monitor.history["updates"] == [1, 5, 9, 13]
    single = _model()
    single.set_weights(mirrored.get_weights())
    single.optimizer.build(single.trainable_variables)
    a = NoiseScaleMonitor((x, y), big_batch=64, small_batch=8, training=False, seed=5)
    b = NoiseScaleMonitor((x, y), big_batch=64, small_batch=8, training=False, seed=5)
    a.set_model(mirrored)
    b.set_model(single)
    a.measure(0)
    b.measure(0)
    np.testing.assert_allclose(a.history["g_small_sq"], b.history["g_small_sq"], rtol=1e-4)
    np.testing.assert_allclose(a.history["g_big_sq"], b.history["g_big_sq"], rtol=1e-4)


def test_bad_input():
    x, y = _data()
    with pytest.raises(ValueError, match=r"small_batch \(64\) must be smaller than big_batch \(64\)"):
        NoiseScaleMonitor((x, y), small_batch=64, big_batch=64)
    with pytest.raises(ValueError, match="data has 512 examples, fewer than big_batch=1024"):
        NoiseScaleMonitor((x, y), big_batch=1024)
    unknown_size = tf.data.Dataset.from_tensor_slices((x[:100], y[:100])).filter(lambda *_: True)
    with pytest.raises(ValueError, match="data has 100 examples, fewer than big_batch=256"):
        NoiseScaleMonitor(unknown_size, big_batch=256)
    with pytest.raises(ValueError, match="every_n_updates must be an integer >= 1, got 0"):
        NoiseScaleMonitor((x, y), every_n_updates=0)
    with pytest.raises(ValueError, match=r"ema must be in \[0.0, 1.0\), got 1.5"):
        NoiseScaleMonitor((x, y), ema=1.5)
    with pytest.raises(TypeError, match="clock must be a bstf.Clock"):
        NoiseScaleMonitor((x, y), clock=5)
    with pytest.raises(TypeError, match="log_dir must be None, a directory or a tf.summary.SummaryWriter"):
        NoiseScaleMonitor((x, y), log_dir=3)
    with pytest.raises(TypeError, match="data must be a bstf.data.Data"):
        NoiseScaleMonitor(x)
    frozen = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, trainable=False)])
    frozen.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="has no trainable weights"):
        frozen.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[NoiseScaleMonitor((x, y), big_batch=64)])
