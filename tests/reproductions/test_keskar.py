"""Tests for reproductions/keskar.py: flags to config, the paper's protocol and numbers, report, end to end."""

import dataclasses
import json
import math

import numpy as np
import pytest
from absl import app
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import bstf
from reproductions import common, keskar, report, runner

# ----------------------------------------------------------------------------- flags and presets


def test_quick_preset_from_flags(parse_flags):
    fv = parse_flags("--seeds=2", "--epochs=7", "--workdir=/tmp/k", script_flags=("network",))
    c = keskar.config_from_flags(fv, argv=["reproductions/keskar.py", "--seeds=2", "--epochs=7"])
    assert (c.preset, c.network, c.dataset, c.seeds, c.epochs) == ("quick", "F1-small", "mnist1d", (0, 1), 7)
    assert (c.sb_batch, c.lb_fraction, c.patience, c.compared_network) == (32, 0.1, 10, "F1")
    assert c.command == "python reproductions/keskar.py --seeds=2 --epochs=7"
    assert common.workdir_from_flags("keskar", fv) == "/tmp/k"


def test_quick_conv_network_runs_on_images(parse_flags):
    c = keskar.config_from_flags(parse_flags("--network=C1-small", script_flags=("network",)))
    assert (c.network, c.dataset, c.compared_network) == ("C1-small", "digits", "C1")
    c = keskar.config_from_flags(parse_flags("--network=C1-small", "--dataset=npz:/my.npz",
                                             script_flags=("network",)))
    assert c.dataset == "npz:/my.npz"


@pytest.mark.parametrize("network, dataset", [("F1", "tfds:mnist"), ("C1", "tfds:cifar10"), ("C2", "tfds:cifar10"),
                                              ("C3", "tfds:cifar100"), ("C4", "tfds:cifar100")])
def test_paper_preset_data_follow_the_network(parse_flags, network, dataset):
    fv = parse_flags("--preset=paper", f"--network={network}", "--data_dir=/data", script_flags=("network",))
    c = keskar.config_from_flags(fv)
    assert (c.preset, c.network, c.dataset, c.data_dir, c.compared_network) == (
        "paper", network, dataset, "/data", network)


def test_paper_preset_f2_needs_user_data(parse_flags):
    with pytest.raises(app.UsageError, match="TIMIT"):
        keskar.config_from_flags(parse_flags("--preset=paper", "--network=F2", script_flags=("network",)))
    c = keskar.config_from_flags(parse_flags("--preset=paper", "--network=F2", "--dataset=npz:/timit.npz",
                                             script_flags=("network",)))
    assert (c.network, c.dataset) == ("F2", "npz:/timit.npz")


def test_paper_preset_is_the_published_protocol():
    c = keskar.paper()
    assert (c.preset, c.network, c.dataset, c.seeds) == ("paper", "F1", "tfds:mnist", (0, 1, 2, 3, 4))
    assert (c.sb_batch, c.lb_fraction, c.lb_batch, c.base_lr) == (256, 0.1, None, 1e-3)  # ADAM
    assert (c.epsilons, c.subspace_dim, c.sharpness_iterations) == ((1e-3, 5e-4), 100, 10)
    assert c.alphas == (-1.0, 2.0, 25) and c.sharpness_examples is None
    strategy = common.make_strategy(c)
    assert keskar.batch_sizes(c, 60000, strategy) == (256, 6000)  # MNIST: LB = 10 % of 60000
    assert keskar.batch_sizes(dataclasses.replace(c, network="C1"), 50000, strategy) == (256, 5000)  # CIFAR


def test_quick_preset():
    c = keskar.quick()
    assert (c.preset, c.network, c.dataset, c.seeds, c.sb_batch) == ("quick", "F1-small", "mnist1d", (0, 1, 2), 32)
    assert keskar.batch_sizes(c, 4000, common.make_strategy(c)) == (32, 400)
    assert "python reproductions/keskar.py" in keskar.quick.__doc__ and "--preset=paper" in keskar.paper.__doc__


# Keskar et al. 2017, Table 2 (accuracy %), Table 3 (φ, full space, ε = 1e-3) and Table 4 (100-d subspace).
TABLE2 = {"F1": (99.66, 99.92, 98.03, 97.81), "F2": (99.99, 98.35, 64.02, 59.45), "C1": (99.89, 99.66, 80.04, 77.26),
          "C2": (99.99, 99.99, 89.24, 87.26), "C3": (99.56, 99.88, 49.58, 46.45), "C4": (99.10, 99.57, 63.08, 57.81)}
TABLE3 = {"F1": (1.23, 205.14), "F2": (1.39, 310.64), "C1": (28.58, 707.23), "C2": (8.68, 925.32),
          "C3": (29.85, 258.75), "C4": (12.83, 421.84)}


@pytest.mark.parametrize("network", sorted(TABLE2))
def test_paper_numbers(network):
    p = keskar.PAPER[network]
    assert (p["sb"]["train_accuracy"][0], p["lb"]["train_accuracy"][0], p["sb"]["test_accuracy"][0],
            p["lb"]["test_accuracy"][0]) == TABLE2[network]
    assert (p["sb"]["sharpness"]["0.001"][0], p["lb"]["sharpness"]["0.001"][0]) == TABLE3[network]
    for r in keskar.REGIMES:  # every ε of the config has a paper value, full space and subspace
        assert set(p[r]["sharpness"]) == set(p[r]["sharpness_subspace"]) == {str(e) for e in keskar.paper().epsilons}
    assert p["sb"]["test_accuracy"][1] == {"F1": 0.07, "C1": 0.12}.get(network, p["sb"]["test_accuracy"][1])
    assert p["lb"]["test_accuracy"][1] == {"F1": 0.07, "C1": 0.42}.get(network, p["lb"]["test_accuracy"][1])


def test_paper_subspace_numbers():
    assert (keskar.PAPER["F1"]["sb"]["sharpness_subspace"]["0.001"][0],
            keskar.PAPER["F1"]["lb"]["sharpness_subspace"]["0.001"][0]) == (0.11, 9.22)
    assert (keskar.PAPER["C1"]["sb"]["sharpness_subspace"]["0.001"][0],
            keskar.PAPER["C1"]["lb"]["sharpness_subspace"]["0.001"][0]) == (2.18, 137.25)


@pytest.mark.parametrize("kwargs, match", [
    ({"network": "F3"}, "network must be one of"),
    ({"paper_network": "F1-small"}, "paper_network must be one of"),
    ({"sb_batch": 0}, "sb_batch must be an integer >= 1"),
    ({"lb_fraction": 1.5}, "lb_fraction must be in"),
    ({"base_lr": 0.0}, "base_lr must be > 0"),
    ({"epsilons": ()}, "epsilons must be a non-empty tuple"),
    ({"epsilons": (1e-3, -1.0)}, "epsilons must be a non-empty tuple"),
    ({"alphas": (2.0, -1.0, 25)}, "alphas must be"),
    ({"seeds": (0, 1.5)}, "seeds must be a non-empty tuple of integers"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keskar.KeskarConfig(**kwargs)


def test_batch_sizes_checks_the_training_set():
    c = keskar.KeskarConfig(sb_batch=64, lb_batch=300)
    s = common.make_strategy(c)
    assert keskar.batch_sizes(c, 1000, s) == (64, 300)
    with pytest.raises(ValueError, match="sb_batch: batch 64 is larger than the training set"):
        keskar.batch_sizes(c, 50, s)


# ----------------------------------------------------------------------------- report


def _fake_run(seed, sb_test, lb_test, sb_phi, lb_phi):
    def regime(batch, test, phi):
        return {"batch_size": batch, "epochs": 3, "train_accuracy": 99.0, "test_accuracy": test, "train_loss": 0.01,
                "test_loss": 0.5, "sharpness": {"0.001": phi, "0.0005": phi / 4},
                "sharpness_subspace": {"0.001": phi / 1000, "0.0005": phi / 4000},
                "sharpness_subspace_unit": {"0.001": 1e-3 / phi, "0.0005": 5e-4 / phi}}
    alpha = np.linspace(-1, 2, 4).tolist()
    return {"seed": seed, "sb": regime(32, sb_test, sb_phi), "lb": regime(400, lb_test, lb_phi),
            "interpolation": {"alpha": alpha, "train_loss": [1.0, 0.1, 0.2, float("nan")],
                              "test_loss": [2.0, 1.0, 1.2, float("nan")], "train_accuracy": [0.5, 1.0, 1.0, 0.1],
                              "test_accuracy": [0.4, 0.7, 0.65, 0.1]}}


def test_verdicts_and_markdown_against_the_spread():
    c = keskar.quick()
    runs = [_fake_run(0, 72.0, 65.0, 10.0, 600.0), _fake_run(1, 70.0, 71.0, 10.0, 500.0),
            _fake_run(2, 70.0, 69.0, 10.0, 15.0)]
    rows = keskar.verdict_rows(c, runs)
    by_claim = {r[0]: r for r in rows}
    full = by_claim["LB minimisers are sharper (full space, ε = 0.001)"]
    # LB − SB = 361.67 ± 312.90 (std of 600, 500, 15; SB constant): beyond the spread
    assert full[3] == report.REPRODUCED and "LB − SB +361.67 ± 312.90" in full[2] and full[1] == "1.23 / 205.14 (167×)"
    unit = by_claim["LB minimisers are sharper (random 100-d subspace, A ~ N(0, 1/n), ε = 0.001)"]
    assert unit[3] == report.NOT_REPRODUCED  # inverted beyond its spread
    gap = by_claim["LB generalises worse (SB − LB test accuracy > 0)"]
    assert gap[3] == report.NOT_SEPARABLE and gap[2] == "+2.33 ± 3.27 points"  # stds 1.15 and 3.06
    assert len(rows) == 3 * len(c.epsilons) + 1
    train = test = common.take(common.load_data(common.Config(dataset="digits"))[0], 100)
    md = keskar._markdown(c, runs, rows, train, test, 32, 400)
    assert "## Verdicts" in md and "| **reproduced** |" in md and "| not separable at this size |" in md
    assert "| 0 | 3 | 3 | 72.00 | 65.00 | 10 | 600 | 60× | 60× | 0.0167× |" in md
    assert "| SB test accuracy (%) | 70.67 ± 1.15 | 98.03 ± 0.07 |" in md
    # sharpness keeps 3 significant digits however small (the subspace values here are 1e-2)
    assert "| SB sharpness φ, 100-d subspace, A ~ N(0, 1), ε=0.001 | 0.0100 ± 0.0000 | 0.11 ± 0.00 |" in md
    assert "| SB sharpness φ, 100-d subspace, A ~ N(0, 1/n), ε=0.001 | 0.000100 ± 0.000000 | 0.11 ± 0.00 |" in md
    assert "overflowed" in md  # the nan points are explained


def test_interpolation_holds_bn_statistics_outside_the_segment():
    """Extrapolated moving variances would turn negative (NaN losses); keskar holds them at the nearer end."""
    train = common.take(common.load_data(common.Config(dataset="digits"))[0], 64)
    model = keskar.networks.mlp(train.input_shape, train.num_classes, 8, 1, batch_norm=True)
    runner.compile_classifier(model, "sgd")
    rng = np.random.default_rng(0)
    w_sb = [rng.normal(size=w.shape).astype(w.dtype) * 0.3 for w in model.get_weights()]
    w_lb = [w + rng.normal(size=w.shape).astype(w.dtype) * 0.3 for w in w_sb]
    variance = [i for i, v in enumerate(model.weights) if "moving_variance" in v.path]
    assert variance and not model.weights[variance[0]].trainable
    for i in variance:
        w_sb[i], w_lb[i] = np.full_like(w_sb[i], 4.0), np.full_like(w_lb[i], 1.0)  # at α = 2: 2·1 − 4 < 0
    config = dataclasses.replace(keskar.quick(), alphas=(-1.0, 2.0, 7))
    out = keskar._interpolation(config, model, w_sb, w_lb, train, train)
    assert out["alpha"] == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0])
    assert all(len(out[k]) == 7 and np.all(np.isfinite(out[k])) for k in out)
    # inside the segment it is plain bstf.analysis.interpolate
    plain = keskar.bstf.analysis.interpolate(model, w_sb, w_lb, train, alphas=[0.0, 0.5, 1.0])
    assert out["train_loss"][2:5] == pytest.approx(plain.loss["data"].tolist(), rel=1e-5)
    assert not np.all(np.isfinite(keskar.bstf.analysis.interpolate(
        model, w_sb, w_lb, train, alphas=[2.0], non_trainable="interpolate").loss["data"]))


# ----------------------------------------------------------------------------- end to end


def _tiny(**changes):
    base = dict(preset="quick", dataset="mnist1d", network="F1-small")
    return dataclasses.replace(keskar.tiny(), **{**base, **changes})


def _scalars(logdir):
    ea = EventAccumulator(str(logdir), size_guidance={"tensors": 0, "scalars": 0, "images": 0})
    ea.Reload()
    return ea


def _check_outputs(res, workdir, config):
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(res))  # what run returns is what it wrote
    summary = on_disk["summary"][config.network]
    n = len(config.seeds)
    for r in keskar.REGIMES:
        s = summary[r]
        for key in ("train_accuracy", "test_accuracy"):
            assert 0 <= s[key] <= 100
        for key in ("sharpness", "sharpness_subspace", "sharpness_subspace_unit"):  # both scales of A
            assert set(s[key]) == {"0.001", "0.0005"} and all(math.isfinite(v) and v >= 0 for v in s[key].values())
        for key in ("train_accuracy", "test_accuracy", "train_loss", "test_loss"):
            assert f"{key}_std" in s and len(s[f"{key}_per_seed"]) == n
        assert set(s["sharpness_std"]) == set(s["sharpness_subspace_std"]) == set(
            s["sharpness_subspace_unit_std"]) == {"0.001", "0.0005"}
        assert s["hparams"] == {"network": config.network, "regime": r} and s["train_seconds"] > 0
    for record in runner.run_records(on_disk["runs"]):  # every run record has the shared keys
        assert list(record)[:len(runner.RESULT_KEYS)] == list(runner.RESULT_KEYS)
    assert len(runner.run_records(on_disk["runs"])) == 2 * n
    assert summary["lb"]["batch_size"] > summary["sb"]["batch_size"]
    assert len(on_disk["runs"]) == n and [r["seed"] for r in on_disk["runs"]] == list(config.seeds)
    interp = on_disk["runs"][0]["interpolation"]
    assert len(interp["alpha"]) == config.alphas[2] and set(interp) == {
        "alpha", "train_loss", "test_loss", "train_accuracy", "test_accuracy"}
    assert on_disk["paper"] == {config.compared_network: json.loads(json.dumps(keskar.PAPER[config.compared_network]))}
    assert on_disk["config"]["network"] == config.network and on_disk["machine"]
    assert list(on_disk) == [*report.RESULTS_KEYS, "verdicts"]
    assert len(on_disk["verdicts"]) == 3 * len(config.epsilons) + 1

    md = (workdir / "results.md").read_text()
    for row in ("| SB train accuracy (%) |", "| LB test accuracy (%) |", "| SB sharpness φ, full space, ε=0.001 |",
                "| LB sharpness φ, 4-d subspace, A ~ N(0, 1), ε=0.0005 |",
                "| LB sharpness φ, 4-d subspace, A ~ N(0, 1/n), ε=0.0005 |", "## Verdicts", "## Per seed", "## Parametric plot"):
        assert row in md
    paper = keskar.PAPER[config.compared_network]  # the paper's values beside ours
    assert f"| {report.pm(*paper['sb']['test_accuracy'])} |" in md
    assert f"| {report.pm(*paper['lb']['sharpness']['0.001'])} |" in md
    for png in ("interpolation.png", "sharpness.png"):
        assert (workdir / png).read_bytes()[:4] == b"\x89PNG"

    run_board = _scalars(workdir / "tensorboard" / "seed0" / "sb")
    tags = set(run_board.Tags()["tensors"])
    assert {bstf.tags.final_metric("test_accuracy"), bstf.tags.final_metric("sharpness_0.001"),
            "_hparams_/session_start_info"} <= tags
    assert (workdir / "tensorboard" / "seed0" / "sb" / "train").is_dir()  # bstf.fit's curves
    summary_board = _scalars(workdir / "tensorboard" / "summary")
    assert {"interpolation", "sharpness", runner.RESULTS_TEXT_TAG} <= set(summary_board.Tags()["tensors"])


def test_run_end_to_end_tiny(tmp_path):
    """C1-small on 256 digit images, 2 epochs, 1 seed (the conv net has 10× fewer weights than F1-small)."""
    config = _tiny(network="C1-small", dataset="digits")
    res = keskar.run(config, str(tmp_path))
    _check_outputs(res, tmp_path, config)
    run = res["runs"][0]
    assert run["sb"]["batch_size"] == 32 and run["lb"]["batch_size"] == 64  # 25 % of 256
    assert 1 <= run["sb"]["epochs"] <= 2 and 1 <= run["lb"]["epochs"] <= 2


@pytest.mark.slow
def test_run_two_seeds_mlp(tmp_path):
    config = _tiny(seeds=(0, 1), epochs=3, alphas=(-1.0, 2.0, 7))
    res = keskar.run(config, str(tmp_path))
    _check_outputs(res, tmp_path, config)
    s = res["summary"]["F1-small"]["sb"]
    assert s["test_accuracy_std"] >= 0 and set(s["sharpness_std"]) == {"0.001", "0.0005"}


@pytest.mark.slow
def test_quick_preset_has_headroom_and_verdicts(tmp_path):
    """The quick preset (minutes): SB well below its ceiling, a verdict for every claim over 3 seeds."""
    config = keskar.quick()
    res = keskar.run(config, str(tmp_path))
    _check_outputs(res, tmp_path, config)
    s = res["summary"][config.network]
    assert s["sb"]["test_accuracy"] < 90 and len(s["sb"]["test_accuracy_per_seed"]) == 3
