import numpy as np
import pytest
import keras
import keras_tuner as kt
import tensorflow as tf

from bstf import tuner as bt


def _data(n=256, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 8).astype("float32")
    return x, (x[:, 0] + x[:, 1] > 0).astype("int64")


def build(hp, learning_rate):
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)])
    m.compile(keras.optimizers.SGD(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
    return m


@pytest.mark.parametrize("rule, expected", [("linear", 0.05 * 64 / 16), ("sqrt", 0.05 * 2.0), ("none", 0.05)])
def test_learning_rate_is_coupled(rule, expected):
    hm = bt.BatchSizeHyperModel(build, base_lr=0.05, base_batch=16, batch_sizes=[64], rule=rule)
    hp = kt.HyperParameters()
    model = hm.build(hp)
    assert hp.get("batch_size") == 64 and hp.get("lr_multiplier") == 1.0
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(expected)


def test_multiplier_and_wrapped_hypermodel():
    class HM(kt.HyperModel):
        def build(self, hp):
            return build(hp, 123.0)  # overwritten by the coupled LR

    hm = bt.BatchSizeHyperModel(HM(), base_lr=0.1, base_batch=32, batch_sizes=[16, 128], lr_multipliers=[0.5, 2.0])
    hp = kt.HyperParameters()
    hm.declare_hyperparameters(hp)
    hp.values["batch_size"], hp.values["lr_multiplier"] = 128, 0.5
    model = hm.build(hp)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.1 * 4 * 0.5)


def test_search_applies_the_batch(tmp_path):
    x, y = _data()
    steps = {}

    class CountSteps(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            steps.setdefault(self.params["steps"], 0)
            steps[self.params["steps"]] += 1

    hm = bt.BatchSizeHyperModel(build, base_lr=0.05, base_batch=16, batch_sizes=[16, 128])
    tuner = bt.get_tuner("random", hm, objective="val_accuracy", max_trials=4, seed=1,
                         directory=str(tmp_path), project_name="t", overwrite=True)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    tuner.search(ds, validation_data=ds.take(64), epochs=1, verbose=0, callbacks=[CountSteps()])
    tried = sorted({t.hyperparameters.get("batch_size") for t in tuner.oracle.trials.values()})
    assert tried == [16, 128]
    assert set(steps) == {256 // 16, 256 // 128}  # the batch really was applied


@pytest.mark.parametrize("name", ["bayesian", "hyperband"])
def test_other_tuners_run(tmp_path, name):
    x, y = _data(64)
    hm = bt.BatchSizeHyperModel(build, base_lr=0.05, base_batch=16, batch_sizes=[16, 32])
    kwargs = dict(max_trials=2) if name == "bayesian" else dict(max_epochs=2, hyperband_iterations=1)
    tuner = bt.get_tuner(name, hm, objective="loss", directory=str(tmp_path), project_name=name, seed=0, **kwargs)
    tuner.search(x, y, epochs=1, verbose=0)
    best = tuner.get_best_hyperparameters(1)[0]
    assert best.get("batch_size") in (16, 32)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(rule="cubic"), ValueError, "rule must be one of"),
        (dict(batch_sizes=[0, 8]), ValueError, "batch_sizes must be a non-empty list of integers >= 1"),
        (dict(batch_sizes=[]), ValueError, "batch_sizes must be a non-empty list"),
        (dict(lr_multipliers=[0.0]), ValueError, "lr_multipliers must be a non-empty list of numbers > 0"),
        (dict(base_lr=-1.0), ValueError, "base_lr"),
        (dict(base_batch=0), ValueError, "base_batch"),
    ],
)
def test_bad_arguments(kwargs, err, match):
    args = dict(base_lr=0.1, base_batch=32)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        bt.BatchSizeHyperModel(build, **args)


def test_errors_at_use(tmp_path):
    with pytest.raises(ValueError, match="unknown tuner 'grid'"):
        bt.get_tuner("grid", bt.BatchSizeHyperModel(build, base_lr=0.1, base_batch=8))
    with pytest.raises(TypeError, match="build_model must be a callable"):
        bt.BatchSizeHyperModel(42, base_lr=0.1, base_batch=8)
    hm = bt.BatchSizeHyperModel(lambda hp, lr: keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)]),
                                base_lr=0.1, base_batch=8)
    with pytest.raises(ValueError, match="must return a compiled keras.Model"):
        hm.build(kt.HyperParameters())
    hm = bt.BatchSizeHyperModel(build, base_lr=0.1, base_batch=8, batch_sizes=[8])
    hp = kt.HyperParameters()
    model = hm.build(hp)
    x, y = _data(32)
    with pytest.raises(ValueError, match="looks already batched"):
        hm.fit(hp, model, tf.data.Dataset.from_tensor_slices((x, y)).batch(4))
    with pytest.raises(ValueError, match="do not pass batch_size to search"):
        hm.fit(hp, model, x, y, batch_size=4)
