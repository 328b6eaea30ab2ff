"""FollowPlan: plain ``model.fit`` at a fixed physical batch follows a :class:`bstf.NoiseScalePlan`.

``bstf.fit`` is the full runner (checkpointed clock, phases, TensorBoard). Many training scripts
already call ``model.fit``; with this callback they follow a plan too::

    follow = bstf.callbacks.FollowPlan(plan, batch_size=64)
    model.compile(optimizer=keras.optimizers.SGD(momentum=plan.momentum_value), loss=..., metrics=...)
    model.fit(x, y, batch_size=64, epochs=epochs, callbacks=[follow])

At the start of training the callback puts the plan into the compiled optimizer, once:

* the optimizer is wrapped in :class:`bstf.optimizers.Accumulate` whose ``k`` is the schedule
  ``B / b`` on the clock: a phase's batch ``B`` is realised as ``k`` micro-batches of the ``b``
  examples ``model.fit`` feeds (``k`` is read when an update starts, so no retrace);
* its learning rate (and momentum, for optimizers with ``supports_momentum_schedule`` such as
  ``bstf.optimizers.SGD``) become the plan's schedules bound to the callback's :class:`bstf.Clock`;
* after every micro-batch that completes an update, the clock advances by that update's ``B``
  examples. So the update that starts at ``x`` examples uses ``plan.at(x / N)``, exactly as in
  ``bstf.fit(..., max_physical_batch=b)``.

The model keeps the wrapped optimizer: a further ``model.fit`` with the same callback continues the
plan where the clock is. Every ``model.fit`` batch must have exactly ``b`` examples (``N`` divisible
by ``b``, or ``dataset.repeat().batch(b, drop_remainder=True)`` with ``steps_per_epoch``): the
clock counts ``b`` per micro-batch. Keras's ``BackupAndRestore`` does not save the clock; for runs
that must resume, checkpoint ``follow.clock`` with the model (``tf.train.Checkpoint``) or use
``bstf.fit``.
"""

import warnings

import keras
import numpy as np

from bstf import schedules
from bstf._checks import check_int
from bstf.clock import Clock
from bstf.fitting.checks import base_optimizer, check_optimizer
from bstf.optimizers.accumulate import Accumulate
from bstf.plan import NoiseScalePlan

__all__ = ["FollowPlan"]


@keras.saving.register_keras_serializable(package="bstf")
class FollowPlan(keras.callbacks.Callback):
    """Makes ``model.fit`` with micro-batches of ``batch_size`` follow ``plan`` (see the module docs).

    Args:
      plan: the :class:`bstf.NoiseScalePlan`; every batch it uses must be a multiple of
        ``batch_size``.
      batch_size: the global batch ``b`` that ``model.fit`` feeds (its ``batch_size``); under a
        strategy a multiple of the replicas.
      clock: the :class:`bstf.Clock` to read and advance (default: a new one, created in the
        model's strategy scope at the start of training). Pass one to share it, e.g. with
        ``NoiseScaleMonitor(clock=...)``, or to checkpoint it.

    Attributes:
      clock: the run's clock (examples seen).
      steps: ``k`` of every plan phase (``plan batch / batch_size``).

    Epoch logs (and so ``History``) get ``examples`` (the clock), ``updates`` and ``batch_size``
    (the plan's global batch at the clock).
    """

    def __init__(self, plan, batch_size, clock=None):
        super().__init__()
        if not isinstance(plan, NoiseScalePlan):
            raise TypeError(f"plan must be a bstf.NoiseScalePlan, got {type(plan).__name__}.")
        batch_size = check_int("batch_size", batch_size)
        batches = list(plan.batch_size.values)
        bad = [b for b in batches if b % batch_size]
        if bad:
            divisor = int(np.gcd.reduce(batches))
            raise ValueError(
                f"the plan's batches {bad} are not multiples of batch_size={batch_size}, so they cannot be "
                f"realised as whole micro-batches; use a batch_size that divides {batches} (e.g. {divisor}).")
        if clock is not None:
            if not isinstance(clock, Clock):
                raise TypeError(f"clock must be a bstf.Clock, got {type(clock).__name__}.")
            if clock.train_size != plan.train_size:
                raise ValueError(
                    f"clock.train_size ({clock.train_size}) differs from plan.train_size ({plan.train_size}).")
        self.plan = plan
        self.batch_size = batch_size
        self.clock = clock
        self.steps = [b // batch_size for b in batches]
        self._accumulate = None  # the optimizer this callback installed

    # ------------------------------------------------------------------ installing the plan
    def on_train_begin(self, logs=None):
        model = self.model
        if self._accumulate is not None and model.optimizer is self._accumulate:
            return  # a further model.fit: the plan goes on where the clock is
        if model.steps_per_execution != 1:
            raise ValueError(
                f"FollowPlan needs steps_per_execution=1 (got {model.steps_per_execution}): it advances the "
                "clock after every update; compile without steps_per_execution.")
        strategy = model.distribute_strategy
        if self.batch_size % strategy.num_replicas_in_sync:
            raise ValueError(
                f"batch_size={self.batch_size} must divide by the {strategy.num_replicas_in_sync} replicas.")
        optimizer = model.optimizer
        momentum_follows = check_optimizer(optimizer, self.plan, "FollowPlan")
        with strategy.scope():
            if self.clock is None:
                self.clock = Clock(self.plan.train_size)
            self.plan.bind(self.clock)
            steps = (schedules.PiecewiseConstant(self.plan.milestones, self.steps) if len(set(self.steps)) > 1
                     else self.steps[0])
            accumulate = Accumulate(optimizer, steps, clock=self.clock)
            accumulate.build(model.trainable_variables)
        base = base_optimizer(optimizer)  # a LossScaleOptimizer's inner one (Accumulate wraps the scale)
        base.learning_rate = self.plan.learning_rate
        if momentum_follows:
            base.momentum = self.plan.momentum
        model.optimizer = self._accumulate = accumulate
        model.make_train_function(force=True)  # a step traced earlier would not see the new optimizer

    # ------------------------------------------------------------------ the clock
    def on_train_batch_end(self, batch, logs=None):
        if int(self._accumulate.micro_step.numpy()) == 0:  # this micro-batch completed an update
            self.clock.advance(int(self._accumulate.steps_value.numpy()) * self.batch_size)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            examples, epochs = self.clock.numpy()
            logs.update(examples=examples, updates=int(self._accumulate.updates.numpy()),
                        batch_size=self.plan.at(epochs).batch_size)

    def on_train_end(self, logs=None):
        pending = int(self._accumulate.micro_step.numpy())
        if pending:
            warnings.warn(
                f"model.fit ended inside an update: {pending} of its {int(self._accumulate.steps_value.numpy())} "
                "micro-batches were accumulated but not applied; they apply when training continues. To end on "
                "an update, train a number of examples the last phase's batch divides.", stacklevel=2)

    # ------------------------------------------------------------------ serialization
    def get_config(self):
        return {"plan": self.plan.get_config(), "batch_size": self.batch_size}

    @classmethod
    def from_config(cls, config):
        return cls(NoiseScalePlan.from_config(config["plan"]), config["batch_size"])
