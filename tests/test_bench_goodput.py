"""bench/goodput.py cannot rot: its target detection, summary and table on known numbers, its arms'
configuration, and one tiny timed run."""

import importlib.util
import pathlib

import pytest

from bstf import analysis

_PATH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "goodput.py"
_spec = importlib.util.spec_from_file_location("bench_goodput", _PATH)
goodput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(goodput)

E = goodput.Evaluation


def _result(arm, seed, seconds, final, examples=1000, updates=10, batches=None):
    """A run that first reached 0.9 (and 0.5 at a tenth of the cost) after ``seconds`` (None: never 0.9)."""
    batches = batches or arm.split()[-1]
    evaluations = [E(0.1, examples // 10, max(1, updates // 10), 0.5)]
    if seconds is not None:
        evaluations.append(E(seconds, examples, updates, 0.9))
    return goodput.Result("t", arm, seed, tuple(evaluations), final, 99.0, batches)


def test_first_crossing_is_the_first_evaluation_at_or_above_the_target():
    evals = [E(1.0, 100, 1, 0.50), E(2.0, 200, 2, 0.70), E(3.0, 300, 3, 0.69), E(4.0, 400, 4, 0.80)]
    assert goodput.first_crossing(evals, 0.70) == evals[1]  # equal counts as reached
    assert goodput.first_crossing(evals, 0.75) == evals[3]
    assert goodput.first_crossing(evals, 0.81) is None
    assert goodput.first_crossing([], 0.1) is None


def test_summary_table_and_headline_on_known_numbers():
    results = [
        _result("fixed 64", 0, 10.0, 0.80), _result("fixed 64", 1, 12.0, 0.82),
        _result("fixed 256", 0, 6.0, 0.78, examples=3000, updates=12),
        _result("fixed 256", 1, 8.0, 0.80, examples=5000, updates=20),
        _result("fixed 1024", 0, 2.0, 0.70), _result("fixed 1024", 1, None, 0.60),  # fast, but one seed misses
        _result("goodput", 1, 5.0, 0.80, batches="64→512"), _result("goodput", 0, 6.0, 0.78, batches="64→256"),
    ]
    rows = {r.arm: r for r in goodput.summarise(results, 0.9)}
    assert list(rows) == ["fixed 64", "fixed 256", "fixed 1024", "goodput"]
    g = rows["goodput"]
    assert (g.runs, g.reached, g.batches) == (2, 2, "64→256")  # batches of seed 0
    assert g.seconds == pytest.approx((5.5, 0.5**0.5))
    assert rows["fixed 256"].examples == pytest.approx((4000.0, 2_000_000**0.5))
    assert rows["fixed 256"].updates == pytest.approx((16.0, 32**0.5))
    assert rows["fixed 1024"].reached == 1 and rows["fixed 1024"].seconds == (2.0, 0.0)
    assert rows["fixed 1024"].final_accuracy == pytest.approx((0.65, 0.05 * 2**0.5))

    best = goodput.best_fixed(list(rows.values()))
    assert best.arm == "fixed 256"  # 1024 is faster but missed in one seed
    text = goodput.table(list(rows.values()))
    assert "| **fixed 256** (best fixed) | 256 | 2/2 | 7.0 ± 1.4 | 1.00 |" in text
    assert "| goodput | 64→256 | 2/2 | 5.5 ± 0.7 | 0.79 | 1,000 ± 0 | 10 ± 0 | 79.00 ± 1.41 |" in text
    assert "| fixed 1024 | 1024 | 1/2 | 2.0 ± 0.0 | 0.29 |" in text
    line = goodput.headline(list(rows.values()))
    assert line.startswith("goodput / fixed 256 (best fixed): 0.79× wall clock to target (2/2 seeds reached)")
    assert "final accuracy +0.00 pp, within the seeds' spread" in line and line.endswith("Aim ≤ 0.80× at equal accuracy: met.")

    early = {r.arm: r for r in goodput.summarise(results, 0.5)}  # every run reached 0.5 at a tenth
    assert early["fixed 1024"].reached == 2 and early["goodput"].seconds == (0.1, 0.0)
    assert goodput.best_fixed(list(early.values())).arm == "fixed 64"  # ties: the first
    slow = [r for r in results if r.arm != "goodput"] + [_result("goodput", 0, 7.0, 0.79)]
    assert "1.00× wall clock" in goodput.headline(goodput.summarise(slow, 0.9)) and "not met" in goodput.headline(
        goodput.summarise(slow, 0.9))
    assert goodput.headline(goodput.summarise(results[:4] + results[6:7], 0.9), arm="plan") == (
        "plan vs best fixed: no ratio (no plan arm ran).")


def test_batch_path_and_rotation():
    phases = [{"batch_size": b} for b in (64, 64, 128, 512, 512, 1024, 2048, 4096, 8192)]
    assert goodput.batch_path(phases) == "64→128→512→1024→2048→4096→…"
    assert goodput.batch_path(phases[:3]) == "64→128"
    arms = goodput.arms_of(goodput.TASKS["mlp"])
    assert [a.name for a in arms] == ["fixed 32", "fixed 64", "fixed 128", "fixed 256", "fixed 512", "fixed 1024",
                                      "plan", "adaptive", "goodput"]
    assert goodput.rotated(arms, 0) == arms
    assert goodput.rotated(arms, 2)[:2] == arms[2:4] and sorted(map(str, goodput.rotated(arms, 2))) == sorted(
        map(str, arms))


def test_every_arm_configures_for_both_tasks_and_quick():
    for task in [*goodput.TASKS.values(), *map(goodput.quick, goodput.TASKS.values())]:
        for arm in goodput.arms_of(task):
            plan, extra = goodput.configure(task, arm, 8000 if task.num_samples > 1000 else 800)
            if arm.kind == "fixed":
                assert plan.batch == arm.batch and extra == {}
                assert plan.at(0.0).learning_rate == pytest.approx(task.base_lr * arm.batch / task.base_batch)
            elif arm.kind == "plan":
                assert plan.mode == "increase_batch" and plan.batch == task.plan[0]
            elif arm.kind == "adaptive":
                assert isinstance(extra["adaptive"], analysis.AdaptiveBatch)
                assert extra["max_physical_batch"] == task.adaptive_physical_batch
            else:
                c = extra["adaptive"]
                assert isinstance(c, analysis.GoodputBatch) and c.lr_rule == "adascale"
                assert c.throughput.max_physical_batch == extra["max_physical_batch"] == task.max_physical_batch
    with pytest.raises(ValueError, match="arm kind must be one of"):
        goodput.configure(goodput.TASKS["mlp"], goodput.Arm("other"), 8000)


def test_a_tiny_fixed_run_is_timed_and_evaluated():
    task = goodput.dataclasses.replace(goodput.quick(goodput.TASKS["mlp"]), num_samples=200, epochs=1,
                                       targets=(0.0,), eval_every=0.5)
    data = goodput.load(task)
    result = goodput.run(task, goodput.Arm("fixed", 32), 0, data)
    assert result.arm == "fixed 32" and result.batches == "32"
    first = result.crossing(0.0)  # target 0: the first evaluation
    assert first == result.evaluations[0] and len(result.evaluations) == 2  # at 0.5 and 1 epoch
    assert first.examples == 96 and first.updates == 3  # the first clock reading >= 80 examples
    assert [e.examples for e in result.evaluations] == [96, 160]
    assert 0 < first.seconds < result.evaluations[1].seconds <= result.seconds
    assert 0.0 <= result.final_accuracy <= 1.0
