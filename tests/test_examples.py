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


def test_tuner_search_beats_the_default(tmp_path):
    # The configuration docs/tuner.md reports (about a minute on 2 CPUs).
    r = _load("tuner_search").run(str(tmp_path), max_trials=10, epochs=4)
    assert len(r["trials"]) == 10
    best_batch, best_lr, best_acc, _ = r["best"]
    default_batch, default_lr, default_acc, _ = r["default"]
    assert (default_batch, default_lr) == (32, 0.01)
    assert best_batch in (16, 32, 64, 128, 256, 512)
    # The searched LR is the one coupled to the batch (linear rule from 0.01 at 32) times a multiplier.
    assert any(abs(best_lr - 0.01 * best_batch / 32 * m) < 1e-9 for m in (1.0, 3.0, 10.0))
    # The search's own criterion: the best pair beats Keras's default pair (one of the trials) on the
    # validation split by a wide margin (53 % vs 46 % when measured); on the test split the retrained
    # best is at least as good (51.7 % vs 47.4 % standalone; the top two trials are within a point of
    # each other on validation, so which one wins can flip with thread scheduling).
    scores = {(b, m): s for b, m, _, s in r["trials"]}
    assert scores[(32, 1.0)] < max(scores.values()) - 0.03
    assert best_acc > default_acc - 0.01
