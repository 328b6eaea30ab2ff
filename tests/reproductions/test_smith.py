"""Tests for reproductions/smith.py: flags to config, presets, the schedules' plans, WRN, a tiny run."""

import dataclasses
import json

import keras
import numpy as np
import pytest

from reproductions import common, report, resnets, runner, smith


@pytest.fixture
def parse():
    """Parses argv into the global FLAGS (smith's flags are defined on import) and unparses afterwards."""
    def _parse(*argv):
        common.FLAGS(["smith.py", *argv])
        return common.FLAGS
    yield _parse
    common.FLAGS.unparse_flags()


def test_flags_to_config(parse):
    fv = parse("--schedules=decay_lr,increase_batch", "--base_lr=0.2", "--base_batch=32", "--max_batch=1024",
               "--epochs=8", "--max_physical_batch=128")
    c = common.config_from_flags(smith.PRESETS, converters=smith.CONVERTERS, flag_values=fv,
                                 argv=["reproductions/smith.py", "--base_lr=0.2"])
    assert c.schedules == ("decay_lr", "increase_batch")
    assert (c.base_lr, c.base_batch, c.max_batch, c.epochs, c.max_physical_batch) == (0.2, 32, 1024, 8, 128)
    assert c.dataset == "mnist1d" and c.factor == 5.0 and c.command == "python reproductions/smith.py --base_lr=0.2"


def test_paper_preset_is_the_published_recipe():
    c = smith.paper()
    assert (c.dataset, c.network, c.depth, c.widen, c.augment) == ("tfds:cifar10", "wrn", 16, 4, True)
    assert (c.base_lr, c.base_batch, c.base_momentum, c.factor, c.milestones, c.max_batch, c.epochs) == (
        0.1, 128, 0.9, 5.0, (60, 120, 160), 5120, 200)
    assert c.weight_decay == 5e-4 and c.schedules == smith.SCHEDULES
    phases = {s: smith.make_plan(c, 50_000, s).phases(200) for s in smith.MAIN_SCHEDULES}
    assert [p.batch_size for p in phases["decay_lr"]] == [128] * 4
    np.testing.assert_allclose([p.learning_rate for p in phases["decay_lr"]], [0.1, 0.02, 0.004, 0.0008])
    assert [p.batch_size for p in phases["increase_batch"]] == [128, 640, 3200, 5120]
    assert [p.batch_size for p in phases["hybrid"]] == [128, 128, 640, 3200]
    assert smith.paper_updates() == {"decay_lr": 78125, "hybrid": 50625, "increase_batch": 29142,
                                     "scaled_lr_batch": 6407, "increase_momentum": 6407}


def test_quick_preset_plans_show_fewer_updates():
    c = smith.quick()
    assert (c.dataset, c.network, c.width, c.depth) == ("mnist1d", "mlp", 256, 3) and c.max_batch / c.base_batch == 40
    assert len(c.seeds) >= 3  # issue 14: mean ± std over at least 3 seeds
    updates = {s: smith.make_plan(c, 8000, s).total_updates(c.epochs) for s in smith.SCHEDULES}
    assert updates["decay_lr"] / updates["increase_batch"] >= 3
    assert updates["increase_batch"] > updates["scaled_lr_batch"]


def test_schedules_share_the_sgd_noise():
    c = smith.quick()
    plans = {s: smith.make_plan(c, 8000, s) for s in smith.SCHEDULES}
    assert plans["increase_momentum"].momentum_value == 0.98 and plans["scaled_lr_batch"].momentum_value == 0.9
    for epoch in np.linspace(0, 19.9, 25):
        g = {s: p.sgd_noise(float(epoch)) for s, p in plans.items()}
        assert max(g.values()) == pytest.approx(min(g.values()), rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"schedules": ("decay_lr", "grow")}, "schedules must be distinct names"),
    ({"schedules": ()}, "schedules must be distinct names"),
    ({"network": "vgg"}, "network must be"),
    ({"tolerance": 0.0}, "tolerance must be > 0"),
    ({"max_batch": 8}, r"max_batch \(8\) must be >= base_batch"),
    ({"target_momentum": 1.0}, r"target_momentum must be in \[0, 1\)"),
    ({"base_momentum": -0.1}, r"base_momentum must be in \[0, 1\)"),
    ({"factor": 1.0}, "factor must be > 1"),
    ({"milestones": (10, 5)}, "milestones must be strictly increasing"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        smith.SmithConfig(**kwargs)


def test_wrn_16_4():
    model = resnets.wrn((32, 32, 3), 10, depth=16, widen=4)
    assert model.output_shape == (None, 10)
    assert model.count_params() == pytest.approx(2.75e6, rel=0.02)  # WRN-16-4: 2.7M parameters
    with pytest.raises(ValueError, match="6n \\+ 4"):
        resnets.wrn((32, 32, 3), 10, depth=15)


def test_cifar_pipeline():
    x = np.random.RandomState(0).rand(32, 32, 3).astype(np.float32)
    assert resnets.cifar_train(x).shape == (32, 32, 3) and resnets.cifar_eval(x).shape == (32, 32, 3)


def _tiny(**kw):
    return dataclasses.replace(smith.tiny(), **kw)


def _check_outputs(workdir, config, results):
    on_disk = json.loads((workdir / "results.json").read_text())
    summary = on_disk["summary"]
    assert list(summary) == list(config.schedules)
    for s, r in summary.items():
        assert 0 <= r["test_accuracy"] <= 100 and r["train_seconds"] > 0
        assert r["updates"] == r["planned_updates"] == smith.make_plan(config, 400, s).total_updates(config.epochs)
        assert len(r["curves"]["val_accuracy"]) == len(r["curves"]["updates"]) == config.epochs
        assert r["curves"]["updates"][-1] == r["updates"] and r["hparams"] == {"schedule": s}
    for record in runner.run_records(on_disk["runs"]):  # every run record has the shared keys
        assert list(record)[:len(runner.RESULT_KEYS)] == list(runner.RESULT_KEYS)
    assert len(runner.run_records(on_disk["runs"])) == len(config.schedules) * len(config.seeds)
    md = (workdir / "results.md").read_text()
    assert "| schedule | test acc % |" in md and "78125" in md  # our numbers beside the paper recipe's
    for name in ("accuracy_vs_epochs.png", "accuracy_vs_updates.png", "schedules.png"):
        assert (workdir / name).read_bytes()[:4] == b"\x89PNG"
    for seed in config.seeds:
        for s in config.schedules:
            assert list((workdir / "tensorboard" / f"seed{seed}" / s / "train").rglob("events.out.tfevents.*"))
    return summary, md


def test_tiny_run(tmp_path):
    config = _tiny()
    results = smith.run(config, str(tmp_path))
    summary, md = _check_outputs(tmp_path, config, results)
    # 400 examples: decay_lr 50 updates per epoch; increase_batch 50 + 10 + 400/64 rounded as the plan counts.
    assert summary["decay_lr"]["updates"] == 150
    assert summary["decay_lr"]["updates"] > 2 * summary["increase_batch"]["updates"]
    assert summary["increase_batch"]["max_batch"] == 64
    assert "fewer parameter updates" in md


@pytest.mark.slow
def test_tiny_run_all_schedules(tmp_path):
    config = _tiny(schedules=smith.SCHEDULES, seeds=(0, 1))
    results = smith.run(config, str(tmp_path))
    summary, md = _check_outputs(tmp_path, config, results)
    assert summary["increase_momentum"]["momentum"] == 0.95
    assert len(summary["hybrid"]["test_accuracy_per_seed"]) == 2 and "±" in md


def test_mlp_network_has_kernel_weight_decay():
    c = smith.SmithConfig(network="mlp", width=8, depth=2, weight_decay=1e-3)
    model = smith.build_model(c, type("D", (), {"input_shape": (40,), "num_classes": 10})())
    kernels = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    assert len(kernels) == 3 and all(l.kernel_regularizer.get_config()["l2"] == pytest.approx(5e-4) for l in kernels)
    assert sum(isinstance(l, keras.layers.BatchNormalization) for l in model.layers) == 2


def test_curve_comparison_and_verdicts():
    """The largest gap after the first decay, the updates to reach decay_lr's final − tolerance, the verdicts."""
    c = smith.SmithConfig(milestones=(2,), epochs=4, tolerance=1.0, seeds=(0, 1, 2))

    def rec(curve, final, updates):
        return {"curves": {"val_accuracy": curve, "updates": updates}, "test_accuracy": final}

    ref = [rec([50, 60, 70, 75], 75, [10, 20, 30, 40]), rec([50, 61, 71, 76], 76, [10, 20, 30, 40]),
           rec([50, 59, 69, 74], 74, [10, 20, 30, 40])]
    ours = [rec([50, 60, 66, 75], 75, [10, 12, 14, 16]), rec([50, 60, 67, 76], 76, [10, 12, 14, 16]),
            rec([50, 60, 68, 74], 74, [10, 12, 14, 16])]
    out = smith.compare_curves(c, ours, ref)
    # epochs after the first decay: 3 and 4; the gap is -3 at epoch 3 (spread sqrt(1 + 1) = 1.41), 0 at epoch 4
    assert out["largest_gap_epoch"] == 3 and out["largest_gap"] == pytest.approx(-3.0)
    assert out["largest_gap_spread"] == pytest.approx(np.sqrt(2.0)) and out["final_gap"] == pytest.approx(0.0)
    assert out["gap_curve"] == pytest.approx([-3.0, 0.0])
    assert smith.updates_to_reach({"val_accuracy": [50, 60, 67, 75], "updates": [10, 12, 14, 16]}, 74) == 16
    assert smith.updates_to_reach({"val_accuracy": [50, 60], "updates": [10, 12]}, 74) is None


@pytest.mark.slow
def test_quick_preset_has_headroom_and_verdicts(tmp_path):
    """The quick preset end to end (minutes): decay_lr below 90 %, a verdict for every claim, 3 seeds."""
    results = smith.run(smith.quick(), str(tmp_path))
    s = results["summary"]
    assert s["decay_lr"]["test_accuracy"] < 90 and len(s["decay_lr"]["test_accuracy_per_seed"]) == 3
    assert s["decay_lr"]["updates"] >= 3 * s["increase_batch"]["updates"]
    assert len(results["verdicts"]) == 5 and all(v["verdict"] in report.VERDICTS for v in results["verdicts"])
