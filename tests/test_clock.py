import numpy as np
import pytest
import tensorflow as tf

import bstf


def test_epoch_is_examples_over_train_size():
    clock = bstf.Clock(train_size=50_000)
    clock.advance(128)
    clock.advance(tf.constant(372, tf.int64))
    assert clock.numpy() == (500, 0.01)
    np.testing.assert_allclose(float(clock.epoch), 0.01, rtol=1e-7)


def test_epoch_precise_at_large_counts():
    # 90 epochs of ImageNet: float32 examples would lose precision, int64 + float64 division does not.
    n = 1_281_167
    clock = bstf.Clock(train_size=n, examples=90 * n - 1)
    assert float(clock.epoch) == pytest.approx(90.0, abs=1e-6)


def test_clock_checkpoint_round_trip(tmp_path):
    clock = bstf.Clock(train_size=10)
    clock.advance(25)
    path = tf.train.Checkpoint(clock=clock).save(str(tmp_path / "ckpt"))
    restored = bstf.Clock(train_size=10)
    tf.train.Checkpoint(clock=restored).restore(path).assert_consumed()
    assert restored.numpy() == (25, 2.5)


def test_clock_advances_in_replica_context():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        clock = bstf.Clock(train_size=100)

    @tf.function
    def step():
        strategy.run(lambda: clock.advance(64))  # each replica adds the global batch

    step()
    step()
    assert clock.numpy()[0] == 128


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(train_size=0), "train_size must be a positive integer"),
        (dict(train_size=-5), "train_size must be a positive integer"),
        (dict(train_size=10, examples=-1), "examples must be >= 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bstf.Clock(**kwargs)


def test_wrong_type():
    with pytest.raises(TypeError, match="train_size must be a positive integer"):
        bstf.Clock(train_size=10.5)


def test_unbound_schedule_raises_clear_error():
    class Const(bstf.schedules.Schedule):
        def value(self, epoch):
            return tf.constant(1.0)

        def get_config(self):
            return {}

    with pytest.raises(RuntimeError, match="not bound to a clock"):
        Const()(0)
    clock = bstf.Clock(train_size=10)
    assert float(Const().bind(clock)(123)) == 1.0
