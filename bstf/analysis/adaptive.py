"""Adaptive batch size from the measured noise scale (the AdaptDL/Pollux idea).

McCandlish et al. (2018): training to a given loss takes
``S = S_min(1 + B_noise/B)`` updates and ``E = E_min(1 + B/B_noise)``
examples, so a batch near the noise scale balances the two (``B = B_noise``
costs 2·S_min updates and 2·E_min examples). The noise scale grows during
training, so the best batch grows with it. :class:`AdaptiveBatch` turns a
stream of B_simple measurements (e.g. from
:class:`bstf.callbacks.NoiseScaleMonitor`) into a batch size
``≈ multiplier · B_simple``, clamped to ``[min_batch, max_batch]`` and rounded
to a multiple of ``granularity`` (replicas × micro-batch), changed at most once
every ``every_n_updates`` updates, with the learning rate coupled to it by
:func:`bstf.schedules.scaled_learning_rate` or by AdaScale's gain
(:func:`bstf.analysis.adascale_gain`). :class:`bstf.analysis.GoodputBatch`
weighs the hardware's throughput in as well.
"""

import math
import numbers

import keras

from bstf.analysis import _common
from bstf.analysis.goodput import AdaScaleProgress, LearningRateCoupling, adascale_gain


@keras.saving.register_keras_serializable(package="bstf")
class AdaptiveBatch(LearningRateCoupling):
    """Batch-size controller: ``batch ≈ multiplier · B_simple`` with the LR coupled.

    Args:
      min_batch, max_batch: bounds of the batch, multiples of ``granularity``.
      multiplier: ``c`` in ``B = c · B_simple`` (> 0; 1 = at the noise scale).
      every_n_updates: minimum number of updates between two changes.
      lr_rule: "linear", "sqrt" or "none" (see :func:`bstf.schedules.scaled_learning_rate`), or
        "adascale": ``base_lr · r`` with AdaScale's gain ``r`` at the current
        batch and the latest usable B_simple (``r = 1`` before the first;
        the LR then changes with every measurement, not only with the batch).
      base_lr, base_batch: the learning rate that works at ``base_batch``.
      granularity: the batch is a multiple of this (e.g. replicas × micro-batch).
      initial_batch: batch before the first measurement (default ``min_batch``;
        a multiple of ``granularity`` in the bounds).
      allow_decrease: if False the batch never shrinks (Smith et al.'s
        "increase the batch" regime); by default it follows B_simple both ways.

    ``update(b_simple, updates)`` returns the ``(batch, lr)`` to train with.
    Measurements that are not positive (the two-batch estimator is noisy and
    can go negative when the signal or the noise is too small to resolve) keep
    the current batch; ``+inf`` (no measurable gradient signal) means
    ``max_batch``. Pure Python: no TensorFlow state. :attr:`progress` is
    AdaScale's scale-invariant clock (base-batch examples, ``Σ r·B₀``).
    """

    def __init__(self, min_batch, max_batch, multiplier=1.0, every_n_updates=100, lr_rule="linear", *, base_lr,
                 base_batch, granularity=1, initial_batch=None, allow_decrease=True):
        self.min_batch, self.max_batch, self.granularity = _common.check_batch_bounds(
            min_batch, max_batch, granularity)
        self.multiplier = _common.check_float("multiplier", multiplier, low=0.0, low_open=True)
        self.every_n_updates = _common.check_int("every_n_updates", every_n_updates)
        self._set_coupling(lr_rule, base_lr, base_batch)
        if initial_batch is None:
            initial_batch = self.min_batch
        initial_batch = _common.check_int("initial_batch", initial_batch)
        if not self.min_batch <= initial_batch <= self.max_batch or initial_batch % self.granularity:
            raise ValueError(
                f"initial_batch must be a multiple of granularity ({self.granularity}) in "
                f"[{self.min_batch}, {self.max_batch}], got {initial_batch}."
            )
        self.initial_batch = initial_batch
        self.allow_decrease = bool(allow_decrease)
        self._progress = AdaScaleProgress(self.base_batch)
        self.reset()

    def reset(self):
        """Back to ``initial_batch`` with no measurements."""
        self.batch = self.initial_batch
        self.last_change = None
        self.last_updates = None
        self.b_simple = None  # the latest usable measurement (what the AdaScale gain uses)
        self.changes = []  # (updates, batch, lr) at every change
        self._progress.reset()

    def get_state(self):
        """The controller's state (batch, last change, changes, B_simple, progress) as a JSON-able dict."""
        return {"batch": self.batch, "last_change": self.last_change, "last_updates": self.last_updates,
                "changes": [list(c) for c in self.changes], "b_simple": self.b_simple,
                "progress": self._progress.get_state()}

    def set_state(self, state):
        """Restores :meth:`get_state`'s dict (e.g. when a checkpointed run resumes)."""
        self.batch, self.last_change, self.last_updates = state["batch"], state["last_change"], state["last_updates"]
        self.changes = [tuple(c) for c in state["changes"]]
        self.b_simple = state.get("b_simple")  # absent in states saved before lr_rule="adascale"
        self._progress.set_state(state.get("progress", [self.last_updates or 0, 0.0]))

    @property
    def gain(self):
        """AdaScale's gain ``r`` at the current batch and the latest B_simple (1 before any)."""
        if self.b_simple is None:
            return 1.0
        return adascale_gain(1.0, self.b_simple, self.batch, self.base_batch)

    def propose(self, b_simple):
        """``multiplier · b_simple`` rounded to the nearest multiple of ``granularity``, clamped."""
        b_simple = self._check_b(b_simple)
        if math.isinf(b_simple):
            return self.max_batch
        g = self.granularity
        target = self.multiplier * b_simple
        rounded = int(math.floor(target / g + 0.5)) * g
        return min(self.max_batch, max(self.min_batch, rounded))

    def update(self, b_simple, updates):
        """Feeds one measurement taken after ``updates`` optimizer updates.

        Returns:
          ``(batch, learning_rate)``: the batch changes to :meth:`propose`'s
          value only if at least ``every_n_updates`` updates passed since the
          last change (the first change may happen at once), the measurement is
          positive, and (with ``allow_decrease=False``) it would not shrink.
          Under ``lr_rule="adascale"`` the LR follows every positive
          measurement.
        """
        b_simple = self._check_b(b_simple)
        updates = _common.check_updates(updates, self.last_updates)
        self._progress.advance(updates, self.gain)  # the gain the LR had since the last call
        self.last_updates = updates
        if b_simple > 0:
            self.b_simple = b_simple
        due = self.last_change is None or updates >= self.last_change + self.every_n_updates
        if due and b_simple > 0:
            proposal = self.propose(b_simple)
            if not self.allow_decrease:
                proposal = max(proposal, self.batch)
            if proposal != self.batch:
                self.batch = proposal
                self.last_change = int(updates)
                self.changes.append((int(updates), self.batch, self.learning_rate))
        return self.batch, self.learning_rate

    @staticmethod
    def _check_b(b_simple):
        if isinstance(b_simple, bool) or not isinstance(b_simple, numbers.Real) or math.isnan(b_simple):
            raise ValueError(f"b_simple must be a real number (not NaN), got {b_simple!r}.")
        return float(b_simple)

    def get_config(self):
        return {
            "min_batch": self.min_batch,
            "max_batch": self.max_batch,
            "multiplier": self.multiplier,
            "every_n_updates": self.every_n_updates,
            "lr_rule": self.lr_rule,
            "base_lr": self.base_lr,
            "base_batch": self.base_batch,
            "granularity": self.granularity,
            "initial_batch": self.initial_batch,
            "allow_decrease": self.allow_decrease,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"AdaptiveBatch(batch={self.batch}, learning_rate={self.learning_rate:.4g}, {self.get_config()})"
