"""bstf.fit: the plan realised update by update, accumulation, Mirrored, TensorBoard, kill-and-resume, errors."""

import glob
import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import bstf
import workers
from bstf.training import physical_batch, segments

N = 240
RNG = np.random.RandomState(0)
X = RNG.randn(N, 6).astype("float32")
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype("int64") + (X[:, 2] > 1).astype("int64")
DATA = tf.data.Dataset.from_tensor_slices((X, Y))
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class CountingModel(keras.Sequential):
    """Counts traces of its train step (Python side effects run only while tracing)."""

    traces = 0

    def train_step(self, data):
        type(self).traces += 1
        return super().train_step(data)


def _model(optimizer=None, seed=1, cls=keras.Sequential, jit=False):
    keras.utils.set_random_seed(seed)
    m = cls([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    m.compile(optimizer or keras.optimizers.SGD(0.1, momentum=0.9), LOSS, metrics=["accuracy"], jit_compile=jit)
    return m


def _plan(**kw):
    args = dict(train_size=N, base_lr=0.05, base_batch=8, base_momentum=0.9, milestones=[1, 2], factor=2,
                mode="increase_batch")
    args.update(kw)
    return bstf.NoiseScalePlan(**args)


def _events(logdir):
    """{tag: [(step, value)]} of every event file under ``logdir`` (tensorboard's reader)."""
    from tensorboard.backend.event_processing import event_accumulator

    out = {}
    for path in glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True):
        run = os.path.basename(os.path.dirname(path))
        acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            values = [(e.step, tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
            out[f"{run}/{tag}"] = [(s, v.item() if v.ndim == 0 else v) for s, v in values]
    return out


# ============================================================================ the loop's arithmetic
@pytest.mark.parametrize("kw, epochs", [
    ({}, 3), ({"mode": "decay_lr"}, 3), ({"mode": "hybrid"}, 2.5),
    ({"train_size": 1000, "milestones": [0.37, 1.11]}, 2), ({"warmup_epochs": 1}, 3)])
def test_segments_count_updates_like_the_plan(kw, epochs):
    plan = _plan(**kw)
    segs = segments(plan, epochs)
    assert [s.updates for s in segs] == [p.updates for p in plan.phases(epochs)]
    assert [s.batch_size for s in segs] == [p.batch_size for p in plan.phases(epochs)]
    for a, b in zip(segs, segs[1:]):
        assert b.start_examples == a.end_examples  # the clock is continuous across phases
    # every update starts inside its phase (as the in-graph schedule sees the clock) and training covers epochs*N
    for s in segs:
        last_start = s.start_examples + (s.updates - 1) * s.batch_size
        assert int(plan.batch_size.numpy(last_start / plan.train_size)) == s.batch_size
    assert segs[-1].end_examples >= epochs * plan.train_size > segs[-1].end_examples - segs[-1].batch_size


def test_physical_batch():
    assert physical_batch(64) == 64
    assert physical_batch(64, 64) == 64
    assert physical_batch(64, 20) == 16  # smallest k with b = 64 / k <= 20: k = 4
    assert physical_batch(96, 40, replicas=2) == 32
    assert physical_batch(24, 10, replicas=4) == 8
    with pytest.raises(ValueError, match="not divisible by the 2 replicas"):
        physical_batch(9, replicas=2)
    with pytest.raises(ValueError, match="cannot be split into equal micro-batches"):
        physical_batch(7, 3, replicas=2)


# ============================================================================ the plan realised
def test_schedule_realised_exactly_and_logged(tmp_path):
    plan = _plan(milestones=[1, 2], warmup_epochs=1, batch=16, lr_rule="linear")
    logdir = str(tmp_path / "tb")
    h = bstf.fit(_model(), DATA, plan, 3, validation_data=DATA, logdir=logdir, seed=0, verbose=0,
                 log_every_n_updates=1, max_physical_batch=16)
    ev = _events(logdir)
    lr, batch, k = ev["train/learning_rate"], ev["train/batch_size"], ev["train/accumulation"]
    assert len(lr) == plan.total_updates(3) == h.updates
    for (step, value), (_, b), (_, kk) in zip(lr, batch, k):
        point = plan.at(step / N)  # the step is the clock when the update starts
        assert value == pytest.approx(point.learning_rate, rel=1e-6)
        assert b == point.batch_size and kk == point.batch_size // 16
    # LR ramps during warmup (Goyal), then is constant; batch grows 16 -> 32 -> 64 at epochs 1 and 2
    assert lr[0][1] == pytest.approx(0.05) and lr[-1][1] == pytest.approx(0.1)
    assert sorted({b for _, b in batch}) == [16, 32, 64]
    for tag in ("train/momentum", "train/sgd_noise", "train/examples_seen", "train/updates", "train/batch_loss",
                "train/epoch_loss", "train/examples_loss", "train/epoch_accuracy", "validation/epoch_loss",
                "validation/examples_accuracy", "train/plan"):
        assert tag in ev, tag
    assert [s for s, _ in ev["train/epoch_loss"]] == [1, 2, 3]
    assert [s for s, _ in ev["validation/examples_loss"]] == h.history["examples"]
    assert os.path.exists(os.path.join(logdir, "plan.png"))


def test_first_update_of_every_phase_is_logged(tmp_path):
    # 15 updates of 16, 8 of 32, 4 of 64 (N = 240): every 10th update plus each phase's first
    logdir = str(tmp_path / "tb")
    h = bstf.fit(_model(), DATA, _plan(milestones=[1, 2], batch=16), 3, logdir=logdir, seed=0, verbose=0,
                 log_every_n_updates=10)
    assert [p["updates"] for p in h.phases] == [15, 8, 4]
    updates = [int(u) for _, u in _events(logdir)["train/updates"]]
    assert updates == [1, 10, 16, 20, 24]  # 24: the last phase's first update
    # steps are the clock at the update's start: phase 1's 8th update of 32 straddles epoch 2 (480), so
    # phase 2 starts at 240 + 8 x 32 = 496
    assert _events(logdir)["train/batch_size"] == [(0, 16), (144, 16), (240, 32), (368, 32), (496, 64)]


def test_clock_exact_at_phase_boundaries_and_history():
    plan = _plan(milestones=[1, 2])  # 8 -> 16 -> 32; N = 240 is a multiple of each, phases end on epochs
    h = bstf.fit(_model(), DATA, plan, 3, seed=0, verbose=0)
    assert [p["updates"] for p in h.phases] == [30, 15, 8]
    assert [p["start_epoch"] * N for p in h.phases] == [0, 240, 480]
    assert [p["batch_size"] for p in h.phases] == [8, 16, 32]
    assert h.history["examples"] == [240, 480, 736]  # the last update overshoots 720 by 16 (as the plan counts)
    assert h.history["updates"] == [30, 45, 53]
    assert h.history["batch_size"] == [8, 16, 32]
    assert len(h.history["loss"]) == 3 and all(p["wall_time"] > 0 for p in h.phases)


def test_retrace_once_per_distinct_physical_shape():
    plan = _plan(milestones=[1, 2])
    CountingModel.traces = 0
    bstf.fit(_model(cls=CountingModel), DATA, plan, 3, seed=0, verbose=0, max_physical_batch=8)
    assert CountingModel.traces == 1  # batches 8, 16, 32 all run as k x 8: one shape, k from the clock
    model = _model(cls=CountingModel)
    CountingModel.traces = 0
    for _ in range(2):  # a second bstf.fit of the same model and plan reuses the traced step, like model.fit
        bstf.fit(model, DATA, plan, 1, seed=0, verbose=0, max_physical_batch=8)
    assert CountingModel.traces == 1
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)  # ... while model.fit traces its own (the plain LR)
    assert CountingModel.traces == 2
    CountingModel.traces = 0
    bstf.fit(_model(cls=CountingModel), DATA, _plan(milestones=[1]), 2, seed=0, verbose=0)
    assert CountingModel.traces == 2  # physical batches 8 and 16


def test_optimizer_restored_and_model_saves(tmp_path):
    model = _model()
    opt = model.optimizer
    opt.build(model.trainable_variables)
    names = [v.path for v in opt.variables]
    bstf.fit(model, DATA, _plan(mode="decay_lr"), 3, seed=0, verbose=0, max_physical_batch=4)
    assert model.optimizer is opt and [v.path for v in opt.variables] == names  # same layout as saved files
    assert float(opt.learning_rate) == pytest.approx(0.05 / 4)  # the plan's last LR
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0)  # plain Keras still works
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


# ============================================================================ equivalences
def test_accumulation_equals_physical_batch():
    plan = _plan(milestones=[1, 2])
    a, b = _model(seed=0), _model(seed=0)  # global seed 0 (once broke tensor-seeded shuffles)
    bstf.fit(a, DATA, plan, 3, seed=3, verbose=0)
    hb = bstf.fit(b, DATA, plan, 3, seed=3, verbose=0, max_physical_batch=8)
    assert [p["accumulation"] for p in hb.phases] == [1, 2, 4]
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, atol=1e-5)


def test_mirrored_equals_single_device():
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs 2 logical CPUs")
    plan = _plan(milestones=[1])
    single = _model()
    bstf.fit(single, DATA, plan, 2, seed=5, verbose=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        mirrored = _model()
    h = bstf.fit(mirrored, DATA, plan, 2, seed=5, verbose=0, strategy=strategy, max_physical_batch=8)
    assert [p["accumulation"] for p in h.phases] == [1, 2]
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bstf_sgd_momentum_follows_the_plan():
    plan = _plan(milestones=[1])  # momentum 0.9
    keras_sgd = _model(keras.optimizers.SGD(0.1, momentum=0.9))
    bstf.fit(keras_sgd, DATA, plan, 2, seed=2, verbose=0)
    ours = _model(bstf.optimizers.SGD(0.1, momentum=0.0))  # the plan sets it
    bstf.fit(ours, DATA, plan, 2, seed=2, verbose=0)
    for a, b in zip(keras_sgd.get_weights(), ours.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert float(ours.optimizer.momentum) == 0.0  # the optimizer's own momentum is back after the run


def test_jit_compile_static_shapes():
    h = bstf.fit(_model(jit=True), DATA, _plan(milestones=[1]), 2, seed=0, verbose=0, max_physical_batch=8)
    assert h.updates == 30 + 15 and np.isfinite(h.history["loss"]).all()


# ============================================================================ callbacks
def test_early_stopping_and_user_callbacks():
    seen = []
    cb = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(batch))
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
    h = bstf.fit(_model(), DATA, _plan(), 3, seed=0, verbose=0, callbacks=[cb, stop])
    assert len(h.history["loss"]) == 2  # stops after epoch 2 (no improvement of 10)
    assert seen == list(range(h.updates))  # one batch event per update


# ============================================================================ kill and resume
_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np, keras, tensorflow as tf
    sys.path.insert(0, {root!r})
    import bstf
    N = 240
    rng = np.random.RandomState(0)
    x = rng.randn(N, 6).astype("float32"); y = (x[:, 0] > 0).astype("int64")
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    plan = bstf.NoiseScalePlan(N, 0.05, 8, milestones=[1, 2], factor=2, mode="hybrid", hybrid_lr_milestones=1)
    kill_after = int(sys.argv[2])
    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if kill_after and batch + 1 == kill_after:
                os.kill(os.getpid(), 9)
    h = bstf.fit(model, tf.data.Dataset.from_tensor_slices((x, y)), plan, 3, seed=7, verbose=0,
                 checkpoint_dir=sys.argv[1], checkpoint_every_n_updates=5, callbacks=[Kill()], max_physical_batch=8)
    np.savez(os.path.join(sys.argv[1], "final.npz"), *model.get_weights(),
             history=np.array([h.history["loss"], h.history["examples"]]))
""")


@pytest.mark.parametrize("kill_after", [
    # killed at update 40 (epoch 2, LR-decay phase): resumes from the checkpoint at update 35, mid-epoch
    40,
    # killed in the accumulating phase (batch 16 = 2 x 8) just after the epoch-2 checkpoint
    pytest.param(63, marks=pytest.mark.slow),
])
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, kill_after):
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}

    def run(d, kill):
        return subprocess.run([sys.executable, str(script), str(d), str(kill)], env=env, capture_output=True,
                              text=True, timeout=300)

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert run(full, 0).returncode == 0
    killed = run(resumed, kill_after)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _record(resumed, N)["updates"] == ((kill_after - 1) // 5) * 5  # the last checkpoint before the kill
    done = run(resumed, 0)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = np.load(full / "final.npz"), np.load(resumed / "final.npz")
    for key in a.files:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6, err_msg=key)


def _record(directory, train_size):
    """The run record of the newest usable checkpoint in ``directory`` (read with the run state itself)."""
    from bstf.fitting.state import RunState

    with RunState(str(directory), {"clock": bstf.Clock(train_size)}) as state:
        return state.restore({})


def test_checkpoint_of_another_plan_is_refused(tmp_path):
    bstf.fit(_model(), DATA, _plan(), 1, seed=0, verbose=0, checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match="different plan"):
        bstf.fit(_model(), DATA, _plan(factor=4), 1, seed=0, verbose=0, checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match="seed 0, now seed=1"):
        bstf.fit(_model(), DATA, _plan(), 1, seed=1, verbose=0, checkpoint_dir=str(tmp_path))
    # the stream's shuffle also draws on TensorFlow's global seed: a resume under another one would reorder data
    model = _model(seed=2)  # keras.utils.set_random_seed(2): the first run built its model under seed 1
    with pytest.raises(ValueError, match="drawn under TensorFlow's global seed 1; it is now 2, which would reorder"):
        bstf.fit(model, DATA, _plan(), 1, seed=0, verbose=0, checkpoint_dir=str(tmp_path))


def test_finished_run_resumes_as_done(tmp_path):
    m = _model()
    h1 = bstf.fit(m, DATA, _plan(), 2, seed=0, verbose=0, checkpoint_dir=str(tmp_path))
    m2 = _model()
    h2 = bstf.fit(m2, DATA, _plan(), 2, seed=0, verbose=0, checkpoint_dir=str(tmp_path))
    assert h2.history["loss"] == h1.history["loss"] and h2.updates == h1.updates
    for a, b in zip(m.get_weights(), m2.get_weights()):  # restored, not retrained
        np.testing.assert_array_equal(a, b)


# ============================================================================ bad input
def _uncompiled():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])


@pytest.mark.parametrize("make, kwargs, err, match", [
    (_uncompiled, {}, ValueError, "model is not compiled"),
    (lambda: "model", {}, TypeError, "model must be a keras.Model"),
    (_model, {"train_data": DATA.batch(8)}, ValueError, "looks batched"),
    (_model, {"train_data": DATA.take(100)}, ValueError, "train_data has 100 examples but plan.train_size is 240"),
    (_model, {"train_data": (X, Y)}, TypeError, "from_tensor_slices"),
    (_model, {"epochs": 0}, ValueError, "epochs"),
    (_model, {"plan": {"train_size": N}}, TypeError, "plan must be a bstf.NoiseScalePlan"),
    (_model, {"max_physical_batch": 0}, ValueError, "max_physical_batch must be an integer >= 1"),
    (_model, {"strategy": "mirrored"}, ValueError, "created and compiled in its scope"),
    (_model, {"strategy": "gpu_cluster"}, ValueError, "unknown strategy 'gpu_cluster'"),
    (_model, {"seed": -1}, ValueError, "seed must be an integer >= 0"),
    (_model, {"verbose": 3}, ValueError, "verbose must be"),
    (_model, {"callbacks": keras.callbacks.History()}, TypeError, "callbacks must be a list"),
    (_model, {"noise_scale_every_n_updates": 0}, ValueError, "noise_scale_every_n_updates must be an integer >= 1"),
    (_model, {"noise_scale_ema": 1.5}, ValueError, "ema"),
    (lambda: _model(keras.optimizers.SGD(0.1)), {}, ValueError, "plan assumes momentum 0.9"),
    (lambda: _model(bstf.optimizers.Accumulate(keras.optimizers.SGD(0.1, momentum=0.9), 2)), {}, ValueError,
     "compiled with a bstf.optimizers.Accumulate"),
    (lambda: _model(keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5), momentum=0.9)),
     {}, ValueError, "own learning-rate schedule"),
])
def test_bad_input(make, kwargs, err, match):
    args = {"train_data": DATA, "plan": _plan(), "epochs": 1, "verbose": 0, **kwargs}
    with pytest.raises(err, match=match):
        bstf.fit(make(), args.pop("train_data"), args.pop("plan"), args.pop("epochs"), **args)


def test_max_physical_batch_below_replicas():
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs 2 logical CPUs")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        model = _model()
    with pytest.raises(ValueError, match="smaller than the 2 replicas"):
        bstf.fit(model, DATA, _plan(), 1, strategy=strategy, max_physical_batch=1, verbose=0)
    with pytest.raises(ValueError, match="global batch 9 is not divisible by the 2 replicas"):
        bstf.fit(model, DATA, _plan(base_batch=9), 1, strategy=strategy, verbose=0)
    with pytest.raises(ValueError, match="outside strategy.scope"):
        bstf.fit(_model(), DATA, _plan(), 1, strategy=strategy, verbose=0)


# ============================================================================ multi-worker
_WORKER = textwrap.dedent("""
    import os
    import bstf, tensorflow as tf, workers
    strategy = bstf.distribute.get_strategy("multi_worker")
    x, y = workers.data({data!r})
    model = workers.classifier(strategy, classes=3, metrics=["accuracy"])
    plan = bstf.NoiseScalePlan(len(x), 0.05, 8, base_momentum=0.9, milestones=[1], factor=2, mode="increase_batch")
    data = tf.data.Dataset.from_tensor_slices((x, y))
    h = bstf.fit(model, data, plan, 2, seed=5, verbose=0, max_physical_batch=8, validation_data=data,
                 checkpoint_dir=os.path.join({out!r}, "ckpt"))
    workers.save({out!r}, model, updates=h.updates, val_accuracy=h.history["val_accuracy"])
""")


def test_multi_worker_two_local_processes_equal_single_process(tmp_path, local_workers):
    np.savez(tmp_path / "data.npz", x=X, y=Y)
    local_workers().run_script(tmp_path, _WORKER.format(data=str(tmp_path / "data.npz"), out=str(tmp_path)))
    # the same run in this process, without a strategy
    single = _model(keras.optimizers.SGD(0.1, momentum=0.9))
    h = bstf.fit(single, DATA, _plan(milestones=[1]), 2, seed=5, verbose=0, max_physical_batch=8,
                 validation_data=DATA)
    for task in range(2):
        weights, fields = workers.results(str(tmp_path), task)
        for a, b in zip(single.get_weights(), weights):
            np.testing.assert_allclose(a, b, atol=1e-5)
        assert fields["updates"] == h.updates == 45
        np.testing.assert_allclose(fields["val_accuracy"], h.history["val_accuracy"], atol=1e-6)
    assert _record(tmp_path / "ckpt", N)["updates"] == 45  # the chief checkpoints


# ============================================================================ noise scale from the update's own gradients
def test_noise_scale_measured_from_accumulated_micro_batches(tmp_path):
    n, d, k = 8192, 10, 4
    rng = np.random.RandomState(0)
    x = rng.randn(n, d).astype("float32")
    teacher = rng.randn(d, k)
    y = np.argmax(x @ teacher + rng.gumbel(size=(n, k)), axis=1).astype("int64")
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(k)])
    model.compile(keras.optimizers.SGD(1e-9), LOSS)  # weights stay put: one B_simple to measure
    model.layers[0].kernel.assign((0.3 * teacher + 0.3 * rng.randn(d, k)).astype("float32"))
    reference = bstf.analysis.noise_scale(model, (x, y), small_batch=16, big_batch=128, num_batches=64, seed=0)
    plan = bstf.NoiseScalePlan(n, 1e-9, 128, base_momentum=0.0)
    logdir = str(tmp_path / "tb")
    h = bstf.fit(model, tf.data.Dataset.from_tensor_slices((x, y)), plan, 1, max_physical_batch=16, seed=0,
                 verbose=0, noise_scale_every_n_updates=1, noise_scale_ema=None, logdir=logdir, log_every_n_updates=8)
    assert h.phases[0]["accumulation"] == 8
    assert h.history["b_simple"][0] == pytest.approx(reference.b_simple, rel=0.15)
    measured = _events(logdir)["train/measured_b_simple"]
    assert len(measured) == h.updates == 64
    assert measured[-1][1] == pytest.approx(h.history["b_simple"][0], rel=1e-5)


def test_callbacks_get_the_run_clock():
    seen = []

    class WithClock(keras.callbacks.Callback):
        clock = None

        def on_epoch_end(self, epoch, logs=None):
            seen.append(int(self.clock.examples.numpy()))

    bstf.fit(_model(), DATA, _plan(), 2, seed=0, verbose=0, callbacks=[WithClock()])
    assert seen == [240, 480]


# ============================================================================ adaptive batch
def _teacher(n=2048, d=12, k=4, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, d).astype("float32")
    y = np.argmax(x @ rng.randn(d, k) + 0.5 * rng.gumbel(size=(n, k)), axis=1).astype("int64")
    return tf.data.Dataset.from_tensor_slices((x, y)), n


def _adaptive_model(seed=1):
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(4)])
    m.compile(keras.optimizers.SGD(0.05, momentum=0.9), LOSS, metrics=["accuracy"])
    return m


def _controller():
    return bstf.analysis.AdaptiveBatch(32, 512, multiplier=1.0, every_n_updates=10, lr_rule="sqrt", base_lr=0.05,
                                       base_batch=32, granularity=16)


def test_adaptive_batch_follows_the_measured_noise_scale(tmp_path):
    data, n = _teacher()
    plan = bstf.NoiseScalePlan(n, 0.05, 32, base_momentum=0.9)
    ctrl = _controller()
    logdir = str(tmp_path / "tb")
    h = bstf.fit(_adaptive_model(), data, plan, 4, adaptive=ctrl, max_physical_batch=16, seed=0, verbose=0,
                 noise_scale_every_n_updates=2, logdir=logdir, log_every_n_updates=1)
    assert ctrl.changes, "the batch never changed"
    assert [p["batch_size"] for p in h.phases] == [32] + [b for _, b, _ in ctrl.changes]
    assert sum(p["updates"] for p in h.phases) == h.updates
    assert h.examples >= 4 * n > h.examples - h.phases[-1]["batch_size"]
    ev = _events(logdir)
    for (step, lr), (_, batch) in zip(ev["train/learning_rate"], ev["train/batch_size"]):
        # the LR each update used is the controller's sqrt-coupled LR for that update's batch
        assert lr == pytest.approx(0.05 * np.sqrt(batch / 32), rel=1e-6)
    assert {b for _, b in ev["train/accumulation"]} == {p["accumulation"] for p in h.phases}


def test_adaptive_batch_resumes_exactly(tmp_path):
    data, n = _teacher()
    plan = bstf.NoiseScalePlan(n, 0.05, 32, base_momentum=0.9)
    kw = dict(max_physical_batch=16, seed=0, verbose=0, noise_scale_every_n_updates=2)
    full = _adaptive_model()
    ctrl_full = _controller()
    h_full = bstf.fit(full, data, plan, 3, adaptive=ctrl_full, **kw)
    d = str(tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):
        bstf.fit(_adaptive_model(), data, plan, 3, adaptive=_controller(), checkpoint_dir=d,
                 checkpoint_every_n_updates=4, callbacks=[workers.CrashAfter(h_full.updates // 2 + 1)], **kw)
    resumed = _adaptive_model()
    ctrl = _controller()
    h = bstf.fit(resumed, data, plan, 3, adaptive=ctrl, checkpoint_dir=d, checkpoint_every_n_updates=4, **kw)
    assert ctrl.changes == ctrl_full.changes and h.updates == h_full.updates
    for a, b in zip(full.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_physical_batch": None}, "adaptive needs max_physical_batch"),
    ({"max_physical_batch": 32, "adaptive": bstf.analysis.AdaptiveBatch(32, 512, base_lr=0.05, base_batch=32,
                                                                        granularity=32)}, "leaves no small batch"),
    ({"max_physical_batch": 12}, "granularity \\(16\\) must be a multiple of max_physical_batch"),
    ({"plan": bstf.NoiseScalePlan(2048, 0.05, 32, milestones=[1])}, "plan must have no milestones"),
    ({"adaptive": "auto"}, "adaptive must be a bstf.analysis.AdaptiveBatch"),
])
def test_adaptive_bad_input(kwargs, match):
    data, n = _teacher()
    args = {"plan": bstf.NoiseScalePlan(n, 0.05, 32, base_momentum=0.9), "adaptive": _controller(),
            "max_physical_batch": 16, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        bstf.fit(_adaptive_model(), data, args.pop("plan"), 1, verbose=0, **args)


# ============================================================================ the data stream
@pytest.mark.parametrize("replay", [True, False], ids=["replayed", "epoch_seeded"])
def test_stream_is_a_function_of_seed_and_position(monkeypatch, replay):
    from bstf.fitting import stream as stream_module

    monkeypatch.setattr(stream_module, "REPLAY_LIMIT", 10**9 if replay else 0)
    data = tf.data.Dataset.range(50)

    def take(start, count, seed=3):
        stream = stream_module.ExampleStream(data, 50, seed, 200).examples(start, start + count)
        return [int(v) for v in stream.take(count)]

    whole = take(0, 200)
    for e in range(4):  # every epoch is a permutation, and epochs differ
        assert sorted(whole[50 * e:50 * e + 50]) == list(range(50))
    assert whole[:50] != whole[50:100]
    for start in (0, 17, 50, 123):  # rebuilt at any position (phase change, resume): the same examples
        assert take(start, 200 - start) == whole[start:]
    assert take(0, 200, seed=4) != whole
