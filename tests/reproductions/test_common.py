"""Tests for reproductions/common.py: config from flags, data helpers, aggregation, tables, files, TensorBoard."""

import dataclasses
import json

import numpy as np
import pytest
from absl import flags
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from reproductions import common


@dataclasses.dataclass(frozen=True)
class _Cfg(common.Config):
    width: int = 8
    sizes: tuple = (1, 2)


def _quick():
    return _Cfg(preset="quick", dataset="mnist1d", dataset_kwargs={"num_samples": 1000}, seeds=(0, 1), epochs=3)


def _paper():
    return _Cfg(preset="paper", dataset="tfds:mnist", seeds=(0, 1, 2, 3, 4), epochs=100)


@pytest.fixture
def parse():
    fv = flags.FlagValues()
    for name in ("width",):
        flags.DEFINE_integer(name, None, "test flag", flag_values=fv)
    flags.DEFINE_list("sizes", None, "test flag", flag_values=fv)
    # the shared flags, re-declared on a private FlagValues so the global FLAGS stay untouched
    for name in ("preset", "workdir", "strategy", "tpu", "num_cpu_devices", "dataset", "data_dir", "seeds",
                 "epochs", "train_examples", "test_examples"):
        fv[name] = common.FLAGS[name]  # same Flag object; parsing below sets it, cleanup unparses
    yield lambda *argv: (fv(["prog", *argv]), fv)[1]
    fv.unparse_flags()


def test_config_from_flags_applies_only_given_flags(parse):
    fv = parse("--seeds=3", "--width=5", "--sizes=4,8", "--epochs=7")
    c = common.config_from_flags({"quick": _quick, "paper": _paper},
                                 converters={"sizes": lambda v: tuple(int(x) for x in v)}, flag_values=fv,
                                 argv=["reproductions/x.py", "--seeds=3", "--dataset=npz:/my data.npz"])
    assert c.seeds == (0, 1, 2) and c.width == 5 and c.sizes == (4, 8) and c.epochs == 7
    assert c.command == "python reproductions/x.py --seeds=3 '--dataset=npz:/my data.npz'"
    assert c.dataset == "mnist1d" and c.dataset_kwargs == {"num_samples": 1000}  # untouched preset fields
    assert c.preset == "quick"


def test_config_from_flags_paper_preset_and_dataset_override(parse):
    fv = parse("--preset=paper", "--dataset=idx:/data/fashion")
    c = common.config_from_flags({"quick": _quick, "paper": _paper}, flag_values=fv)
    assert c.preset == "paper" and c.seeds == (0, 1, 2, 3, 4) and c.epochs == 100
    assert c.dataset == "idx:/data/fashion" and c.dataset_kwargs == {}
    assert common.workdir_from_flags("keskar", fv) == "/tmp/keskar"


@pytest.mark.parametrize("kwargs, match", [
    ({"preset": "fast"}, "preset must be one of"),
    ({"strategy": "gpu"}, "strategy must be one of"),
    ({"seeds": ()}, "seeds must be a non-empty tuple"),
    ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
    ({"train_examples": -5}, "train_examples must be an integer >= 1, got -5"),
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


def test_aggregate_mean_and_sample_std():
    runs = [{"acc": 0.9, "curve": [1.0, 2.0], "name": "a"}, {"acc": 0.7, "curve": [3.0, 6.0], "name": "a"}]
    means, stds = common.aggregate(runs)
    assert means["acc"] == pytest.approx(0.8) and stds["acc"] == pytest.approx(np.sqrt(0.02))
    assert means["curve"] == pytest.approx([2.0, 4.0]) and stds["curve"] == pytest.approx([np.sqrt(2), np.sqrt(8)])
    assert means["name"] == "a"
    assert common.mean_std([5.0]) == (5.0, 0.0)
    means, stds = common.aggregate([{"updates": 125, "epochs": 3}, {"updates": 125, "epochs": 4}])
    assert means == {"updates": 125, "epochs": 3.5} and isinstance(means["updates"], int)


def test_tables():
    assert common.pm(0.98031, 0.0007, digits=2, scale=100) == "98.03 ± 0.07"
    assert common.pm([1.0, 3.0], digits=1) == "2.0 ± 1.4"
    assert common.pm([97.123]) == "97.12"  # one seed: no spread to show
    table = common.comparison_table([("test acc (%)", [97.0, 99.0], 98.03), ("φ", 3.5, None, "note")])
    lines = table.splitlines()
    assert lines[0] == "| quantity | ours | paper | note |"
    assert lines[2] == "| test acc (%) | 98.00 ± 1.41 | 98.03 |  |"
    assert lines[3] == "| φ | 3.50 | — | note |"
    with pytest.raises(ValueError, match="has 1 cells"):
        common.markdown_table(["a", "b"], [[1]])


def test_write_results_plots_and_tensorboard(tmp_path):
    common.make_strategy(common.Config())
    res = common.write_results(str(tmp_path), summary={"x": np.float32(1.5)}, runs=[{"seed": np.int64(0)}],
                               config=_quick(), markdown="| a |")
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == res and on_disk["summary"]["x"] == 1.5 and on_disk["config"]["seeds"] == [0, 1]
    assert (tmp_path / "results.md").read_text() == "| a |\n"
    png = common.plot_curves(str(tmp_path / "c.png"), {"a": ([0, 1], [1, 2])}, xlabel="x", ylabel="y",
                             right={"b": ([0, 1], [50, 60], {"ls": "--"})}, right_ylabel="acc")
    common.plot_bars(str(tmp_path / "b.png"), {"g": {"s": (1.0, 0.1), "t": 2.0}}, ylabel="y", logy=True)
    common.plot_histograms(str(tmp_path / "h.png"), {"a": ([1, 2], [0.0, 0.5, 1.0])}, xlabel="g")
    for name in ("c.png", "b.png", "h.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    with common.Board(str(tmp_path / "tb")) as board:
        board.history({"loss": [3.0, 2.0, 1.0]})
        board.hparams({"batch": 32, "shape": (1, 2)}, {"final/acc": 0.5})
        board.images([png])
    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    ea.Reload()
    tags = ea.Tags()["tensors"]
    assert {"loss", "final/acc", "c", "_hparams_/session_start_info"} <= set(tags)
    assert [float(np.asarray(_value(e))) for e in ea.Tensors("loss")] == [3.0, 2.0, 1.0]
    assert [e.step for e in ea.Tensors("loss")] == [1, 2, 3]


def _value(event):
    from tensorboard.util import tensor_util

    return tensor_util.make_ndarray(event.tensor_proto)
