"""The batch controller of a :func:`bstf.fit` run (``adaptive=``): its in-graph values, timings and decisions.

``bstf.fit`` takes two controllers. :class:`bstf.analysis.AdaptiveBatch` sets the global batch from the
measured noise scale and realises it as micro-batches of ``max_physical_batch``.
:class:`bstf.analysis.GoodputBatch` picks the batch *and* its realisation ``physical batch ×
accumulation`` that maximise goodput, from the measured statistics and the run's own timings.

:class:`Control` is the loop's side of either:

* **in-graph values** — the learning rate, a :class:`bstf.analysis.ControlledLearningRate` (``base_lr ×
  factor``, the factor in a variable), and the accumulation ``k`` (:class:`Held`), both bound to the run's
  clock and read by the traced step, so a decision changes them without a retrace;
* **timings** (GoodputBatch) — the loop reports each update's seconds (:meth:`Control.timed`); every
  ``window`` updates of one realisation their sum is averaged over the workers (so every worker feeds
  the controller the same number) and observed;
* **decisions** — :meth:`Control.decide` feeds a noise measurement, sets the LR factor after *every*
  measurement (AdaScale's gain moves with the statistics) and says whether the realisation changed
  (then the loop starts a new phase: data rebatched at the new physical batch, traced once).

The statistics fed to the controller are read from :class:`bstf.optimizers.Accumulate`'s variables, which
are all-reduced over replicas and workers, so every worker decides the same.
"""

import math
from typing import NamedTuple

import tensorflow as tf

from bstf import schedules
from bstf.analysis.goodput import AdaScaleProgress, ControlledLearningRate, GoodputBatch
from bstf.analysis.noise_scale import estimate_grad_norm_sq, estimate_trace_sigma
from bstf.fitting.steps import is_multi_worker

__all__ = ["Control", "Held", "Realisation", "realisation"]


class Held(schedules.Schedule):
    """A value held in a variable (set by the training loop), read in-graph like a schedule."""

    def __init__(self, variable):
        self.variable = variable

    def value(self, epoch):
        return self.variable.read_value()

    def get_config(self):
        return {"value": self.variable.numpy().item()}


class Realisation(NamedTuple):
    """A global batch as the loop runs it: ``batch = physical_batch × accumulation``."""

    batch: int
    physical_batch: int
    accumulation: int


def realisation(controller, max_physical_batch):
    """The controller's current :class:`Realisation` (AdaptiveBatch: micro-batches of ``max_physical_batch``)."""
    if isinstance(controller, GoodputBatch):
        return Realisation(controller.batch, controller.physical_batch, controller.accumulation)
    return Realisation(controller.batch, max_physical_batch, controller.batch // max_physical_batch)


class Control:
    """The controller's in-graph LR and ``k``, its timing windows and decisions (see the module doc).

    Args:
      controller: an :class:`~bstf.analysis.AdaptiveBatch` or :class:`~bstf.analysis.GoodputBatch`.
      strategy: the run's strategy (the variables are created in its scope; timings are averaged over
        its workers).
      clock: the run's :class:`bstf.Clock` (the schedules read it).
      max_physical_batch: AdaptiveBatch's micro-batch.
      window: updates per timing (GoodputBatch).
    """

    def __init__(self, controller, strategy, clock, max_physical_batch, window):
        self.controller, self.strategy, self.max_physical_batch = controller, strategy, max_physical_batch
        self.window = window
        with strategy.scope():
            self.learning_rate = ControlledLearningRate(controller.base_lr, controller.lr_factor).bind(clock)
            self.steps = Held(tf.Variable(1, dtype=tf.int64, trainable=False, name="accumulation")).bind(clock)
        self.current = None
        self._seconds, self._updates = 0.0, 0

    @property
    def goodput(self):
        return isinstance(self.controller, GoodputBatch)

    def start(self, state=None):
        """Starts the run's control: the controller reset, or restored from ``state`` (a checkpoint's)."""
        if state is None:
            self.controller.reset()
        else:
            self.controller.set_state(state)
        self._follow()

    def _follow(self):
        """The in-graph values and the realisation follow the controller; True if the realisation changed."""
        self.learning_rate.follow(self.controller)
        now = realisation(self.controller, self.max_physical_batch)
        changed = now != self.current
        if changed:
            self.steps.variable.assign(now.accumulation)
            self._seconds, self._updates = 0.0, 0  # a window never spans two realisations
        self.current = now
        return changed

    # ------------------------------------------------------------------ timings
    def timed(self, seconds):
        """One update of the current realisation took ``seconds``; every ``window`` updates they are observed.

        Returns the window's seconds averaged over workers when it closes (else None).
        """
        if not self.goodput:
            return None
        self._seconds += seconds
        self._updates += 1
        if self._updates < self.window:
            return None
        seconds, updates = mean_over_workers(self.strategy, self._seconds), self._updates
        self._seconds, self._updates = 0.0, 0
        self.controller.observe(seconds, updates=updates)
        return seconds

    # ------------------------------------------------------------------ decisions
    def decide(self, norms, b_simple, updates):
        """Feeds one noise measurement taken after ``updates`` updates; True if the realisation changed.

        ``norms`` is ``(|g_b|², |G_B|², b, B)`` of the update (per-replica micro-batch ``b``);
        ``b_simple`` the run's smoothed noise scale (what AdaptiveBatch follows).
        """
        if self.goodput:
            g_small, g_big, b_small, b_big = norms
            g2, tr = estimate_grad_norm_sq(g_small, g_big, b_small, b_big), estimate_trace_sigma(
                g_small, g_big, b_small, b_big)
            if not (math.isfinite(g2) and math.isfinite(tr)):
                return False
            self.controller.update(g2, tr, updates)
        else:
            if b_simple is None or not math.isfinite(b_simple):
                return False
            self.controller.update(b_simple, updates)
        return self._follow()

    def decision(self):
        """``{field: float}`` of the decision the last :meth:`decide` made (GoodputBatch), else None."""
        if not self.goodput or self.controller.decision is None:
            return None
        return self.controller.decision.scalars()

    def progress_at(self, updates):
        """AdaScale's progress (base-batch examples) after ``updates`` updates."""
        c = self.controller
        if self.goodput:
            return c.progress_at(updates)
        progress = AdaScaleProgress(c.base_batch)  # AdaptiveBatch: its progress so far, at its current gain
        progress.set_state([c.last_updates or 0, c.progress])
        return progress.at(updates, c.gain)

    def state(self):
        return self.controller.get_state()


def mean_over_workers(strategy, value):
    """``value`` (a Python float) averaged over the workers of a multi-worker strategy (else itself)."""
    if not is_multi_worker(strategy):
        return float(value)
    per_replica = strategy.run(lambda: tf.constant(value, tf.float64))
    return float(strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None).numpy())
