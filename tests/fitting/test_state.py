"""Tests of bstf.fitting.state: the run state saved as one checkpoint, the restore that falls back, the lock.

Faults are deterministic: a kill is a ``Killed`` exception raised by a monkeypatched step of the save (TF's
own steps where they are Python, or the file state a kill leaves where the step is inside one C++ op); then
fresh objects restore and must hold exactly the previous or exactly the new state, weights and record alike.
"""

import os
import re
import signal
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.checkpoint import checkpoint_management, functional_saver

from bstf.clock import Clock
from bstf.fitting.state import (UNUSABLE_DIR, CheckpointError, CheckpointWarning, LockedError, NonFiniteError,
                                RunState)

IDENTITY = {"plan": {"name": "p", "base_lr": 0.1}, "epochs": 2, "seed": 7}
DATA = "data-00000-of-00001"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no ``except Exception`` on the way can swallow it."""


class Run:
    """A tiny run: Dense model, Adam, a metric, the clock, and their RunState on ``directory``."""

    def __init__(self, directory, seed=0, strategy=None, **kwargs):
        keras.utils.set_random_seed(seed)
        with (strategy or tf.distribute.get_strategy()).scope():
            self._build()
        self.state = RunState(directory, {"model": self.model, "optimizer": self.optimizer, "clock": self.clock,
                                          "metrics": [v.value for v in self.metric.variables]}, **kwargs)

    def _build(self):
        self.model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")], name="net")
        self.optimizer = keras.optimizers.Adam(0.1, name="adam")
        self.optimizer.build(self.model.trainable_variables)
        self.metric = keras.metrics.Mean()
        self.clock = Clock(100)

    def step(self, n):
        """Update ``n``: deterministic, moves the weights, the Adam slots, the metric and the clock."""
        x = tf.fill((4, 3), float(n))
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self.model(x) - 1.0))
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply(grads, self.model.trainable_variables)
        self.metric.update_state(loss)
        self.clock.advance(10)

    def record(self, n):
        return {**IDENTITY, "examples": int(self.clock.examples.numpy()), "updates": n,
                "history": {"loss": [0.5 * i for i in range(n)]}, "phases": [{"index": 1, "updates": n}]}

    def values(self):
        variables = self.model.weights + self.optimizer.variables + self.metric.variables
        return [np.array(v.numpy()) for v in variables] + [self.clock.examples.numpy()]


def assert_values(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


def differs(actual, expected):
    return any(a.shape != e.shape or not np.array_equal(a, e) for a, e in zip(actual, expected))


def run_and_save(directory, numbers=(1, 2, 3)):
    """Trains and saves at each number; returns the open run and {number: (values, record)}."""
    run = Run(directory)
    assert run.state.restore(IDENTITY) is None
    saved = {}
    for n in numbers:
        run.step(n)
        saved[n] = (run.values(), run.record(n))
        assert run.state.save(n, saved[n][1]) == os.path.join(directory, f"ckpt-{n}")
    return run, saved


def resume(directory):
    """Fresh objects (other initial weights) restored from ``directory``; returns (run, record, warnings)."""
    fresh = Run(directory, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = fresh.state.restore(IDENTITY)
    return fresh, record, [str(w.message) for w in caught if w.category is CheckpointWarning]


def files(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith("ckpt-"))


# ------------------------------------------------------------------------------------------- round trip
def test_round_trip_restores_weights_slots_metrics_clock_and_record(tmp_path):
    d = str(tmp_path)
    run, saved = run_and_save(d)
    run.state.close()
    assert files(d) == ["ckpt-2.data-00000-of-00001", "ckpt-2.index", "ckpt-3.data-00000-of-00001", "ckpt-3.index"]
    fresh = Run(d, seed=1)
    assert differs(fresh.values(), saved[3][0])  # the restore has something to do
    record = fresh.state.restore(IDENTITY)
    assert record == saved[3][1]
    assert_values(fresh.values(), saved[3][0])
    assert fresh.state.latest == os.path.join(d, "ckpt-3")
    fresh.step(4)  # the run goes on exactly as an uninterrupted one
    run.step(4)
    assert_values(fresh.values(), run.values())


def test_round_trip_and_non_finite_guard_under_mirrored_strategy(tmp_path):
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs 2 logical CPUs (tests/conftest.py)")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    d = str(tmp_path)
    run = Run(d, strategy=strategy)
    run.state.restore(IDENTITY)
    run.model.weights[0].assign(np.arange(6, dtype=np.float32).reshape(3, 2))
    strategy.run(lambda: run.clock.advance(10))  # every replica adds the global count; the clock counts once
    expected = (run.values(), run.record(1))
    run.state.save(1, expected[1])
    run.model.weights[1].assign([np.nan, 0.0])
    with pytest.raises(NonFiniteError, match="non-finite values in net/dense/bias;"):
        run.state.save(2, run.record(2))
    run.state.close()
    fresh = Run(d, seed=1, strategy=strategy)
    assert fresh.state.restore(IDENTITY) == expected[1]
    assert_values(fresh.values(), expected[0])
    assert files(d) == ["ckpt-1.data-00000-of-00001", "ckpt-1.index"]


def test_empty_directory_restores_nothing(tmp_path):
    run = Run(str(tmp_path / "new"))
    before = run.values()
    assert run.state.restore(IDENTITY) is None
    assert_values(run.values(), before)
    assert run.state.latest is None


# ------------------------------------------------------------------------------------------- kills during save
def _merge_then(damage):
    """A merge_v2_checkpoints that finishes (data renamed, index written), damages the index, then is killed."""
    real = functional_saver.gen_io_ops.merge_v2_checkpoints

    def merge(checkpoint_prefixes, destination_prefix, *args, **kwargs):
        real(checkpoint_prefixes, destination_prefix, *args, **kwargs)
        damage(destination_prefix.numpy().decode() + ".index")
        raise Killed()

    return merge


def _kill(*args, **kwargs):
    raise Killed()


def _truncate_half(path):
    with open(path, "rb+") as f:
        f.truncate(os.path.getsize(path) // 2)


def _sweep_killed_midway():
    real = checkpoint_management._delete_file_if_exists
    calls = []

    def delete(filespec):
        calls.append(filespec)
        if len(calls) == 2:  # the old index is gone, its data not yet
            raise Killed()
        real(filespec)

    return delete


# point -> (patch target, replacement factory, outcome, expected warning)
KILL_POINTS = {
    "before_checkpoint_write": (lambda: (tf.train.Checkpoint, "_write"), lambda: _kill, "previous", None),
    "tensors_in_temp_dir": (lambda: (functional_saver.gen_io_ops, "merge_v2_checkpoints"), lambda: _kill,
                            "previous", None),
    "data_renamed_before_index": (lambda: (functional_saver.gen_io_ops, "merge_v2_checkpoints"),
                                  lambda: _merge_then(os.remove), "previous", "ckpt-4.index is missing"),
    "index_half_written": (lambda: (functional_saver.gen_io_ops, "merge_v2_checkpoints"),
                           lambda: _merge_then(_truncate_half), "previous", "ckpt-4.index cannot be read"),
    "before_checkpoint_state_file": (lambda: (checkpoint_management, "update_checkpoint_state_internal"),
                                     lambda: _kill, "new", None),
    "during_sweep_of_old_checkpoint": (lambda: (checkpoint_management, "_delete_file_if_exists"),
                                       _sweep_killed_midway, "new", None),
    "after_everything": (None, None, "new", None),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_at_each_point_of_a_save_leaves_previous_or_new_state(tmp_path, monkeypatch, point):
    d = str(tmp_path)
    run, saved = run_and_save(d)
    run.step(4)
    new = (run.values(), run.record(4))
    target, replacement, outcome, warning = KILL_POINTS[point]
    if target is not None:
        monkeypatch.setattr(*target(), replacement())
    with pytest.raises(Killed):
        run.state.save(4, new[1])
        raise Killed()  # reached only when no step was patched: killed right after the save
    monkeypatch.undo()
    run.state.close()  # what the kernel does to a killed process's lock

    fresh, record, warned = resume(d)
    values, expected = saved[3] if outcome == "previous" else new
    assert record == expected
    assert_values(fresh.values(), values)
    if warning is None:
        assert warned == []
    else:
        assert len(warned) == 1 and warning in warned[0] and os.path.join(d, "ckpt-4") in warned[0]
    assert not any(name.endswith("_temp") for name in os.listdir(d))  # leftovers of the killed write removed
    if outcome == "previous":  # redo update 4: equals the uninterrupted run
        fresh.step(4)
        fresh.state.save(4, fresh.record(4))
    assert_values(fresh.values(), new[0])
    fresh.state.close()
    again, record, warned = resume(d)
    assert (record, warned) == (new[1], [])
    assert_values(again.values(), new[0])


# ------------------------------------------------------------------------------------------- damaged files
def _garbage(path):
    size = os.path.getsize(path)
    with open(path, "rb+") as f:
        f.seek(size // 4)
        f.write(bytes(range(256)) * (size // 512 + 1))
        f.truncate(size)


DAMAGE = {"truncated": _truncate_half, "garbage": _garbage, "deleted": os.remove}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("suffix, reason", [("index", "cannot be read"), (DATA, "cannot be read")])
def test_damaged_newest_checkpoint_falls_back_to_older_with_warning(tmp_path, damage, suffix, reason):
    d = str(tmp_path)
    run, saved = run_and_save(d)
    run.state.close()
    damaged = os.path.join(d, f"ckpt-3.{suffix}")
    DAMAGE[damage](damaged)

    fresh, record, warned = resume(d)
    assert record == saved[2][1]
    assert_values(fresh.values(), saved[2][0])
    assert len(warned) == 1 and damaged in warned[0]
    assert ("is missing" if damage == "deleted" else reason) in warned[0]
    # the broken checkpoint is quarantined, so it can never come back as "newest"; the index file is repaired
    assert files(d) == ["ckpt-2.data-00000-of-00001", "ckpt-2.index"]
    kept = [n for n in ("ckpt-3." + DATA, "ckpt-3.index") if damage != "deleted" or n != os.path.basename(damaged)]
    assert sorted(os.listdir(os.path.join(d, UNUSABLE_DIR))) == kept
    assert tf.train.latest_checkpoint(d) == os.path.join(d, "ckpt-2")
    fresh.step(3)
    fresh.state.save(3, fresh.record(3))
    assert_values(fresh.values(), saved[3][0])


def test_deleted_checkpoint_index_file_resumes_newest_and_is_rewritten(tmp_path):
    d = str(tmp_path)
    run, saved = run_and_save(d)
    run.state.close()
    os.remove(os.path.join(d, "checkpoint"))

    fresh, record, warned = resume(d)
    assert (record, warned) == (saved[3][1], [])
    assert_values(fresh.values(), saved[3][0])
    assert tf.train.latest_checkpoint(d) == os.path.join(d, "ckpt-3")
    fresh.step(4)
    fresh.state.save(4, fresh.record(4))
    assert files(d) == ["ckpt-3.data-00000-of-00001", "ckpt-3.index", "ckpt-4.data-00000-of-00001", "ckpt-4.index"]


def test_all_checkpoints_broken_is_a_clear_error_and_restores_nothing(tmp_path):
    d = str(tmp_path)
    run, _ = run_and_save(d)
    run.state.close()
    os.remove(os.path.join(d, "ckpt-3.index"))
    _garbage(os.path.join(d, f"ckpt-2.{DATA}"))
    fresh = Run(d, seed=1)
    before = fresh.values()
    message = (
        f"checkpoint_dir {d!r} holds checkpoints but none can be used:\n"
        f"  - {d}/ckpt-3.index is missing (deleted, or its save was interrupted)\n"
        f"  - {d}/ckpt-2.{DATA} cannot be read (OpError: TensorBundle at {d}/ckpt-2 shard 0")
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match=re.escape(message)) as error:
        fresh.state.restore(IDENTITY)
    assert str(error.value).endswith(
        f"\nNothing was restored. To start over, delete {d!r} (or move its ckpt-* files away), or use another "
        "checkpoint_dir.")
    assert_values(fresh.values(), before)
    assert files(d) == ["ckpt-2.data-00000-of-00001", "ckpt-2.index", "ckpt-3.data-00000-of-00001"]  # untouched


class _Text(tf.train.experimental.PythonState):
    def __init__(self, text):
        self.text = text

    def serialize(self):
        return self.text

    def deserialize(self, value):
        self.text = value


def _foreign_checkpoint(directory, **extra):
    """A checkpoint of the same objects written by plain tf.train.Checkpoint (not by RunState)."""
    run = Run(directory, seed=2)
    run.state.close()
    ckpt = tf.train.Checkpoint(model=run.model, optimizer=run.optimizer, clock=run.clock,
                               metrics=[v.value for v in run.metric.variables], **extra)
    assert ckpt.save(os.path.join(directory, "ckpt")) == os.path.join(directory, "ckpt-1")


def test_checkpoint_without_run_record_is_not_used(tmp_path):
    d = str(tmp_path)
    _foreign_checkpoint(d)
    with pytest.warns(CheckpointWarning), pytest.raises(
            CheckpointError, match=re.escape(f"  - {d}/ckpt-1 holds no run record (not written by bstf's RunState)")):
        Run(d).state.restore(IDENTITY)


def test_clock_disagreeing_with_record_is_an_error(tmp_path):
    d = str(tmp_path)
    _foreign_checkpoint(d, record=_Text('{"plan": {"name": "p", "base_lr": 0.1}, "epochs": 2, "seed": 7, '
                                        '"examples": 999}'))
    with pytest.raises(CheckpointError, match=re.escape(
            f"checkpoint {d}/ckpt-1 is inconsistent: its clock is at 0 examples but its run record at 999.")):
        Run(d).state.restore(IDENTITY)


def test_temp_dir_of_a_killed_first_save_is_no_checkpoint(tmp_path, monkeypatch):
    d = str(tmp_path)
    run = Run(d)
    run.step(1)
    monkeypatch.setattr(functional_saver.gen_io_ops, "merge_v2_checkpoints", _kill)
    with pytest.raises(Killed):
        run.state.save(1, run.record(1))
    monkeypatch.undo()
    run.state.close()
    assert sorted(os.listdir(d)) == ["bstf.lock", "ckpt-1_temp"]
    fresh, record, warned = resume(d)
    assert (record, warned) == (None, [])
    assert sorted(os.listdir(d)) == ["bstf.lock"]


# ------------------------------------------------------------------------------------------- guards
@pytest.mark.parametrize("where, name", [("kernel", "net/dense/kernel"),
                                         ("slot", "adam/net_dense_bias_velocity")])
def test_non_finite_state_is_never_saved(tmp_path, where, name):
    d = str(tmp_path)
    run, _ = run_and_save(d, (1, 2))
    before = {n: open(os.path.join(d, n), "rb").read() for n in os.listdir(d) if n != "bstf.lock"}
    run.step(3)
    if where == "kernel":
        run.model.weights[0].assign(np.full((3, 2), np.nan, np.float32))
    else:
        slot = next(v for v in run.optimizer.variables if v.path == name)
        slot.assign(np.full(slot.shape, np.inf, np.float32))
    with pytest.raises(NonFiniteError, match=re.escape(
            f"refusing to save checkpoint 3: non-finite values in {name}; the last good checkpoint is {d}/ckpt-2.")):
        run.state.save(3, run.record(3))
    assert {n: open(os.path.join(d, n), "rb").read() for n in os.listdir(d) if n != "bstf.lock"} == before


def test_identity_mismatch_names_the_key(tmp_path):
    d = str(tmp_path)
    run_and_save(d, (1,))[0].state.close()
    fresh = Run(d, seed=1)
    before = fresh.values()
    with pytest.raises(ValueError, match=re.escape(
            f"checkpoint_dir {d!r} holds a run with a different epochs (2 vs now 3); refusing to mix them. "
            "Use another checkpoint_dir, or delete it to start over.")):
        fresh.state.restore({**IDENTITY, "epochs": 3})
    assert_values(fresh.values(), before)


def test_save_checks_its_arguments_before_writing(tmp_path):
    d = str(tmp_path)
    run = Run(d)
    run.step(1)
    with pytest.raises(ValueError, match=re.escape("record['examples'] (5) must equal the clock (10 examples).")):
        run.state.save(1, {**run.record(1), "examples": 5})
    with pytest.raises(TypeError, match="record must be JSON-serialisable"):
        run.state.save(1, {**run.record(1), "x": object()})
    with pytest.raises(TypeError, match="record must be a dict, got list"):
        run.state.save(1, [])
    with pytest.raises(ValueError, match=re.escape("number must be an integer >= 0, got -1.")):
        run.state.save(-1, run.record(1))
    assert files(d) == []
    with pytest.raises(TypeError, match="trackables must hold the run's bstf.Clock as 'clock'"):
        RunState(str(tmp_path / "other"), {"model": run.model})


# ------------------------------------------------------------------------------------------- lock
def test_second_run_on_same_directory_is_refused_until_close(tmp_path):
    d = str(tmp_path)
    first = Run(d)
    with pytest.raises(LockedError, match=re.escape(f"checkpoint_dir {d!r} is in use by process {os.getpid()} on "
                                                    "host ")):
        Run(d)
    worker = Run(d, chief=False)  # a non-chief worker neither locks nor writes the directory
    worker.step(1)
    private = worker.state.save(1, worker.record(1))
    assert not private.startswith(d) and files(d) == []
    worker.state.close()
    assert not os.path.exists(os.path.dirname(private))
    first.state.close()
    first.state.close()  # idempotent
    with Run(d).state:
        pass
    Run(d).state.close()


def test_lock_of_a_killed_process_is_released(tmp_path):
    d = str(tmp_path)
    script = textwrap.dedent(f"""
        import sys, time
        from bstf.clock import Clock
        from bstf.fitting.state import RunState
        state = RunState({d!r}, {{"clock": Clock(1)}})
        print("locked", flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=re.escape(f"in use by process {child.pid} on host ")):
            Run(d)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    Run(d).state.close()
