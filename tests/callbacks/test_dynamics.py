import json

import numpy as np
import pytest
import tensorflow as tf
import keras
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bstf.callbacks import DistanceFromInit, GradientHistogram


def _setup():
    rng = np.random.RandomState(0)
    x = rng.randn(128, 4).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="relu", name="hidden"),
                              keras.layers.Dense(2, name="out")], name="net")
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, x, y


def _accumulator(log_dir):
    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def test_distance_from_init_logs_total_and_layers(tmp_path):
    model, x, y = _setup()
    init = [w.copy() for w in model.get_weights()]
    callback = DistanceFromInit(log_dir=str(tmp_path))
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[callback])
    final = model.get_weights()
    hidden = np.sqrt(sum(np.sum((final[i] - init[i]) ** 2) for i in (0, 1)))
    out = np.sqrt(sum(np.sum((final[i] - init[i]) ** 2) for i in (2, 3)))
    acc = _accumulator(tmp_path)
    tags = set(acc.Tags()["tensors"])
    assert {"distance_from_init/total", "distance_from_init/net/hidden", "distance_from_init/net/out"} <= tags
    total = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors("distance_from_init/total")]
    assert [s for s, _ in total] == [0, 1, 2]
    assert total[0][1] == 0.0
    assert total[-1][1] == pytest.approx(np.sqrt(hidden**2 + out**2), rel=1e-5)
    last_hidden = float(tf.make_ndarray(acc.Tensors("distance_from_init/net/hidden")[-1].tensor_proto))
    assert last_hidden == pytest.approx(hidden, rel=1e-5)
    assert history.history["distance_from_init"][-1] == pytest.approx(total[-1][1], rel=1e-6)
    assert DistanceFromInit.from_config(callback.get_config()).get_config() == callback.get_config()


def test_gradient_histogram_writes_histograms(tmp_path):
    model, x, y = _setup()
    callback = GradientHistogram((x, y), batch_size=16, every_n_epochs=2, log_dir=str(tmp_path), trials=3,
                                 buckets=10)
    history = model.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[callback])
    acc = _accumulator(tmp_path)
    tags = set(acc.Tags()["tensors"])
    assert {"gradients/all", "gradients/net/hidden/kernel", "gradients/net/out/bias", "gradients/norm"} <= tags
    events = acc.Tensors("gradients/all")
    assert [e.step for e in events] == [2, 4]
    buckets = tf.make_ndarray(events[-1].tensor_proto)  # (buckets, 3): left edge, right edge, count
    assert buckets.shape == (10, 3)
    assert buckets[:, 2].sum() == 3 * model.count_params()
    per_var = tf.make_ndarray(acc.Tensors("gradients/net/hidden/kernel")[0].tensor_proto)
    assert per_var[:, 2].sum() == 3 * 4 * 5
    assert callback.history["epoch"] == [2, 4] and len(callback.history["norms"][0]) == 3
    assert history.history["gradient_norm"][-1] == pytest.approx(np.mean(callback.history["norms"][-1]))
    config = callback.get_config()
    assert GradientHistogram.from_config(config, data=(x, y)).get_config() == config


def test_config_round_trips(tmp_path):
    _, x, y = _setup()
    distance = DistanceFromInit(log_dir=tmp_path, per_layer=False)
    assert distance.get_config() == {"log_dir": str(tmp_path), "per_layer": False}
    # Needs no data: a full Keras round trip through JSON and the "bstf>" registry.
    restored = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(distance))))
    assert isinstance(restored, DistanceFromInit) and restored.get_config() == distance.get_config()
    histogram = GradientHistogram((x, y), batch_size=8, every_n_epochs=3, log_dir=str(tmp_path), trials=2,
                                  buckets=7, per_variable=False, seed=4, loss="sparse_categorical_crossentropy",
                                  training=False)
    config = histogram.get_config()
    assert config == {"batch_size": 8, "every_n_epochs": 3, "log_dir": str(tmp_path), "trials": 2, "buckets": 7,
                      "per_variable": False, "seed": 4, "loss": "sparse_categorical_crossentropy",
                      "training": False}
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(histogram)))
    assert serialized["registered_name"] == "bstf>GradientHistogram"
    cls = keras.saving.get_registered_object(serialized["registered_name"])
    assert cls.from_config(serialized["config"], data=(x, y)).get_config() == config


def test_bad_input():
    _, x, y = _setup()
    with pytest.raises(ValueError, match="data has 128 examples, fewer than batch_size=256"):
        GradientHistogram((x, y), batch_size=256)
    with pytest.raises(ValueError, match="every_n_epochs must be an integer >= 1, got 0"):
        GradientHistogram((x, y), every_n_epochs=0)
    with pytest.raises(ValueError, match="trials must be an integer >= 1, got 0"):
        GradientHistogram((x, y), trials=0)
    with pytest.raises(TypeError, match="log_dir must be None, a directory or a tf.summary.SummaryWriter"):
        DistanceFromInit(log_dir=3)
    with pytest.raises(TypeError, match=r"initial_weights must be a dict \{variable path: array\} or None"):
        DistanceFromInit(initial_weights=[np.zeros(2)])
    # Weights of the wrong shape for the model: named in the error at the first epoch end.
    model, _, _ = _setup()
    bad = {v.path: np.zeros(v.shape) for v in model.trainable_variables}
    bad["net/hidden/kernel"] = np.zeros((3, 5))
    with pytest.raises(ValueError, match=r"weight 'net/hidden/kernel' has shape \(4, 5\) but its initial value "
                                         r"has shape \(3, 5\)"):
        model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[DistanceFromInit(initial_weights=bad)])
