"""Tests for reproductions/common.py (config from flags, data, prepare, the exit-2 entry point) and report.py."""

import dataclasses
import json

import numpy as np
import pytest
from absl import flags

from reproductions import common, report


@dataclasses.dataclass(frozen=True)
class _Cfg(common.Config):
    width: int = 8
    sizes: tuple = (1, 2)


def _quick():
    return _Cfg(preset="quick", dataset="mnist1d", dataset_kwargs={"num_samples": 1000}, seeds=(0, 1), epochs=3)


def _paper():
    return _Cfg(preset="paper", dataset="tfds:mnist", seeds=(0, 1, 2, 3, 4), epochs=100)


def _smoke(config):
    return dataclasses.replace(config, dataset=common.GENERATED, epochs=1, width=2, smoke=True,
                               dataset_kwargs=dict(input_shape=(4,), num_classes=3, train_size=8, test_size=4))


PRESETS = {"quick": _quick, "paper": _paper}


@pytest.fixture
def parse():
    fv = flags.FlagValues()
    for name in ("width",):
        flags.DEFINE_integer(name, None, "test flag", flag_values=fv)
    flags.DEFINE_list("sizes", None, "test flag", flag_values=fv)
    # the shared flags, re-declared on a private FlagValues so the global FLAGS stay untouched
    for name in common.SHARED_FLAGS:
        fv[name] = common.FLAGS[name]  # same Flag object; parsing below sets it, cleanup unparses
    yield lambda *argv: (fv(["prog", *argv]), fv)[1]
    fv.unparse_flags()


def test_config_from_flags_applies_only_given_flags(parse):
    fv = parse("--seeds=3", "--width=5", "--sizes=4,8", "--epochs=7", "--max_physical_batch=64", "--jit_compile")
    c = common.config_from_flags(PRESETS, converters={"sizes": lambda v: tuple(int(x) for x in v)}, flag_values=fv,
                                 argv=["reproductions/x.py", "--seeds=3", "--dataset=npz:/my data.npz"])
    assert c.seeds == (0, 1, 2) and c.width == 5 and c.sizes == (4, 8) and c.epochs == 7
    assert isinstance(c.epochs, int) and c.max_physical_batch == 64 and c.jit_compile is True
    assert c.command == "python reproductions/x.py --seeds=3 '--dataset=npz:/my data.npz'"
    assert c.dataset == "mnist1d" and c.dataset_kwargs == {"num_samples": 1000}  # untouched preset fields
    assert c.preset == "quick" and c.smoke is False


def test_config_from_flags_paper_preset_and_dataset_override(parse):
    fv = parse("--preset=paper", "--dataset=idx:/data/fashion")
    c = common.config_from_flags(PRESETS, flag_values=fv)
    assert c.preset == "paper" and c.seeds == (0, 1, 2, 3, 4) and c.epochs == 100
    assert c.dataset == "idx:/data/fashion" and c.dataset_kwargs == {}
    assert common.workdir_from_flags("keskar", fv) == "/tmp/keskar"


def test_smoke_applies_the_scripts_transformation_then_the_flags(parse):
    c = common.config_from_flags(PRESETS, smoke=_smoke, flag_values=parse("--preset=paper", "--smoke", "--epochs=2"))
    assert (c.smoke, c.dataset, c.width, c.epochs, c.preset) == (True, "generated", 2, 2, "paper")
    assert c.dataset_kwargs["input_shape"] == (4,)


def test_smoke_needs_the_paper_preset(parse):
    with pytest.raises(ValueError, match=r"use it with --preset=paper \(got --preset=quick\)"):
        common.config_from_flags(PRESETS, smoke=_smoke, flag_values=parse("--smoke"))


@pytest.mark.parametrize("kwargs, match", [
    ({"preset": "fast"}, "preset must be one of"),
    ({"strategy": "gpu"}, "strategy must be one of"),
    ({"seeds": ()}, "seeds must be a non-empty tuple"),
    ({"epochs": 0}, "epochs must be > 0, got 0"),
    ({"train_examples": -5}, "train_examples must be an integer >= 1, got -5"),
    ({"max_physical_batch": 0}, "max_physical_batch must be an integer >= 1, got 0"),
    ({"tpu": "local"}, "--tpu=local is only used with --strategy=tpu"),
    ({"num_cpu_devices": 2}, "--num_cpu_devices is only used with --strategy=mirrored"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        common.Config(**kwargs)


def test_load_take_split():
    train, test = common.load_data(common.Config(dataset="digits", train_examples=200, test_examples=50))
    assert (train.size, test.size, train.input_shape, train.num_classes) == (200, 50, (8, 8, 1), 10)
    x, y = common.arrays(train)
    assert x.shape == (200, 8, 8, 1) and y.shape == (200,)
    assert sum(1 for _ in train.dataset) == 200
    rest, held = common.split(train, 0.25, seed=3)
    assert (rest.size, held.size) == (150, 50)
    xr, xh = common.arrays(rest)[0].reshape(150, -1), common.arrays(held)[0].reshape(50, -1)
    joined = np.concatenate([xr, xh])
    # a permutation of the original rows: same multiset of rows
    assert np.allclose(np.sort(joined, axis=0), np.sort(x.reshape(200, -1), axis=0))
    with pytest.raises(ValueError, match="fraction must be in"):
        common.split(train, 1.5)


def test_generated_data_is_seeded_and_of_the_given_shape():
    train, test = common.generated_data((5, 4, 3), 7, 12, 6, seed=1)
    assert (train.size, test.size, train.input_shape, train.num_classes, train.name) == (12, 6, (5, 4, 3), 7,
                                                                                          "generated")
    x, y = train.numpy()
    assert x.shape == (12, 5, 4, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() < 1
    assert y.shape == (12,) and set(y) <= set(range(7)) and len(set(y)) > 1
    again = common.generated_data((5, 4, 3), 7, 12, 6, seed=1)[0].numpy()
    np.testing.assert_array_equal(x, again[0])
    np.testing.assert_array_equal(y, again[1])
    assert not np.allclose(test.numpy()[0][:6], x[:6])  # test examples are others
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        common.generated_data((3,), 1, 4, 4)


def test_prepare_checks_every_batch_before_training():
    config = common.Config(dataset="digits", train_examples=100, test_examples=20, max_physical_batch=8)
    setup = common.prepare(config, batches=lambda n: [10, n])
    assert (setup.train.size, setup.test.size, setup.config) == (100, 20, config)
    with pytest.raises(ValueError, match="batch 128 is larger than the training set"):
        common.prepare(config, batches=[128])
    mirrored = dataclasses.replace(config, strategy="mirrored", max_physical_batch=1)  # 2 logical CPUs
    with pytest.raises(ValueError, match="global batch 7 is not divisible by the 2 replicas"):
        common.prepare(mirrored, batches=[7])
    with pytest.raises(ValueError, match="cannot be split into equal micro-batches"):
        common.prepare(mirrored, batches=[6])


# ----------------------------------------------------------------------------- the entry point
def _main(argv, make_config=lambda: common.Config(), prepare=lambda c: c, execute=lambda s, w: (s, w)):
    return common.main("x", make_config, prepare, execute, ["reproductions/x.py", *argv])


def _one_error_line(capsys, excinfo, prog="x.py"):
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: ") and "Traceback" not in err
    return err


def test_main_runs_prepare_then_execute(tmp_path, parse):
    config, workdir = _main([])
    assert config == common.Config() and workdir == "/tmp/x"


@pytest.mark.parametrize("error", [ValueError("bad\nvalue"), FileNotFoundError("no data"), RuntimeError("no TPU"),
                                   TypeError("bad type")])
def test_user_errors_before_training_exit_2_with_one_line(capsys, error):
    def prepare(config):
        raise error

    with pytest.raises(SystemExit) as excinfo:
        _main([], prepare=prepare)
    err = _one_error_line(capsys, excinfo)
    assert err == f"x.py: error: {' '.join(str(error).split())}\n"


def test_positional_arguments_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as excinfo:
        _main(["extra"])
    assert "unexpected positional arguments ['extra']" in _one_error_line(capsys, excinfo)


def test_errors_during_training_keep_their_traceback():
    def execute(setup, workdir):
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        _main([], execute=execute)


def test_bad_flag_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as excinfo:
        common.parse_flags(["smith.py", "--strategy=gpu"])
    err = _one_error_line(capsys, excinfo, "smith.py")
    assert "--strategy" in err and "--helpshort" in err
    common.FLAGS.unparse_flags()


# ----------------------------------------------------------------------------- report
def test_aggregate_mean_and_sample_std():
    runs = [{"acc": 0.9, "curve": [1.0, 2.0], "name": "a"}, {"acc": 0.7, "curve": [3.0, 6.0], "name": "a"}]
    means, stds = report.aggregate(runs)
    assert means["acc"] == pytest.approx(0.8) and stds["acc"] == pytest.approx(np.sqrt(0.02))
    assert means["curve"] == pytest.approx([2.0, 4.0]) and stds["curve"] == pytest.approx([np.sqrt(2), np.sqrt(8)])
    assert means["name"] == "a"
    assert report.mean_std([5.0]) == (5.0, 0.0)
    means, stds = report.aggregate([{"updates": 125, "epochs": 3}, {"updates": 125, "epochs": 4}])
    assert means == {"updates": 125, "epochs": 3.5} and isinstance(means["updates"], int)


def test_tables():
    assert report.pm(0.98031, 0.0007, digits=2, scale=100) == "98.03 ± 0.07"
    assert report.pm([1.0, 3.0], digits=1) == "2.0 ± 1.4"
    assert report.pm([97.123]) == "97.12"  # one seed: no spread to show
    table = report.comparison_table([("test acc (%)", [97.0, 99.0], 98.03), ("φ", 3.5, None, "note")])
    lines = table.splitlines()
    assert lines[0] == "| quantity | ours | paper | note |"
    assert lines[2] == "| test acc (%) | 98.00 ± 1.41 | 98.03 |  |"
    assert lines[3] == "| φ | 3.50 | — | note |"
    with pytest.raises(ValueError, match="has 1 cells"):
        report.markdown_table(["a", "b"], [[1]])


def test_difference_and_its_spread():
    d = report.difference([3.0, 5.0, 4.0], [1.0, 1.0, 1.0])
    assert d.diff == pytest.approx(3.0) and d.spread == pytest.approx(1.0) and d.seeds == 3 and d.separable
    assert d.text() == "+3.00 ± 1.00"
    d = report.difference([1.0, 3.0], [2.0, 0.0])  # stds sqrt(2) and sqrt(2): spread 2
    assert d.diff == pytest.approx(1.0) and d.spread == pytest.approx(2.0) and not d.separable
    one = report.difference([5.0], [1.0])
    assert one.spread is None and not one.separable and one.text() == "+4.00 (1 seed)"
    with pytest.raises(ValueError, match="at least one value"):
        report.difference([], [1.0])


@pytest.mark.parametrize("a, b, sign, expected", [
    ([3.0, 5.0, 4.0], [1.0, 1.0, 1.0], 1, report.REPRODUCED),       # +3 ± 1, claimed larger
    ([3.0, 5.0, 4.0], [1.0, 1.0, 1.0], -1, report.NOT_REPRODUCED),  # +3 ± 1, claimed smaller
    ([1.0, 3.0], [2.0, 0.0], 1, report.NOT_SEPARABLE),              # +1 ± 2
    ([5.0], [1.0], 1, report.NOT_SEPARABLE),                        # one seed: no spread
    ([float("nan"), 1.0], [0.0, 0.0], 1, report.NOT_SEPARABLE),     # a diverged run
])
def test_direction_verdict(a, b, sign, expected):
    assert report.direction_verdict(report.difference(a, b), sign) == expected


@pytest.mark.parametrize("a, b, tolerance, expected", [
    ([76.0, 76.5, 77.0], [76.2, 76.4, 76.9], 1.0, report.REPRODUCED),        # -0.03 ± 0.67 within 1
    ([70.0, 70.5, 71.0], [76.2, 76.4, 76.9], 1.0, report.NOT_REPRODUCED),    # -6 beyond 1 and the spread
    ([70.0, 76.0, 82.0], [76.2, 76.4, 76.9], 1.0, report.NOT_SEPARABLE),     # spread 6 > tolerance
    ([76.0], [76.2], 1.0, report.NOT_SEPARABLE),                             # one seed
])
def test_equality_verdict(a, b, tolerance, expected):
    assert report.equality_verdict(report.difference(a, b), tolerance) == expected


def test_paired_difference_is_the_spread_of_the_pairs():
    a, b = [46.75, 41.80, 48.0], [46.75, 42.00, 47.9]  # seeds differ by 6 points, the pairs by 0.2 at most
    d = report.paired_difference(a, b)
    assert d.diff == pytest.approx(-0.1 / 3) and d.spread == pytest.approx(np.std([0.0, -0.2, 0.1], ddof=1))
    assert d.seeds == 3 and report.equality_verdict(d, 1.0) == report.REPRODUCED
    assert report.equality_verdict(report.difference(a, b), 1.0) == report.NOT_SEPARABLE  # unpaired: seed spread
    assert report.paired_difference([1.0], [0.5]).spread is None
    with pytest.raises(ValueError, match="one value per seed in both arms, got 2 and 3"):
        report.paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])


@pytest.mark.parametrize("a, b, tolerance, expected", [
    ([20.0, 21.0, 22.0], [22.0, 23.0, 24.0], 1.0, report.REPRODUCED),      # -2 ± 1.41: better, bound holds
    ([23.0, 23.5, 24.0], [23.0, 23.2, 23.4], 1.0, report.REPRODUCED),      # +0.3 ± 0.54: 0.84 <= 1
    ([23.5, 24.0, 24.5], [23.0, 23.2, 23.4], 1.0, report.NOT_SEPARABLE),   # +0.8 ± 0.54: within 1, not with spread
    ([40.0, 43.0, 46.0], [22.0, 23.0, 24.0], 1.0, report.NOT_REPRODUCED),  # +20 ± 3.2
    ([20.0, 30.0, 40.0], [22.0, 23.0, 24.0], 1.0, report.NOT_SEPARABLE),   # +7 ± 10
])
def test_bound_verdict(a, b, tolerance, expected):
    assert report.bound_verdict(report.difference(a, b), tolerance) == expected


def test_verdict_table():
    table = report.verdict_table([("LB sharper", "167×", "27×", report.REPRODUCED),
                                  ("gap", "+0.2", "+0.1 ± 0.3", report.NOT_SEPARABLE)]).splitlines()
    assert table[2] == "| LB sharper | 167× | 27× | **reproduced** |"
    assert table[3].endswith("| not separable at this size |")
    with pytest.raises(ValueError, match="verdict must be one of"):
        report.verdict_table([("c", "p", "o", "yes")])


def test_write_results_and_plots(tmp_path):
    common.make_strategy(common.Config())
    res = report.write_results(str(tmp_path), summary={"x": np.float32(1.5)}, runs=[{"seed": np.int64(0)}],
                               config=_quick(), paper={"x": 2.0}, markdown="| a |", study={"y": (1, 2)})
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == res and list(on_disk) == [*report.RESULTS_KEYS, "study"]
    assert on_disk["summary"]["x"] == 1.5 and on_disk["config"]["seeds"] == [0, 1] and on_disk["study"]["y"] == [1, 2]
    assert on_disk["paper"] == {"x": 2.0} and "TensorFlow" in on_disk["machine"]
    assert (tmp_path / "results.md").read_text() == "| a |\n"
    report.plot_curves(str(tmp_path / "c.png"), {"a": ([0, 1], [1, 2])}, xlabel="x", ylabel="y",
                       right={"b": ([0, 1], [50, 60], {"ls": "--"})}, right_ylabel="acc")
    report.plot_bars(str(tmp_path / "b.png"), {"g": {"s": (1.0, 0.1), "t": 2.0}}, ylabel="y", logy=True)
    report.plot_histograms(str(tmp_path / "h.png"), {"a": ([1, 2], [0.0, 0.5, 1.0])}, xlabel="g")
    for name in ("c.png", "b.png", "h.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
