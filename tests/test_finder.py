import numpy as np
import pytest
import tensorflow as tf
import keras

import bstf
from bstf import finder


def _model(lr=0.1):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(3)])
    m.compile(keras.optimizers.SGD(lr, momentum=0.9), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def _data(n=512):
    rng = np.random.RandomState(0)
    x = rng.randn(n, 16).astype("float32")
    return x, (x[:, 0] > 0).astype("int64") + (x[:, 1] > 1).astype("int64")


def test_recommendation_minimises_predicted_time_and_restores_state():
    model = _model()
    x, y = _data()
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)  # non-trivial optimizer state
    before = [v.numpy().copy() for v in model.weights + model.optimizer.variables]
    report = finder.find_batch_size(
        model, (x, y), min_batch=8, max_batch=128, num_updates=3, noise_scale=40.0,
        base_lr=0.1, base_batch=32, lr_rule="linear", plateau_tolerance=0,
    )
    after = [v.numpy() for v in model.weights + model.optimizer.variables]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    sizes = [m.batch_size for m in report.measurements]
    assert sizes == [8, 16, 32, 64, 128]
    assert report.stop_reason == "reached max_batch=128"
    # Independent check of the McCandlish time model: argmin over B of (1 + B_noise/B) * t(B).
    times = np.array([(1 + 40.0 / m.batch_size) * m.seconds_per_update for m in report.measurements])
    assert report.recommended_batch == sizes[int(np.argmin(times))]
    assert report.learning_rate == pytest.approx(0.1 * report.recommended_batch / 32)
    for m in report.measurements:
        assert m.examples_per_second == pytest.approx(m.batch_size / m.seconds_per_update)


def test_predicted_tradeoff_matches_mccandlish():
    ms = [finder.BatchMeasurement(b, b / 0.01, 0.01) for b in (10, 100, 1000)]
    report = finder.BatchSizeReport(ms, 100.0, 100, 0.1, "linear", 0.1, 100, 1000, "test")
    assert report.predicted(10)[:2] == pytest.approx((11.0, 1.1))
    assert report.predicted(100)[:2] == pytest.approx((2.0, 2.0))
    assert report.predicted(1000)[:2] == pytest.approx((1.1, 11.0))
    text = report.summary()
    assert "recommended batch size: 100" in text and "<- recommended" in text
    # the suggested plan is code a user can paste (with their milestones)
    line = next(l for l in text.splitlines() if l.startswith("suggested plan: "))
    plan = eval(line[len("suggested plan: "):].replace("milestones=...", "milestones=[30]"), {"bstf": bstf})
    assert plan.at(0).batch_size == 100 and plan.at(0).learning_rate == pytest.approx(0.1 * 100 / 100)


def test_stops_at_data_size_and_reports_oom(monkeypatch):
    model = _model()
    x, y = _data(100)
    report = finder.find_batch_size(model, (x, y), min_batch=32, num_updates=1, noise_scale=10.0, plateau_tolerance=0)
    assert [(m.batch_size, m.status) for m in report.measurements] == [(32, "ok"), (64, "ok")]
    assert "reached max_batch=100" in report.stop_reason

    real = finder.measure_throughput

    def fake(model, dataset, batch_size, **kw):
        if batch_size >= 64:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM")
        return real(model, dataset, batch_size, **kw)

    monkeypatch.setattr(finder, "measure_throughput", fake)
    x, y = _data()
    report = finder.find_batch_size(model, (x, y), min_batch=16, num_updates=1, noise_scale=10.0, plateau_tolerance=0)
    assert [(m.batch_size, m.status) for m in report.measurements] == [(16, "ok"), (32, "ok"), (64, "oom")]
    assert report.stop_reason == "out of memory at batch 64"


def test_nothing_fits(monkeypatch):
    def oom(*a, **k):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM")

    monkeypatch.setattr(finder, "measure_throughput", oom)
    with pytest.raises(ValueError, match="does not fit in memory even at the smallest batch size 8"):
        finder.find_batch_size(_model(), _data(), noise_scale=1.0)


def test_plot_writes_png(tmp_path):
    ms = [finder.BatchMeasurement(b, b / (0.01 + b * 1e-4), 0.01 + b * 1e-4) for b in (8, 16, 32)]
    report = finder.BatchSizeReport(ms, 20.0, 16, 0.1, "linear", 0.1, 16, 100, "test")
    path = report.plot(str(tmp_path / "f.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(min_batch=0), ValueError, "min_batch must be an integer >= 1, got 0"),
        (dict(min_batch=64, max_batch=32), ValueError, r"max_batch \(32\) must be >= min_batch \(64\)"),
        (dict(min_batch=1024), ValueError, "the data has 512 examples, fewer than min_batch=1024"),
        (dict(lr_rule="cubic"), ValueError, "lr_rule must be one of"),
        (dict(noise_scale=-1.0), ValueError, "noise_scale must be > 0"),
        (dict(num_updates=2.5), TypeError, "num_updates must be an integer"),
    ],
)
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        finder.find_batch_size(_model(), _data(), **kwargs)


def test_uncompiled_model_and_bad_data():
    m = keras.Sequential([keras.Input((16,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="model must be compiled"):
        finder.find_batch_size(m, _data())
    with pytest.raises(TypeError, match="data must be a bstf.data.Data"):
        finder.find_batch_size(_model(), "digits")
