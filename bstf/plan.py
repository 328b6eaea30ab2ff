"""The noise-scale plan: one LR-decay schedule, realised by LR, batch or momentum.

Smith, Kindermans, Ying & Le (2017) show that SGD with learning rate ε,
batch B and momentum m on N training examples is governed by the SGD noise

    g = ε N / (B (1 − m))        (:func:`sgd_noise`; Smith et al. call it the "noise scale")

(bstf reserves "noise scale" for McCandlish et al.'s gradient noise scale
B_simple / B_noise; see docs/concepts.md, "Glossary").

A conventional schedule "decay the LR by ``factor`` at each milestone" lowers g
by ``factor`` at each milestone. :class:`NoiseScalePlan` realises exactly that
g-schedule in one of several ways (``mode``):

* ``"decay_lr"`` — ε /= factor at each milestone (B, m fixed);
* ``"increase_batch"`` — B *= factor at each milestone while B ≤ ``max_batch``;
  the part of a reduction that would pass ``max_batch`` is taken by decaying ε;
* ``"hybrid"`` — the first ``hybrid_lr_milestones`` milestones decay ε, the
  later ones grow B (capped as above).

and two rescalings keep g while cutting the number of updates:
``plan.scaled(k)`` multiplies ε and B by k (B ∝ ε) and ``plan.with_momentum(m)``
raises the momentum and multiplies B by (1 − m₀)/(1 − m) (B ∝ 1/(1 − m)).

**How g is kept exactly.** The target g of each phase is computed first; the
mode then chooses the integer batch (``round(B·factor)``, capped at
``max_batch``) and the momentum, and the LR is *derived*:
ε = g·B·(1 − m)/N. So every mode and rescaling has the same g at every epoch
outside warmup, also when a batch had to be rounded or capped.

**Warmup** (Goyal et al. 2017): for ``warmup_epochs`` the LR ramps linearly
from ``base_lr`` (the unscaled LR) to the phase-0 LR; g is lower there.

**Coupling.** Phase 0 trains at ``batch`` (default ``base_batch``) with
LR ``scaled_learning_rate(base_lr, base_batch, batch, lr_rule)``. Goyal's
8k ImageNet recipe is ``NoiseScalePlan(1281167, 0.1, 256, batch=8192,
lr_rule="linear", warmup_epochs=5, milestones=(30, 60, 80), factor=10)``.

**Updates.** A training loop following the plan reads the batch from the
clock before each update and advances the clock by that batch; an update is
counted in the phase where it starts (it may straddle a boundary by less than
one batch), the phase of the epoch the clock computes (float32,
:func:`bstf.clock.epoch_at`). ``phases()`` counts updates exactly that way;
``bstf.fit`` runs those phases.
"""

import dataclasses
import math
import warnings

import keras
import numpy as np

from bstf import schedules
from bstf.clock import Clock, epoch_at
from bstf.schedules import _check_number, scaled_learning_rate

MODES = ("decay_lr", "increase_batch", "hybrid")


def sgd_noise(learning_rate, train_size, batch_size, momentum):
    """Smith et al.'s SGD noise g = εN/(B(1 − m)): the one formula bstf uses for it."""
    return learning_rate * train_size / (batch_size * (1.0 - momentum))


def _deprecated(old, new):
    warnings.warn(f"{old} is deprecated and will be removed in the next release: use {new} (the SGD noise g; "
                  "'noise scale' now names McCandlish et al.'s B_simple only).", DeprecationWarning, stacklevel=3)


@dataclasses.dataclass(frozen=True)
class PlanPoint:
    """The plan's values at one epoch (``sgd_noise`` is g = εN/(B(1 − m)))."""

    epoch: float
    learning_rate: float
    batch_size: int
    momentum: float
    sgd_noise: float

    @property
    def noise_scale(self):
        """Deprecated alias of :attr:`sgd_noise`."""
        _deprecated("PlanPoint.noise_scale", "PlanPoint.sgd_noise")
        return self.sgd_noise


@dataclasses.dataclass(frozen=True)
class Phase:
    """A segment of training with constant global batch and momentum — the one phase type.

    The plan's :meth:`NoiseScalePlan.phases` make them; ``bstf.fit`` runs
    them (with the physical batch and accumulation it chose) and records
    them in ``history.phases``.

    Attributes:
      start_epoch, end_epoch: the phase's span in the plan (milestones, and
        the run's end).
      learning_rate: the phase's LR after warmup (phase 0 ramps up to it
        during ``warmup_epochs``).
      batch_size: the global batch B.
      momentum: m.
      sgd_noise: g = εN/(B(1 − m)) with the phase's LR.
      updates: the updates that start in the phase (as the clock counts).
      index: the phase's position in the plan (0 before the first milestone).
      start_examples: the clock (examples seen) when its first update starts.
      physical_batch: b, the global micro-batch fed to the model at once.
      accumulation: k = B / b micro-batches per update.
    """

    start_epoch: float
    end_epoch: float
    learning_rate: float
    batch_size: int
    momentum: float
    sgd_noise: float
    updates: int
    index: int
    start_examples: int
    physical_batch: int
    accumulation: int

    @property
    def end_examples(self):
        """The clock after the phase's last update."""
        return self.start_examples + self.updates * self.batch_size

    def with_physical_batch(self, physical_batch):
        """This phase run as ``B / physical_batch`` micro-batches of ``physical_batch`` (a divisor of B)."""
        if self.batch_size % physical_batch:
            raise ValueError(f"physical_batch {physical_batch} does not divide the batch {self.batch_size}.")
        return dataclasses.replace(self, physical_batch=physical_batch,
                                   accumulation=self.batch_size // physical_batch)

    @property
    def noise_scale(self):
        """Deprecated alias of :attr:`sgd_noise`."""
        _deprecated("Phase.noise_scale", "Phase.sgd_noise")
        return self.sgd_noise


def _updates_in_phase(start, batch, end, limit, train_size):
    """Updates of ``batch`` starting at ``start``, ``start + batch``, ... while the clock is before ``end``
    examples and (``limit``, a float32 epoch or None) before the next milestone as the clock computes it."""

    def inside(x):
        return x < end and (limit is None or epoch_at(x, train_size) < limit)

    if not inside(start):
        return 0
    stop = end if limit is None else min(end, float(limit) * train_size)
    count = max(1, math.ceil((stop - start) / batch - 1e-9))
    while count > 1 and not inside(start + (count - 1) * batch):
        count -= 1
    while inside(start + count * batch):
        count += 1
    return count


@keras.saving.register_keras_serializable(package="bstf")
class NoiseScalePlan:
    """An LR-decay schedule realised as LR decay, batch growth, or both.

    Args:
      train_size: N, examples per epoch (integer >= 1).
      base_lr: learning rate at ``base_batch`` (> 0).
      base_batch: reference batch size of ``base_lr`` (integer >= 1).
      base_momentum: momentum m₀ in [0, 1).
      milestones: epochs (strictly increasing, > 0) where g drops by ``factor``.
      factor: g reduction at each milestone (> 1).
      mode: "decay_lr", "increase_batch" or "hybrid".
      max_batch: largest batch the plan may use (>= the starting batch;
        default: no cap).
      warmup_epochs: LR warmup from ``base_lr`` (>= 0).
      warmup: "linear" (Goyal's gradual warmup: a ramp from ``base_lr`` to the
        scaled LR) or "constant" (``base_lr`` held, then the scaled LR).
      lr_rule: how the phase-0 LR follows ``batch``: "linear", "sqrt"
        or "none".
      batch: phase-0 batch (default ``base_batch``).
      hybrid_lr_milestones: in "hybrid" mode, how many leading milestones
        decay the LR before the batch starts to grow (>= 0).
      scale: B ∝ ε rescaling factor k (> 0): batch and LR ×k, g unchanged.
      target_momentum: momentum used instead of m₀ with B ∝ 1/(1 − m)
        (default: ``base_momentum``).
    """

    def __init__(
        self,
        train_size,
        base_lr,
        base_batch,
        base_momentum=0.9,
        milestones=(),
        factor=10.0,
        mode="decay_lr",
        max_batch=None,
        warmup_epochs=0.0,
        lr_rule="none",
        batch=None,
        hybrid_lr_milestones=1,
        scale=1.0,
        target_momentum=None,
        warmup="linear",
    ):
        self.train_size = _check_number("train_size", train_size, low=1, integer=True)
        self.base_lr = _check_number("base_lr", base_lr, low=0, low_open=True)
        self.base_batch = _check_number("base_batch", base_batch, low=1, integer=True)
        self.base_momentum = _check_number("base_momentum", base_momentum, low=0, high=1)
        self.milestones = tuple(_check_number("milestones", m, low=0, low_open=True) for m in milestones)
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise ValueError(f"milestones must be strictly increasing epochs, got {list(self.milestones)}.")
        self.factor = _check_number("factor", factor, low=1, low_open=True)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        self.mode = mode
        self.warmup_epochs = _check_number("warmup_epochs", warmup_epochs, low=0)
        if warmup not in ("linear", "constant"):
            raise ValueError(f"warmup must be 'linear' or 'constant', got {warmup!r}.")
        self.warmup = warmup
        if lr_rule not in ("linear", "sqrt", "none"):
            raise ValueError(f"lr_rule must be one of ('linear', 'sqrt', 'none'), got {lr_rule!r}.")
        self.lr_rule = lr_rule
        self.batch = self.base_batch if batch is None else _check_number("batch", batch, low=1, integer=True)
        self.hybrid_lr_milestones = _check_number("hybrid_lr_milestones", hybrid_lr_milestones, low=0, integer=True)
        self.scale = _check_number("scale", scale, low=0, low_open=True)
        self.target_momentum = None if target_momentum is None else _check_number(
            "target_momentum", target_momentum, low=0, high=1)
        self.max_batch = None if max_batch is None else _check_number("max_batch", max_batch, low=1, integer=True)
        if self.max_batch is not None and self.max_batch < self.batch:
            raise ValueError(f"max_batch must be >= the starting batch {self.batch}, got {self.max_batch}.")
        self._realise()

    # ------------------------------------------------------------------ realisation
    @property
    def momentum_value(self):
        """The momentum the plan trains with (``target_momentum`` or m₀)."""
        return self.base_momentum if self.target_momentum is None else self.target_momentum

    def _momentum_ratio(self):
        return (1.0 - self.base_momentum) / (1.0 - self.momentum_value)

    def _start_batch(self):
        return self._cap(max(1, round(self.batch * self.scale * self._momentum_ratio())))

    def _cap(self, batch):
        return batch if self.max_batch is None else min(batch, self.max_batch)

    def _realise(self):
        """Per phase: target g, then the batch by mode, then ε = g·B·(1−m)/N."""
        n, m = self.train_size, self.momentum_value
        lr0 = scaled_learning_rate(self.base_lr, self.base_batch, self.batch, self.lr_rule)
        # g of the un-rescaled phase 0 (decay_lr semantics at `batch` and base momentum).
        g0 = sgd_noise(lr0, n, self.batch, self.base_momentum)
        batches, lrs, gs = [], [], []
        batch = self._start_batch()
        for i in range(len(self.milestones) + 1):
            g = g0 / self.factor**i
            if i > 0 and self._grows_batch_at(i):
                batch = self._cap(max(1, round(batch * self.factor)))
            batches.append(batch)
            lrs.append(g * batch * (1.0 - m) / n)
            gs.append(g)
        self._batches, self._lrs, self._gs = batches, lrs, gs

    def _grows_batch_at(self, i):
        """Whether milestone i (1-based) is realised by growing the batch."""
        if self.mode == "decay_lr":
            return False
        if self.mode == "increase_batch":
            return True
        return i > self.hybrid_lr_milestones

    # ------------------------------------------------------------------ schedules
    @property
    def learning_rate(self):
        """The LR schedule (a Keras ``LearningRateSchedule`` once bound to a clock)."""
        if getattr(self, "_lr_schedule", None) is None:
            after = schedules.PiecewiseConstant(self.milestones, self._lrs)
            if self.warmup_epochs == 0:
                self._lr_schedule = after
            elif self.warmup == "linear":
                self._lr_schedule = schedules.LinearWarmup(after, self.warmup_epochs, self.base_lr)
            else:
                self._lr_schedule = schedules.ConstantWarmup(after, self.warmup_epochs, self.base_lr)
        return self._lr_schedule

    @property
    def batch_size(self):
        """The global batch-size schedule (int64 values)."""
        if getattr(self, "_batch_schedule", None) is None:
            self._batch_schedule = schedules.PiecewiseBatch(self.milestones, self._batches)
        return self._batch_schedule

    @property
    def momentum(self):
        """The momentum schedule (constant for a plan; a schedule so it binds like the others)."""
        if getattr(self, "_momentum_schedule", None) is None:
            self._momentum_schedule = schedules.PiecewiseMomentum(
                self.milestones, [self.momentum_value] * (len(self.milestones) + 1)
            )
        return self._momentum_schedule

    def schedules(self):
        """(learning_rate, batch_size, momentum) schedules."""
        return self.learning_rate, self.batch_size, self.momentum

    def bind(self, clock):
        """Binds the LR, batch and momentum schedules to ``clock``; returns self."""
        if not isinstance(clock, Clock):
            raise TypeError(f"clock must be a bstf.Clock, got {type(clock).__name__}.")
        if clock.train_size != self.train_size:
            raise ValueError(
                f"the clock's train_size ({clock.train_size}) differs from the plan's "
                f"train_size ({self.train_size})."
            )
        for s in self.schedules():
            s.bind(clock)
        return self

    # ------------------------------------------------------------------ queries
    @property
    def max_batch_used(self):
        """The largest batch any phase uses."""
        return max(self._batches)

    def _phase_index(self, epoch):
        return sum(1 for m in self.milestones if epoch >= m)

    def at(self, epoch):
        """The plan's :class:`PlanPoint` at ``epoch`` (>= 0)."""
        epoch = _check_number("epoch", epoch, low=0)
        lr = self.learning_rate.numpy(epoch)
        batch = int(self.batch_size.numpy(epoch))
        momentum = self.momentum_value
        return PlanPoint(epoch, lr, batch, momentum, sgd_noise(lr, self.train_size, batch, momentum))

    def sgd_noise(self, epoch):
        """The SGD noise g = εN/(B(1 − m)) at ``epoch``."""
        return self.at(epoch).sgd_noise

    def noise_scale(self, epoch):
        """Deprecated alias of :meth:`sgd_noise`."""
        _deprecated("NoiseScalePlan.noise_scale()", "NoiseScalePlan.sgd_noise()")
        return self.sgd_noise(epoch)

    def phases(self, epochs):
        """The :class:`Phase` list of a run of ``epochs`` epochs (> 0), updates counted as the clock counts.

        Every phase that starts before ``epochs`` is listed (also one in which no update starts: the
        previous phase's last update crossed it). An update that starts at ``x`` examples belongs to the
        phase of the clock's float32 epoch ``x / N`` — so at a milestone that falls within float32
        rounding of an update start, the plan, the in-graph schedules and ``bstf.fit`` agree.
        """
        epochs = _check_number("epochs", epochs, low=0, low_open=True)
        n, m = self.train_size, self.momentum_value
        starts, ends = (0.0, *self.milestones), (*self.milestones, math.inf)
        out, x = [], 0  # x: the clock when the phase's first update starts
        for i, batch in enumerate(self._batches):
            limit = np.float32(ends[i]) if i < len(self.milestones) else None
            count = _updates_in_phase(x, batch, epochs * n, limit, n)
            if starts[i] >= epochs and not count:  # (an update may start past `epochs` in float32 only)
                break
            out.append(Phase(starts[i], max(starts[i], min(ends[i], epochs)), self._lrs[i], batch, m, self._gs[i],
                             count, i, x, batch, 1))
            x += count * batch
        return out

    def total_updates(self, epochs):
        """Parameter updates of a run of ``epochs`` epochs."""
        return sum(p.updates for p in self.phases(epochs))

    # ------------------------------------------------------------------ rescalings
    def scaled(self, k):
        """The same g with ε and B multiplied by ``k`` (B ∝ ε)."""
        k = _check_number("k", k, low=0, low_open=True)
        return self._replace(scale=self.scale * k)

    def with_momentum(self, momentum):
        """The same g with momentum ``momentum`` and B ∝ 1/(1 − m)."""
        momentum = _check_number("momentum", momentum, low=0, high=1)
        return self._replace(target_momentum=momentum)

    def with_mode(self, mode):
        """The same g-schedule realised by another ``mode``."""
        return self._replace(mode=mode)

    def _replace(self, **changes):
        return NoiseScalePlan(**{**self.get_config(), **changes})

    # ------------------------------------------------------------------ serialization, display
    def get_config(self):
        return {
            "train_size": self.train_size,
            "base_lr": self.base_lr,
            "base_batch": self.base_batch,
            "base_momentum": self.base_momentum,
            "milestones": list(self.milestones),
            "factor": self.factor,
            "mode": self.mode,
            "max_batch": self.max_batch,
            "warmup_epochs": self.warmup_epochs,
            "warmup": self.warmup,
            "lr_rule": self.lr_rule,
            "batch": self.batch,
            "hybrid_lr_milestones": self.hybrid_lr_milestones,
            "scale": self.scale,
            "target_momentum": self.target_momentum,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, NoiseScalePlan) and self.get_config() == other.get_config()

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"NoiseScalePlan({args})"

    def table(self, epochs):
        """The phase table as text, with the total number of updates."""
        rows = [
            f"{'epochs':>15} {'lr':>10} {'batch':>7} {'momentum':>8} {'sgd noise g':>12} {'updates':>8}"
        ]
        for p in self.phases(epochs):
            rows.append(
                f"{p.start_epoch:>7g} – {p.end_epoch:<5g} {p.learning_rate:>10.5g} {p.batch_size:>7d} "
                f"{p.momentum:>8.3g} {p.sgd_noise:>12.5g} {p.updates:>8d}"
            )
        warm = (f" ({self.warmup} LR warmup from {self.base_lr:g} over {self.warmup_epochs:g} epochs)"
                if self.warmup_epochs else "")
        rows.append(f"total updates: {self.total_updates(epochs)}  [mode={self.mode}]{warm}")
        return "\n".join(rows)

    def plot(self, epochs, path, others=()):
        """PNG of LR, batch, momentum and SGD noise g against epochs.

        ``others`` are further plans (e.g. other modes) drawn on the same axes.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = _check_number("epochs", epochs, low=0, low_open=True)
        grid = np.linspace(0.0, epochs, 801)
        fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
        for plan in (self, *others):
            points = [plan.at(float(e)) for e in grid]
            label = f"{plan.mode} ({plan.total_updates(epochs)} updates)"
            for ax, field in zip(axes.flat, ("learning_rate", "batch_size", "momentum", "sgd_noise")):
                ax.plot(grid, [getattr(p, field) for p in points], label=label)
                ax.set_title(field.replace("_", " ") + (" g" if field == "sgd_noise" else ""))
        for ax in axes.flat:
            ax.set_xlabel("epoch")
        axes[0, 1].set_yscale("log")
        axes[1, 1].set_yscale("log")
        axes[0, 0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
