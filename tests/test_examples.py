"""The worked examples under docs/examples run (tiny versions) and show their effect."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_plans(tmp_path):
    results = _load("three_plans").run(str(tmp_path), epochs=3, num_samples=1000)
    assert set(results) == {"decay_lr", "increase_batch", "hybrid"}
    updates = {mode: u for mode, (_, u, _) in results.items()}
    assert updates["increase_batch"] < updates["hybrid"] < updates["decay_lr"]
    for mode in results:
        assert (tmp_path / mode / "train").is_dir() and (tmp_path / mode / "validation").is_dir()
