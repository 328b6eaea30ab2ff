"""``--preset=paper --smoke``: every published network at its real input shape, on generated data, through the
paper's plans, accumulation, evaluation and report — so a paper preset that would crash is caught on a CPU.

The fast tests check that each smoke configuration is the paper's (network, input shape, classes, the
accumulation factor at the largest batch); the slow ones (``pytest -m slow -k smoke``) run them.
"""

import json
import math

import pytest

import bstf.training
from reproductions import common, goyal, keskar, networks, runner, shen, smith

SCRIPTS = {"smith": smith, "goyal": goyal, "keskar": keskar, "shen": shen}


def _smoke_config(script, *args):
    """The config ``<script>.py --preset=paper --smoke *args`` makes (through the flags)."""
    module = SCRIPTS[script]
    try:
        common.parse_flags([f"{script}.py", "--preset=paper", "--smoke", *args])
        return module.config_from_flags()
    finally:
        common.FLAGS.unparse_flags()


def _accumulation(config, plan_batches, train_size):
    return {b: b // bstf.training.physical_batch(b, config.max_physical_batch) for b in plan_batches}


# ----------------------------------------------------------------------------- the smoke configs are the paper's
def test_smith_smoke_is_the_papers_wrn_and_plans():
    config, paper = _smoke_config("smith"), smith.paper()
    assert (config.smoke, config.network, config.depth, config.widen, config.augment) == (True, "wrn", 16, 4, True)
    assert config.dataset == "generated" and config.dataset_kwargs["input_shape"] == (32, 32, 3)
    assert config.schedules == paper.schedules and config.max_batch * smith.SMOKE_SCALE == paper.max_batch
    for schedule in smith.SCHEDULES:  # every phase of every schedule runs, accumulated as in the paper
        smoke_phases = smith.make_plan(config, config.dataset_kwargs["train_size"], schedule).phases(config.epochs)
        paper_phases = smith.make_plan(paper, 50_000, schedule).phases(paper.epochs)
        assert [p.batch_size * smith.SMOKE_SCALE for p in smoke_phases] == [p.batch_size for p in paper_phases]
        assert [p.learning_rate for p in smoke_phases] == pytest.approx([p.learning_rate for p in paper_phases])
        assert all(p.updates >= 1 for p in smoke_phases)
    assert max(_accumulation(config, [160], 160).values()) == 5120 // 512 == 10


def test_goyal_smoke_is_resnet50_at_224_with_the_8k_accumulation():
    config = _smoke_config("goyal")
    assert (config.network, config.image_size, config.dataset_kwargs["num_classes"]) == ("resnet50", 224, 1000)
    assert config.multiples == (1, 32) and config.ablations_at == (32,) and set(config.variants) == set(goyal.ABLATIONS)
    big = 32 * config.base_batch
    assert _accumulation(config, [big], big)[big] == 8192 // 256 == 32  # the paper's 8k: 32 × 256
    plan = goyal.make_plan(config, big, 32, "linear_warmup")
    assert plan.phases(config.epochs)[0].learning_rate == pytest.approx(3.2)  # 0.1 · 8192 / 256, as in the paper


@pytest.mark.parametrize("network", sorted(keskar.PAPER_SHAPES))
def test_keskar_smoke_is_the_papers_network(network):
    config = _smoke_config("keskar", f"--network={network}")
    shape, classes, size = keskar.PAPER_SHAPES[network]
    assert (config.network, config.dataset_kwargs["input_shape"], config.dataset_kwargs["num_classes"]) == (
        network, shape, classes)
    assert config.compared_network == network and config.subspace_dim == 100 and config.epsilons == (1e-3,)
    scale = keskar.SMOKE_SCALE[network]
    assert config.sb_batch * scale == 256 and config.dataset_kwargs["train_size"] == size // scale
    model = networks.build(network, shape, classes)
    assert model.input_shape[1:] == shape and model.output_shape == (None, classes)
    if scale == 1:  # the MLPs at the paper's batches: SB 256, LB 6000 accumulated from micro-batches of 500
        strategy = common.make_strategy(config)
        assert keskar.batch_sizes(config, size, strategy) == (256, 6000)
        assert _accumulation(config, [6000], size)[6000] == 12


def test_shen_smoke_is_the_papers_mlp():
    config, paper = _smoke_config("shen"), shen.paper()
    assert (config.width, config.depth, config.batch_sizes) == (paper.width, paper.depth, paper.batch_sizes)
    assert config.dataset_kwargs["input_shape"] == (28, 28, 1) and config.accumulation == (1024, 32)


# ----------------------------------------------------------------------------- the smoke runs
def _run_smoke(script, workdir, *args):
    module = SCRIPTS[script]
    argv = [f"{script}.py", "--preset=paper", "--smoke", f"--workdir={workdir}", *args]
    try:
        remaining = common.parse_flags(argv)
        common.main(script, module.config_from_flags, module.prepare, module.execute, remaining)
    finally:
        common.FLAGS.unparse_flags()
    results = json.loads((workdir / "results.json").read_text())
    assert results["config"]["smoke"] is True and results["config"]["preset"] == "paper"
    assert "(smoke run: generated data)" in (workdir / "results.md").read_text()
    records = runner.run_records(results["runs"])
    assert records
    for record in records:
        assert list(record)[:len(runner.RESULT_KEYS)] == list(runner.RESULT_KEYS)
        assert record["updates"] >= 1 and math.isfinite(record["test_loss"]) and 0 <= record["test_accuracy"] <= 100
    return results, records


@pytest.mark.slow
def test_smith_paper_smoke(tmp_path):
    results, records = _run_smoke("smith", tmp_path)
    assert {r["hparams"]["schedule"] for r in records} == set(smith.SCHEDULES)
    grow = next(r for r in records if r["hparams"]["schedule"] == "increase_batch")
    assert [p["batch_size"] for p in grow["phases"]] == [4, 20, 100, 160] and grow["accumulation"] == 10


@pytest.mark.slow
def test_goyal_paper_smoke(tmp_path):
    results, records = _run_smoke("goyal", tmp_path)
    big = [r for r in records if r["batch_size"] == 64]
    assert len(big) == 5 and all(r["accumulation"] == 32 for r in big)  # k = 32: 32 micro-batches, as at 8k


@pytest.mark.slow
@pytest.mark.parametrize("network", sorted(keskar.PAPER_SHAPES))
def test_keskar_paper_smoke(network, tmp_path):
    results, records = _run_smoke("keskar", tmp_path, f"--network={network}")
    assert [r["hparams"]["regime"] for r in records] == ["sb", "lb"]
    assert all(math.isfinite(v) for r in records for v in r["sharpness"].values())


@pytest.mark.slow
def test_shen_paper_smoke(tmp_path):
    results, records = _run_smoke("shen", tmp_path)
    assert results["accumulation"]["batch_size"] == 1024 and results["accumulation"]["micro_batch"] == 32
