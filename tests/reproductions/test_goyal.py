"""Tests for reproductions/goyal.py: flags to config, presets, plans of every variant, networks, a tiny run."""

import dataclasses
import json
import math

import numpy as np
import pytest

from reproductions import common, goyal, report, resnets, runner

ARGS = ("--preset", "--workdir", "--strategy", "--dataset", "--seeds", "--epochs", "--multiples",
        "--ablation_multiples", "--regime_multiples", "--variants", "--base_batch", "--base_lr", "--warmup_epochs", "--max_physical_batch")


@pytest.fixture
def parse():
    """Parses argv into the global FLAGS (goyal's flags are defined on import) and unparses afterwards."""
    def _parse(*argv):
        common.FLAGS(["goyal.py", *argv])
        return common.FLAGS
    yield _parse
    common.FLAGS.unparse_flags()


def test_flags_to_config(parse):
    fv = parse("--multiples=1,4,16", "--ablation_multiples=16", "--regime_multiples=4",
               "--variants=no_warmup,sqrt_warmup", "--base_lr=0.2",
               "--warmup_epochs=2", "--seeds=2", "--max_physical_batch=64")
    c = common.config_from_flags(goyal.PRESETS, converters=goyal.CONVERTERS, flag_values=fv,
                                 argv=["reproductions/goyal.py", "--multiples=1,4,16"])
    assert c.multiples == (1, 4, 16) and c.ablations_at == (16,) and c.variants == ("no_warmup", "sqrt_warmup")
    assert (c.base_lr, c.warmup_epochs, c.seeds, c.max_physical_batch) == (0.2, 2.0, (0, 1), 64)
    assert c.dataset == "mnist1d" and c.base_batch == 16  # untouched preset fields
    assert c.command == "python reproductions/goyal.py --multiples=1,4,16"
    assert c.runs() == [(1, "linear_warmup"), (4, "linear_warmup"), (4, "no_warmup"), (4, "constant_warmup"),
                        (16, "linear_warmup"), (16, "no_warmup"), (16, "sqrt_warmup")]


def test_paper_preset_is_the_published_recipe():
    c = goyal.paper()
    assert (c.dataset, c.test_split, c.network, c.image_size) == ("tfds:imagenet2012", "validation", "resnet50", 224)
    assert (c.base_batch, c.base_lr, c.epochs, c.milestones, c.factor, c.warmup_epochs) == (
        256, 0.1, 90, (30, 60, 80), 10.0, 5.0)
    assert (c.base_momentum, c.nesterov, c.weight_decay) == (0.9, True, 1e-4)
    assert [k * c.base_batch for k in c.multiples][-1] == 65536 and 32 * 256 == 8192 and c.ablations_at == (32,)
    assert set(c.variants) == {"no_warmup", "constant_warmup", "sqrt_warmup", "no_scaling"}
    # 8k with linear scaling and gradual warmup: η = 0.1·8192/256 = 3.2 after 5 epochs from 0.1, ÷10 at 30/60/80.
    plan = goyal.make_plan(c, 1_281_167, 32, "linear_warmup")
    for epoch, lr in {0: 0.1, 2.5: 1.65, 5: 3.2, 30: 0.32, 60: 0.032, 80: 0.0032}.items():
        assert plan.at(epoch).learning_rate == pytest.approx(lr, rel=1e-6)
    assert plan.at(0).batch_size == 8192


def test_quick_preset():
    c = goyal.quick()
    assert c.preset == "quick" and c.dataset == "mnist1d" and c.network == "mlp" and len(c.seeds) >= 3
    assert c.multiples[-1] / c.multiples[0] >= 32 and c.ablations_at == (32,) and c.regime_multiples == (8, 32, 128)
    assert c.variants_at(32) == goyal.VARIANTS and c.variants_at(8) == goyal.WARMUP_VARIANTS
    assert c.variants_at(16) == ("linear_warmup",)
    assert c.base_batch * 32 > c.max_physical_batch  # the largest batch is reached by accumulation


@pytest.mark.parametrize("variant, lr0, lr_mid, lr_after", [
    ("linear_warmup", 0.1, 0.1 + (0.8 - 0.1) / 2, 0.8),
    ("no_warmup", 0.8, 0.8, 0.8),
    ("constant_warmup", 0.1, 0.1, 0.8),
    ("sqrt_warmup", 0.1, 0.1 + (0.1 * math.sqrt(8) - 0.1) / 2, 0.1 * math.sqrt(8)),
    ("no_scaling", 0.1, 0.1, 0.1),
])
def test_variant_plans(variant, lr0, lr_mid, lr_after):
    c = goyal.GoyalConfig(base_batch=32, base_lr=0.1, multiples=(1, 8), warmup_epochs=2, milestones=(6, 8),
                          epochs=10)
    plan = goyal.make_plan(c, 1000, 8, variant)
    assert plan.at(0).batch_size == 256 and plan.mode == "decay_lr"
    assert plan.at(0).learning_rate == pytest.approx(lr0)
    assert plan.at(1).learning_rate == pytest.approx(lr_mid)
    assert plan.at(2).learning_rate == pytest.approx(lr_after)
    assert plan.at(6).learning_rate == pytest.approx(lr_after / 10)
    assert plan.at(9).learning_rate == pytest.approx(lr_after / 100)
    # At k = 1 no variant warms up (there is nothing to warm up to).
    assert goyal.make_plan(c, 1000, 1, "linear_warmup").warmup_epochs == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"multiples": (2, 4)}, "starting at 1"),
    ({"multiples": (1, 4, 2)}, "strictly increasing"),
    ({"ablation_multiples": (64,)}, "ablation_multiples must be multiples > 1"),
    ({"variants": ("warmup_x",)}, "variants must be a subset"),
    ({"network": "vgg"}, "network must be"),
    ({"warmup_epochs": 50}, "warmup_epochs must be in"),
    ({"base_lr": 0}, "base_lr must be > 0"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        goyal.GoyalConfig(**kwargs)


def test_small_resnet_zero_gamma_and_weight_decay():
    model = resnets.small_resnet((40,), 10, width=4, stages=2, weight_decay=1e-4)
    assert resnets.zero_gamma_layers(model) == ["s1b1_bn2", "s2b1_bn2"]
    assert model.output_shape == (None, 10)
    model(np.zeros((2, 40), np.float32))
    # stem, 2 convs per block × 2 blocks, the stage-2 projection and the logits kernel: none on BN or biases
    assert len(model.losses) == 7
    image = resnets.small_resnet((8, 8, 1), 10, width=4, stages=2)
    assert image.output_shape == (None, 10)


@pytest.mark.slow
def test_resnet50_is_constructible_with_goyal_init():
    model = goyal.build_model(goyal.paper(), (224, 224, 3), 1000)
    assert model.count_params() == pytest.approx(25.6e6, rel=0.01)
    assert len(resnets.zero_gamma_layers(model)) == 16  # the last BN of each of the 16 bottleneck blocks
    assert len(model.losses) == 54  # 53 convs + the classifier kernel; no BN, no bias


def _tiny(**kw):
    return dataclasses.replace(goyal.tiny(), **kw)


def _check_outputs(workdir, config, results):
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk["summary"] == json.loads(json.dumps(results["summary"]))
    summary = on_disk["summary"]
    for k, v in config.runs():
        r = summary[str(k * config.base_batch)][v]
        assert 0 <= r["test_error"] <= 100 and len(r["test_error_curve"]) == config.epochs
        assert r["test_error"] == pytest.approx(100 - r["test_accuracy"]) and r["train_seconds"] > 0
        assert r["test_error_curve"][-1] == pytest.approx(r["test_error"], abs=1e-4)  # last epoch = final test
        assert r["batch_size"] == k * config.base_batch and r["hparams"]["variant"] == v
    records = runner.run_records(on_disk["runs"])
    assert len(records) == len(config.runs()) * len(config.seeds)
    for record in records:  # every run record has the shared keys
        assert list(record)[:len(runner.RESULT_KEYS)] == list(runner.RESULT_KEYS)
    md = (workdir / "results.md").read_text()
    assert "| batch | k | variant |" in md and "23.60" in md  # our numbers beside the paper's
    for name in ("error_vs_batch.png", "curves.png", "test_curves.png"):
        assert (workdir / name).read_bytes()[:4] == b"\x89PNG"
    assert list((workdir / "tensorboard" / "seed0" / f"b{config.base_batch}_linear_warmup" / "train").rglob(
        "events.out.tfevents.*"))
    return summary, md


def test_tiny_run(tmp_path):
    config = _tiny()
    results = goyal.run(config, str(tmp_path))
    summary, md = _check_outputs(tmp_path, config, results)
    big = summary["32"]
    # The linear rule scales the LR with the batch; the large batch accumulates 2 micro-batches of 16.
    assert big["linear_warmup"]["learning_rate"] == pytest.approx(4 * config.base_lr)
    assert big["linear_warmup"]["accumulation"] == 2
    assert summary["8"]["linear_warmup"]["updates"] == 4 * big["linear_warmup"]["updates"] == 4 * 2 * 400 // 32
    assert "linear rule, no warmup" in md and results["paper"]["8192"]["no_warmup"]["test_error"] == 24.84


@pytest.mark.slow
def test_tiny_run_all_variants_two_seeds(tmp_path):
    config = _tiny(multiples=(1, 2, 4), variants=goyal.ABLATIONS, seeds=(0, 1))
    results = goyal.run(config, str(tmp_path))
    summary, md = _check_outputs(tmp_path, config, results)
    assert set(summary["32"]) == set(goyal.VARIANTS)
    assert len(summary["32"]["no_scaling"]["test_error_per_seed"]) == 2
    assert summary["32"]["no_scaling"]["learning_rate"] == pytest.approx(0.05)
    assert summary["32"]["sqrt_warmup"]["learning_rate"] == pytest.approx(0.1)
    assert "±" in md


def _entries(errors):
    """A summary-like {batch: {variant: {"test_error_per_seed": ...}}} from {(batch, variant): per-seed errors}."""
    out = {}
    for (b, v), errs in errors.items():
        out.setdefault(str(b), {})[v] = {"test_error_per_seed": errs}
    return out


def test_regimes_and_verdicts():
    c = goyal.GoyalConfig(base_batch=16, multiples=(1, 8, 32, 128), ablation_multiples=(32,),
                          regime_multiples=(8, 32, 128), tolerance=1.0, seeds=(0, 1, 2))
    e = {(16, "linear_warmup"): [22.0, 23.0, 24.0]}
    e.update({(128, v): [19.0, 20.0, 21.0] for v in goyal.WARMUP_VARIANTS})                 # all within
    e.update({(512, "linear_warmup"): [18.0, 19.0, 20.0], (512, "no_warmup"): [40.0, 43.0, 46.0],
              (512, "constant_warmup"): [41.0, 42.0, 43.0], (512, "sqrt_warmup"): [25.0, 25.5, 26.0],
              (512, "no_scaling"): [60.0, 61.0, 62.0]})
    e.update({(2048, v): [55.0, 57.0, 59.0] for v in goyal.WARMUP_VARIANTS})                # all far worse
    summary = _entries(e)
    regimes = goyal.find_regimes(c, summary)
    assert {b: r["regime"] for b, r in regimes.items()} == {
        "128": "all variants fine", "512": "no warmup hurts, gradual warmup holds", "2048": "all break"}
    assert regimes["512"]["holds"] == {"linear_warmup": True, "no_warmup": False, "constant_warmup": False}
    rows = goyal.verdict_rows(c, summary)
    verdicts = [r[3] for r in rows]
    # 32× vs base: -4 ± 1.41 (bound holds); no warmup +24.7, constant +23, √ +6.5 beyond their spreads;
    # 128× − 32×: +38 ± 2.24.
    assert verdicts == [report.REPRODUCED] * 5
    assert rows[0][2].startswith("-4.00 ± 1.41")


@pytest.mark.slow
def test_quick_preset_has_headroom_and_verdicts(tmp_path):
    """The quick preset end to end (minutes): the base well above 10 % error, regimes and verdicts."""
    results = goyal.run(goyal.quick(), str(tmp_path))
    s = results["summary"]
    assert s["16"]["linear_warmup"]["test_error"] > 10 and len(s["16"]["linear_warmup"]["test_error_per_seed"]) == 3
    assert set(results["regimes"]) == {"128", "512", "2048"}
    assert all(v["verdict"] in report.VERDICTS for v in results["verdicts"])
