"""Tests for reproductions/shen.py: flags to config, presets, control epochs, end to end."""

import dataclasses
import json
import math

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import bstf
from reproductions import report, runner, shen

SCRIPT_FLAGS = ("batch_sizes", "base_lr", "base_batch")

# ----------------------------------------------------------------------------- flags and presets


def test_quick_preset_from_flags(parse_flags):
    argv = ("--batch_sizes=16,64,256", "--base_lr=0.02", "--base_batch=16", "--seeds=2", "--epochs=4")
    c = shen.config_from_flags(parse_flags(*argv, script_flags=SCRIPT_FLAGS), argv=["reproductions/shen.py", *argv])
    assert (c.preset, c.batch_sizes, c.base_lr, c.base_batch, c.seeds, c.epochs) == (
        "quick", (16, 64, 256), 0.02, 16, (0, 1), 4)
    assert (c.dataset, c.dataset_kwargs) == ("mnist1d", {"num_samples": 10000})  # untouched preset fields
    # defaults that follow the batch sizes
    assert c.controls == (256,) and c.histogram_sizes == (16, 256) and c.accumulation == (256, 16)
    assert c.command.startswith("python reproductions/shen.py --batch_sizes=16,64,256")


def test_paper_preset_from_flags(parse_flags):
    c = shen.config_from_flags(parse_flags("--preset=paper", "--data_dir=/data", script_flags=SCRIPT_FLAGS))
    assert (c.preset, c.dataset, c.data_dir) == ("paper", "tfds:mnist", "/data")


def test_paper_preset_is_shens_setup():
    c = shen.paper()
    assert c.batch_sizes == (32, 64, 128, 256, 512, 1024)
    # plain SGD; the base LR at batch 32 comes from the sweep (the article's protocol; Shen found 0.01)
    assert (c.base_lr, c.base_batch, c.base_momentum) == (None, 32, 0.0) and c.sweep_sizes == (32, 1024)
    assert 0.01 in c.lr_grid and 0.08 in c.lr_grid  # Shen's best LRs are inside the sweep, not at its edges
    assert min(c.lr_grid) < 0.01 and max(c.lr_grid) > 0.08
    assert (c.histogram_trials, c.controls, c.histogram_sizes, c.accumulation) == (1000, (1024,), (32, 1024),
                                                                                  (1024, 32))
    assert (c.dataset, c.seeds, c.network) == ("tfds:mnist", (0, 1, 2), "mlp")
    # linear scaling from 0.01 at batch 32 reaches Shen's 0.08 at batch 256
    assert shen.scaled_learning_rate(0.01, c.base_batch, 256, "linear") == pytest.approx(0.08)
    assert "python reproductions/shen.py" in shen.quick.__doc__ and "--preset=paper" in shen.paper.__doc__
    assert shen.SHEN["best_lr_smallest"] == 0.01 and shen.SHEN["best_lr_larger"] == 0.08


def test_quick_preset_config():
    c = shen.quick()
    assert (c.preset, c.dataset, c.batch_sizes[0], c.batch_sizes[-1]) == ("quick", "mnist1d", 32, 1024)
    assert c.base_lr is None and c.sweep_sizes == (32, 1024) and len(c.seeds) >= 3 and c.histogram_trials == 1000
    assert c.sweep_epochs is None  # the sweep uses the full budget


@pytest.mark.parametrize("train_size, small, batch, epochs, expected", [
    (8000, 32, 1024, 15, 480),  # the quick preset: 15 · 250 = 3750 updates at 32 = 480 epochs at 1024
    (1000, 10, 100, 3, 30),     # 300 updates at 10 = 30 epochs at 100
    (1000, 32, 100, 3, 10),     # ceil(3000 / 32) = 94 updates: 9 epochs at 100 make 90, 10 make 100
    (512, 16, 64, 2, 8),
])
def test_control_epochs(train_size, small, batch, epochs, expected):
    target = bstf.NoiseScalePlan(train_size, 1.0, small, base_momentum=0.0).total_updates(epochs)
    e = shen.control_epochs(train_size, small, batch, epochs)
    plan = bstf.NoiseScalePlan(train_size, 1.0, batch, base_momentum=0.0)
    assert e == expected
    assert plan.total_updates(e) >= target and (e == 1 or plan.total_updates(e - 1) < target)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_sizes": (64,)}, "at least 2 strictly increasing"),
    ({"batch_sizes": (64, 32)}, "at least 2 strictly increasing"),
    ({"batch_sizes": (32, 0)}, "batch_sizes must be an integer >= 1"),
    ({"base_lr": 0.0}, "base_lr must be > 0"),
    ({"base_momentum": 1.0}, r"base_momentum must be in \[0, 1\)"),
    ({"network": "resnet"}, "network must be 'mlp' or one of"),
    ({"control_batches": (32,)}, "control_batches must be batch sizes larger than the smallest"),
    ({"control_batches": (100,)}, "control_batches must be batch sizes larger than the smallest"),
    ({"lr_grid": ()}, "lr_grid must be a non-empty tuple"),
    ({"sweep_seeds": 2, "seeds": (0,)}, "sweep_seeds must be at most the number of seeds"),
    ({"sweep_average_epochs": 0}, "sweep_average_epochs must be an integer >= 1"),
    ({"tolerance": 0.0}, "tolerance must be > 0"),
    ({"validation_fraction": 1.0}, "validation_fraction must be in"),
    ({"accumulation_batch": 100, "accumulation_micro_batch": 32}, "must be a multiple > 1"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        shen.ShenConfig(**kwargs)


# ----------------------------------------------------------------------------- end to end


def _tiny(**changes):
    return dataclasses.replace(shen.tiny(), **changes)


PNGS = ("accuracy_fixed_lr.png", "accuracy_scaled_lr.png", "control.png", "distance.png", "distance_per_layer.png",
        "lr_sweep.png", "gradient_histogram.png", "gradient_norms.png", "gradient_histogram_dense_1.png",
        "gradient_histogram_logits.png")


def _board(logdir):
    ea = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    ea.Reload()
    return set(ea.Tags()["tensors"])


def _check_outputs(res, workdir, config):
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    summary = on_disk["summary"]
    base_lr = on_disk["base_lr"]["value"]  # the sweep's best at the base batch unless the config gives one
    assert set(summary) == {str(b) for b in config.batch_sizes}  # keyed by batch size only
    for b in config.batch_sizes:
        s, fixed, scaled = summary[str(b)], summary[str(b)]["fixed_lr"], summary[str(b)]["scaled_lr"]
        assert 0 <= fixed["test_accuracy"] <= 100 and 0 <= scaled["test_accuracy"] <= 100
        assert math.isfinite(fixed["distance_from_init"]) and fixed["distance_from_init"] > 0
        assert s["best_lr"] in config.lr_grid if b in config.sweep_sizes else s["best_lr"] is None
        assert len(fixed["curves"]["val_accuracy"]) == config.epochs
        assert set(fixed["distance_from_init_per_layer"]) == {f"dense_{i}" for i in range(1, config.depth + 1)} | {
            "logits"}
        assert fixed["learning_rate"] == pytest.approx(base_lr) and fixed["hparams"] == {"study": "fixed_lr"}
        for run in on_disk["runs"]:  # total² = Σ per-layer² in every run (not in the means over seeds)
            r = run["fixed_lr"][str(b)]
            per_layer = r["distance_from_init_per_layer"].values()
            assert r["distance_from_init"] == pytest.approx(np.sqrt(sum(v * v for v in per_layer)))
        assert scaled["learning_rate"] == pytest.approx(base_lr * b / config.base_batch)
    small, big = config.batch_sizes[0], config.batch_sizes[-1]
    assert summary[str(small)]["fixed_lr"]["updates"] > summary[str(big)]["fixed_lr"]["updates"]
    control = summary[str(big)]["control"]
    assert control["updates"] >= summary[str(small)]["fixed_lr"]["updates"] and control["epochs"] > config.epochs
    assert control["epochs"] == shen.control_epochs(config.train_examples, small, big, config.epochs)
    records = runner.run_records(on_disk["runs"])
    for record in records:  # every run record has the shared keys
        assert list(record)[:len(runner.RESULT_KEYS)] == list(runner.RESULT_KEYS)
    assert list(on_disk)[:len(report.RESULTS_KEYS)] == list(report.RESULTS_KEYS)
    grads = on_disk["gradients"]
    assert set(grads["layers"]) == {f"dense_{i}" for i in range(1, config.depth + 1)} | {"logits"}
    for by_batch in (grads["model"], *grads["layers"].values()):
        for b in config.histogram_sizes:
            g = by_batch[str(b)]
            assert sum(g["counts"]) + g["outside"] == g["trials"] * g["values_per_trial"]
            assert len(g["edges"]) == config.histogram_bins + 1 and len(g["norms"]) == config.histogram_trials
        assert by_batch[str(small)]["edges"] == by_batch[str(big)]["edges"]  # shared bins
    # the layers' values make up the model's
    assert sum(grads["layers"][k][str(small)]["values_per_trial"] for k in grads["layers"]) == \
        grads["model"][str(small)]["values_per_trial"]
    assert on_disk["base_lr"]["value"] == config.base_lr or config.base_lr is None
    assert on_disk["base_lr"]["value"] == on_disk["lr_sweep"]["best_lr"][str(config.base_batch)] or \
        config.base_lr is not None
    assert all(v["verdict"] in report.VERDICTS for v in on_disk["verdicts"]) and len(on_disk["verdicts"]) == 6 + len(config.controls)
    acc = on_disk["accumulation"]
    assert (acc["batch_size"], acc["micro_batch"]) == config.accumulation
    assert set(on_disk["lr_sweep"]["validation_accuracy"]) == {str(b) for b in config.sweep_sizes}
    assert len(on_disk["runs"]) == len(config.seeds)

    md = (workdir / "results.md").read_text()
    for text in ("## Verdicts", "## LR sweep", "## Per batch size", "## Control: same number of updates", "## Gradients at the initial weights",
                 "## Gradient accumulation vs the true batch", f"| {small} |", f"| {big} (control) |"):
        assert text in md
    for png in PNGS:
        assert (workdir / png).read_bytes()[:4] == b"\x89PNG"
    tb = workdir / "tensorboard"
    assert {bstf.tags.final_metric("test_accuracy"), bstf.tags.final_metric("distance_from_init"),
            bstf.tags.final_metric("distance_from_init_per_layer_logits")} <= _board(tb / "seed0" / f"fixed_lr_b{small}")
    assert {"accuracy_fixed_lr", "gradient_histogram", runner.RESULTS_TEXT_TAG} <= _board(tb / "summary")
    return on_disk


def test_run_end_to_end_tiny(tmp_path):
    config = _tiny()
    res = _check_outputs(shen.run(config, str(tmp_path)), tmp_path, config)
    run_logs = tmp_path / "tensorboard" / "seed0" / "fixed_lr_b16"
    assert bstf.tags.final_metric("test_accuracy") in _board(run_logs)
    assert (run_logs / "train").is_dir() and (run_logs / "validation").is_dir()  # bstf.fit's own curves
    assert not (tmp_path / "tensorboard" / "lr_sweep" / "b16_lr0.05" / "train").exists()  # sweep runs: no curves
    # accumulation of 4 micro-batches of 16 against the true batch of 64: the same training (no BN, same order)
    acc = res["accumulation"]
    assert acc["accumulated_test_accuracy"] == pytest.approx(acc["true_test_accuracy"], abs=1.0)
    assert acc["accumulated_distance_from_init"] == pytest.approx(acc["true_distance_from_init"], rel=1e-3)


@pytest.mark.slow
def test_run_two_seeds_three_batches(tmp_path):
    config = _tiny(seeds=(0, 1), batch_sizes=(16, 32, 128), control_batches=(32, 128), epochs=3,
                   lr_grid=(0.01, 0.1))
    res = _check_outputs(shen.run(config, str(tmp_path)), tmp_path, config)
    run_logs = tmp_path / "tensorboard" / "seed0" / "fixed_lr_b16"
    assert (run_logs / "train").is_dir() and (run_logs / "validation").is_dir()  # bstf.fit's own logs
    assert {"epochs", "updates", "test_accuracy", "distance_from_init"} <= set(res["summary"]["32"]["control"])


@pytest.mark.slow
def test_quick_preset(tmp_path):
    """The quick preset (minutes): the sweep sets the base LR, batch 32 has headroom, every claim a verdict."""
    config = shen.quick()
    res = _check_outputs(shen.run(config, str(tmp_path)), tmp_path, config)
    assert res["base_lr"]["value"] in config.lr_grid
    assert res["summary"]["32"]["fixed_lr"]["test_accuracy"] < 90


# ----------------------------------------------------------------------------- report verdicts


def test_sweep_picks_the_best_mean_and_sets_the_base_lr(tmp_path):
    config = _tiny(seeds=(0, 1), lr_grid=(0.001, 0.3), sweep_average_epochs=1)
    res = shen.run(config, str(tmp_path))
    sweep = res["lr_sweep"]
    assert sweep["seeds"] == [0, 1] and set(sweep["validation_accuracy"]) == {"16", "64"}
    for b, by_lr in sweep["validation_accuracy_per_seed"].items():
        means = {lr: np.mean(v) for lr, v in by_lr.items()}
        assert sweep["best_lr"][b] == float(max(means, key=means.get)) and all(len(v) == 2 for v in by_lr.values())
    assert res["base_lr"]["value"] == sweep["best_lr"]["16"] == res["config"]["base_lr"]
    assert res["summary"]["64"]["fixed_lr"]["learning_rate"] == pytest.approx(res["base_lr"]["value"])
