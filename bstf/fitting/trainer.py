"""The update of a :func:`bstf.fit` run: the optimizer set up for the plan, the traced step, the noise meter.

:class:`Trainer` owns what one update needs — the run's :class:`bstf.Clock`, the plan's learning-rate
(and momentum) schedules put on the compiled optimizer, a :class:`bstf.optimizers.Accumulate` when a
phase accumulates (or the noise scale is measured, or updates are skipped), the batch controller's
:class:`~bstf.fitting.control.Control` (its LR and ``k`` held in variables), the non-finite :class:`~bstf.fitting.guard.Guard` and the traced
micro-step — and puts the model back as it was when the run ends (``with Trainer(spec) as trainer:``).

Under ``mixed_float16`` the compiled optimizer is a ``LossScaleOptimizer``: it is always wrapped in an
Accumulate (``k = 1`` where the plan needs no accumulation), which makes it a
:class:`bstf.optimizers.LossScaledAccumulate` — one overflow decision per update, on the gradient reduced
over replicas — and the plan's learning rate and momentum go on its inner optimizer (``self.base``).

A later ``bstf.fit`` of the same model, optimizer and plan reuses the clock and the traced step (as
``model.fit`` reuses its ``train_function``): the trace captured the clock and the plan's constants.
"""

import json
import math
import weakref

import keras
import tensorflow as tf

from bstf import schedules
from bstf.analysis.noise_scale import NoiseScaleAverager, estimate_grad_norm_sq, estimate_trace_sigma
from bstf.clock import Clock
from bstf.fitting.checks import base_optimizer
from bstf.fitting.control import Control
from bstf.fitting.guard import Guard
from bstf.fitting.spec import physical_batch
from bstf.fitting.steps import is_multi_worker, scalar, strategy_step
from bstf.optimizers.accumulate import Accumulate

_CACHE = weakref.WeakKeyDictionary()  # model -> the clock, Accumulate, guard and traced step of its last bstf.fit


class Trainer:
    """The run's optimizer stack and traced step; :meth:`update` runs one update."""

    def __init__(self, spec):
        self.spec, self.model, self.optimizer = spec, spec.model, spec.optimizer
        self.base = base_optimizer(self.optimizer)  # whose LR and momentum the plan sets (inside a loss scale)
        self._key = _cache_key(spec)
        cached = _CACHE.get(self.model)
        if (self._key is not None and cached is not None and cached["key"] == self._key
                and cached["optimizer"] is self.optimizer and cached["strategy"] is spec.strategy):
            self.clock, self.accumulate, self.guard = cached["clock"], cached["accumulate"], cached["guard"]
            self._step, self.control = cached["step"], None
            self.clock.reset(0)
        else:
            self._build_parts()
        spec.plan.bind(self.clock)
        self._build_variables()

    def _build_parts(self):
        spec, strategy = self.spec, self.spec.strategy
        with strategy.scope():
            self.clock = Clock(spec.train_size)
            loss_tracker = next((m for m in self.model.metrics if m.name == "loss"), None)
            self.guard = Guard(spec.on_nonfinite, self.clock, loss_tracker)
        self.control, steps = None, _accumulation_steps(spec)
        if spec.adaptive is not None:  # batch, k and LR change at run time: held in variables the trace reads
            self.control = Control(spec.adaptive, strategy, self.clock, spec.max_physical_batch,
                                   window=spec.log_every_n_updates)
            steps = self.control.steps
        with strategy.scope():
            measure = spec.noise_scale_every_n_updates is not None
            self.accumulate = None if steps is None else Accumulate(self.optimizer, steps, clock=self.clock,
                                                                    statistics=measure)
        self._step = None

    def _build_variables(self):
        """Creates the model's, metrics' and optimizer's variables before the first trace (and a restore)."""
        spec = self.spec
        batch_spec = spec.dataset.batch(spec.phases[0].physical_batch, drop_remainder=True).element_spec
        with spec.strategy.scope():
            symbolic = getattr(self.model, "_symbolic_build", None)
            if symbolic is not None:
                data_batch = tf.nest.map_structure(lambda s: keras.KerasTensor(s.shape, s.dtype.name), batch_spec)
                symbolic(data_batch=data_batch)
            optimizer = self.accumulate or self.optimizer  # (an Accumulate builds its inner optimizer too)
            if not optimizer.built:
                optimizer.build(self.model.trainable_variables)

    # ------------------------------------------------------------------ the run's optimizer, and back
    def __enter__(self):
        spec, opt = self.spec, self.base
        self._saved = (opt._learning_rate, getattr(opt, "momentum", None), self.model.train_function)
        # The plan's LR schedule replaces the LR variable for the run (the variable stays tracked, so the
        # optimizer's variable list — and saved files — keep their layout; it gets the final LR at the end).
        opt._learning_rate = spec.plan.learning_rate if self.control is None else self.control.learning_rate
        if spec.momentum_follows:
            opt.momentum = spec.plan.momentum
        if self.accumulate is not None:
            self.model.optimizer = self.accumulate
        self.guard.install(self.optimizer, self.accumulate)
        self.model.train_function = self._step
        return self

    def __exit__(self, *exc):
        _CACHE[self.model] = {"key": self._key, "optimizer": self.optimizer, "strategy": self.spec.strategy,
                              "clock": self.clock, "accumulate": self.accumulate,
                              "guard": self.guard, "step": self._step}
        opt = self.base
        self.guard.uninstall()
        final_lr = float(keras.ops.convert_to_numpy(opt.learning_rate))
        original_lr, original_momentum, original_train_function = self._saved
        opt._learning_rate = original_lr
        if isinstance(original_lr, keras.Variable):
            original_lr.assign(final_lr)
        if self.spec.momentum_follows:
            opt.momentum = original_momentum
        self.model.optimizer = self.optimizer
        # model.fit must not run bstf's step (it reads the run's clock): give Keras its own function back.
        self.model.train_function = None if self.accumulate is not None else original_train_function

    def trackables(self):
        """What a checkpoint of the run holds besides its record: the model's variables (weights, and the
        seed states of its random layers), the compiled optimizer's state — never an Accumulate's (its
        accumulators are zero at the update boundaries where checkpoints fall), so runs with and without
        accumulation share checkpoints — the clock and the metric accumulators. A ``LossScaleOptimizer``'s
        dynamic scale and growth counter are its variables: saved with it, so a resume keeps the scale."""
        plain = lambda vs: [v.value if isinstance(v, keras.Variable) else v for v in vs]  # noqa: E731
        # (the model's own keras.Variable objects: the optimizer tracks the same ones, so each is saved once)
        return {"model_variables": list(self.model.variables), "optimizer": self.optimizer, "clock": self.clock,
                "metrics": plain(v for m in self.model.metrics for v in m.variables)}

    # ------------------------------------------------------------------ one update
    def step_function(self):
        """The traced micro-step (iterator -> logs), made once per trainer (and cached with the model)."""
        if self._step is None:
            if self.model.train_function is None and is_multi_worker(self.spec.strategy):
                step = strategy_step(self.model, self.spec.strategy, "train_step")
                self.model.train_function = lambda iterator: step(next(iterator))
            self._step = self.model.make_train_function() or self.model.train_function
        return self._step

    def update(self, iterator, phase):
        """One update of ``phase``: ``k`` micro-steps, then the clock advances by its batch. Returns the logs."""
        step = self.step_function()
        for _ in range(phase.accumulation):
            logs = step(iterator)
        self.clock.examples.assign_add(self._advance(phase.batch_size), read_value=False)
        return logs

    def _advance(self, batch):
        if getattr(self, "_batch", None) != batch:  # one eager op per update: assign_add(constant)
            self._batch, self._batch_tensor = batch, tf.constant(batch, tf.int64)
        return self._batch_tensor

    def values(self):
        """The learning rate and momentum the next update uses, read from the optimizer (a host sync)."""
        momentum = self.base.momentum if self.spec.momentum_follows else self.spec.plan.momentum_value
        values = {"learning_rate": scalar(self.base.learning_rate),
                  "momentum": scalar(momentum() if callable(momentum) else momentum)}
        if self.spec.loss_scaled:
            values["loss_scale"] = self.loss_scale()
        return values

    def loss_scale(self):
        """The loss scale the next update's micro-batches are multiplied by (``mixed_float16``), or None."""
        return scalar(self.optimizer.dynamic_scale) if self.spec.loss_scaled else None

    def gradient_norms(self):
        """(|g_b|², |G_B|²) of the last update (``noise_scale_every_n_updates``): see Accumulate."""
        return scalar(self.accumulate.micro_batch_sq_norm), scalar(self.accumulate.update_sq_norm)


def _accumulation_steps(spec):
    """Accumulate's ``steps`` (k per plan phase, a schedule on the clock), or None when no Accumulate is needed."""
    measure = spec.noise_scale_every_n_updates is not None
    # A loss scale always sits inside an Accumulate (k >= 1): one overflow decision per update, on the
    # gradient reduced over replicas (see bstf.optimizers.LossScaledAccumulate).
    if not (measure or spec.on_nonfinite == "skip" or spec.loss_scaled
            or any(p.accumulation > 1 for p in spec.phases)):
        return None
    if spec.adaptive is not None:
        return 1  # replaced by the held k
    ks = _ks(spec)
    return schedules.PiecewiseConstant(spec.plan.milestones, ks) if len(set(ks)) > 1 else ks[0]


def _ks(spec):
    return [b // physical_batch(b, spec.max_physical_batch, spec.replicas) for b in spec.plan.batch_size.values]


def _cache_key(spec):
    if spec.adaptive is not None:
        return None
    return (json.dumps(spec.plan.get_config(), sort_keys=True), _ks(spec), spec.momentum_follows,
            spec.noise_scale_every_n_updates is not None, spec.on_nonfinite)


class NoiseMeter:
    """B_simple from the update's own gradients every ``noise_scale_every_n_updates`` updates; the batch
    controller's decisions from it (:class:`bstf.fitting.control.Control`)."""

    def __init__(self, spec, trainer, state=None):
        self.spec, self.trainer, state = spec, trainer, state or {}
        self.every = spec.noise_scale_every_n_updates
        self.averager = None if self.every is None else NoiseScaleAverager(spec.noise_scale_ema)
        self.control, self.norms = trainer.control, None
        if self.averager is not None and "averager" in state:
            self.averager.set_state(state["averager"])
        if self.control is not None:
            self.control.start(state.get("adaptive"))

    def measure(self, phase, updates):
        """After update ``updates``: the estimate, or None (not due, no small batch, a skipped update)."""
        if self.averager is None or updates % self.every or phase.accumulation * self.spec.replicas == 1:
            return None
        g_small, g_big = self.trainer.gradient_norms()
        if not (math.isfinite(g_small) and math.isfinite(g_big)):
            return None
        b_small, b_big = phase.physical_batch // self.spec.replicas, phase.batch_size
        self.norms = (g_small, g_big, b_small, b_big)
        return self.averager.update(estimate_grad_norm_sq(g_small, g_big, b_small, b_big),
                                    estimate_trace_sigma(g_small, g_big, b_small, b_big))

    def decide(self, estimate, updates):
        """Adaptive runs: True if the controller changed the batch or its realisation (the next updates run
        another phase)."""
        if self.control is None or estimate is None:
            return False
        return self.control.decide(self.norms, estimate.b_simple, updates)

    @property
    def b_simple(self):
        return None if self.averager is None else self.averager.b_simple

    def state(self):
        """The averager's and the controller's state for the run record."""
        out = {}
        if self.averager is not None:
            out["averager"] = self.averager.get_state()
        if self.control is not None:
            out["adaptive"] = self.control.state()
        return out
