"""bstf.evaluate: every example counted once on one device, Mirrored, two workers and static shapes; errors."""

import json
import os
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import bstf

N, BATCH = 103, 16  # 103 = 6 x 16 + 7: a partial last batch
RNG = np.random.RandomState(0)
X = RNG.randn(N, 5).astype("float32")
Y = RNG.randint(0, 3, N).astype("int64")
W = RNG.uniform(0.5, 2.0, N).astype("float32")
DATA = tf.data.Dataset.from_tensor_slices((X, Y))
WEIGHTED = tf.data.Dataset.from_tensor_slices((X, Y, W))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(strategy=None, metrics=("accuracy",), weighted_metrics=None, cls=keras.Sequential):
    with (strategy or tf.distribute.get_strategy()).scope():
        keras.utils.set_random_seed(3)
        model = cls([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=list(metrics),
                      weighted_metrics=weighted_metrics)
    return model


def _numpy_reference(model, w=None):
    """Loss and accuracy of every example once, computed in NumPy from the logits."""
    logits = model.predict(X, verbose=0).astype("float64")
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    ce = -log_p[np.arange(N), Y]
    correct = (logits.argmax(1) == Y).astype("float64")
    w = np.ones(N) if w is None else w.astype("float64")
    return {"loss": float((w * ce).sum() / N), "accuracy": float(correct.mean()), "correct": int(correct.sum()),
            "weighted_accuracy": float((w * correct).sum() / w.sum())}


def _assert_close(got, want, atol=1e-6):
    assert set(got) == set(want), (got, want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=atol, err_msg=k)


# ============================================================================ one device
@pytest.mark.parametrize("static", [False, True])
def test_equals_model_evaluate_and_numpy_on_a_partial_last_batch(static):
    model = _model()
    ref = _numpy_reference(model)
    got = bstf.evaluate(model, DATA, batch_size=BATCH, static_shapes=static)
    assert round(got["accuracy"] * N) == ref["correct"]  # exactly the 103 examples, none twice, none padded
    np.testing.assert_allclose(got["accuracy"], ref["accuracy"], atol=1e-7)
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5)
    _assert_close(got, model.evaluate(X, Y, batch_size=BATCH, verbose=0, return_dict=True))


def test_static_shapes_equal_dynamic_with_sample_weights_and_weighted_metrics():
    model = _model(weighted_metrics=["accuracy"])
    ref = _numpy_reference(model, W)
    dynamic = bstf.evaluate(model, WEIGHTED, batch_size=BATCH)
    static = bstf.evaluate(model, WEIGHTED, batch_size=BATCH, static_shapes=True)
    _assert_close(static, dynamic)
    np.testing.assert_allclose(static["loss"], ref["loss"], rtol=1e-5)
    np.testing.assert_allclose(static["accuracy"], ref["accuracy"], atol=1e-7)  # metrics=: unweighted
    np.testing.assert_allclose(static["weighted_accuracy"], ref["weighted_accuracy"], atol=1e-6)
    _assert_close(static, model.evaluate(X, Y, sample_weight=W, batch_size=BATCH, verbose=0, return_dict=True))


def test_a_bstf_data_and_the_default_batch():
    model = _model()
    data = bstf.data.Data(DATA, N, 3, (5,), "toy", "test")
    _assert_close(bstf.evaluate(model, data), model.evaluate(X, Y, verbose=0, return_dict=True))


class CountingModel(keras.Sequential):
    traces = 0

    def test_step(self, data):
        type(self).traces += 1  # Python side effect: runs once per trace
        return super().test_step(data)


def test_the_step_is_traced_once_per_model_not_per_call():
    model = _model(cls=CountingModel)
    first = bstf.evaluate(model, DATA, batch_size=BATCH)
    traces = CountingModel.traces
    assert 1 <= traces <= 2  # the full batches and the partial last one
    _assert_close(bstf.evaluate(model, DATA, batch_size=BATCH), first)
    assert CountingModel.traces == traces


# ============================================================================ Mirrored
def _mirrored():
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs 2 logical CPUs (tests/conftest.py)")
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.mark.parametrize("static", [False, True])
def test_mirrored_equals_single_device(static):
    strategy = _mirrored()
    single = _model(weighted_metrics=["accuracy"])
    mirrored = _model(strategy, weighted_metrics=["accuracy"])
    mirrored.set_weights(single.get_weights())
    want = bstf.evaluate(single, WEIGHTED, batch_size=BATCH)
    # 103 = 6 x 16 + 7: the last batch splits 4 + 3 (dynamic) or 8 + 8 with 9 padded (static)
    _assert_close(bstf.evaluate(mirrored, WEIGHTED, strategy=strategy, batch_size=BATCH, static_shapes=static), want)
    # a last batch of 1 (97 = 6 x 16 + 1) leaves one replica empty
    one = WEIGHTED.take(97)
    _assert_close(bstf.evaluate(mirrored, one, strategy=strategy, batch_size=BATCH, static_shapes=static),
                  bstf.evaluate(single, one, batch_size=BATCH))


# ============================================================================ two workers
_WORKER = textwrap.dedent("""
    import json, os, sys
    import numpy as np, keras, tensorflow as tf
    sys.path.insert(0, {root!r})
    import bstf
    strategy = bstf.distribute.get_strategy("multi_worker")
    d = np.load({data!r})
    with strategy.scope():
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                      weighted_metrics=["accuracy"])
    model.set_weights([d[f"w{{i}}"] for i in range(4)])
    data = tf.data.Dataset.from_tensor_slices((d["x"], d["y"], d["w"]))
    out = {{str(s): bstf.evaluate(model, data, batch_size=16, static_shapes=s) for s in (False, True)}}
    if bstf.distribute.is_chief(strategy):
        with open(os.path.join({out!r}, "results.json"), "w") as f:
            json.dump(out, f)
""")


def test_two_multi_worker_processes_equal_single_device(tmp_path, local_workers):
    single = _model(weighted_metrics=["accuracy"])
    np.savez(tmp_path / "data.npz", x=X, y=Y, w=W, **{f"w{i}": v for i, v in enumerate(single.get_weights())})
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(root=ROOT, data=str(tmp_path / "data.npz"), out=str(tmp_path)))
    local_workers().run([sys.executable, str(script)])
    with open(tmp_path / "results.json") as f:
        got = json.load(f)
    want = bstf.evaluate(single, WEIGHTED, batch_size=16)
    _assert_close(got["False"], want)
    _assert_close(got["True"], want)


# ============================================================================ errors
class OwnTestStep(keras.Sequential):
    def test_step(self, data):
        return super().test_step(data)


def _multi_output():
    inputs = keras.Input((5,))
    model = keras.Model(inputs, {"a": keras.layers.Dense(3, name="a")(inputs), "b": keras.layers.Dense(3, name="b")(inputs)})
    model.compile("sgd", {"a": "sparse_categorical_crossentropy", "b": "sparse_categorical_crossentropy"})
    return model


def _uncompiled():
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])


BAD = [
    # (make model, data, kwargs, error, match)
    (lambda: "model", DATA, {}, TypeError, "model must be a keras.Model, got str"),
    (_uncompiled, DATA, {}, ValueError, "model is not compiled"),
    (_model, (X, Y), {}, TypeError, r"data must be an unbatched tf.data.Dataset or a bstf.data.Data \(.*\), got tuple"),
    (_model, DATA.batch(8), {}, ValueError, "data looks batched"),
    (_model, tf.data.Dataset.from_tensor_slices(X), {}, ValueError, "the labels are missing"),
    (_model, DATA.take(0), {}, ValueError, "data is empty"),
    (_model, DATA.filter(lambda x, y: y > 5), {}, ValueError, "data is empty"),
    (_model, DATA, {"batch_size": 0}, ValueError, "batch_size must be an integer >= 1, got 0"),
    (_model, DATA, {"batch_size": 8.0}, TypeError, "batch_size must be an integer"),
    (_model, DATA, {"strategy": "mirrored"}, TypeError, "strategy must be a tf.distribute.Strategy, got str"),
    (_model, DATA, {"static_shapes": "yes"}, TypeError, "static_shapes must be True, False or None"),
    (_model, DATA, {"verbose": 3}, ValueError, "verbose must be 0, 1 or 2, got 3"),
    (lambda: _model(metrics=[keras.metrics.AUC(name="auc")]), DATA, {"static_shapes": True, "batch_size": 16},
     ValueError, r"metric 'auc' \(AUC\) does not read the padding mask.*divides the 103 examples"),
    (lambda: _model(cls=OwnTestStep), DATA, {"static_shapes": True, "batch_size": 16},
     ValueError, "OwnTestStep overrides test_step"),
    (_multi_output, DATA.map(lambda x, y: (x, {"a": y, "b": y})), {"static_shapes": True, "batch_size": 16},
     ValueError, "metric 'a_loss' .* does not read the padding mask"),
    (lambda: _model(metrics=[keras.metrics.AUC(name="auc")]), DATA.filter(lambda x, y: y >= 0),
     {"static_shapes": True, "batch_size": 16}, ValueError, "data of known size"),
]


@pytest.mark.parametrize("make, data, kwargs, error, match", BAD)
def test_bad_input_is_refused_in_plain_words(make, data, kwargs, error, match):
    with pytest.raises(error, match=match):
        bstf.evaluate(make(), data, **kwargs)


def test_unmaskable_metrics_are_fine_when_nothing_is_padded():
    model = _model(metrics=[keras.metrics.MeanIoU(3, name="iou", sparse_y_pred=False),
                            keras.metrics.SparseCategoricalAccuracy(name="acc")])
    data = DATA.take(96)  # 6 x 16: static shapes need no padding
    _assert_close(bstf.evaluate(model, data, batch_size=16, static_shapes=True),
                  model.evaluate(X[:96], Y[:96], batch_size=16, verbose=0, return_dict=True))


def test_strategy_errors():
    strategy = _mirrored()
    with pytest.raises(ValueError, match="batch_size=15 is the global batch and must divide by the 2 replicas"):
        bstf.evaluate(_model(strategy), DATA, batch_size=15)
    with pytest.raises(ValueError, match="outside strategy.scope"):
        bstf.evaluate(_model(), DATA, strategy=strategy)
