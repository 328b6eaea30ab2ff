import json
import math

import keras
import numpy as np
import pytest

from bstf import Clock
from bstf.analysis import (AdaptiveBatch, AdaScaleProgress, ControlledLearningRate, GoodputBatch,
                           GradientStatistics, NoiseScaleAverager, ThroughputModel, adascale_gain,
                           statistical_efficiency)
from bstf.finder import BatchMeasurement, BatchSizeReport

# A synthetic machine: t(b, k) = k·(ALPHA + BETA·b) + SYNC seconds per update.
ALPHA, BETA, SYNC = 0.02, 2e-4, 0.05
PHYSICAL = [8, 16, 32, 64]


def _line(b):
    return ALPHA + BETA * b


# ============================================================================ formulas
def _reference_gain(g2, tr, batch, base):
    """AdaScale (Johnson et al. 2020): r = (σ² + μ²)/(σ²/S + μ²), σ² the variance of a base-batch gradient."""
    sigma2 = tr / base
    scale = batch / base
    return (sigma2 + g2) / (sigma2 / scale + g2)


@pytest.mark.parametrize("g2,tr,batch,base", [
    (1.0, 100.0, 256, 32), (0.3, 5.0, 64, 64), (2.0, 1e4, 4096, 128), (1e-3, 0.5, 48, 16), (4.0, 10.0, 8, 32)])
def test_gain_and_efficiency_against_numpy_reference(g2, tr, batch, base):
    r = _reference_gain(g2, tr, batch, base)
    assert adascale_gain(g2, tr, batch, base) == pytest.approx(r, rel=1e-12)
    # Pollux: efficiency = r / S = (B_simple + B₀) / (B_simple + B).
    phi = tr / g2
    assert statistical_efficiency(g2, tr, batch, base) == pytest.approx((phi + base) / (phi + batch), rel=1e-12)
    assert statistical_efficiency(g2, tr, batch, base) == pytest.approx(r * base / batch, rel=1e-12)


def test_gain_is_the_ratio_of_expected_squared_gradient_norms():
    # Per-example gradients g ~ N(G, Σ): the gain is E|g_B0|² / E|g_B|² with tr Σ per example (bstf's convention).
    rng = np.random.default_rng(0)
    mean, scales = np.array([0.3, -0.2, 0.1, 0.25]), np.array([1.0, 2.0, 0.5, 1.5])
    g2, tr = float(mean @ mean), float(np.sum(scales**2))
    base, batch = 4, 32

    def mean_sq_norm(b, n=20_000):
        g = (mean + scales * rng.standard_normal((n, b, 4))).mean(axis=1)
        return float(np.mean(np.sum(g**2, axis=1)))

    assert adascale_gain(g2, tr, batch, base) == pytest.approx(mean_sq_norm(base) / mean_sq_norm(batch), rel=0.03)


def test_gain_limits_and_broadcasting():
    assert adascale_gain(1.0, 50.0, 32, 32) == 1.0 and statistical_efficiency(1.0, 50.0, 32, 32) == 1.0
    assert adascale_gain(1.0, 0.0, 512, 32) == 1.0  # no noise: no gain (σ² → 0)
    assert adascale_gain(0.0, 3.0, 512, 32) == pytest.approx(16.0)  # no signal: r = S
    assert adascale_gain(-0.5, 3.0, 512, 32) == pytest.approx(16.0)  # a negative |G|² estimate counts as 0
    assert adascale_gain(1.0, math.inf, 512, 32) == pytest.approx(16.0)
    assert adascale_gain(1.0, -2.0, 512, 32) == 1.0
    assert adascale_gain(0.0, 0.0, 512, 32) == 1.0
    batches = np.array([32, 64, 128, 256])
    np.testing.assert_allclose(adascale_gain(1.0, 64.0, batches, 32), _reference_gain(1.0, 64.0, batches, 32))
    # 1 <= r <= S for S >= 1, increasing in B
    r = adascale_gain(1.0, 64.0, batches, 32)
    assert np.all(np.diff(r) > 0) and np.all(r >= 1) and np.all(r <= batches / 32)


def test_formulas_reject_bad_input():
    with pytest.raises(ValueError, match="grad_norm_sq must be a real number \\(not NaN\\)"):
        adascale_gain(float("nan"), 1.0, 64, 32)
    with pytest.raises(ValueError, match="batch must be finite and > 0, got 0"):
        adascale_gain(1.0, 1.0, 0, 32)
    with pytest.raises(ValueError, match="base_batch must be finite and > 0"):
        statistical_efficiency(1.0, 1.0, 64, -1)


# ============================================================================ statistics
def test_statistics_means_match_the_averager_and_standard_errors_the_weights():
    rng = np.random.default_rng(1)
    g2, tr = 1.0 + rng.standard_normal(30), 40.0 + 10 * rng.standard_normal(30)
    for ema in (None, 0.9):
        stats, averager = GradientStatistics(ema), NoiseScaleAverager(ema)
        for a, b in zip(g2, tr):
            stats.update(a, b)
            averager.update(a, b)
        assert stats.grad_norm_sq == pytest.approx(averager.grad_norm_sq, rel=1e-12)
        assert stats.trace_sigma == pytest.approx(averager.trace_sigma, rel=1e-12)
        assert stats.b_simple == pytest.approx(averager.b_simple, rel=1e-12)
        w = np.ones(30) if ema is None else (1 - ema) * ema ** np.arange(29, -1, -1)
        for x, se in zip((g2, tr), stats.standard_errors()):
            m = np.sum(w * x) / np.sum(w)
            s2 = np.sum(w * (x - m) ** 2) / (np.sum(w) - np.sum(w**2) / np.sum(w))
            assert se == pytest.approx(math.sqrt(s2 * np.sum(w**2)) / np.sum(w), rel=1e-9)
    plain = GradientStatistics(None)
    for a, b in zip(g2, tr):
        plain.update(a, b)
    assert plain.standard_errors()[0] == pytest.approx(np.std(g2, ddof=1) / math.sqrt(30), rel=1e-9)


def test_noise_scale_interval():
    stats = GradientStatistics(None)
    assert stats.b_simple_interval() == (0.0, math.inf) and stats.b_simple == 0.0
    stats.update(1.0, 10.0)
    assert stats.standard_errors() == (math.inf, math.inf) and stats.b_simple_interval() == (0.0, math.inf)
    stats.update(3.0, 30.0)  # means 2 and 20, standard errors 1 and 10
    assert stats.standard_errors() == pytest.approx((1.0, 10.0))
    assert stats.b_simple == 10.0
    assert stats.b_simple_interval(1.0) == pytest.approx((10 / 3, 30.0))
    assert stats.b_simple_interval(0.0) == pytest.approx((10.0, 10.0))
    assert stats.b_simple_interval(2.0) == (0.0, math.inf)  # |G|² may be 0 and tr Σ may be 0
    with pytest.raises(ValueError, match="grad_norm_sq must be a finite number, got nan"):
        stats.update(float("nan"), 1.0)
    with pytest.raises(ValueError, match=r"ema must be in \(0.0, 1.0\), got 0.0"):
        GradientStatistics(0.0)
    restored = GradientStatistics(None)
    restored.set_state(json.loads(json.dumps(stats.get_state())))
    assert restored.b_simple_interval() == stats.b_simple_interval()


def test_adascale_progress():
    p = AdaScaleProgress(32)
    assert p.advance(10, 1.0) == 320.0
    assert p.at(20, 2.5) == 320.0 + 10 * 2.5 * 32
    assert p.advance(20, 2.5) == 1120.0
    with pytest.raises(ValueError, match="updates must not decrease: got 5 after 20"):
        p.advance(5, 1.0)


# ============================================================================ throughput
def test_throughput_model_recovers_alpha_beta_sync_from_noisy_samples():
    alpha, beta, sync = 0.01, 1e-3, 0.03
    rng = np.random.default_rng(0)
    model = ThroughputModel(64, physical_batches=PHYSICAL)
    for b in (8, 16, 32):
        for k in (1, 2, 4):
            for _ in range(12):
                t = (k * (alpha + beta * b) + sync) * math.exp(0.03 * rng.standard_normal())
                model.observe(b, k, t * (10.0 if rng.random() < 0.08 else 1.0))  # and a few 10x outliers
    fit = model.fit()
    assert (fit.alpha, fit.beta, fit.sync) == (pytest.approx(alpha, rel=0.05), pytest.approx(beta, rel=0.05),
                                              pytest.approx(sync, rel=0.05))
    assert model.tried == [8, 16, 32] and model.untried == [64]
    # the untried physical batch is predicted from the line through the tried ones
    assert model.predict(64, 3) == pytest.approx(3 * (alpha + beta * 64) + sync, rel=0.03)
    assert model.throughput(64, 3) == pytest.approx(192 / (3 * (alpha + beta * 64) + sync), rel=0.03)


def test_throughput_model_with_few_timings():
    model = ThroughputModel(64)
    assert model.physical_batches == [1, 2, 4, 8, 16, 32, 64] and model.fit() is None
    with pytest.raises(ValueError, match="the throughput model has no timing yet"):
        model.predict(32, 2)
    model.observe(32, 2, 0.6, updates=5)  # 0.12 s per update at k = 2
    fit = model.fit()  # one k: sync taken as one micro-batch, 0.12 / 3
    assert (fit.sync, fit.micro[32]) == (pytest.approx(0.04), pytest.approx(0.04))
    # one physical batch: Pollux's split, half constant, half proportional to b
    assert (fit.alpha, fit.beta) == (pytest.approx(0.02), pytest.approx(0.02 / 32))
    assert model.predict(64, 2) == pytest.approx(2 * 0.06 + 0.04)
    model.observe(32, 2, 0.1)
    model.observe(32, 2, 0.1)  # the median is 0.1
    model.observe(32, 4, 0.18)  # a second k identifies sync: 2m + s = 0.1, 4m + s = 0.18
    assert (model.fit().micro[32], model.fit().sync) == (pytest.approx(0.04), pytest.approx(0.02))
    model.observe(32, 4, 0.14)
    model.observe(32, 4, 0.14)  # the median is 0.14: m = 0.02, s = 0.06
    assert (model.fit().micro[32], model.fit().sync) == (pytest.approx(0.02), pytest.approx(0.06))


def test_throughput_model_replicas_window_and_state():
    model = ThroughputModel(96, replicas=2, window=3)
    assert model.physical_batches == [2, 4, 8, 16, 32, 64, 96]
    for t in (9.0, 1.0, 1.0, 1.0):
        model.observe(64, 2, t)
    assert model.get_state()["cells"] == [[64, 2, [1.0, 1.0, 1.0]]]  # only the last 3 kept
    model.observe(32, 2, 0.6)
    fit = model.fit()  # sync 0.6 / 3; micro 0.4 at b=64 (32 per replica), 0.2 at b=32 (16 per replica)
    assert (fit.sync, fit.alpha, fit.beta) == (pytest.approx(0.2), pytest.approx(0.0, abs=1e-12), pytest.approx(0.2 / 16))
    restored = ThroughputModel.from_config(json.loads(json.dumps(model.get_config())))
    restored.set_state(json.loads(json.dumps(model.get_state())))
    assert restored.fit() == fit
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert again.get_config() == model.get_config()


def test_throughput_model_seeded_from_the_finder():
    report = BatchSizeReport(
        measurements=[BatchMeasurement(16, 16 / 0.04, 0.04), BatchMeasurement(32, 32 / 0.05, 0.05),
                      BatchMeasurement(64, status="oom")],
        noise_scale=100.0, recommended_batch=32, learning_rate=0.1, lr_rule="linear", base_lr=0.1,
        base_batch=32, train_size=1000, stop_reason="out of memory")
    model = ThroughputModel(128).seed(report)
    assert model.memory_limit == 64 and model.available == [1, 2, 4, 8, 16, 32]
    assert model.measured(16) and model.measured(32) and not model.measured(8)
    assert model.tried == [] and model.predict(32, 1) == pytest.approx(0.05)
    model.observe(32, 1, 0.08)  # this run's timing supersedes the finder's for that batch
    assert model.predict(32, 1) == pytest.approx(0.08) and model.predict(16, 1) == pytest.approx(0.04)
    model.reset()  # a new run: its timings go, the seeds stay
    assert model.predict(32, 1) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="the finder ran out of memory at batch 8"):
        ThroughputModel(128, physical_batches=[8, 16]).seed(
            BatchSizeReport([BatchMeasurement(8, status="oom")], 1.0, 8, 0.1, "linear", 0.1, 8, 100, "oom"))


@pytest.mark.parametrize("kw,match", [
    (dict(max_physical_batch=33, replicas=2), r"max_physical_batch must be a multiple of replicas \(2\), got 33"),
    (dict(max_physical_batch=64, physical_batches=[3, 8], replicas=2),
     r"physical_batches must be a non-empty list of multiples of replicas \(2\) in \[2, 64\], got \[3, 8\]"),
    (dict(max_physical_batch=64, physical_batches=[128]), r"physical_batches must be .* in \[1, 64\], got \[128\]"),
    (dict(max_physical_batch=0), "max_physical_batch must be an integer >= 1, got 0"),
    (dict(max_physical_batch=64, window=0), "window must be an integer >= 1, got 0"),
])
def test_throughput_model_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        ThroughputModel(**kw)


def test_throughput_model_bad_observations():
    model = ThroughputModel(64, replicas=2)
    with pytest.raises(ValueError, match=r"physical_batch must be a multiple of replicas \(2\), got 7"):
        model.observe(7, 1, 0.1)
    with pytest.raises(ValueError, match=r"seconds must be in \(0.0, inf\), got 0.0"):
        model.observe(8, 1, 0.0)
    with pytest.raises(TypeError, match="report must be a bstf.find_batch_size result"):
        model.seed({"batch": 8})


# ============================================================================ the controller
def _controller(times=_line, **kw):
    args = dict(min_batch=32, max_batch=2048, every_n_updates=10, lr_rule="adascale", base_lr=0.1,
                base_batch=32, granularity=32, throughput=ThroughputModel(64, physical_batches=PHYSICAL))
    args.update(kw)
    c = GoodputBatch(**args)
    for b in c.throughput.physical_batches:  # every physical batch timed, noise-free
        for k in (2, 4):
            c.throughput.observe(b, k, k * times(b) + SYNC)
    return c


def _expected_best(phi, times=_line, min_batch=32, max_batch=2048, granularity=32, base=32):
    """Independent argmax of goodput = (B / t) · (B_simple + B₀)/(B_simple + B) over every (B, b, k)."""
    best = None
    for batch in range(min_batch, max_batch + 1, granularity):
        for b in PHYSICAL:
            if batch % b or batch // b < 2:
                continue
            t = batch // b * times(b) + SYNC
            goodput = batch / t * (phi + base) / (phi + batch)
            if best is None or goodput > best[0] + 1e-12:
                best = (goodput, batch, b, batch // b)
    return best


def _feed(c, g2, tr, updates):
    out = None
    for u in updates:
        c.update(g2, tr, u)
        out = c.decision or out
    return out


@pytest.mark.parametrize("phi", [20.0, 100.0, 300.0, 1000.0, 5000.0])
def test_controller_picks_the_analytic_argmax(phi):
    c = _controller()
    assert (c.batch, c.physical_batch, c.accumulation) == (32, 16, 2)  # initial: the largest physical batch
    assert c.update(1.0, phi, 5) == (32, pytest.approx(0.1)) and c.decision is None  # not due yet
    decision = _feed(c, 1.0, phi, [10])
    goodput, batch, b, k = _expected_best(phi)
    assert (c.batch, c.physical_batch, c.accumulation) == (batch, b, k)
    assert decision.changed and not decision.probe and decision.updates == 10
    assert decision.goodput == pytest.approx(goodput, rel=1e-9)
    assert decision.efficiency == pytest.approx((phi + 32) / (phi + batch), rel=1e-9)
    assert decision.throughput == pytest.approx(batch / (k * _line(b) + SYNC), rel=1e-9)
    assert decision.gain == pytest.approx(_reference_gain(1.0, phi, batch, 32))
    assert c.learning_rate == pytest.approx(0.1 * decision.gain) == decision.learning_rate
    assert c.changes == [(10, batch, b, k, pytest.approx(decision.learning_rate))]


def test_controller_realises_the_batch_at_the_throughput_peak():
    # Per-example time is lowest at b = 32 (a mid-range peak, as for a conv net): batches use 32 × k.
    peak = {8: 0.02, 16: 0.025, 32: 0.03, 64: 0.09}.get
    c = _controller(times=peak)
    _feed(c, 1.0, 1000.0, [5, 10])
    goodput, batch, b, k = _expected_best(1000.0, times=peak)
    assert b == 32 and (c.batch, c.physical_batch, c.accumulation) == (batch, b, k)


def test_hysteresis():
    ratio = _expected_best(100.0)[0] / (32 / (2 * _line(16) + SYNC) * 1.0)  # best vs the initial 32 = 16 × 2
    held = _controller(threshold=ratio - 1 + 0.01)
    assert not _feed(held, 1.0, 100.0, [5, 10]).changed and held.batch == 32
    moved = _controller(threshold=ratio - 1 - 0.01)
    assert _feed(moved, 1.0, 100.0, [5, 10]).changed and moved.batch == _expected_best(100.0)[1]


def test_uncertainty_guard_holds_on_noisy_statistics():
    # tr Σ measured as 3500, -1500, 3500, ...: mean 1000, as in the noise-free case, but its interval reaches 0
    noisy = [(1.0, 1000.0 + 2500.0 * (-1) ** i, 5 + i) for i in range(6)]
    guarded, trusting = _controller(ema=None), _controller(ema=None, confidence=0.0)
    for c in (guarded, trusting):
        for g2, tr, u in noisy:
            c.update(g2, tr, u)
    se = np.std([tr for _, tr, _ in noisy], ddof=1) / math.sqrt(6)
    assert guarded.decision.updates == 10 and guarded.decision.b_simple == pytest.approx(1000.0)
    assert (guarded.decision.b_simple_low, guarded.decision.b_simple_high) == (0.0, pytest.approx(1000.0 + se))
    assert not guarded.decision.changed and guarded.batch == 32
    assert trusting.decision.changed and trusting.batch == _expected_best(1000.0)[1]


def test_probes_untimed_physical_batches_next_to_the_fastest():
    # One global batch (256); nothing timed; per-example time is lowest at b = 32.
    peak = {8: 0.02, 16: 0.025, 32: 0.03, 64: 0.09}
    c = GoodputBatch(256, 256, 10, base_lr=0.1, base_batch=32, granularity=32,
                     throughput=ThroughputModel(64, physical_batches=PHYSICAL))
    assert (c.physical_batch, c.accumulation) == (64, 4)  # nothing timed: the largest physical batch
    seen = []
    for step in range(4):
        assert not c.observe(1.0)  # dropped: the first timing after a change includes the trace
        for _ in range(3):
            assert c.observe(c.accumulation * peak[c.physical_batch] + SYNC)
        c.update(1.0, 100.0, 10 * (step + 1))
        seen.append((c.batch, c.physical_batch, c.decision.probe))
    # 64 timed: probe its neighbour 32; 32 is faster: probe its other neighbour 16; 16 is slower: back to 32.
    assert seen == [(256, 32, True), (256, 16, True), (256, 32, False), (256, 32, False)]
    assert c.throughput.tried == [16, 32, 64] and c.throughput.untried == [8]
    assert [change[:4] for change in c.changes] == [(10, 256, 32, 8), (20, 256, 16, 16), (30, 256, 32, 8)]



def test_untimed_physical_batches_are_predicted_and_probed():
    report = BatchSizeReport([BatchMeasurement(32, 32 / 0.04, 0.04)], 100.0, 32, 0.1, "linear", 0.1, 32, 1000, "")
    for threshold in (0.05, 0.5):
        c = GoodputBatch(256, 256, 10, base_lr=0.1, base_batch=32, granularity=32, threshold=threshold,
                         throughput=ThroughputModel(64, physical_batches=PHYSICAL).seed(report))
        assert (c.physical_batch, c.accumulation) == (32, 8)  # the finder timed 32: the fastest known
        c.update(1.0, 100.0, 10)
        # One timing, 0.04 s at 32 × 1: sync 0.02, t_micro(b) = 0.01 + 0.01·b/32, so 64 × 4 (0.14 s) is predicted
        # 1.29x faster than 32 × 8 (0.18 s): taken at a 5 % threshold; at 50 % it is still the first probe (both
        # neighbours of 32 are untimed: the larger first).
        assert (c.physical_batch, c.accumulation, c.decision.probe) == (64, 4, True)
        assert c.decision.seconds_per_update == pytest.approx(0.14)


def test_state_round_trip_resumes_identical_decisions():
    rng = np.random.default_rng(3)
    stream = [(1.0 + 0.3 * rng.standard_normal(), 50.0 * (1 + i) * (1 + 0.3 * rng.standard_normal()),
               0.1 * rng.standard_normal()) for i in range(40)]  # a growing noise scale, noisy timings
    a = _controller()
    b = None
    records_a, records_b = [], []
    for i, (g2, tr, t) in enumerate(stream):
        if i == 10:  # checkpoint, then a new process restores it
            b = GoodputBatch.from_config(json.loads(json.dumps(a.get_config())))
            b.set_state(json.loads(json.dumps(a.get_state())))
            assert not b.observe(9.9)  # the restored process retraces: its first timing is dropped
        for c, records in ((a, records_a), (b, records_b)):
            if c is None:
                continue
            c.observe((c.accumulation * _line(c.physical_batch) + SYNC) * (1 + t))
            c.update(g2, tr, 5 * (i + 1))
            if c.decision is not None:
                records.append(c.decision)
    assert records_b == records_a[-len(records_b):] and any(r.changed for r in records_b)
    assert (b.batch, b.changes, b.progress) == (a.batch, a.changes, a.progress)


def test_identical_streams_identical_decisions():
    rng = np.random.default_rng(4)
    stream = [(1.0 + rng.standard_normal(), 500.0 * (1 + 0.5 * rng.standard_normal()), rng.random() * 0.1)
              for _ in range(60)]
    runs = []
    for _ in range(2):
        c, records = _controller(), []
        for i, (g2, tr, t) in enumerate(stream):
            c.observe(c.accumulation * _line(c.physical_batch) + SYNC + t)
            c.update(g2, tr, 5 * (i + 1))
            records.append(c.decision)
        runs.append((records, c.changes, c.progress, c.learning_rate))
    assert runs[0] == runs[1] and any(r is not None and r.changed for r in runs[0][0])


def test_progress_and_learning_rate_follow_the_gain():
    c = _controller(every_n_updates=1000)
    c.update(1.0, 64.0, 10)  # gain 1 (no statistics) for the first 10 updates
    r = _reference_gain(1.0, 64.0, 32, 32)
    assert (c.gain, c.progress) == (pytest.approx(r), pytest.approx(10 * 32))
    c2 = _controller(every_n_updates=1000, initial_batch=128, lr_rule="sqrt")
    c2.update(1.0, 64.0, 10)
    c2.update(1.0, 64.0, 30)
    r = _reference_gain(1.0, 64.0, 128, 32)
    assert c2.progress == pytest.approx(10 * 32 + 20 * r * 32) and c2.progress_at(40) == pytest.approx(
        c2.progress + 10 * r * 32)
    assert c2.learning_rate == pytest.approx(0.2) and c2.lr_factor == pytest.approx(2.0)


def test_controlled_learning_rate_reads_the_factor_in_graph():
    c = _controller(initial_batch=256)
    c.update(1.0, 100.0, 1)
    schedule = ControlledLearningRate(0.1).bind(Clock(1000))
    schedule.follow(c)
    assert float(schedule()) == pytest.approx(c.learning_rate, rel=1e-6)
    assert c.learning_rate == pytest.approx(0.1 * _reference_gain(1.0, 100.0, 256, 32))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert restored.numpy(0.0) == pytest.approx(c.learning_rate, rel=1e-6)


def test_config_round_trip():
    c = _controller(lr_rule="linear", threshold=0.1, confidence=2.0, ema=None, initial_batch=64)
    config = c.get_config()
    assert json.loads(json.dumps(config)) == config
    assert GoodputBatch.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(c))
    assert isinstance(restored, GoodputBatch) and restored.get_config() == config
    assert (restored.batch, restored.learning_rate) == (64, pytest.approx(0.2))


@pytest.mark.parametrize("kw,match", [
    (dict(min_batch=30), r"min_batch must be a multiple of granularity \(32\), got 30"),
    (dict(max_batch=16, min_batch=32), r"max_batch must be a multiple of granularity \(32\), got 16"),
    (dict(max_batch=32, min_batch=64), r"max_batch must be >= min_batch \(64\), got 32"),
    (dict(every_n_updates=0), "every_n_updates must be an integer >= 1, got 0"),
    (dict(lr_rule="cubic"), r"lr_rule must be one of \('adascale', 'linear', 'sqrt', 'none'\), got 'cubic'"),
    (dict(base_lr=0.0), r"base_lr must be in \(0.0, inf\), got 0.0"),
    (dict(initial_batch=4096), r"initial_batch must be a multiple of granularity \(32\) in \[32, 2048\] that a "
                               r"physical batch in \[8, 16, 32, 64\] divides with accumulation × replicas \(1\) "
                               r">= 2, got 4096"),
    (dict(threshold=-0.1), r"threshold must be in \[0.0, inf\), got -0.1"),
    (dict(confidence=float("inf")), r"confidence must be in \[0.0, inf\), got inf"),
    (dict(ema=1.0), r"ema must be in \(0.0, 1.0\), got 1.0"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        _controller(**kw)


def test_bad_arguments_types_and_feeding():
    with pytest.raises(TypeError, match="throughput must be a bstf.analysis.ThroughputModel, got dict"):
        _controller(throughput={"max_physical_batch": 64})
    # one physical batch of 64 cannot make 32 with two micro-batches
    with pytest.raises(ValueError, match=r"initial_batch must be .* physical batch in \[64\] divides .*got 32"):
        GoodputBatch(32, 256, base_lr=0.1, base_batch=32, granularity=32,
                     throughput=ThroughputModel(64, physical_batches=[64]))
    c = _controller()
    c.update(1.0, 10.0, 7)
    with pytest.raises(ValueError, match="updates must not decrease: got 3 after 7"):
        c.update(1.0, 10.0, 3)
    with pytest.raises(ValueError, match="trace_sigma must be a finite number, got inf"):
        c.update(1.0, math.inf, 8)


# ============================================================================ AdaptiveBatch's AdaScale rule
def test_adaptive_batch_adascale_rule():
    c = AdaptiveBatch(32, 512, multiplier=1.0, every_n_updates=1, lr_rule="adascale", base_lr=0.1, base_batch=32,
                      granularity=32)
    assert (c.gain, c.learning_rate) == (1.0, pytest.approx(0.1))  # no measurement yet
    batch, lr = c.update(100.0, 10)
    assert batch == 96 and lr == pytest.approx(0.1 * _reference_gain(1.0, 100.0, 96, 32))
    assert c.update(-5.0, 11) == (96, pytest.approx(lr))  # unusable measurement: gain and batch kept
    assert c.update(math.inf, 12) == (512, pytest.approx(0.1 * 512 / 32))  # no signal: r = S
    assert c.progress == pytest.approx(10 * 32 + 1 * 32 * lr / 0.1 + 1 * 32 * lr / 0.1)
    d = AdaptiveBatch.from_config(c.get_config())
    d.set_state(json.loads(json.dumps(c.get_state())))
    assert (d.batch, d.learning_rate, d.progress) == (c.batch, c.learning_rate, c.progress)
    old = {k: v for k, v in c.get_state().items() if k not in ("b_simple", "progress")}  # saved before adascale
    d.set_state(old)
    assert d.gain == 1.0 and d.progress == 0.0
