"""bstf.fit(adaptive=GoodputBatch(...)): the batch and its realisation chosen online, logged, resumed, and the
same on every worker.

Wall-clock timings make decisions depend on the machine, so these tests replace the seconds the loop measures
for an update with a synthetic time model of its realisation (monkeypatching ``Control.timed`` at its one
entry point): the decisions are then deterministic and the wiring is what is tested.
"""

import json
import os
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import bstf
import workers
from bstf import tags
from bstf.analysis import AdaptiveBatch, GoodputBatch, ThroughputModel
from bstf.fitting import control

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
N, D, K = 2048, 12, 4


def seconds(b, k):
    """Synthetic seconds of an update of ``k`` micro-batches of ``b``: a per-update and a per-example cost."""
    return k * (1e-3 + 2e-5 * b) + 4e-3


def synthetic(shape):
    """``Control.timed`` fed ``shape(b, k)`` of the current realisation instead of the measured seconds."""
    original = control.Control.timed

    def timed(self, measured):
        del measured
        return original(self, shape(self.current.physical_batch, self.current.accumulation))

    return timed


def _data(seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(N, D).astype("float32")
    y = np.argmax(x @ rng.randn(D, K) + 0.5 * rng.gumbel(size=(N, K)), axis=1).astype("int64")
    return x, y


def _model(seed=1):
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([keras.Input((D,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(K)])
    m.compile(keras.optimizers.SGD(0.05, momentum=0.9), LOSS, metrics=["accuracy"])
    return m


def _controller(replicas=1):
    return GoodputBatch(32, 512, every_n_updates=6, base_lr=0.05, base_batch=32, granularity=16,
                        throughput=ThroughputModel(128, replicas=replicas, physical_batches=[16, 32, 64, 128]))


def _fit(model, controller, epochs=3, **kw):
    x, y = _data()
    plan = bstf.NoiseScalePlan(N, 0.05, 32, base_momentum=0.9)
    return bstf.fit(model, tf.data.Dataset.from_tensor_slices((x, y)), plan, epochs, adaptive=controller,
                    max_physical_batch=128, seed=0, verbose=0, noise_scale_every_n_updates=2,
                    log_every_n_updates=2, **kw)


def _events(logdir):
    from tensorboard.backend.event_processing import event_accumulator

    path = next(os.path.join(logdir, "train", f) for f in os.listdir(os.path.join(logdir, "train"))
                if f.startswith("events"))
    acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
    acc.Reload()
    values = {t: [(e.step, tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(t)] for t in acc.Tags()["tensors"]}
    return {t: [(s, v.item()) for s, v in vs] for t, vs in values.items() if all(v.ndim == 0 for _, v in vs)}


def test_goodput_batch_chooses_realises_and_logs(tmp_path, monkeypatch):
    monkeypatch.setattr(control.Control, "timed", synthetic(seconds))
    c = _controller()
    logdir = str(tmp_path / "tb")
    model = _model()
    h = _fit(model, c, logdir=logdir)
    assert len(c.changes) >= 2 and len({b for _, _, b, _, _ in c.changes}) >= 2  # batches and physical batches
    # every phase is the controller's realisation, in order: the initial one, then one per change
    ran = [(p["batch_size"], p["physical_batch"], p["accumulation"]) for p in h.phases]
    assert ran == [(32, 16, 2)] + [(B, b, k) for _, B, b, k, _ in c.changes]
    assert all(B == b * k for B, b, k in ran) and sum(p["updates"] for p in h.phases) == h.updates
    assert [p["learning_rate"] for p in h.phases[1:]] == pytest.approx([lr for *_, lr in c.changes])
    # the loop fed the timings: every (b, k) run is timed at the synthetic seconds (first window dropped)
    for b, k in {(b, k) for _, b, k in ran}:
        assert c.throughput.predict(b, k) == pytest.approx(seconds(b, k), rel=1e-6)
    # the LR is the controller's (AdaScale: η₀·r at the final statistics), in-graph to the end
    assert float(model.optimizer.learning_rate) == pytest.approx(c.learning_rate, rel=1e-6)
    events = _events(logdir)
    chosen = dict(events[tags.DECISION_BATCH])
    changed = [step for step, v in events[tags.decision("changed")] if v]
    assert [chosen[s] for s in changed] == [B for _, B, *_ in c.changes]
    for tag in (tags.DECISION_THROUGHPUT, tags.DECISION_EFFICIENCY, tags.DECISION_GOODPUT):
        assert len(events[tag]) == len(chosen) > len(c.changes)  # a decision every 6 updates
    goodput = dict(events[tags.DECISION_GOODPUT])
    assert all(goodput[s] == pytest.approx(v * dict(events[tags.DECISION_EFFICIENCY])[s], rel=1e-5)
               for s, v in events[tags.DECISION_THROUGHPUT])
    progress = [v for _, v in events[tags.ADASCALE_PROGRESS]]
    seen = [s for s, _ in events[tags.ADASCALE_PROGRESS]]
    firsts = set(np.cumsum([0] + [p["updates"] for p in h.phases[:-1]]) + 1)  # each phase's first update
    assert len(progress) == len({u for u in range(1, h.updates + 1) if u % 2 == 0} | firsts)
    assert np.all(np.diff(progress) > 0)
    assert all(0 < p <= s for p, s in zip(progress[1:], seen[1:]))  # r·B₀ <= B per update: at most examples


def test_resume_across_an_interruption_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setattr(control.Control, "timed", synthetic(seconds))
    whole, c = _model(), _controller()
    h = _fit(whole, c, checkpoint_dir=str(tmp_path / "a"), checkpoint_every_n_updates=6)
    # Checkpoints at the decision points (every 6 updates): the kill comes one update after the one 6 updates
    # past the second change. (The first timing after a restore is dropped — the process retraces — so a
    # resume decides as the uninterrupted run when that timing adds nothing new: its realisation was timed.)
    at = c.changes[1][0] + 7
    with pytest.raises(KeyboardInterrupt):
        _fit(_model(), _controller(), checkpoint_dir=str(tmp_path / "b"), checkpoint_every_n_updates=6,
             callbacks=[workers.CrashAfter(at)])
    record = _record(tmp_path / "b")  # the controller's state is in the run record of the checkpoint
    assert record["updates"] == at - 1 and record["state"]["adaptive"]["changes"] == [list(ch) for ch in c.changes[:2]]
    assert record["adaptive"] == c.get_config()
    resumed, c2 = _model(), _controller()
    resumed.set_weights([w + 1.0 for w in resumed.get_weights()])  # other initial weights: all restored
    h2 = _fit(resumed, c2, checkpoint_dir=str(tmp_path / "b"), checkpoint_every_n_updates=6)
    assert c2.changes == c.changes and h2.updates == h.updates and h2.examples == h.examples
    assert [(p["batch_size"], p["physical_batch"]) for p in h2.phases] == [
        (p["batch_size"], p["physical_batch"]) for p in h.phases]
    assert c2.statistics.get_state() == pytest.approx(c.statistics.get_state(), rel=1e-5)
    assert c2.progress == pytest.approx(c.progress, rel=1e-6)
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def _record(directory):
    """The run record in the latest checkpoint of ``directory`` (a JSON string inside the checkpoint)."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(directory)))
    return json.loads(reader.get_tensor("record/.ATTRIBUTES/py_state"))


def test_goodput_arguments_are_checked_before_training():
    x, y = _data()
    data, plan = tf.data.Dataset.from_tensor_slices((x, y)), bstf.NoiseScalePlan(N, 0.05, 32, base_momentum=0.9)
    with pytest.raises(ValueError, match=r"max_physical_batch \(64\) must be its throughput model's "
                                         r"max_physical_batch \(128\)"):
        bstf.fit(_model(), data, plan, 1, adaptive=_controller(), max_physical_batch=64, verbose=0)
    with pytest.raises(ValueError, match=r"max_physical_batch \(None\) must be"):
        bstf.fit(_model(), data, plan, 1, adaptive=_controller(), verbose=0)
    with pytest.raises(ValueError, match="the plan must have no milestones"):
        bstf.fit(_model(), data, bstf.NoiseScalePlan(N, 0.05, 32, base_momentum=0.9, milestones=[1]), 2,
                 adaptive=_controller(), max_physical_batch=128, verbose=0)
    with pytest.raises(TypeError, match="adaptive must be a bstf.analysis.AdaptiveBatch or GoodputBatch"):
        bstf.fit(_model(), data, plan, 1, adaptive=ThroughputModel(128), max_physical_batch=128, verbose=0)
    if len(tf.config.list_logical_devices("CPU")) >= 2:
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            model = _model()
        with pytest.raises(ValueError, match=r"throughput model is for 1 replica\(s\) but the strategy has 2"):
            bstf.fit(model, data, plan, 1, adaptive=_controller(), max_physical_batch=128, verbose=0)


def test_adaptive_batch_adascale_lr_follows_every_measurement(monkeypatch):
    """AdaptiveBatch(lr_rule="adascale") through the same Control: the LR moves with the statistics."""
    c = AdaptiveBatch(32, 512, every_n_updates=1000, lr_rule="adascale", base_lr=0.05, base_batch=32,
                      granularity=16)  # never due after its first change: the batch stays, the LR moves
    seen = []

    class LR(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(self.model.optimizer.learning_rate))

    x, y = _data()
    plan = bstf.NoiseScalePlan(N, 0.05, 32, base_momentum=0.9)
    model = _model()
    bstf.fit(model, tf.data.Dataset.from_tensor_slices((x, y)), plan, 1, adaptive=c, max_physical_batch=16,
             seed=0, verbose=0, noise_scale_every_n_updates=2, callbacks=[LR()])
    assert len(c.changes) == 1  # one batch change (the first measurement) ...
    assert len({round(v, 7) for v in seen[c.changes[0][0] + 2:]}) > 3  # ... but the LR kept following r
    assert float(model.optimizer.learning_rate) == pytest.approx(c.learning_rate, rel=1e-6)  # its last value


# ============================================================================ two workers
_WORKER = textwrap.dedent("""
    import json, os, sys
    import numpy as np, keras, tensorflow as tf
    sys.path.insert(0, {root!r})
    import bstf
    from bstf.fitting import control
    strategy = bstf.distribute.get_strategy("multi_worker")
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    original = control.Control.timed
    def timed(self, measured):  # each worker "measures" a different machine: only their mean is shared
        b, k = self.current.physical_batch, self.current.accumulation
        seconds = k * (1e-3 + 2e-5 * b) + (4e-3 if index == 0 else 4e-2)
        self.fed = getattr(self, "fed", []) + [seconds]
        return original(self, seconds)
    control.Control.timed = timed
    x, y = np.load({data!r})["x"], np.load({data!r})["y"]
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input(({d},)), keras.layers.Dense(16, activation="tanh"),
                                  keras.layers.Dense({k})])
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    c = bstf.analysis.GoodputBatch(32, 512, every_n_updates=6, base_lr=0.05, base_batch=32, granularity=16,
                                   throughput=bstf.analysis.ThroughputModel(128, replicas=2,
                                                                            physical_batches=[16, 32, 64, 128]))
    plan = bstf.NoiseScalePlan(len(x), 0.05, 32, base_momentum=0.9)
    h = bstf.fit(model, tf.data.Dataset.from_tensor_slices((x, y)), plan, 2, adaptive=c, max_physical_batch=128,
                 seed=0, verbose=0, noise_scale_every_n_updates=2, log_every_n_updates=2)
    with open(os.path.join({out!r}, f"worker{{index}}.json"), "w") as f:
        json.dump({{"state": c.get_state(), "updates": h.updates,
                   "phases": [[p["batch_size"], p["physical_batch"]] for p in h.phases]}}, f)
""")


def test_two_workers_decide_the_same(tmp_path, local_workers):
    x, y = _data()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(root=ROOT, data=str(tmp_path / "data.npz"), out=str(tmp_path), d=D, k=K))
    # workers that decide differently hang in mismatched collectives: the timeout fails the test
    local_workers().run([sys.executable, str(script)], timeout=240)
    runs = []
    for i in range(2):
        with open(tmp_path / f"worker{i}.json") as f:
            runs.append(json.load(f))
    a, b = runs
    assert a == b  # the same decisions, statistics, timings and progress on both workers
    changes = a["state"]["changes"]
    assert len(changes) >= 2 and a["phases"][0] == [32, 32] and len(a["phases"]) == len(changes) + 1
    # what every worker observed is the mean of the two workers' seconds, per update
    for cell_b, cell_k, times in a["state"]["throughput"]["cells"]:
        mean = cell_k * (1e-3 + 2e-5 * cell_b) + (4e-3 + 4e-2) / 2
        assert times == pytest.approx([mean] * len(times), rel=1e-9)
