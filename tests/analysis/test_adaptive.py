import json
import math

import keras
import pytest

from bstf.analysis import AdaptiveBatch


def _controller(**kw):
    args = dict(min_batch=32, max_batch=512, multiplier=2.0, every_n_updates=100, lr_rule="linear",
                base_lr=0.1, base_batch=32, granularity=8)
    args.update(kw)
    return AdaptiveBatch(**args)


def test_proposes_multiple_of_noise_scale_with_linear_lr():
    c = _controller()
    assert (c.batch, c.learning_rate) == (32, pytest.approx(0.1))
    # 2 · 50 = 100 → nearest multiple of 8 is 104 (12.5 rounds up); LR 0.1 · 104/32.
    assert c.update(50.0, 0) == (104, pytest.approx(0.325))
    assert c.propose(47.0) == 96  # 94 → 96
    assert c.propose(45.0) == 88  # 90 → 88
    assert c.propose(1e6) == 512 and c.propose(math.inf) == 512 and c.propose(1.0) == 32


def test_changes_at_most_every_n_updates():
    c = _controller()
    assert c.update(50.0, 0)[0] == 104
    assert c.update(100.0, 10)[0] == 104  # 10 < 0 + 100
    assert c.update(100.0, 99)[0] == 104
    assert c.update(100.0, 100)[0] == 200
    assert c.update(30.0, 150)[0] == 200
    assert c.update(30.0, 200)[0] == 64  # 60 → 64; decreases by default
    assert c.changes == [(0, 104, pytest.approx(0.325)), (100, 200, pytest.approx(0.625)),
                         (200, 64, pytest.approx(0.2))]


def test_sqrt_rule_monotone_mode_and_unusable_measurements():
    c = _controller(lr_rule="sqrt", allow_decrease=False, every_n_updates=1)
    assert c.update(64.0, 0) == (128, pytest.approx(0.1 * math.sqrt(128 / 32)))
    assert c.update(10.0, 5) == (128, pytest.approx(0.2))  # would shrink to 32: kept
    assert c.update(-3.0, 6)[0] == 128  # negative estimate (noise): kept
    assert c.update(math.inf, 7)[0] == 512  # no measurable signal: largest batch
    with pytest.raises(ValueError, match="b_simple must be a real number"):
        c.update(float("nan"), 8)
    with pytest.raises(ValueError, match="updates must not decrease: got 3 after 7"):
        c.update(10.0, 3)


def test_config_round_trip():
    c = _controller(initial_batch=64, lr_rule="none", allow_decrease=False)
    config = c.get_config()
    assert AdaptiveBatch.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(c))
    assert isinstance(restored, AdaptiveBatch) and restored.get_config() == config
    assert restored.batch == 64 and restored.learning_rate == pytest.approx(0.1)


@pytest.mark.parametrize("kw,match", [
    (dict(min_batch=30), r"min_batch must be a multiple of granularity \(8\), got 30"),
    (dict(max_batch=16), r"max_batch must be >= min_batch \(32\), got 16"),
    (dict(multiplier=0.0), r"multiplier must be in \(0.0, inf\), got 0.0"),
    (dict(lr_rule="cubic"), "lr_rule must be one of"),
    (dict(initial_batch=1000), r"initial_batch must be a multiple of granularity \(8\) in \[32, 512\], got 1000"),
    (dict(every_n_updates=0), "every_n_updates must be an integer >= 1, got 0"),
    (dict(base_lr=-1.0), r"base_lr must be in \(0.0, inf\), got -1.0"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        _controller(**kw)


def test_state_round_trip():
    a = AdaptiveBatch(32, 512, every_n_updates=1, base_lr=0.1, base_batch=32, granularity=16)
    a.update(100.0, 5)
    a.update(300.0, 9)
    b = AdaptiveBatch(32, 512, every_n_updates=1, base_lr=0.1, base_batch=32, granularity=16)
    b.set_state(json.loads(json.dumps(a.get_state())))
    assert (b.batch, b.last_change, b.last_updates, b.changes) == (a.batch, a.last_change, a.last_updates, a.changes)
    assert b.update(50.0, 12) == a.update(50.0, 12)
