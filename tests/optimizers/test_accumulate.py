import os
import json
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import bstf
from bstf.optimizers import Accumulate
from bstf.schedules import PiecewiseConstant

RNG = np.random.RandomState(0)
X = RNG.randn(256, 6).astype("float32")
Y = RNG.randint(0, 3, 256)


def _model(opt, jit=False, seed=1):
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    m.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
    return m


def _mirrored(**kw):
    # One-device reduction: TensorFlow reuses collective instance keys across MirroredStrategy objects in
    # one process, so collectives of a later strategy can collide with an earlier one's shapes.
    kw.setdefault("cross_device_ops", tf.distribute.ReductionToOneDevice())
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], **kw)


INNER = {
    "sgd_momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "sgd_nesterov_wd": lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: keras.optimizers.Adam(0.01),
}


@pytest.mark.parametrize("inner", INNER)
@pytest.mark.parametrize("where", ["single", "jit", "mirrored"])
def test_k_micro_batches_equal_one_big_batch(inner, where):
    strategy = _mirrored() if where == "mirrored" else tf.distribute.get_strategy()
    with strategy.scope():
        big = _model(INNER[inner](), jit=where == "jit")
        acc = Accumulate(INNER[inner](), steps=4)
        small = _model(acc, jit=where == "jit")
    big.fit(X, Y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    small.fit(X, Y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(big.get_weights(), small.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert int(acc.inner.iterations.numpy()) == 8  # the inner optimizer counts updates
    assert int(acc.iterations.numpy()) == 32  # the wrapper counts micro-batches
    assert int(acc.micro_step.numpy()) == 0


class CountingReduce(tf.distribute.ReductionToOneDevice):
    """Counts, at run time, the batched cross-replica reductions the strategy performs."""

    def __init__(self):
        super().__init__()
        self.count = tf.Variable(0, dtype=tf.int64, trainable=False)

    def batch_reduce_implementation(self, reduce_op, value_destination_pairs, options):
        self.count.assign_add(1)
        return super().batch_reduce_implementation(reduce_op, value_destination_pairs, options)


def test_one_cross_replica_reduction_per_update():
    counts = {}
    for k in (1, 4):
        cross = CountingReduce()
        strategy = _mirrored(cross_device_ops=cross)
        with strategy.scope():
            model = _model(Accumulate(keras.optimizers.SGD(0.1), steps=k))
        model.fit(X, Y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # 16 micro-batches
        counts[k] = int(cross.count.numpy())
    # Per micro-batch Keras itself reduces nothing else in train steps; gradients are reduced only on
    # updates: 16 updates at k=1, 4 at k=4.
    assert counts[1] - counts[4] == 16 - 4
    assert counts[4] <= 4 + (counts[1] - 16)


def test_k_from_schedule_changes_without_retrace():
    clock = bstf.Clock(train_size=256)
    steps = PiecewiseConstant([1.0], [2, 4]).bind(clock)

    class Advance(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            clock.advance(16)

    acc = Accumulate(keras.optimizers.SGD(0.1, momentum=0.9), steps=steps)
    small = _model(acc)
    # Built before fit: otherwise any optimizer with slots (Keras's own SGD with momentum included)
    # creates them in the first trace and tf.function traces a second time.
    acc.build(small.trainable_variables)
    traces = []
    train_step = small.train_step
    small.train_step = lambda data: (traces.append(1), train_step(data))[1]  # runs once per trace
    small.fit(X, Y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[Advance()])
    # Reference: epoch 1 with batch 32, epoch 2 with batch 64, plain SGD.
    big = _model(keras.optimizers.SGD(0.1, momentum=0.9))
    big.fit(X, Y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    big.fit(X, Y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(big.get_weights(), small.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert len(traces) == 1  # k went 2 -> 4 without a retrace
    assert int(acc.inner.iterations.numpy()) == 8 + 4


def test_custom_training_loop():
    model = _model(keras.optimizers.SGD(0.1))
    acc = Accumulate(keras.optimizers.SGD(0.1, momentum=0.9), steps=2)
    ref_model = _model(keras.optimizers.SGD(0.1))
    ref = keras.optimizers.SGD(0.1, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def grads(m, x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, m(x))
        return tape.gradient(loss, m.trainable_variables)

    for i in range(0, 128, 32):
        for j in (0, 16):
            acc.apply_gradients(zip(grads(model, X[i + j:i + j + 16], Y[i + j:i + j + 16]), model.trainable_variables))
        ref.apply_gradients(zip(grads(ref_model, X[i:i + 32], Y[i:i + 32]), ref_model.trainable_variables))
    for a, b in zip(model.get_weights(), ref_model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_save_and_load_with_model(tmp_path):
    clock = bstf.Clock(train_size=256)
    model = _model(Accumulate(keras.optimizers.Adam(0.01), steps=PiecewiseConstant([1.0], [2, 4]).bind(clock)))
    model.fit(X, Y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, Accumulate)
    assert isinstance(loaded.optimizer.inner, keras.optimizers.Adam)
    assert loaded.optimizer.steps.get_config() == {"boundaries": [1.0], "values": [2, 4]}
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b))
    config = Accumulate(keras.optimizers.SGD(0.5), 3).get_config()
    assert Accumulate.from_config(config).get_config() == config


def test_checkpoint_round_trip_mid_cycle(tmp_path):
    acc = Accumulate(keras.optimizers.SGD(0.1, momentum=0.9), steps=4)
    model = _model(acc)
    model.fit(X[:48], Y[:48], batch_size=16, epochs=1, shuffle=False, verbose=0)  # 3 of 4 micro-batches
    path = tf.train.Checkpoint(model=model, optimizer=acc).save(str(tmp_path / "c"))
    acc2 = Accumulate(keras.optimizers.SGD(0.1, momentum=0.9), steps=4)
    model2 = _model(acc2, seed=7)
    acc2.build(model2.trainable_variables)
    tf.train.Checkpoint(model=model2, optimizer=acc2).restore(path)
    assert int(acc2.micro_step.numpy()) == 3
    for a, b in zip(acc._accumulators, acc2._accumulators):
        np.testing.assert_allclose(a.numpy(), b.numpy())


@pytest.mark.parametrize(
    "args, err, match",
    [
        ((keras.optimizers.SGD(0.1), 0), ValueError, "steps must be an integer >= 1, got 0"),
        ((keras.optimizers.SGD(0.1), 2.5), TypeError, "steps must be an integer >= 1"),
        (("sgd", 2), TypeError, "optimizer must be a keras.optimizers.Optimizer, got str"),
        ((keras.optimizers.SGD(0.1), PiecewiseConstant([1], [1.0, 2.5])), ValueError, "must be integers >= 1, got 2.5"),
        ((keras.optimizers.SGD(0.1), PiecewiseConstant([1], [2, 0])), ValueError, "must be integers >= 1, got 0"),
        ((keras.optimizers.SGD(0.1, gradient_accumulation_steps=2), 2), ValueError, "gradient_accumulation_steps"),
    ],
)
def test_bad_arguments(args, err, match):
    with pytest.raises(err, match=match):
        Accumulate(*args)


def test_unbound_schedule_is_a_clear_error():
    model = _model(Accumulate(keras.optimizers.SGD(0.1), PiecewiseConstant([1], [2, 4])))
    with pytest.raises(RuntimeError, match="not bound to a clock"):
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0)


_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, tensorflow as tf, keras
    sys.path.insert(0, {root!r})
    from bstf.optimizers import Accumulate
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    rng = np.random.RandomState(0)
    x = rng.randn(128, 6).astype("float32"); y = rng.randint(0, 3, 128)
    def make(opt):
        keras.utils.set_random_seed(1)
        m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
        m.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # Keras 3's model.fit fails under MultiWorkerMirroredStrategy (PerReplica input conversion), even
    # without Accumulate; a custom loop is how multi-worker training runs.
    dist = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(16).with_options(options))
    with strategy.scope():
        acc = Accumulate(keras.optimizers.SGD(0.1, momentum=0.9), steps=2)
        small = make(acc)
    loss_obj = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

    @tf.function
    def step(x, y):
        def replica_fn(x, y):
            with tf.GradientTape() as tape:
                loss = loss_obj(y, small(x, training=True)) / 16.0  # normalised by the global batch
            grads = tape.gradient(loss, small.trainable_variables)
            acc.apply_gradients(zip(grads, small.trainable_variables))
        strategy.run(replica_fn, args=(x, y))

    for epoch in range(2):
        for x_, y_ in dist:
            step(x_, y_)
    big = make(keras.optimizers.SGD(0.1, momentum=0.9))  # one process, batch k x 16 = 32
    big.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(small.get_weights(), big.get_weights()))
    print(json.dumps({{"diff": diff, "updates": int(acc.inner.iterations.numpy())}}))
    """
)


def test_multi_worker_two_local_processes(tmp_path, local_workers):
    """Two worker processes on 127.0.0.1, global micro-batch 16 (8 per worker), k = 2 == batch 32."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(root=root))
    for out in local_workers().run([sys.executable, str(script)], timeout=240):
        result = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
        assert result["updates"] == 8  # 2 epochs x 128 / 32
        assert result["diff"] < 1e-5, result
