"""bstf.fit under faults: a NaN at a fixed update, a kill at every point of a save, damaged checkpoints.

Deterministic: the NaN is one example of an unshuffled data set (so it falls in a known update of every
epoch); a kill is a ``Killed`` exception raised by a monkeypatched step of the checkpoint save inside a real
``bstf.fit`` run (TF's own steps where they are Python, or the file state a kill leaves where the step is
one C++ op). After a kill, rerunning the same call must end exactly where an uninterrupted run ends:
weights, history, updates, examples and phases.
"""

import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.checkpoint import checkpoint_management, functional_saver

import bstf
from bstf import tags
from bstf.fitting.state import CheckpointError, CheckpointWarning, RunState

N = 96
RNG = np.random.RandomState(0)
X = RNG.randn(N, 6).astype("float32")
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype("int64")
BAD = 50  # the example that is NaN in the faulty data: update 50 // 8 = 6 (0-based) of every epoch at batch 8
X_NAN = X.copy()
X_NAN[BAD, 2] = np.nan


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no ``except Exception`` on the way can swallow it."""


def _data(x=X):
    return tf.data.Dataset.from_tensor_slices((x, Y))


def _model(strategy=None):
    with (strategy or tf.distribute.get_strategy()).scope():
        keras.utils.set_random_seed(1)
        m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)])
        m.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return m


def _plan(**kw):
    return bstf.NoiseScalePlan(**{"train_size": N, "base_lr": 0.05, "base_batch": 8, "base_momentum": 0.9, **kw})


def _ckpt_numbers(d):
    return sorted(int(f[5:-6]) for f in os.listdir(d) if f.startswith("ckpt-") and f.endswith(".index"))


def _finite_checkpoint(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return all(np.isfinite(reader.get_tensor(k)).all() for k, dtype in reader.get_variable_to_dtype_map().items()
               if dtype.is_floating)


def _mirrored():
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs 2 logical CPUs")
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())


# ============================================================================ non-finite: raise
def test_nan_stops_the_run_naming_update_epoch_and_last_good_checkpoint(tmp_path):
    d = str(tmp_path / "ckpt")
    model = _model()
    with pytest.raises(bstf.NonFiniteLossError) as info:
        bstf.fit(model, _data(X_NAN), _plan(), 2, shuffle=False, verbose=0, checkpoint_dir=d,
                 checkpoint_every_n_updates=3, log_every_n_updates=100)
    e = info.value
    assert isinstance(e, FloatingPointError)
    assert (e.update, e.epoch, e.examples) == (7, 1, 48)  # update 7 starts at example 48 and holds example 50
    assert e.checkpoint == os.path.join(d, "ckpt-6")
    assert str(e).startswith(
        "bstf.fit stopped: the training loss or its gradient was not finite (NaN or infinite) at update 7 (epoch 1, "
        f"48 examples seen); no checkpoint was written after it. The last good checkpoint is {d}/ckpt-6: rerunning "
        "the same call resumes from it.")
    # found at the save after update 9: nothing written after update 7, every checkpoint left is finite
    assert _ckpt_numbers(d) == [3, 6] and all(_finite_checkpoint(os.path.join(d, f"ckpt-{n}")) for n in (3, 6))
    # the same call with on_nonfinite="skip" resumes from ckpt-6 and skips the update with the NaN in each epoch
    h = bstf.fit(_model(), _data(X_NAN), _plan(), 2, shuffle=False, verbose=0, checkpoint_dir=d,
                 checkpoint_every_n_updates=3, on_nonfinite="skip")
    assert (h.updates, h.skipped_updates, h.history["skipped_updates"]) == (24, 2, [1, 2])
    assert np.isfinite(h.history["loss"]).all()


def test_nan_without_checkpoints_is_found_within_log_every_n_updates_and_under_mirrored():
    strategy = _mirrored()
    for model, kwargs in ((_model(), {}), (_model(strategy), {"strategy": strategy})):
        with pytest.raises(bstf.NonFiniteLossError, match="at update 7 .*Nothing was saved") as info:
            bstf.fit(model, _data(X_NAN), _plan(), 1, shuffle=False, verbose=0, log_every_n_updates=4,
                     callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda *a: pytest.fail("epoch end"))],
                     **kwargs)
        assert info.value.checkpoint is None
        assert int(model.optimizer.iterations.numpy()) == 8  # seen at the look after update 8, before the epoch end


# ============================================================================ non-finite: skip
class StopAfter(keras.callbacks.Callback):
    def __init__(self, updates):
        super().__init__()
        self.updates = updates

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.updates:
            self.model.stop_training = True


def test_skipped_update_leaves_weights_and_optimizer_state_as_they_were():
    # 7 updates of which the 7th is skipped == the first 6
    skip, reference = _model(), _model()
    h = bstf.fit(skip, _data(X_NAN), _plan(), 1, shuffle=False, verbose=0, on_nonfinite="skip",
                 callbacks=[StopAfter(7)])
    bstf.fit(reference, _data(), _plan(), 1, shuffle=False, verbose=0, callbacks=[StopAfter(6)])
    assert (h.updates, h.examples, h.skipped_updates) == (7, 56, 1)
    for a, b in zip(skip.get_weights() + [v.numpy() for v in skip.optimizer.variables],
                    reference.get_weights() + [v.numpy() for v in reference.optimizer.variables]):
        np.testing.assert_allclose(a, b, atol=1e-7)


def test_skip_under_mirrored_equals_single_device_and_is_logged(tmp_path):
    strategy = _mirrored()
    single, mirrored = _model(), _model(strategy)
    logdir = str(tmp_path / "tb")
    kw = dict(shuffle=False, verbose=0, on_nonfinite="skip", max_physical_batch=8)
    hs = bstf.fit(single, _data(X_NAN), _plan(milestones=[1], factor=2, mode="increase_batch"), 2, **kw)
    hm = bstf.fit(mirrored, _data(X_NAN), _plan(milestones=[1], factor=2, mode="increase_batch"), 2,
                  strategy=strategy, logdir=logdir, log_every_n_updates=1, **kw)
    # epoch 2 runs batch 16 as 2 x 8: the NaN (one replica's micro-batch) is in update 12 + 3 + 1 = 16
    assert hs.skipped_updates == hm.skipped_updates == 2 and hm.updates == 18
    assert hm.history["skipped_updates"] == [1, 2] and np.isfinite(hm.history["loss"]).all()
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(os.path.join(logdir, tags.TRAIN), size_guidance={"tensors": 0})
    acc.Reload()
    skipped = [(e.step, int(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tags.SKIPPED_UPDATES)]
    assert [s for s, v in skipped if v == 1][0] == 48 and skipped[-1] == (96 + 5 * 16, 2)


def test_on_nonfinite_is_checked():
    with pytest.raises(ValueError, match="on_nonfinite must be 'raise' .* or 'skip' .*, got 'ignore'"):
        bstf.fit(_model(), _data(), _plan(), 1, verbose=0, on_nonfinite="ignore")


# ============================================================================ kills during a save
def _merge_then(damage):
    real = functional_saver.gen_io_ops.merge_v2_checkpoints

    def merge(checkpoint_prefixes, destination_prefix, **kwargs):
        real(checkpoint_prefixes, destination_prefix, **kwargs)
        damage(destination_prefix.numpy().decode() + ".index")
        raise Killed()

    return merge


def _kill(*args, **kwargs):
    raise Killed()


def _sweep_killed_midway():
    real, calls = checkpoint_management._delete_file_if_exists, []

    def delete(filespec):
        calls.append(filespec)
        if len(calls) == 2:  # the old index is gone, its data not yet
            raise Killed()
        real(filespec)

    return delete


KILL_POINTS = {  # point -> (patch target, replacement), armed at the 3rd save (after update 6, the end of epoch 1)
    "before_checkpoint_write": ((tf.train.Checkpoint, "_write"), lambda: _kill),
    "tensors_in_temp_dir": ((functional_saver.gen_io_ops, "merge_v2_checkpoints"), lambda: _kill),
    "data_renamed_before_index": ((functional_saver.gen_io_ops, "merge_v2_checkpoints"),
                                  lambda: _merge_then(os.remove)),
    "before_checkpoint_state_file": ((checkpoint_management, "update_checkpoint_state_internal"), lambda: _kill),
    "during_sweep_of_old_checkpoint": ((checkpoint_management, "_delete_file_if_exists"), _sweep_killed_midway),
    "after_the_save": (None, None),
}
# Two phases — 6 updates of 16 (2 x 8), then 2 of 32 (4 x 8) to 1.5 epochs — with validation and saves after
# updates 2, 4, 6 (the end of epoch 1) and 8 (the end).
TWO_PHASES = _plan(base_batch=16, milestones=[1], factor=2, mode="increase_batch")
KW = dict(verbose=0, seed=3, checkpoint_every_n_updates=2, max_physical_batch=8, validation_data=_data())


def _fit(d, **kw):
    model = _model()
    return model, bstf.fit(model, _data(), TWO_PHASES,
                           1.5, checkpoint_dir=d, **KW, **kw)


def _same_run(a, b):
    (ma, ha), (mb, hb) = a, b
    for wa, wb in zip(ma.get_weights(), mb.get_weights()):
        np.testing.assert_allclose(wa, wb, atol=1e-6)
    assert (ha.updates, ha.examples, ha.seed) == (hb.updates, hb.examples, hb.seed)
    assert ha.history.keys() == hb.history.keys()
    for key in ha.history:
        np.testing.assert_allclose(ha.history[key], hb.history[key], atol=1e-6, err_msg=key)
    strip = lambda phases: [{k: v for k, v in p.items() if k != "wall_time"} for p in phases]  # noqa: E731
    assert strip(ha.phases) == strip(hb.phases)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("uninterrupted"))
    run = _fit(d)
    assert run[1].updates == 8 and [p["updates"] for p in run[1].phases] == [6, 2] and _ckpt_numbers(d) == [6, 8]
    return run, d


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_at_each_point_of_a_save_then_rerun_equals_uninterrupted(tmp_path, monkeypatch, uninterrupted, point):
    d = str(tmp_path)
    target, replacement = KILL_POINTS[point]
    real_save, saves = RunState.save, []

    def save(self, number, record):
        saves.append(number)
        if len(saves) == 3 and target is None:
            real_save(self, number, record)
            raise Killed()
        if len(saves) == 3:
            monkeypatch.setattr(*target, replacement())
        return real_save(self, number, record)

    monkeypatch.setattr(RunState, "save", save)
    with pytest.raises(Killed):
        _fit(d)
    monkeypatch.undo()
    assert saves == [2, 4, 6]
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        resumed = _fit(d)
    _same_run(resumed, uninterrupted[0])
    damaged = [str(w.message) for w in warned if issubclass(w.category, CheckpointWarning)]
    assert damaged == ([f"skipping checkpoint {d}/ckpt-6: {d}/ckpt-6.index is missing (deleted, or its save was "
                        "interrupted)"] if point == "data_renamed_before_index" else [])


# ============================================================================ damaged checkpoints
@pytest.mark.parametrize("damage", ["delete_index", "delete_data", "truncate_data", "delete_state_file"])
def test_damaged_newest_checkpoint_falls_back_and_the_rerun_still_equals_uninterrupted(tmp_path, uninterrupted,
                                                                                        damage):
    import shutil

    (_, _), source = uninterrupted
    d = str(tmp_path / "ckpt")
    shutil.copytree(source, d)
    path = {"delete_index": "ckpt-8.index", "delete_data": "ckpt-8.data-00000-of-00001",
            "truncate_data": "ckpt-8.data-00000-of-00001", "delete_state_file": "checkpoint"}[damage]
    if damage == "truncate_data":
        with open(os.path.join(d, path), "rb+") as f:
            f.truncate(os.path.getsize(os.path.join(d, path)) // 2)
    else:
        os.remove(os.path.join(d, path))
    fallback = damage != "delete_state_file"  # the state file is not needed: the ckpt-* files are listed
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        resumed = _fit(d)
    _same_run(resumed, uninterrupted[0])
    skipped = [str(w.message) for w in warned if issubclass(w.category, CheckpointWarning)]
    assert len(skipped) == fallback and all(m.startswith(f"skipping checkpoint {d}/ckpt-8: ") for m in skipped)


def test_no_usable_checkpoint_is_a_clear_error_before_training(tmp_path, uninterrupted):
    import shutil

    d = str(tmp_path / "ckpt")
    shutil.copytree(uninterrupted[1], d)
    for n in _ckpt_numbers(d):
        os.remove(os.path.join(d, f"ckpt-{n}.index"))
    model = _model()
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="holds checkpoints but none can be used"):
        bstf.fit(model, _data(), TWO_PHASES, 1.5,
                 checkpoint_dir=d, **KW)
    assert int(model.optimizer.iterations.numpy()) == 0  # never a silent restart from zero


# ============================================================================ bad input: refused before the first update
def _dir_under_a_file(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    return str(tmp_path / "file" / "sub")


def _unknown_size(ds):
    return ds.filter(lambda x, y: True)


BAD_INPUTS = {  # name -> (fit arguments, error, message)
    "phase_batch_over_train_size": (dict(plan=_plan(milestones=[1], factor=1e3, mode="increase_batch")), ValueError,
                                    "phase 1 \\(epochs 1-2\\) has a global batch of 8000 but the training set has 96"),
    "learning_rate_overflows": (dict(plan=_plan(base_lr=1e308)), ValueError,
                                "phase 0 \\(epochs 0-2\\) has a learning rate of inf, which is not a finite positive float32"),
    "unknown_size_too_small": (dict(train_data=_unknown_size(_data()).take(50)), ValueError,
                               "train_data has 50 examples but plan.train_size is 96"),
    "unknown_size_too_large": (dict(train_data=_unknown_size(_data().repeat(2))), ValueError,
                               "train_data has more than 96 examples"),
    "empty_after_filter": (dict(train_data=_data().filter(lambda x, y: False)), ValueError, "train_data is empty"),
    "repeated_forever": (dict(train_data=_data().repeat()), ValueError, "train_data repeats forever"),
    "wrong_feature_shape": (dict(train_data=tf.data.Dataset.from_tensor_slices((X[:, :5], Y))), ValueError,
                            "train_data has features of shape \\(5,\\) per example but the model's input takes \\(6,\\)"),
    "string_features": (dict(train_data=tf.data.Dataset.from_tensor_slices((X.astype(str), Y))), ValueError,
                        "train_data has string features"),
    "no_labels": (dict(train_data=tf.data.Dataset.from_tensor_slices(X)), ValueError, "the labels are missing"),
    "labels_out_of_range": (dict(train_data=tf.data.Dataset.from_tensor_slices((X, Y * 5))), ValueError,
                            "labels from 0 to 5 but the model has 2 outputs"),
    "bad_validation_data": (dict(validation_data=tf.data.Dataset.from_tensor_slices((X[:, :4], Y))), ValueError,
                            "validation_data has features of shape \\(4,\\)"),
    "checkpoint_dir_not_writable": (dict(checkpoint_dir=_dir_under_a_file), ValueError,
                                    "checkpoint_dir .* is not a writable directory"),
    "logdir_not_writable": (dict(logdir=_dir_under_a_file), ValueError, "logdir .* is not a writable directory"),
    "adaptive_batch_over_train_size": (
        dict(adaptive=bstf.analysis.AdaptiveBatch(16, 128, base_lr=0.05, base_batch=16, granularity=16),
             max_physical_batch=8), ValueError, "adaptive.max_batch \\(128\\) is larger than the training set"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_before_the_first_update(tmp_path, case):
    kwargs, err, match = BAD_INPUTS[case]
    args = {"train_data": _data(), "plan": _plan(), "epochs": 2, "verbose": 0, **kwargs}
    for key in ("checkpoint_dir", "logdir"):
        if callable(args.get(key)):
            args[key] = args[key](tmp_path)
    model = _model()
    before = model.get_weights()
    with pytest.raises(err, match=match):
        bstf.fit(model, args.pop("train_data"), args.pop("plan"), args.pop("epochs"), **args)
    assert int(model.optimizer.iterations.numpy()) == 0
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_second_run_on_a_live_runs_checkpoint_dir_is_refused(tmp_path):
    from bstf.fitting.state import LockedError

    d = str(tmp_path / "ckpt")
    with RunState(d, {"clock": bstf.Clock(N)}):  # a run holding the directory
        model = _model()
        with pytest.raises(LockedError, match=f"checkpoint_dir '{d}' is in use by process {os.getpid()}"):
            bstf.fit(model, _data(), _plan(), 1, verbose=0, checkpoint_dir=d)
        assert int(model.optimizer.iterations.numpy()) == 0
    h = bstf.fit(_model(), _data(), _plan(), 1, verbose=0, checkpoint_dir=d)  # free again once it ended
    assert h.updates == 12


# ============================================================================ preemption across workers
_WORKER = """
import json, os, signal
import bstf, keras, tensorflow as tf, workers
strategy = bstf.distribute.get_strategy("multi_worker")
x, y = workers.data({data!r})
model = workers.classifier(strategy, metrics=["accuracy"])
kill_at = int(os.environ.get("KILL_AT_UPDATE", 0))

class Preempt(keras.callbacks.Callback):  # SIGKILLs worker KILL_TASK right after update KILL_AT_UPDATE
    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == kill_at and workers.task() == int(os.environ["KILL_TASK"]):
            os.kill(os.getpid(), signal.SIGKILL)

plan = bstf.NoiseScalePlan(len(x), 0.05, 8, base_momentum=0.9, milestones=[1], factor=2, mode="increase_batch")
if os.environ.get("SEED_ONLY"):  # no seed given: every worker must draw the chief's
    h = bstf.fit(model, tf.data.Dataset.from_tensor_slices((x, y)), plan, 0.1, verbose=0)
    with open(os.path.join({out!r}, f"seed{{workers.task()}}.json"), "w") as f:
        json.dump(h.seed, f)
    sys.exit(0)
h = bstf.fit(model, tf.data.Dataset.from_tensor_slices((x, y)), plan, 2, seed=5, verbose=0, max_physical_batch=8,
             checkpoint_dir=os.path.join({out!r}, "ckpt"), checkpoint_every_n_updates=4, callbacks=[Preempt()])
workers.save({out!r}, model, updates=h.updates, examples=h.examples, loss=h.history["loss"],
             phases=[p["updates"] for p in h.phases])
"""


@pytest.mark.slow
def test_sigkill_one_of_two_workers_then_restart_both_equals_uninterrupted(tmp_path, local_workers):
    """Also: without a seed, both workers draw the chief's."""
    import json
    import signal

    import workers

    np.savez(tmp_path / "data.npz", x=X, y=Y)
    cluster = local_workers()
    command = cluster.script(tmp_path, _WORKER.format(data=str(tmp_path / "data.npz"), out=str(tmp_path)))
    # without a seed, the workers draw one (the chief's), so they read one shuffled stream
    cluster.run(command, SEED_ONLY="1")
    seeds = [json.loads((tmp_path / f"seed{i}.json").read_text()) for i in range(2)]
    assert seeds[0] == seeds[1]
    # worker 1 is SIGKILLed after update 15 (saves after 4, 8, 12): worker 0 then waits in the next all-reduce
    procs = cluster.start(command, KILL_AT_UPDATE="15", KILL_TASK="1")
    assert procs[1].wait(timeout=300) == -signal.SIGKILL, procs[1].communicate()[0][-3000:]
    procs[0].send_signal(signal.SIGKILL)  # the survivor is stuck: preempted with it (the lock goes with it)
    procs[0].wait(timeout=60)
    assert not (tmp_path / "weights0.npz").exists() and _ckpt_numbers(tmp_path / "ckpt") == [8, 12]
    cluster.run(command)  # the same command again: both resume from ckpt-12
    # the uninterrupted run in this process, without a strategy (two workers == one, tests/test_training.py)
    single = _model()
    h = bstf.fit(single, _data(), _plan(milestones=[1], factor=2, mode="increase_batch"), 2, seed=5, verbose=0,
                 max_physical_batch=8)
    for task in range(2):
        weights, resumed = workers.results(str(tmp_path), task)
        for a, b in zip(single.get_weights(), weights):
            np.testing.assert_allclose(a, b, atol=1e-5)
        assert (resumed["updates"], resumed["examples"], resumed["phases"]) == (h.updates, h.examples, [12, 6])
        np.testing.assert_allclose(resumed["loss"], h.history["loss"], atol=1e-5)
