"""Tests for reproductions/runner.py: the run record's fixed keys and numbers, the summary over seeds, TensorBoard."""

import copy
import math

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

import bstf
from reproductions import common, networks, runner


def _setup(**kw):
    config = common.Config(dataset="digits", train_examples=96, test_examples=40, eval_batch=32, **kw)
    return common.prepare(config, [16, 32])


def _build(setup):
    def build():
        model = networks.mlp(setup.train.input_shape, setup.train.num_classes, 8, 1, batch_norm=False)
        return runner.compile_classifier(model, keras.optimizers.SGD(0.1, momentum=0.5))

    return build


def _tags(logdir):
    ea = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    ea.Reload()
    return {tag: [float(tensor_util.make_ndarray(e.tensor_proto)) for e in ea.Tensors(tag)]
            for tag in ea.Tags()["tensors"] if not tag.startswith("_hparams_")}, ea.Tags()["tensors"]


def test_fit_and_evaluate_record(tmp_path):
    setup = _setup()
    plan = bstf.NoiseScalePlan(96, 0.1, 16, base_momentum=0.5, milestones=(1,), factor=2, mode="increase_batch")
    run = runner.Run("seed3/grow", plan, 2, 3, {"schedule": "grow"}, max_physical_batch=16)
    init = runner.initial_weights(setup, _build(setup), 3)
    record, model = runner.fit_and_evaluate(setup, run, _build(setup), str(tmp_path), init=init,
                                            measure=lambda m: {"weights": {"norm": 1.5}, "label": "x"})
    assert list(record) == [*runner.RESULT_KEYS, "weights", "label"]
    assert (record["name"], record["seed"], record["hparams"]) == ("seed3/grow", 3, {"schedule": "grow"})
    # 96 examples: 6 updates at 16, then 3 at 32 (2 micro-batches of 16 each)
    assert (record["updates"], record["examples"], record["epochs"]) == (9, 192, 2.0)
    assert record["updates"] == plan.total_updates(2)
    assert (record["batch_size"], record["max_batch"], record["accumulation"]) == (16, 32, 2)
    assert record["learning_rate"] == pytest.approx(0.1) and record["momentum"] == 0.5
    assert record["train_seconds"] > 0
    assert [p["batch_size"] for p in record["phases"]] == [16, 32] and list(record["phases"][0]) == list(
        runner.PHASE_KEYS)
    assert list(record["curves"]) == list(runner.CURVE_KEYS)
    assert record["curves"]["examples"] == [96, 192] and record["curves"]["updates"] == [6, 9]
    # accuracies are percentages of bstf.evaluate's numbers; the last val_ point is the test evaluation
    test = bstf.evaluate(model, setup.test, batch_size=40)
    assert record["test_accuracy"] == pytest.approx(100 * test["accuracy"]) and 0 <= record["test_accuracy"] <= 100
    assert record["test_loss"] == pytest.approx(test["loss"], rel=1e-5)
    assert record["curves"]["val_accuracy"][-1] == pytest.approx(record["test_accuracy"])
    train = bstf.evaluate(model, setup.train, batch_size=96)
    assert record["train_accuracy"] == pytest.approx(100 * train["accuracy"])
    # every run of a seed starts from the same weights: init is what build() makes after seeding
    again, _ = runner.fit_and_evaluate(setup, run, _build(setup), str(tmp_path / "again"))
    assert again["test_loss"] == pytest.approx(record["test_loss"], rel=1e-6)

    logdir = tmp_path / "tensorboard" / "seed3" / "grow"
    values, tags = _tags(logdir)
    assert "_hparams_/session_start_info" in tags
    assert values[bstf.tags.final_metric("test_accuracy")] == pytest.approx([record["test_accuracy"]])
    assert values[bstf.tags.final_metric("updates")] == [9.0]
    assert values[bstf.tags.final_metric("weights_norm")] == [1.5]
    assert (logdir / "train").is_dir() and (logdir / "validation").is_dir()  # bstf.fit's curves


def test_measure_may_not_overwrite_the_record(tmp_path):
    setup = _setup()
    run = runner.Run("r", bstf.NoiseScalePlan(96, 0.1, 32, base_momentum=0.5), 1, 0, curves=False)
    with pytest.raises(ValueError, match=r"may not overwrite the run record's keys \['test_accuracy'\]"):
        runner.fit_and_evaluate(setup, run, _build(setup), str(tmp_path), measure=lambda m: {"test_accuracy": 1})
    assert not (tmp_path / "tensorboard" / "r" / "train").exists()  # curves=False: no bstf.fit logs


def _fake(seed, acc, loss, updates=10):
    return {"name": f"seed{seed}/x", "seed": seed, "hparams": {"s": "x"}, "epochs": 2.0, "updates": updates,
            "examples": 200, "train_seconds": 1.0 + seed, "batch_size": 16, "max_batch": 32, "accumulation": 2,
            "learning_rate": 0.1, "momentum": 0.9, "train_loss": loss / 2, "train_accuracy": acc + 5,
            "test_loss": loss, "test_accuracy": acc,
            "curves": {k: [1.0 + seed, 2.0 + seed] for k in runner.CURVE_KEYS}, "phases": [{"batch_size": 16}],
            "diverged_update": None, "distance": {"a": 1.0 + seed}}


def test_summarise_over_seeds():
    s = runner.summarise([_fake(0, 70.0, 1.0), _fake(1, 80.0, 3.0)])
    assert s["test_accuracy"] == 75.0 and s["test_accuracy_std"] == pytest.approx(math.sqrt(50))
    assert s["test_accuracy_per_seed"] == [70.0, 80.0] and s["test_loss_per_seed"] == [1.0, 3.0]
    assert s["train_loss"] == 1.0 and s["train_loss_std"] == pytest.approx(math.sqrt(0.5))
    assert s["updates"] == 10 and isinstance(s["updates"], int) and s["train_seconds"] == 1.5
    assert s["curves"]["loss"] == [1.5, 2.5] and s["distance"] == {"a": 1.5}
    assert s["seeds"] == [0, 1] and s["hparams"] == {"s": "x"} and s["phases"] == [{"batch_size": 16}]
    assert "seed" not in s and "name" not in s
    one = runner.summarise([_fake(4, 70.0, 1.0)])
    assert one["test_accuracy_std"] == 0.0 and one["seeds"] == [4]
    with pytest.raises(ValueError, match="at least one run record"):
        runner.summarise([])


def test_run_records_finds_every_record():
    a, b = _fake(0, 1.0, 1.0), _fake(1, 2.0, 2.0)
    tree = {"runs": [{"seed": 0, "x": a, "y": {"64": b}}], "other": copy.deepcopy({"no": 1})}
    assert runner.run_records(tree) == [a, b]


def test_hparams_and_scalars_follow_bstf_fits_coercion():
    assert runner.hparam_value((1, 2)) == "[1, 2]" and runner.hparam_value(np.float32(0.5)) == "0.5"
    assert runner.hparam_value(3) == 3 and runner.hparam_value("x") == "x"
    assert runner.final_scalars({"a": 1, "b": {"0.001": 2.0}, "c": "text", "d": float("nan"), "e": True}) == {
        "a": 1.0, "b_0.001": 2.0}


def test_a_diverged_run_is_recorded_not_raised(tmp_path):
    """bstf.fit's NonFiniteLossError becomes a record: NaN weights, diverged_update, curves to the budget."""
    setup = _setup()
    plan = bstf.NoiseScalePlan(96, 1e30, 16, base_momentum=0.5)  # the first update overflows the weights: loss inf/NaN at the 2nd
    run = runner.Run("seed0/huge_lr", plan, 3, 0, {"lr": "huge"})
    record, model = runner.fit_and_evaluate(setup, run, _build(setup), str(tmp_path),
                                            measure=lambda m: {"finite": bool(np.all(np.isfinite(m.get_weights()[0])))})
    assert list(record)[:len(runner.RESULT_KEYS)] == list(runner.RESULT_KEYS)
    assert record["diverged_update"] is not None and record["updates"] == record["diverged_update"] - 1
    assert record["finite"] is False and math.isnan(record["test_loss"]) and math.isnan(record["train_loss"])
    assert all(len(v) == 3 for v in record["curves"].values())  # seeds average element-wise
    assert math.isnan(record["curves"]["val_loss"][-1])
    assert record["curves"]["val_accuracy"][-1] == pytest.approx(record["test_accuracy"])
    assert [p["batch_size"] for p in record["phases"]] == [16] and record["learning_rate"] == pytest.approx(1e30)
    summary = runner.summarise([record, record])  # a diverged record summarises like any other
    assert summary["diverged_update"] == record["diverged_update"] and math.isnan(summary["test_loss"])


def test_summarise_pads_curves_of_runs_stopped_early():
    short = _fake(1, 80.0, 3.0)
    short["curves"] = {k: [5.0] for k in runner.CURVE_KEYS}
    s = runner.summarise([_fake(0, 70.0, 1.0), short])
    assert s["curves"]["loss"][0] == 3.0 and math.isnan(s["curves"]["loss"][1])
