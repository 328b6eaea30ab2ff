"""Goodput: the batch that makes the most training progress per second (Pollux).

Notation (bstf's, see :mod:`bstf.analysis.noise_scale`): ``G`` is the
full-batch gradient, ``tr Σ`` the trace of the *per-example* gradient
covariance (``trace_sigma``), and the noise scale ``B_simple = tr Σ / |G|²``.

**AdaScale gain** (Johnson et al. 2020, "AdaScale SGD"). With a base batch
``B₀`` whose learning rate ``η₀`` is known, AdaScale's ``σ²`` is the variance
of *one base-batch gradient*, ``σ² = tr Σ / B₀``, and ``μ² = |G|²``. A batch of
``B = S·B₀`` averages ``S`` such gradients, so the gain ratio is::

    r = (σ² + |G|²) / (σ²/S + |G|²) = (B_simple/B₀ + 1) / (B_simple/B + 1)

(``1 ≤ r ≤ S`` for ``S ≥ 1``; ``r = 1`` at ``B = B₀`` or without noise,
``r = S`` without signal). AdaptDL's ``GradientNoiseScale`` stores the same
``σ²`` (its ``var`` is scaled to the base batch). AdaScale trains with
``η = r·η₀`` and counts progress on a scale-invariant clock that advances by
``r`` base-batch updates per update (:class:`AdaScaleProgress`, here in
base-batch examples, ``Σ r·B₀``).

**Statistical efficiency** (Pollux, Qiao et al. OSDI 2021): the progress per
example at ``B`` relative to ``B₀``, ``E(B) = r/S = (B_simple + B₀) /
(B_simple + B)`` — McCandlish et al.'s examples-to-target ratio
``(1 + B₀/B_noise) / (1 + B/B_noise)``.

**Goodput** = throughput × efficiency = ``(B / t(b, k)) · E(B) = B₀·r / t(b, k)``:
base-batch examples' worth of progress per second, where ``t(b, k)`` is the
time of one update of ``k`` micro-batches of the physical batch ``b``
(:class:`ThroughputModel`). :class:`GoodputBatch` picks, every
``every_n_updates`` updates, the global batch (and its ``b × k``) that
maximises it.
"""

import dataclasses
import math
import numbers

import keras
import numpy as np
import scipy.optimize
import tensorflow as tf

from bstf import schedules
from bstf.analysis import _common
from bstf.schedules import scaled_learning_rate

LR_RULES = ("adascale", "linear", "sqrt", "none")


# ============================================================================ formulas
def adascale_gain(grad_norm_sq, trace_sigma, batch, base_batch):
    """AdaScale's gain ratio ``r = (σ² + |G|²) / (σ²/S + |G|²)``, ``σ² = tr Σ / B₀``, ``S = B/B₀``.

    Args:
      grad_norm_sq: ``|G|²`` (negative estimates count as 0).
      trace_sigma: ``tr Σ`` of the per-example covariance, as bstf measures it
        (negative estimates count as 0; ``inf`` gives ``r = S``).
      batch: the global batch ``B`` (> 0).
      base_batch: ``B₀``, the batch the base learning rate belongs to (> 0).

    Scalars or NumPy arrays (broadcast). Returns a float or an array. With no
    signal and no noise (both 0) the gain is 1.
    """
    g2 = np.maximum(_reals("grad_norm_sq", grad_norm_sq), 0.0)
    tr = np.maximum(_reals("trace_sigma", trace_sigma), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        b_simple = np.where(g2 > 0, tr / g2, np.where(tr > 0, np.inf, 0.0))
    return _scalar(_gain(b_simple, _positive("batch", batch), _positive("base_batch", base_batch)))


def statistical_efficiency(grad_norm_sq, trace_sigma, batch, base_batch):
    """Pollux's efficiency ``E(B) = r/S = (B_simple + B₀)/(B_simple + B)``: progress per example vs ``B₀``.

    Same arguments as :func:`adascale_gain`; ``E(B₀) = 1`` and ``E`` falls
    as ``B`` grows past the noise scale.
    """
    scale = _positive("batch", batch) / _positive("base_batch", base_batch)
    return _scalar(np.asarray(adascale_gain(grad_norm_sq, trace_sigma, batch, base_batch)) / scale)


def _gain(b_simple, batch, base_batch):
    """The gain in terms of the noise scale (``inf`` allowed): the one formula both functions use."""
    b_simple, batch, base_batch = (np.asarray(a, np.float64) for a in (b_simple, batch, base_batch))
    with np.errstate(divide="ignore", invalid="ignore"):
        finite = (b_simple / base_batch + 1.0) / (b_simple / batch + 1.0)
    return np.where(np.isinf(b_simple), batch / base_batch, finite)


def _reals(name, value):
    a = np.asarray(value, np.float64)
    if np.any(np.isnan(a)):
        raise ValueError(f"{name} must be a real number (not NaN), got {value!r}.")
    return a


def _positive(name, value):
    a = _reals(name, value)
    if np.any(a <= 0) or np.any(np.isinf(a)):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}.")
    return a


def _scalar(a):
    a = np.asarray(a)
    return float(a) if a.ndim == 0 else a


# ============================================================================ statistics
class GradientStatistics:
    """Smoothed ``|G|²`` and ``tr Σ`` with standard errors; the noise scale and an interval for it.

    Args:
      ema: decay in (0, 1) of an exponential moving average (bias-corrected,
        as :class:`bstf.analysis.NoiseScaleAverager` — same means), or
        ``None`` for the plain mean.

    Each :meth:`update` takes one pair of (noisy, unbiased) estimates. The
    standard error of a weighted mean with weights ``w`` is
    ``s·√(Σw²)/Σw``, ``s²`` the reliability-weighted sample variance — for
    an EMA of decay β that is ``n_eff = (1+β)/(1−β)`` effective measurements
    in the long run; for the plain mean it is ``std(ddof=1)/√n``.
    """

    def __init__(self, ema=0.9):
        if ema is not None:
            ema = _common.check_float("ema", ema, low=0.0, high=1.0, low_open=True, high_open=True)
        self.ema = ema
        self.reset()

    def reset(self):
        self.count = 0
        self._sums = [0.0] * 6  # Σw, Σw², Σw·|G|², Σw·trΣ, Σw·|G|⁴, Σw·trΣ²

    def update(self, grad_norm_sq, trace_sigma):
        """Adds one pair of estimates (finite numbers, either may be negative)."""
        g2, tr = _finite("grad_norm_sq", grad_norm_sq), _finite("trace_sigma", trace_sigma)
        decay, w = (1.0, 1.0) if self.ema is None else (self.ema, 1.0 - self.ema)
        v1, v2, sg, st, qg, qt = self._sums
        self._sums = [decay * v1 + w, decay**2 * v2 + w**2, decay * sg + w * g2, decay * st + w * tr,
                      decay * qg + w * g2**2, decay * qt + w * tr**2]
        self.count += 1

    @property
    def grad_norm_sq(self):
        return self._sums[2] / self._sums[0] if self.count else float("nan")

    @property
    def trace_sigma(self):
        return self._sums[3] / self._sums[0] if self.count else float("nan")

    def standard_errors(self):
        """``(se(|G|²), se(tr Σ))`` of the means; ``inf`` before two measurements."""
        v1, v2 = self._sums[:2]
        if self.count < 2 or v1 * v1 <= v2 * (1 + 1e-12):
            return math.inf, math.inf
        out = []
        for s, q in ((self._sums[2], self._sums[4]), (self._sums[3], self._sums[5])):
            spread = max(q / v1 - (s / v1) ** 2, 0.0)
            out.append(math.sqrt(spread * v2 / (v1 * v1 - v2)))
        return tuple(out)

    @property
    def b_simple(self):
        """``tr Σ / |G|²`` of the means (0 before any measurement; ``inf`` if ``|G|² <= 0 < tr Σ``)."""
        return _ratio(self.trace_sigma, self.grad_norm_sq) if self.count else 0.0

    def b_simple_interval(self, confidence=1.0):
        """``(low, high)`` noise scale with each mean ``confidence`` standard errors away, at its extremes.

        Conservative: the lowest ``tr Σ`` over the highest ``|G|²`` and the
        reverse (``(0, inf)`` before two measurements).
        """
        confidence = _common.check_float("confidence", confidence, low=0.0)
        if self.count < 2:
            return 0.0, math.inf
        se_g, se_t = self.standard_errors()
        g2, tr = self.grad_norm_sq, self.trace_sigma
        return (_ratio(tr - confidence * se_t, g2 + confidence * se_g),
                _ratio(tr + confidence * se_t, g2 - confidence * se_g))

    def get_state(self):
        return [self.count, *self._sums]

    def set_state(self, state):
        self.count, self._sums = int(state[0]), [float(v) for v in state[1:]]


def _finite(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def _ratio(trace_sigma, grad_norm_sq):
    """Noise scale from (possibly negative) estimates: ``tr⁺/|G|²``, ``inf`` if ``|G|² <= 0 < tr``, else 0."""
    trace_sigma = max(trace_sigma, 0.0)
    if grad_norm_sq > 0:
        return trace_sigma / grad_norm_sq
    return math.inf if trace_sigma > 0 else 0.0


class AdaScaleProgress:
    """AdaScale's scale-invariant clock in base-batch examples: ``Σ r·B₀`` over the updates.

    An update at batch ``B`` with gain ``r`` makes the progress of ``r``
    base-batch updates (Johnson et al. 2020, "scale-invariant iterations"),
    i.e. ``r·B₀`` base-batch examples. ``advance(updates, gain)`` credits the
    updates since the last call with the gain that was in effect for them.
    """

    def __init__(self, base_batch):
        self.base_batch = _common.check_int("base_batch", base_batch)
        self.reset()

    def reset(self):
        self.updates, self.examples = 0, 0.0

    def at(self, updates, gain):
        """The progress after ``updates`` updates if ``gain`` held since the last call."""
        updates = _common.check_updates(updates, self.updates)
        return self.examples + float(gain) * self.base_batch * (updates - self.updates)

    def advance(self, updates, gain):
        self.examples, self.updates = self.at(updates, gain), int(updates)
        return self.examples

    def get_state(self):
        return [self.updates, self.examples]

    def set_state(self, state):
        self.updates, self.examples = int(state[0]), float(state[1])


# ============================================================================ throughput
@dataclasses.dataclass(frozen=True)
class ThroughputFit:
    """Fitted time per update ``t(b, k) = k·t_micro(b) + sync``.

    ``micro`` maps each measured physical batch to its fitted micro-batch
    time; unmeasured ones use the line ``t_micro(b) = alpha + beta·b/replicas``
    fitted through them (Pollux's compute model).
    """

    alpha: float
    beta: float
    sync: float
    micro: dict
    replicas: int

    def micro_seconds(self, physical_batch):
        """Seconds of one micro-batch of the global physical batch ``physical_batch``."""
        if physical_batch in self.micro:
            return self.micro[physical_batch]
        return self.alpha + self.beta * physical_batch / self.replicas

    def seconds(self, physical_batch, accumulation):
        """Seconds per update of ``accumulation`` micro-batches of ``physical_batch``."""
        return accumulation * self.micro_seconds(physical_batch) + self.sync


@keras.saving.register_keras_serializable(package="bstf")
class ThroughputModel:
    """Time per update as a function of the physical batch and the accumulation, fitted online.

    Args:
      max_physical_batch: the largest global batch fed to the model at once
        (the memory limit), a multiple of ``replicas``.
      replicas: replicas in sync (the per-replica batch is ``b / replicas``).
      physical_batches: the physical batches a controller may use (each new
        one is traced once); default ``replicas·2^j <= max_physical_batch``
        and ``max_physical_batch`` itself.
      window: timings kept per ``(b, k)`` (their median is fitted).

    Model (Pollux, γ = 1): ``t(b, k) = k·t_micro(b) + sync`` — ``k`` forward/
    backward passes and one optimizer apply / all-reduce. :meth:`fit` solves
    a non-negative least squares in relative error over the per-``(b, k)``
    medians (robust to the odd slow step: tracing, checkpoints, GC), with one
    ``t_micro`` per measured ``b``. ``sync`` is identified once some ``b``
    ran with two different ``k``; before that it is taken as one micro-batch
    (``t/(k+1)`` of the quickest timing) — optimistic about accumulating, so
    a controller tries a larger ``k`` and measures it (with ``sync = 0`` it
    would never accumulate more than it must). The line ``alpha + beta·b/replicas`` through the
    measured ``t_micro`` predicts unmeasured batches (with one measured batch,
    Pollux's split: half constant, half proportional).

    :meth:`seed` adds the timings of :func:`bstf.find_batch_size` (priors for
    batches not yet run; its out-of-memory sizes bound the physical batch).
    """

    def __init__(self, max_physical_batch, replicas=1, physical_batches=None, window=16):
        self.replicas = _common.check_int("replicas", replicas)
        self.max_physical_batch = _common.check_int("max_physical_batch", max_physical_batch)
        if self.max_physical_batch % self.replicas:
            raise ValueError(f"max_physical_batch must be a multiple of replicas ({self.replicas}), "
                             f"got {self.max_physical_batch}.")
        self.physical_batches = self._check_batches(physical_batches)
        self.window = _common.check_int("window", window)
        self._seeds, self.memory_limit = {}, None
        self.reset()

    def _check_batches(self, physical_batches):
        r, m = self.replicas, self.max_physical_batch
        if physical_batches is None:
            return sorted({r * 2**j for j in range(m.bit_length()) if r * 2**j <= m} | {m})
        values = list(physical_batches) if isinstance(physical_batches, (list, tuple)) else None
        if (not values or any(isinstance(b, bool) or not isinstance(b, numbers.Integral) for b in values)
                or any(b < 1 or b > m or b % r for b in values)):
            raise ValueError(f"physical_batches must be a non-empty list of multiples of replicas ({r}) in "
                             f"[{r}, {m}], got {physical_batches!r}.")
        return sorted({int(b) for b in values})

    def reset(self):
        """Forgets the run's timings (keeps :meth:`seed`'s)."""
        self._cells = {}
        self._fit = None

    @property
    def available(self):
        """The physical batches a controller may use (below the finder's out-of-memory size)."""
        return [b for b in self.physical_batches if self.memory_limit is None or b < self.memory_limit]

    @property
    def tried(self):
        """Physical batches this run has timed (each traced once)."""
        return sorted({b for b, _ in self._cells})

    @property
    def untried(self):
        """Available physical batches this run has not timed yet."""
        return [b for b in self.available if b not in self.tried]

    def measured(self, physical_batch):
        """Whether ``physical_batch`` has a timing (this run's or the finder's)."""
        return physical_batch in self._seeds or any(b == physical_batch for b, _ in self._cells)

    def observe(self, physical_batch, accumulation, seconds, updates=1):
        """Records ``updates`` updates of ``accumulation`` × ``physical_batch`` that took ``seconds``."""
        b = _common.check_int("physical_batch", physical_batch)
        if b % self.replicas:
            raise ValueError(f"physical_batch must be a multiple of replicas ({self.replicas}), got {b}.")
        k = _common.check_int("accumulation", accumulation)
        n = _common.check_int("updates", updates)
        seconds = _common.check_float("seconds", seconds, low=0.0, low_open=True)
        cell = self._cells.setdefault((b, k), [])
        cell.append(seconds / n)
        del cell[:-self.window]
        self._fit = None

    def seed(self, report):
        """Adds a :class:`bstf.finder.BatchSizeReport`'s timings (``k = 1``) and out-of-memory bound."""
        measurements = getattr(report, "measurements", None)
        if measurements is None:
            raise TypeError(f"report must be a bstf.find_batch_size result, got {type(report).__name__}.")
        for m in measurements:
            if m.status == "ok":
                self._seeds[int(m.batch_size)] = float(m.seconds_per_update)
            elif m.status == "oom":
                self.memory_limit = min(int(m.batch_size), self.memory_limit or int(m.batch_size))
        if not self.available:
            raise ValueError(f"the finder ran out of memory at batch {self.memory_limit}, at or below every "
                             f"physical batch in {self.physical_batches}; lower max_physical_batch.")
        self._fit = None
        return self

    def fit(self):
        """The current :class:`ThroughputFit` (``None`` before any timing)."""
        if self._fit is None:
            self._fit = _fit_times(self._rows(), self.replicas)
        return self._fit

    def _rows(self):
        live = [(b, k, float(np.median(t)), len(t)) for (b, k), t in sorted(self._cells.items())]
        timed = {b for b, _ in self._cells}
        return live + [(b, 1, t, 1) for b, t in sorted(self._seeds.items()) if b not in timed]

    def predict(self, physical_batch, accumulation):
        """Predicted seconds per update of ``accumulation`` micro-batches of ``physical_batch``."""
        fit = self.fit()
        if fit is None:
            raise ValueError("the throughput model has no timing yet: observe() an update (or seed() it) first.")
        return fit.seconds(_common.check_int("physical_batch", physical_batch),
                           _common.check_int("accumulation", accumulation))

    def throughput(self, physical_batch, accumulation):
        """Predicted examples per second."""
        return physical_batch * accumulation / self.predict(physical_batch, accumulation)

    def get_state(self):
        """Timings, seeds and memory bound as a JSON-able dict."""
        return {"cells": [[b, k, list(t)] for (b, k), t in sorted(self._cells.items())],
                "seeds": [[b, t] for b, t in sorted(self._seeds.items())], "memory_limit": self.memory_limit}

    def set_state(self, state):
        self._cells = {(int(b), int(k)): [float(x) for x in t] for b, k, t in state["cells"]}
        self._seeds = {int(b): float(t) for b, t in state["seeds"]}
        self.memory_limit = state["memory_limit"]
        self._fit = None

    def get_config(self):
        return {"max_physical_batch": self.max_physical_batch, "replicas": self.replicas,
                "physical_batches": list(self.physical_batches), "window": self.window}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"ThroughputModel(tried={self.tried}, {self.get_config()})"


def _fit_times(rows, replicas):
    """NNLS of ``t = k·m_b + sync`` in relative error over ``(b, k, median seconds, count)`` rows."""
    if not rows:
        return None
    batches = sorted({b for b, *_ in rows})
    column = {b: i for i, b in enumerate(batches)}
    with_sync = any(len({k for b2, k, *_ in rows if b2 == b}) > 1 for b in batches)
    # Unidentified (one k per b): the apply costs one micro-batch (optimistic about accumulation, as Pollux's
    # split is about the batch); the first update at another k identifies it.
    sync = 0.0 if with_sync else min(t / (k + 1) for _, k, t, _ in rows)
    a = np.zeros((len(rows), len(batches) + with_sync))
    y = np.zeros(len(rows))
    for i, (b, k, t, n) in enumerate(rows):
        w = math.sqrt(n) / t
        a[i, column[b]] = k * w
        if with_sync:
            a[i, -1] = w
        y[i] = (t - sync) * w
    x = scipy.optimize.nnls(a, y)[0]
    micro = {b: float(x[column[b]]) for b in batches}
    alpha, beta = _line(micro, replicas)
    return ThroughputFit(alpha, beta, float(x[-1]) if with_sync else sync, micro, replicas)


def _line(micro, replicas):
    """``(alpha, beta)`` of ``t_micro = alpha + beta·b/replicas`` through the per-batch micro times."""
    points = [(b / replicas, m) for b, m in micro.items() if m > 0]
    if not points:
        return 0.0, 0.0
    if len(points) == 1:  # Pollux: with one batch size, half of the time is constant, half proportional
        (x, m), = points
        return m / 2, m / (2 * x)
    a = np.array([[1.0 / m, x / m] for x, m in points])
    alpha, beta = scipy.optimize.nnls(a, np.ones(len(points)))[0]
    return float(alpha), float(beta)


# ============================================================================ controller
@dataclasses.dataclass(frozen=True)
class GoodputDecision:
    """One decision of :class:`GoodputBatch` (what the training loop logs).

    ``batch = physical_batch × accumulation``; ``seconds_per_update`` and
    ``throughput`` (examples/s) are predicted by the throughput model;
    ``efficiency`` (and its range over the noise-scale interval) and ``gain``
    at the chosen batch; ``goodput = throughput × efficiency``; ``changed``
    whether the batch or its realisation changed, ``probe`` whether the
    physical batch is a new one tried for its speed.
    """

    updates: int
    batch: int
    physical_batch: int
    accumulation: int
    seconds_per_update: float
    throughput: float
    efficiency: float
    efficiency_low: float
    efficiency_high: float
    goodput: float
    gain: float
    learning_rate: float
    b_simple: float
    b_simple_low: float
    b_simple_high: float
    changed: bool
    probe: bool

    def scalars(self):
        """The fields as ``{name: float}`` (for TensorBoard)."""
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}


class LearningRateCoupling:
    """The learning rate of a batch controller (:class:`GoodputBatch`, :class:`bstf.analysis.AdaptiveBatch`).

    ``base_lr`` coupled to the current ``batch`` by ``lr_rule`` (linear, sqrt, none), or AdaScale's
    ``base_lr · gain``. The controller supplies ``base_lr``, ``base_batch``, ``batch``, ``lr_rule``,
    ``gain`` and its :class:`AdaScaleProgress` as ``_progress``.
    """

    def _set_coupling(self, lr_rule, base_lr, base_batch):
        """Validate and keep the coupling's arguments (ValueError naming the bad one)."""
        if lr_rule not in LR_RULES:
            raise ValueError(f"lr_rule must be one of {LR_RULES}, got {lr_rule!r}.")
        self.lr_rule = lr_rule
        self.base_lr = _common.check_float("base_lr", base_lr, low=0.0, low_open=True)
        self.base_batch = _common.check_int("base_batch", base_batch)

    @property
    def learning_rate(self):
        """The LR coupled to the current batch."""
        if self.lr_rule == "adascale":
            return self.base_lr * self.gain
        return scaled_learning_rate(self.base_lr, self.base_batch, self.batch, self.lr_rule)

    @property
    def lr_factor(self):
        """``learning_rate / base_lr`` (what a :class:`ControlledLearningRate` holds)."""
        return self.learning_rate / self.base_lr

    @property
    def progress(self):
        """AdaScale's progress in base-batch examples up to the last ``update``."""
        return self._progress.examples


@keras.saving.register_keras_serializable(package="bstf")
class GoodputBatch(LearningRateCoupling):
    """Batch-size controller maximising goodput = throughput(B) × efficiency(B) (Pollux).

    Args:
      min_batch, max_batch: bounds of the global batch, multiples of ``granularity``.
      every_n_updates: updates between two decisions (the first after ``every_n_updates``).
      lr_rule: "adascale" (η₀·r, Johnson et al. 2020), "linear", "sqrt" or "none".
      base_lr, base_batch: the learning rate that works at ``base_batch`` (``B₀``).
      throughput: a :class:`ThroughputModel` (physical batches, replicas, timings).
      granularity: the global batch is a multiple of this.
      initial_batch: batch before the first decision (default ``min_batch``).
      threshold: change only if the predicted goodput grows by at least this
        fraction (hysteresis; >= 0).
      confidence: a change must pay off (by ``threshold``) for every noise
        scale in :meth:`GradientStatistics.b_simple_interval` of this many
        standard errors (>= 0; 0 trusts the point estimate).
      ema: decay of the statistics' moving average (see :class:`GradientStatistics`).

    Every batch is realised as ``physical_batch × accumulation`` with a
    physical batch from ``throughput.available`` and ``accumulation ×
    replicas >= 2`` (the noise scale is measured from the micro-batches).

    The loop feeds :meth:`update` the two-batch estimates of ``|G|²`` and
    ``tr Σ`` of each measurement and :meth:`observe` the wall-clock time of
    updates. A decision is a pure function of these numbers: workers that feed
    the same (reduced) numbers decide the same. At a decision it takes the
    batch ``B*`` with the largest predicted goodput at the measured noise
    scale, each batch at its predicted-fastest realisation (timed physical
    batches at their fitted speed, untimed ones on the fitted line, as Pollux
    extrapolates); it moves there only if the goodput ratio to the current
    batch is at least ``1 + threshold`` at both ends of the noise-scale
    interval (the ratio is monotone in the noise scale, so at every point of
    it); otherwise a faster realisation of the current batch is taken if it
    gains ``threshold``. Finally, if an untimed physical batch next to the
    fastest timed one (per example) can realise the chosen batch, it is used
    instead — a probe: at a fixed global batch the split into micro-batches
    changes only the speed, not the training (the line cannot see a mid-range
    throughput peak; probes can). A decision that moves to an untimed
    physical batch is marked ``probe``; each is timed from then on, so every
    shape is traced once.
    """

    def __init__(self, min_batch, max_batch, every_n_updates=100, lr_rule="adascale", *, base_lr, base_batch,
                 throughput, granularity=1, initial_batch=None, threshold=0.05, confidence=1.0, ema=0.9):
        self.min_batch, self.max_batch, self.granularity = _common.check_batch_bounds(
            min_batch, max_batch, granularity)
        self.every_n_updates = _common.check_int("every_n_updates", every_n_updates)
        self._set_coupling(lr_rule, base_lr, base_batch)
        if not isinstance(throughput, ThroughputModel):
            raise TypeError(f"throughput must be a bstf.analysis.ThroughputModel, got {type(throughput).__name__}.")
        self.throughput = throughput
        self.initial_batch = self._check_initial(self.min_batch if initial_batch is None else initial_batch)
        self.threshold = _common.check_float("threshold", threshold, low=0.0)
        self.confidence = _common.check_float("confidence", confidence, low=0.0)
        self.statistics = GradientStatistics(ema)
        self._progress = AdaScaleProgress(self.base_batch)
        self.reset()

    def _check_initial(self, batch):
        batch = _common.check_int("initial_batch", batch)
        if (not self.min_batch <= batch <= self.max_batch or batch % self.granularity
                or not self._realisations(batch)):
            raise ValueError(
                f"initial_batch must be a multiple of granularity ({self.granularity}) in [{self.min_batch}, "
                f"{self.max_batch}] that a physical batch in {self.throughput.available} divides with "
                f"accumulation × replicas ({self.throughput.replicas}) >= 2, got {batch}.")
        return batch

    def _realisations(self, batch):
        """``[(b, k)]`` realising ``batch``: ``b`` available, ``k·replicas >= 2``."""
        r = self.throughput.replicas
        return [(b, batch // b) for b in self.throughput.available if batch % b == 0 and batch // b * r >= 2]

    def reset(self):
        """Back to ``initial_batch`` with no statistics and no timings of this run (seeds stay)."""
        self.throughput.reset()
        self.statistics.reset()
        self._progress.reset()
        self.batch = self._check_initial(self.initial_batch)
        self.physical_batch, self.accumulation = self._fastest(self.batch)
        self.last_change = self.last_decision = self.last_updates = None
        self.changes = []  # (updates, batch, physical_batch, accumulation, learning_rate) at every change
        self.decision = None  # the GoodputDecision of the latest update() call, if it made one
        self._skip_timing = True

    def _fastest(self, batch):
        """The predicted-fastest realisation among measured batches, else the largest physical batch."""
        options = self._realisations(batch)
        measured = [(b, k) for b, k in options if self.throughput.measured(b)]
        if not measured:
            return options[-1]
        return min(measured, key=lambda bk: (self.throughput.predict(*bk), -bk[0]))

    # ------------------------------------------------------------------ the LR
    @property
    def gain(self):
        """AdaScale's gain ``r`` at the current batch and statistics (1 before any measurement)."""
        return float(_gain(self.statistics.b_simple, self.batch, self.base_batch))

    def progress_at(self, updates):
        """The progress after ``updates`` updates (the current gain since the last :meth:`update`)."""
        return self._progress.at(updates, self.gain)

    # ------------------------------------------------------------------ feeding
    def observe(self, seconds, updates=1):
        """Records that the last ``updates`` updates at the current batch took ``seconds`` (wall clock).

        The first call after a change (or a reset/restore) is dropped: it
        includes tracing the new shape. Returns whether the timing was kept.
        """
        if self._skip_timing:
            _common.check_float("seconds", seconds, low=0.0, low_open=True)
            self._skip_timing = False
            return False
        self.throughput.observe(self.physical_batch, self.accumulation, seconds, updates)
        return True

    def update(self, grad_norm_sq, trace_sigma, updates):
        """Feeds one measurement (two-batch estimates) taken after ``updates`` optimizer updates.

        Returns ``(batch, learning_rate)``. If a decision was due (at least
        ``every_n_updates`` since the last, and some timing is known),
        :attr:`decision` holds its :class:`GoodputDecision`, else ``None``.
        """
        updates = _common.check_updates(updates, self.last_updates)
        self._progress.advance(updates, self.gain)  # the gain the LR had since the last call
        self.statistics.update(grad_norm_sq, trace_sigma)
        self.last_updates = updates
        self.decision = None
        due = updates >= (self.last_decision or 0) + self.every_n_updates
        if due and self.throughput.fit() is not None:
            self.decision = self._decide(updates)
        return self.batch, self.learning_rate

    # ------------------------------------------------------------------ deciding
    def _options(self):
        """Arrays ``(B, b, k, seconds)``: the predicted-fastest realisation of every allowed batch."""
        fit, columns = self.throughput.fit(), []
        for b in self.throughput.available:
            k = np.arange(max(-(-self.min_batch // b), 2 if self.throughput.replicas == 1 else 1),
                          self.max_batch // b + 1)
            k = k[(b * k) % self.granularity == 0]
            columns.append((b * k, np.full(k.shape, b), k, k * fit.micro_seconds(b) + fit.sync))
        batches, physical, accumulation, seconds = (np.concatenate(c) for c in zip(*columns))
        order = np.lexsort((-physical, seconds, batches))  # per batch: fastest first, then the larger b
        first = order[np.r_[True, batches[order][1:] != batches[order][:-1]]]
        return batches[first], physical[first], accumulation[first], seconds[first]

    def _goodput(self, batch, seconds, b_simple):
        return self.base_batch * _gain(b_simple, batch, self.base_batch) / seconds

    def _decide(self, updates):
        stats = self.statistics
        b_simple, interval = stats.b_simple, stats.b_simple_interval(self.confidence)
        current = (self.batch, self.physical_batch, self.accumulation)
        seconds = self.throughput.predict(self.physical_batch, self.accumulation)
        target = current
        batches, physical, accumulation, times = self._options()
        i = int(np.argmax(self._goodput(batches, times, b_simple)))
        ends = np.array([b_simple, *interval])
        ratio = self._goodput(batches[i], times[i], ends) / self._goodput(self.batch, seconds, ends)
        same = np.flatnonzero(batches == self.batch)
        if batches[i] != self.batch and np.min(ratio) >= 1 + self.threshold:
            target = (int(batches[i]), int(physical[i]), int(accumulation[i]))
        elif same.size and seconds / times[same[0]] >= 1 + self.threshold:
            target = (self.batch, int(physical[same[0]]), int(accumulation[same[0]]))
        target = self._probe(target)
        probe = not self.throughput.measured(target[1])
        changed = target != current
        if changed:
            self.batch, self.physical_batch, self.accumulation = target
            self.last_change = updates
            self.changes.append((updates, *target, self.learning_rate))
            self._skip_timing = True
        self.last_decision = updates
        return self._record(updates, interval, changed, probe)

    def _probe(self, target):
        """``target`` realised with an untimed neighbour of the fastest physical batch, if one divides it.

        (Only when ``target`` itself uses a timed physical batch: one new shape per decision.)
        """
        batch = target[0]
        available = self.throughput.available
        measured = [b for b in available if self.throughput.measured(b)]
        if not measured or not self.throughput.measured(target[1]):
            return target
        fit = self.throughput.fit()
        fastest = min(measured, key=lambda b: (fit.micro_seconds(b) / b, -b))
        i = available.index(fastest)
        for n in available[i + 1:i + 2] + available[max(i - 1, 0):i]:
            if not self.throughput.measured(n) and (n, batch // n) in self._realisations(batch):
                return batch, n, batch // n
        return target

    def _record(self, updates, interval, changed, probe):
        seconds = self.throughput.predict(self.physical_batch, self.accumulation)
        scale = self.batch / self.base_batch
        efficiency = [float(_gain(p, self.batch, self.base_batch)) / scale
                      for p in (self.statistics.b_simple, *interval)]
        return GoodputDecision(
            updates=updates, batch=self.batch, physical_batch=self.physical_batch,
            accumulation=self.accumulation, seconds_per_update=seconds, throughput=self.batch / seconds,
            efficiency=efficiency[0], efficiency_low=min(efficiency), efficiency_high=max(efficiency),
            goodput=self.batch / seconds * efficiency[0], gain=self.gain, learning_rate=self.learning_rate,
            b_simple=self.statistics.b_simple, b_simple_low=interval[0], b_simple_high=interval[1],
            changed=changed, probe=probe)

    # ------------------------------------------------------------------ state and config
    def get_state(self):
        """Batch, realisation, statistics, timings, progress and changes as a JSON-able dict."""
        return {"batch": self.batch, "physical_batch": self.physical_batch, "accumulation": self.accumulation,
                "last_change": self.last_change, "last_decision": self.last_decision,
                "last_updates": self.last_updates, "changes": [list(c) for c in self.changes],
                "statistics": self.statistics.get_state(), "throughput": self.throughput.get_state(),
                "progress": self._progress.get_state()}

    def set_state(self, state):
        """Restores :meth:`get_state`'s dict (the first timing after it is dropped: the process retraces)."""
        self.batch, self.physical_batch, self.accumulation = (
            state["batch"], state["physical_batch"], state["accumulation"])
        self.last_change, self.last_decision, self.last_updates = (
            state["last_change"], state["last_decision"], state["last_updates"])
        self.changes = [tuple(c) for c in state["changes"]]
        self.statistics.set_state(state["statistics"])
        self.throughput.set_state(state["throughput"])
        self._progress.set_state(state["progress"])
        self.decision = None
        self._skip_timing = True

    def get_config(self):
        return {"min_batch": self.min_batch, "max_batch": self.max_batch, "every_n_updates": self.every_n_updates,
                "lr_rule": self.lr_rule, "base_lr": self.base_lr, "base_batch": self.base_batch,
                "throughput": self.throughput.get_config(), "granularity": self.granularity,
                "initial_batch": self.initial_batch, "threshold": self.threshold, "confidence": self.confidence,
                "ema": self.statistics.ema}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        throughput = config.pop("throughput")
        if isinstance(throughput, dict):
            throughput = ThroughputModel.from_config(throughput)
        return cls(throughput=throughput, **config)

    def __repr__(self):
        return (f"GoodputBatch(batch={self.batch} = {self.physical_batch} x {self.accumulation}, "
                f"learning_rate={self.learning_rate:.4g}, {self.get_config()})")


# ============================================================================ the LR in-graph
@keras.saving.register_keras_serializable(package="bstf")
class ControlledLearningRate(schedules.Schedule):
    """``base_lr × factor`` with the factor held in a variable a batch controller sets.

    Read in-graph on the example clock like any bstf schedule (bind it to the
    run's :class:`bstf.Clock`); create it under the strategy's scope. The loop
    assigns ``controller.lr_factor`` after every measurement
    (:meth:`follow`): AdaScale's gain ``r`` under ``lr_rule="adascale"``
    (it changes with the statistics even when the batch does not), ``B/B₀`` or
    ``√(B/B₀)`` under the fixed rules.
    """

    def __init__(self, base_lr, factor=1.0):
        self.base_lr = _common.check_float("base_lr", base_lr, low=0.0, low_open=True)
        factor = _common.check_float("factor", factor, low=0.0, low_open=True)
        self.factor = tf.Variable(factor, dtype=tf.float32, trainable=False, name="lr_factor")

    def value(self, epoch):
        del epoch
        return self.base_lr * self.factor.read_value()

    def follow(self, controller):
        """Assigns ``controller.lr_factor`` (an :class:`AdaptiveBatch` or :class:`GoodputBatch`)."""
        self.factor.assign(controller.lr_factor)

    def get_config(self):
        return {"base_lr": self.base_lr, "factor": float(self.factor.numpy())}
