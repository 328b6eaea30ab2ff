import math

import keras
import numpy as np
import pytest

import bstf
from bstf import NoiseScalePlan

N = 50_000


def smith(mode="increase_batch", **kw):
    """Smith et al.'s WRN-16-4 CIFAR-10 recipe."""
    args = dict(train_size=N, base_lr=0.1, base_batch=128, base_momentum=0.9, milestones=(60, 120, 160),
                factor=5, mode=mode, max_batch=5120)
    args.update(kw)
    return NoiseScalePlan(**args)


def g(lr, batch, m):
    return lr * N / (batch * (1 - m))


@pytest.mark.parametrize(
    "mode, batches, lrs",
    [
        ("decay_lr", [128] * 4, [0.1, 0.02, 0.004, 0.0008]),
        # 3200·5 = 16000 > 5120: the batch stops at 5120 and the LR takes the remaining 16000/5120 = 3.125.
        ("increase_batch", [128, 640, 3200, 5120], [0.1, 0.1, 0.1, 0.1 / 3.125]),
        ("hybrid", [128, 128, 640, 3200], [0.1, 0.02, 0.02, 0.02]),
    ],
)
def test_smith_recipe(mode, batches, lrs):
    phases = smith(mode).phases(200)
    assert [p.batch_size for p in phases] == batches
    np.testing.assert_allclose([p.learning_rate for p in phases], lrs, rtol=1e-12)
    assert [(p.start_epoch, p.end_epoch) for p in phases] == [(0, 60), (60, 120), (120, 160), (160, 200)]


def _updates(phases_spec, n=N):
    """Independent count: an update starts while the clock is inside the phase and consumes one batch."""
    examples, counts = 0, []
    for start, end, batch in phases_spec:
        c = 0
        while examples < end * n:
            examples += batch
            c += 1
        counts.append(c)
    return counts


def test_update_counts_and_fewer_updates():
    spec = [(0, 60, 128), (60, 120, 640), (120, 160, 3200), (160, 200, 5120)]
    inc = smith("increase_batch")
    assert [p.updates for p in inc.phases(200)] == _updates(spec)
    dec = smith("decay_lr")
    assert dec.total_updates(200) == _updates([(0, 200, 128)])[0] == 78125
    assert dec.total_updates(200) / inc.total_updates(200) > 2.5
    # With the B ∝ ε rescaling (k = 5) increasing batch needs > 10x fewer updates than decaying the LR.
    assert dec.total_updates(200) / inc.scaled(5).total_updates(200) > 10


PLANS = {
    "decay_lr": smith("decay_lr"),
    "increase_batch": smith("increase_batch"),
    "hybrid": smith("hybrid"),
    "hybrid_2": smith("hybrid", hybrid_lr_milestones=2),
    "scaled_5": smith("increase_batch").scaled(5),
    "scaled_decay": smith("decay_lr").scaled(4),
    "momentum_0.98": smith("increase_batch").with_momentum(0.98),
    "momentum_decay": smith("decay_lr").with_momentum(0.95),
    "uncapped": smith("increase_batch", max_batch=None),
}


@pytest.mark.parametrize("name", PLANS)
def test_sgd_noise_invariant(name):
    """Outside warmup, every mode and rescaling has the decay-LR schedule's g at every epoch."""
    reference = [g(0.1, 128, 0.9) / 5**i for i in range(4)]  # by hand: g0 = 0.1·N/(128·0.1)
    for epoch in np.linspace(0, 199.9, 60):
        phase = sum(epoch >= m for m in (60, 120, 160))
        point = PLANS[name].at(float(epoch))
        assert g(point.learning_rate, point.batch_size, point.momentum) == pytest.approx(reference[phase], rel=1e-6)
        assert point.sgd_noise == pytest.approx(reference[phase], rel=1e-6)
        assert bstf.plan.sgd_noise(point.learning_rate, N, point.batch_size, point.momentum) == point.sgd_noise


def test_noise_scale_names_are_deprecated_aliases_of_sgd_noise():
    plan = smith()
    with pytest.warns(DeprecationWarning, match="use PlanPoint.sgd_noise"):
        assert plan.at(70).noise_scale == plan.at(70).sgd_noise
    with pytest.warns(DeprecationWarning, match=r"use NoiseScalePlan.sgd_noise\(\)"):
        assert plan.noise_scale(70) == plan.sgd_noise(70) == pytest.approx(g(0.1, 640, 0.9))
    phase = plan.phases(200)[1]
    with pytest.warns(DeprecationWarning, match="use Phase.sgd_noise"):
        assert phase.noise_scale == phase.sgd_noise


def test_phases_count_updates_on_the_clock():
    """Each phase starts where the previous one's last update ended, at the clock's float32 epoch."""
    plan = smith(max_batch=None)
    phases = plan.phases(200)
    assert [p.index for p in phases] == [0, 1, 2, 3] and phases[0].start_examples == 0
    for a, b in zip(phases, phases[1:]):
        assert b.start_examples == a.end_examples
        assert bstf.clock.epoch_at(b.start_examples, N) >= np.float32(b.start_epoch)
        assert bstf.clock.epoch_at(b.start_examples - b.batch_size, N) < np.float32(b.start_epoch)
    assert all(p.physical_batch == p.batch_size and p.accumulation == 1 for p in phases)
    assert phases[1].with_physical_batch(128).accumulation == 5
    with pytest.raises(ValueError, match="does not divide"):
        phases[1].with_physical_batch(100)


def test_rescalings_respect_max_batch():
    for plan in (smith().scaled(5), smith().with_momentum(0.98), smith().scaled(100)):
        assert max(p.batch_size for p in plan.phases(200)) <= 5120
    # k = 5: B = 640 (0.5), 3200 (0.5), 5120 (cap: 0.5·5120/16000), 5120 (the whole factor 5 on ε)
    np.testing.assert_allclose([p.learning_rate for p in smith().scaled(5).phases(200)], [0.5, 0.5, 0.16, 0.032])
    # m 0.9 -> 0.98: B × (0.1/0.02) = 5
    assert [p.batch_size for p in smith().with_momentum(0.98).phases(200)] == [640, 3200, 5120, 5120]
    assert {p.momentum for p in smith().with_momentum(0.98).phases(200)} == {0.98}


def test_goyal_8k_with_warmup_and_coupling():
    plan = NoiseScalePlan(1_281_167, 0.1, 256, batch=8192, lr_rule="linear", warmup_epochs=5,
                          milestones=(30, 60, 80), factor=10)
    expected = {0: 0.1, 2.5: 1.65, 5: 3.2, 29.9: 3.2, 30: 0.32, 60: 0.032, 80: 0.0032, 89: 0.0032}
    for epoch, lr in expected.items():
        assert plan.at(epoch).learning_rate == pytest.approx(lr, rel=1e-6)
        assert plan.at(epoch).batch_size == 8192
    sqrt = NoiseScalePlan(1_281_167, 0.1, 256, batch=8192, lr_rule="sqrt")
    assert sqrt.at(0).learning_rate == pytest.approx(0.1 * math.sqrt(32), rel=1e-6)
    # Warmup keeps its length in epochs under rescaling.
    assert plan.scaled(2).at(2.5).learning_rate == pytest.approx(0.1 + (6.4 - 0.1) / 2, rel=1e-6)


def test_schedules_follow_the_clock():
    plan = smith()
    clock = bstf.Clock(N)
    plan.bind(clock)
    for examples, (lr, batch) in {0: (0.1, 128), 60 * N: (0.1, 640), 160 * N + 5: (0.032, 5120)}.items():
        clock.reset(examples)
        assert float(plan.learning_rate(0)) == pytest.approx(lr, rel=1e-6)
        assert int(plan.batch_size(0)) == batch
        assert float(plan.momentum(0)) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="clock's train_size"):
        plan.bind(bstf.Clock(10))


def test_config_round_trip():
    for plan in PLANS.values():
        clone = NoiseScalePlan.from_config(plan.get_config())
        assert clone == plan and clone.phases(200) == plan.phases(200)
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(plan))
        assert restored == plan


def test_table_and_plot(tmp_path):
    text = smith().table(200)
    assert "5120" in text and f"total updates: {smith().total_updates(200)}" in text
    path = smith().plot(200, str(tmp_path / "p.png"), others=[smith("decay_lr")])
    assert open(path, "rb").read(4) == b"\x89PNG"


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(train_size=0), ValueError, "train_size must be >= 1, got 0"),
        (dict(base_lr=-0.1), ValueError, "base_lr must be > 0, got -0.1"),
        (dict(base_batch=0), ValueError, "base_batch must be >= 1"),
        (dict(base_momentum=1.0), ValueError, r"base_momentum must be in \[0, 1\), got 1.0"),
        (dict(milestones=(120, 60)), ValueError, "milestones must be strictly increasing"),
        (dict(milestones=(-5, 60)), ValueError, "milestones must be > 0, got -5"),
        (dict(factor=1.0), ValueError, "factor must be > 1, got 1.0"),
        (dict(mode="grow"), ValueError, "mode must be one of"),
        (dict(lr_rule="cubic"), ValueError, "lr_rule must be one of"),
        (dict(max_batch=64), ValueError, "max_batch must be >= the starting batch 128"),
        (dict(warmup_epochs=-1), ValueError, "warmup_epochs must be >= 0"),
        (dict(train_size=10.5), TypeError, "train_size must be an integer"),
        (dict(target_momentum=1.5), ValueError, r"target_momentum must be in \[0, 1\)"),
    ],
)
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        smith(**kwargs)


def test_bad_rescalings_and_queries():
    with pytest.raises(ValueError, match="k must be > 0"):
        smith().scaled(0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        smith().with_momentum(1.0)
    with pytest.raises(ValueError, match="epochs must be > 0"):
        smith().phases(0)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        smith().at(-1)


def test_constant_warmup_holds_the_base_lr_then_jumps():
    kw = dict(train_size=1000, base_lr=0.1, base_batch=256, batch=2048, lr_rule="linear", warmup_epochs=5,
              milestones=[30], factor=10)
    linear, constant = NoiseScalePlan(**kw), NoiseScalePlan(**kw, warmup="constant")
    assert constant.at(0).learning_rate == pytest.approx(0.1) and constant.at(4.9).learning_rate == pytest.approx(0.1)
    assert linear.at(2.5).learning_rate == pytest.approx(0.1 + 0.5 * (0.8 - 0.1))
    for e in (5, 10, 30):  # after the warmup both are the scaled schedule
        assert constant.at(e).learning_rate == pytest.approx(linear.at(e).learning_rate)
    assert constant.get_config()["warmup"] == "constant" and NoiseScalePlan.from_config(constant.get_config()) == constant
    assert constant != linear
    with pytest.raises(ValueError, match="warmup must be 'linear' or 'constant', got 'cosine'"):
        NoiseScalePlan(**kw, warmup="cosine")
