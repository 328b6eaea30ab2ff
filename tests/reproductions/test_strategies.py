"""Every reproduction under every strategy: Mirrored (2 logical CPUs), MultiWorkerMirrored (two local processes),
and what can be tested of a TPU without one (the error when none answers; one trace per phase shape under XLA).

**The comparison.** Under a strategy with R = 2 replicas, a physical batch of P = 8 examples is split into two
per-replica batches of 4, and BatchNormalization normalises each replica's 4 examples. The single-device reference
therefore runs with ``max_physical_batch`` P / R = 4 — every update accumulated from micro-batches of the same 4
examples (bstf.fit's accumulation is exact: the mean of the micro-batch gradients). Then the training is the same
computation and we require (numbers measured on this machine in brackets):

* updates, examples, epochs, phases and the per-epoch ``examples``/``updates`` curves: **equal**;
* the per-epoch training-loss curve: relative difference ≤ ``TRAIN_RTOL`` = 1e-4 [≤ 1e-5];
* the evaluation (``bstf.evaluate`` of the trained model): without BatchNormalization (Shen's MLP) the same within
  ``TRAIN_RTOL`` and one example [bitwise equal]; with it (Smith, Goyal, Keskar) the moving statistics differ —
  one EMA step per 4-example micro-batch on one device, one per step (averaged over the replicas) under a
  strategy — so losses within ``BN_EVAL_RTOL`` = 15 % and accuracies within ``BN_EVAL_ACCURACY`` = 6 points of
  the tiny test sets [≤ 8 % and ≤ 3 points].
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from reproductions import common, goyal, keskar, runner, shen, smith

ROOT = pathlib.Path(__file__).resolve().parents[2]
REPLICAS = 2
PHYSICAL = 8  # global physical batch under a strategy: 2 replicas × 4
TRAIN_RTOL = 1e-4
BN_EVAL_RTOL = 0.15
BN_EVAL_ACCURACY = 6.0

# script: (module, changes to its tiny preset, the same as flags, has BatchNormalization)
CASES = {
    "smith": (smith, {"schedules": ("increase_batch",)}, ["--schedules=increase_batch"], True),
    "goyal": (goyal, {"variants": ()}, ["--variants="], True),
    "keskar": (keskar, {"network": "F1-small", "dataset": "mnist1d", "dataset_kwargs": {}, "train_examples": 256},
               ["--network=F1-small", "--dataset=mnist1d", "--train_examples=256"], True),  # C1-small has dropout
    "shen": (shen, {}, [], False),
}


def _config(script, **changes):
    module, tiny_changes, _, _ = CASES[script]
    physical = {} if script == "shen" else {"max_physical_batch": PHYSICAL}  # shen's runs feed whole batches
    return dataclasses.replace(module.tiny(), **tiny_changes, **physical, **changes)


_SINGLE = {}


def _single(script, tmp_path_factory):
    """The single-device reference (micro-batches of PHYSICAL / REPLICAS), run once per session."""
    if script not in _SINGLE:
        config = _config(script)
        if script != "shen":
            config = dataclasses.replace(config, max_physical_batch=PHYSICAL // REPLICAS)
        _SINGLE[script] = CASES[script][0].run(config, str(tmp_path_factory.mktemp(f"{script}_single")))
    return _SINGLE[script]


def assert_same_training(script, single, other):
    a_records, b_records = runner.run_records(single["runs"]), runner.run_records(other["runs"])
    assert [r["name"] for r in b_records] == [r["name"] for r in a_records] and a_records
    with_bn = CASES[script][3]
    for a, b in zip(a_records, b_records):
        for key in ("updates", "examples", "epochs", "batch_size", "max_batch", "learning_rate", "momentum"):
            assert b[key] == a[key], (a["name"], key)
        assert [(p["batch_size"], p["updates"]) for p in b["phases"]] == [(p["batch_size"], p["updates"])
                                                                          for p in a["phases"]]
        for key in ("examples", "updates", "batch_size", "learning_rate"):
            assert b["curves"][key] == pytest.approx(a["curves"][key], rel=1e-6), (a["name"], key)
        np.testing.assert_allclose(b["curves"]["loss"], a["curves"]["loss"], rtol=TRAIN_RTOL, err_msg=a["name"])
        if with_bn:
            for key in ("train_loss", "test_loss"):
                assert b[key] == pytest.approx(a[key], rel=BN_EVAL_RTOL), (a["name"], key)
            for key in ("train_accuracy", "test_accuracy"):
                assert abs(b[key] - a[key]) <= BN_EVAL_ACCURACY, (a["name"], key)
        else:
            for key in ("train_loss", "test_loss", "distance_from_init"):
                assert b[key] == pytest.approx(a[key], rel=TRAIN_RTOL), (a["name"], key)
            one_example = 100 / single["config"]["test_examples"] + 1e-6
            assert abs(b["test_accuracy"] - a["test_accuracy"]) <= one_example


# ----------------------------------------------------------------------------- Mirrored
@pytest.mark.parametrize("script", sorted(CASES))
def test_mirrored_gives_the_single_device_results(script, tmp_path, tmp_path_factory):
    if len(tf.config.list_logical_devices("CPU")) < REPLICAS:
        pytest.skip("needs 2 logical CPUs")
    mirrored = CASES[script][0].run(_config(script, strategy="mirrored"), str(tmp_path))
    assert json.loads((tmp_path / "results.json").read_text())["config"]["strategy"] == "mirrored"
    assert_same_training(script, _single(script, tmp_path_factory), mirrored)


# ----------------------------------------------------------------------------- MultiWorkerMirrored
def _run_two_workers(script, argv, workdir, ports):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    command = [sys.executable, str(ROOT / "reproductions" / f"{script}.py"), "--preset=tiny", *argv,
               "--strategy=multi_worker", f"--workdir={workdir}"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT),
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3",
                                   "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                                         "index": i}})})
             for i in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    return json.loads((workdir / "results.json").read_text())


def _multi_worker(script, tmp_path, tmp_path_factory, free_ports):
    physical = [] if script == "shen" else [f"--max_physical_batch={PHYSICAL}"]
    results = _run_two_workers(script, [*CASES[script][2], *physical], tmp_path, free_ports(2))
    assert results["config"]["strategy"] == "multi_worker"
    assert (tmp_path / "results.md").exists() and list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert_same_training(script, _single(script, tmp_path_factory), results)


def test_multi_worker_smith_gives_the_single_device_results(tmp_path, tmp_path_factory, free_ports):
    """The issue's case: smith.py under two local workers trains, evaluates (bstf.evaluate) and reports."""
    _multi_worker("smith", tmp_path, tmp_path_factory, free_ports)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["goyal", "keskar", "shen"])
def test_multi_worker_gives_the_single_device_results(script, tmp_path, tmp_path_factory, free_ports):
    _multi_worker(script, tmp_path, tmp_path_factory, free_ports)


# ----------------------------------------------------------------------------- TPU
@pytest.mark.parametrize("script", sorted(CASES))
def test_no_tpu_reachable_exits_2_with_one_line(script, capsys, free_ports):
    module = CASES[script][0]
    argv = [f"{script}.py", "--strategy=tpu", f"--tpu=grpc://127.0.0.1:{free_ports(1)[0]}"]
    remaining = common.parse_flags(argv)
    try:
        with pytest.raises(SystemExit) as excinfo:
            common.main(script, module.config_from_flags, module.prepare, module.execute, remaining)
    finally:
        common.FLAGS.unparse_flags()
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{script}.py: error: no TPU was found at 'grpc://127.0.0.1:")
    assert "--tpu=local" in err and "Traceback" not in err


def test_static_shapes_one_trace_per_phase_shape(tmp_path, monkeypatch):
    """The TPU proxy: under jit_compile a run traces its train step at most once per phase shape, never per
    update, micro-batch or epoch, and evaluation (last batch padded) once."""
    traces = []
    train_step, test_step = keras.Model.train_step, keras.Model.test_step

    def counting(kind, step):
        def wrapper(self, data):
            traces.append((kind, id(self), tuple(data[0].shape)))  # Python runs once per trace
            return step(self, data)
        return wrapper

    monkeypatch.setattr(keras.Model, "train_step", counting("train", train_step))
    monkeypatch.setattr(keras.Model, "test_step", counting("test", test_step))
    config = dataclasses.replace(smith.tiny(), schedules=("increase_batch",), jit_compile=True, eval_batch=64)
    results = smith.run(config, str(tmp_path))
    record = runner.run_records(results["runs"])[0]
    shapes = [p["physical_batch"] for p in record["phases"]]
    assert shapes == [8, 10, 16] and record["updates"] == 67  # batch 8, then 40 = 4 × 10 and 64 = 4 × 16
    assert len({m for _, m, _ in traces}) == 1  # the one trained model
    train = [shape for kind, _, shape in traces if kind == "train"]
    # Keras traces the first shape exactly and relaxes the batch dimension at the second (reduce_retracing): XLA
    # then compiles per concrete shape. Either way: at most one trace per phase shape, the first one static.
    assert 1 <= len(train) <= len(set(shapes)) and train[0] == (8, 40)
    assert all(shape[0] in (None, *shapes) for shape in train)
    test = [shape for kind, _, shape in traces if kind == "test"]
    assert 1 <= len(test) <= 2  # bstf.fit's validation and bstf.evaluate's padded batches of 64
