"""``on_nonfinite="skip"`` on the TPU proxy (``jit_compile=True``, static shapes) and on two local
MultiWorkerMirrored workers, against the plain single-device run.

The NaN is one example of an unshuffled data set (test_fit_faults.py's set-up), so it lands in a known
update of every epoch. Under two workers each update's batch is split between the workers, so only one
worker sees the NaN: both must skip the same update, or their weights (and collectives) part ways.
"""

import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import bstf

N = 96
RNG = np.random.RandomState(0)
X = RNG.randn(N, 6).astype("float32")
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype("int64")
X_NAN = X.copy()
X_NAN[50, 2] = np.nan  # update 50 // 8 = 6 (0-based) of every epoch at batch 8


def _model(jit_compile=False):
    keras.utils.set_random_seed(1)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)])
    m.compile(keras.optimizers.SGD(0.1, momentum=0.9), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"], jit_compile=jit_compile)
    return m


def _plan():
    return bstf.NoiseScalePlan(N, 0.05, 8, base_momentum=0.9, milestones=[1], factor=2, mode="increase_batch")


def _single_run():
    model = _model()
    h = bstf.fit(model, tf.data.Dataset.from_tensor_slices((X_NAN, Y)), _plan(), 2, shuffle=False, verbose=0,
                 on_nonfinite="skip", max_physical_batch=8)
    return model, h


def test_skip_with_jit_compile_equals_the_plain_run():
    plain, hp = _single_run()
    jit = _model(jit_compile=True)
    hj = bstf.fit(jit, tf.data.Dataset.from_tensor_slices((X_NAN, Y)), _plan(), 2, shuffle=False, verbose=0,
                  on_nonfinite="skip", max_physical_batch=8)
    # epoch 1: 12 updates at batch 8; epoch 2: 6 updates at batch 16 (2 x 8); one NaN update in each epoch
    assert (hj.updates, hj.skipped_updates, hj.history["skipped_updates"]) == (18, 2, [1, 2])
    assert (hp.updates, hp.skipped_updates) == (18, 2)
    for a, b in zip(plain.get_weights(), jit.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert all(np.isfinite(w).all() for w in jit.get_weights())


_WORKER = textwrap.dedent("""
    import bstf, tensorflow as tf, workers
    strategy = bstf.distribute.get_strategy("multi_worker")
    x, y = workers.data({data!r})
    model = workers.classifier(strategy, metrics=["accuracy"])
    plan = bstf.NoiseScalePlan(len(x), 0.05, 8, base_momentum=0.9, milestones=[1], factor=2, mode="increase_batch")
    h = bstf.fit(model, tf.data.Dataset.from_tensor_slices((x, y)), plan, 2, shuffle=False, verbose=0,
                 on_nonfinite="skip", max_physical_batch=8)
    workers.save({out!r}, model, updates=h.updates, skipped=h.skipped_updates)
""")


@pytest.mark.slow
def test_skip_on_two_workers_equals_the_single_process_run(tmp_path, local_workers):
    import workers

    np.savez(tmp_path / "data.npz", x=X_NAN, y=Y)
    local_workers().run_script(tmp_path, _WORKER.format(data=str(tmp_path / "data.npz"), out=str(tmp_path)))
    single, h = _single_run()
    for task in range(2):  # each update's 8 examples are split 4 + 4: only one worker held the NaN
        weights, fields = workers.results(str(tmp_path), task)
        assert fields == {"updates": 18, "skipped": 2}
        for a, b in zip(single.get_weights(), weights):
            np.testing.assert_allclose(a, b, atol=1e-5)
