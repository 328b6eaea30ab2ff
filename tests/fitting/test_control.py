"""bstf.fitting.control: the controller's in-graph LR and k, its timing windows and decisions."""

import pytest
import tensorflow as tf

import bstf
from bstf.analysis import AdaptiveBatch, GoodputBatch, ThroughputModel, adascale_gain
from bstf.analysis.noise_scale import estimate_grad_norm_sq, estimate_trace_sigma
from bstf.fitting import control


def _goodput(**kw):
    args = dict(min_batch=64, max_batch=1024, every_n_updates=4, lr_rule="adascale", base_lr=0.1, base_batch=32,
                granularity=32, throughput=ThroughputModel(256, physical_batches=[32, 64, 128, 256]))
    return GoodputBatch(**{**args, **kw})


def _control(controller, window=2, max_physical_batch=256):
    clock = bstf.Clock(1000)
    return control.Control(controller, tf.distribute.get_strategy(), clock, max_physical_batch, window), clock


def _norms(b_simple, b_small=32, b_big=64):
    """|g_b|², |G_B|² of a gradient with |G|² = 1 and tr Σ = b_simple (their expectations)."""
    return (1.0 + b_simple / b_small, 1.0 + b_simple / b_big, b_small, b_big)


def test_start_holds_the_initial_realisation_and_lr():
    c = _goodput()
    ctl, _ = _control(c)
    ctl.start()
    assert ctl.current == control.Realisation(64, 32, 2) == control.realisation(c, 256)
    assert int(ctl.steps()) == 2 and float(ctl.learning_rate()) == pytest.approx(0.1)


def test_timings_are_observed_per_window_of_one_realisation_the_first_dropped():
    c = _goodput()
    ctl, _ = _control(c, window=3)
    ctl.start()
    assert [ctl.timed(0.5) for _ in range(3)] == [None, None, 1.5]  # the window's sum
    assert c.throughput.tried == []  # the first timing after a start is dropped (it holds the trace)
    assert [ctl.timed(0.25) for _ in range(3)] == [None, None, 0.75]
    assert c.throughput.tried == [32] and c.throughput.predict(32, 2) == pytest.approx(0.25)
    adaptive, _ = _control(AdaptiveBatch(64, 256, base_lr=0.1, base_batch=32, granularity=32), window=1,
                           max_physical_batch=32)
    adaptive.start()
    assert adaptive.timed(1.0) is None  # AdaptiveBatch ignores the hardware


def test_decide_feeds_the_two_batch_estimates_and_follows_every_measurement():
    c, twin = _goodput(), _goodput()
    ctl, _ = _control(c, window=1)
    ctl.start()
    twin.reset()
    for _ in range(2):  # timings: dropped, then 10 ms per update
        ctl.timed(0.01)
    twin.observe(0.01), twin.observe(0.01)
    changed = [ctl.decide(_norms(300.0), None, u) for u in (1, 2, 3)]
    g_small, g_big, b, B = _norms(300.0)
    for u in (1, 2, 3):
        twin.update(estimate_grad_norm_sq(g_small, g_big, b, B), estimate_trace_sigma(g_small, g_big, b, B), u)
    assert changed == [False, False, False] and c.get_state() == twin.get_state()
    # the LR follows the statistics at every measurement (AdaScale), not only at changes
    assert float(ctl.learning_rate()) == pytest.approx(0.1 * adascale_gain(1.0, 300.0, 64, 32), rel=1e-6)
    assert ctl.decide(_norms(300.0), None, 4) is True  # the first decision: a probe of another realisation
    assert ctl.current == control.realisation(c, 256) != (64, 32, 2)
    assert int(ctl.steps()) == c.accumulation
    assert ctl.decide((float("nan"), 1.0, 32, 64), None, 5) is False and c.last_updates == 4  # skipped update


def test_adaptive_batch_follows_the_smoothed_noise_scale_and_scalars():
    c = AdaptiveBatch(64, 512, every_n_updates=1, lr_rule="adascale", base_lr=0.1, base_batch=32, granularity=32)
    ctl, _ = _control(c, max_physical_batch=32)
    ctl.start()
    assert ctl.decide(None, 200.0, 1) is True and ctl.current == (192, 32, 6) and int(ctl.steps()) == 6
    assert ctl.decide(None, float("inf"), 2) is False  # not finite: ignored
    assert float(ctl.learning_rate()) == pytest.approx(0.1 * adascale_gain(1.0, 200.0, 192, 32), rel=1e-6)
    assert ctl.decision() is None
    assert ctl.progress_at(5) == pytest.approx(c.progress + c.gain * 32 * (5 - 1))  # since its last measurement (update 1)


def _decided_goodput():
    """A goodput controller and its Control after two timings and four measurements (one decision, at update 4)."""
    c = _goodput()
    ctl, _ = _control(c, window=1)
    ctl.start()
    ctl.timed(0.02), ctl.timed(0.02)
    for u in range(1, 5):
        ctl.decide(_norms(100.0), None, u)
    return c, ctl


def test_goodput_decision_scalars():
    c, ctl = _decided_goodput()
    scalars = ctl.decision()
    assert scalars["batch"] == c.batch and scalars["goodput"] == pytest.approx(c.decision.goodput)
    assert ctl.progress_at(6) == pytest.approx(c.progress_at(6))
    ctl.decide(_norms(100.0), None, 5)
    assert ctl.decision() is None  # not due


def test_restart_from_state_holds_its_realisation():
    c, ctl = _decided_goodput()
    state = ctl.state()
    other = _goodput()
    ctl2, _ = _control(other, window=1)
    ctl2.start(state)
    assert other.get_state() == state and ctl2.current == ctl.current and int(ctl2.steps()) == c.accumulation
    assert float(ctl2.learning_rate()) == pytest.approx(float(ctl.learning_rate()))


def test_mean_over_workers_is_the_value_on_one_worker():
    assert control.mean_over_workers(tf.distribute.get_strategy(), 0.25) == 0.25
