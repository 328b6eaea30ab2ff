"""The validated arguments of a :func:`bstf.fit` run and its phases.

:func:`make_spec` checks every argument (a ``TypeError``/``ValueError`` naming the argument and the fix,
before anything is built or trained) — the plan against the data (:func:`bstf.fitting.checks.check_plan`),
the data's size (counted when unknown), its first batch against the model, the validation data likewise,
the directories writable — and returns a :class:`RunSpec`. The run's phases are the plan's
:class:`bstf.plan.Phase` objects — counted on the clock's arithmetic by the plan — with the physical
batch and accumulation this run uses (:func:`segments`); with an adaptive controller the phases are made
as it decides (:meth:`RunSpec.adaptive_phase`).
"""

import dataclasses
import math
import os

import keras
import tensorflow as tf

from bstf import distribute
from bstf._checks import check_int
from bstf.analysis.noise_scale import NoiseScaleAverager
from bstf.fitting import checks
from bstf.fitting.control import realisation
from bstf.plan import NoiseScalePlan, Phase, sgd_noise
from bstf.schedules import _check_number

ON_NONFINITE = ("raise", "skip")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A run's validated arguments (see :func:`bstf.fit` for their meaning)."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer  # the compiled optimizer (never an Accumulate)
    plan: NoiseScalePlan
    epochs: float
    strategy: tf.distribute.Strategy
    dataset: tf.data.Dataset
    val_dataset: tf.data.Dataset
    phases: tuple  # of Phase: the plan's (adaptive: the first one; later ones are decided as it runs)
    max_physical_batch: int
    callbacks: tuple
    logdir: str
    checkpoint_dir: str
    seed: int  # None: drawn at random (or the checkpoint's)
    verbose: int
    log_every_n_updates: int
    checkpoint_every_n_updates: int
    validation_batch_size: int
    shuffle: bool
    shuffle_buffer: int
    noise_scale_every_n_updates: int
    noise_scale_ema: float
    adaptive: object  # bstf.analysis.AdaptiveBatch, bstf.analysis.GoodputBatch or None
    momentum_follows: bool  # the optimizer's momentum follows the plan's schedule
    on_nonfinite: str

    @property
    def loss_scaled(self):
        """Whether the optimizer is a ``LossScaleOptimizer`` (``mixed_float16``): overflows skip updates."""
        return isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)

    @property
    def train_size(self):
        return self.plan.train_size

    @property
    def end_examples(self):
        """The examples of ``epochs`` epochs (the run ends with the first update that reaches them)."""
        return self.epochs * self.plan.train_size

    @property
    def replicas(self):
        return self.strategy.num_replicas_in_sync

    @property
    def chief(self):
        return distribute.is_chief(self.strategy)

    def identity(self):
        """What a checkpoint must match to be resumed by this run (``seed`` is checked separately)."""
        return {"plan": self.plan.get_config(), "epochs": self.epochs, "max_physical_batch": self.max_physical_batch,
                "replicas": self.replicas, "shuffle": self.shuffle,
                "adaptive": self.adaptive.get_config() if self.adaptive is not None else None}

    def phase_at(self, examples):
        """The phase of the update that starts at ``examples`` (adaptive: the controller's current one)."""
        if self.adaptive is not None:
            return adaptive_phase(self.plan, self.epochs, self.adaptive, self.max_physical_batch, examples)
        return next((p for p in self.phases if p.end_examples > examples), self.phases[-1])


def adaptive_phase(plan, epochs, adaptive, max_physical_batch, examples):
    """The phase a batch controller runs from ``examples`` on (to the run's end, unless it changes): its
    batch as it realises it (:func:`bstf.fitting.control.realisation`), its LR, the plan's momentum."""
    batch, physical, k = realisation(adaptive, max_physical_batch)
    lr, m, n = adaptive.learning_rate, plan.momentum_value, plan.train_size
    return Phase(examples / n, epochs, lr, batch, m, sgd_noise(lr, n, batch, m),
                 math.ceil((epochs * n - examples) / batch), len(adaptive.changes), examples, physical, k)


def physical_batch(batch, max_physical_batch=None, replicas=1):
    """The largest micro-batch ``b <= max_physical_batch`` with ``b | batch`` and ``replicas | b``.

    Returns ``batch`` itself when it fits (or ``max_physical_batch`` is None).

    Raises:
      ValueError: no such ``b`` exists (the message names valid choices).
    """
    if max_physical_batch is None or batch <= max_physical_batch:
        if batch % replicas:
            raise ValueError(
                f"the plan's global batch {batch} is not divisible by the {replicas} replicas; "
                f"choose a plan whose batches are multiples of {replicas}."
            )
        return batch
    for k in range(math.ceil(batch / max_physical_batch), batch + 1):
        b = batch // k
        if batch % k == 0 and b % replicas == 0:
            return b
    raise ValueError(
        f"the plan's global batch {batch} cannot be split into equal micro-batches of at most "
        f"max_physical_batch={max_physical_batch} examples that divide by the {replicas} replicas; "
        f"use a batch that is a multiple of replicas x micro-batch (e.g. {replicas * max(1, max_physical_batch // replicas)}·k)."
    )


def segments(plan, epochs, max_physical_batch=None, replicas=1):
    """The phases a run of ``epochs`` epochs of ``plan`` trains: the plan's :class:`~bstf.plan.Phase` objects
    in which an update starts, each with its :func:`physical_batch` and accumulation."""
    return [p.with_physical_batch(physical_batch(p.batch_size, max_physical_batch, replicas))
            for p in plan.phases(epochs) if p.updates]


def make_spec(model, train_data, plan, epochs, **kw):
    """Validates :func:`bstf.fit`'s arguments (keywords as there) into a :class:`RunSpec`."""
    optimizer = _check_model(model)
    if not isinstance(plan, NoiseScalePlan):
        raise TypeError(f"plan must be a bstf.NoiseScalePlan, got {type(plan).__name__}.")
    epochs = _check_number("epochs", epochs, low=0, low_open=True)
    epochs = int(epochs) if isinstance(epochs, float) and epochs.is_integer() else epochs
    strategy = _resolve_strategy(kw["strategy"], model)
    replicas = strategy.num_replicas_in_sync
    mpb = _check_max_physical_batch(kw["max_physical_batch"], replicas)
    options = _check_options(kw)
    callbacks = kw["callbacks"]
    if isinstance(callbacks, keras.callbacks.Callback) or not all(
            isinstance(c, keras.callbacks.Callback) for c in callbacks):
        raise TypeError(f"callbacks must be a list of keras.callbacks.Callback, got {callbacks!r}.")
    momentum_follows = checks.check_optimizer(optimizer, plan, "bstf.fit")
    adaptive, noise_every = kw["adaptive"], options["noise_scale_every_n_updates"]
    if adaptive is not None:
        _check_adaptive(adaptive, plan, mpb, replicas)
        noise_every = noise_every or max(1, adaptive.every_n_updates // 10)
        adaptive.reset()
        phases = (adaptive_phase(plan, epochs, adaptive, mpb, 0),)  # the first; the others are decided as it runs
    else:
        checks.check_plan(plan, epochs)
        phases = tuple(segments(plan, epochs, mpb, replicas))
    largest = mpb if adaptive is not None else max(p.physical_batch for p in phases)  # the largest physical batch
    val_batch = _check_validation_batch(kw["validation_batch_size"], largest, replicas)
    dataset, val_dataset = _check_data(model, plan, train_data, kw["validation_data"])
    if distribute.is_chief(strategy):
        checks.check_writable(options["logdir"], "logdir")
        checks.check_writable(options["checkpoint_dir"], "checkpoint_dir")
    return RunSpec(
        model=model, optimizer=optimizer, plan=plan, epochs=epochs, strategy=strategy, dataset=dataset,
        val_dataset=val_dataset, phases=phases, max_physical_batch=mpb, callbacks=tuple(callbacks),
        validation_batch_size=val_batch, adaptive=adaptive, momentum_follows=momentum_follows,
        **{**options, "noise_scale_every_n_updates": noise_every})


def _check_data(model, plan, train_data, validation_data):
    """The training and validation data sets, checked: unbatched, labelled, the training set's size (counted
    when unknown) against the plan, their first examples against the model."""
    dataset, size = checks.as_dataset(train_data, "train_data")
    checks.check_size(dataset, size, plan.train_size)
    checks.check_batch_against_model(model, dataset, "train_data")
    if validation_data is None:
        return dataset, None
    val_dataset, _ = checks.as_dataset(validation_data, "validation_data")
    checks.check_batch_against_model(model, val_dataset, "validation_data")
    return dataset, val_dataset


def _check_validation_batch(validation_batch_size, default, replicas):
    batch = check_int("validation_batch_size", validation_batch_size or default)
    if batch % replicas:
        raise ValueError(f"validation_batch_size={batch} is a global batch and must divide by the {replicas} "
                         f"replicas; use a multiple of {replicas}.")
    return batch


def _check_options(kw):
    """The loop's scalar options, checked."""
    optional = {name: None if kw[name] is None else check_int(name, kw[name])
                for name in ("checkpoint_every_n_updates", "shuffle_buffer", "noise_scale_every_n_updates")}
    seed = None if kw["seed"] is None else check_int("seed", kw["seed"], minimum=0)
    verbose = 1 if kw["verbose"] == "auto" else kw["verbose"]
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {kw['verbose']!r}.")
    if not isinstance(kw["shuffle"], bool):
        raise TypeError(f"shuffle must be True or False, got {kw['shuffle']!r}.")
    NoiseScaleAverager(kw["noise_scale_ema"])  # validates the EMA decay now, not mid-run
    if kw["on_nonfinite"] not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be 'raise' (stop the run with bstf.NonFiniteLossError) or 'skip' "
                         f"(leave the weights as they were for that update), got {kw['on_nonfinite']!r}.")
    return {**optional, "seed": seed, "verbose": verbose, "shuffle": kw["shuffle"],
            "log_every_n_updates": check_int("log_every_n_updates", kw["log_every_n_updates"]),
            "noise_scale_ema": kw["noise_scale_ema"], "on_nonfinite": kw["on_nonfinite"],
            "logdir": _check_path("logdir", kw["logdir"]), "checkpoint_dir": _check_path("checkpoint_dir",
                                                                                          kw["checkpoint_dir"])}


def _check_path(name, path):
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path, got {type(path).__name__}.")
    return os.fspath(path)


def _check_max_physical_batch(max_physical_batch, replicas):
    if max_physical_batch is None:
        return None
    max_physical_batch = check_int("max_physical_batch", max_physical_batch)
    if max_physical_batch < replicas:
        raise ValueError(
            f"max_physical_batch={max_physical_batch} is smaller than the {replicas} replicas; every "
            f"replica needs at least one example: use max_physical_batch >= {replicas}."
        )
    return max_physical_batch


def _check_model(model):
    """The compiled optimizer of ``model`` (which must be a compiled keras.Model)."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}.")
    if not model.compiled:
        raise ValueError(
            "model is not compiled: call model.compile(optimizer=..., loss=..., metrics=...) "
            "before bstf.fit (bstf.fit drives the optimizer's learning rate from the plan)."
        )
    return model.optimizer


def _resolve_strategy(strategy, model):
    model_strategy = model.distribute_strategy
    if strategy is None:
        return model_strategy
    if isinstance(strategy, str):
        if strategy not in distribute.NAMES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(distribute.NAMES)}.")
        if strategy == "default" and not tf.distribute.has_strategy() and model_strategy is tf.distribute.get_strategy():
            return model_strategy
        raise ValueError(
            f"strategy={strategy!r}: a strategy must exist before the model, which has to be created and "
            "compiled in its scope. Do: strategy = bstf.distribute.get_strategy(" + repr(strategy) + "); "
            "with strategy.scope(): model = ...; model.compile(...); then bstf.fit(model, ..., strategy=strategy)."
        )
    if not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(f"strategy must be a tf.distribute.Strategy or a name, got {type(strategy).__name__}.")
    if strategy is not model_strategy:
        raise ValueError(
            f"the model was created outside strategy.scope() of the given {type(strategy).__name__}; "
            "create and compile the model inside `with strategy.scope():`."
        )
    return strategy


def _check_adaptive(adaptive, plan, max_physical_batch, replicas):
    from bstf.analysis.adaptive import AdaptiveBatch
    from bstf.analysis.goodput import GoodputBatch

    if not isinstance(adaptive, (AdaptiveBatch, GoodputBatch)):
        raise TypeError(f"adaptive must be a bstf.analysis.AdaptiveBatch or GoodputBatch, got "
                        f"{type(adaptive).__name__}.")
    if plan.milestones:
        raise ValueError(
            f"with adaptive=..., the controller sets the batch and the LR; the plan must have no milestones "
            f"(got {list(plan.milestones)}): it supplies train_size and the momentum.")
    if adaptive.max_batch > plan.train_size:
        raise ValueError(
            f"adaptive.max_batch ({adaptive.max_batch}) is larger than the training set ({plan.train_size} "
            f"examples): one update would span several epochs. Use max_batch <= {plan.train_size}.")
    if isinstance(adaptive, GoodputBatch):
        _check_goodput(adaptive, max_physical_batch, replicas)
        return
    if max_physical_batch is None:
        raise ValueError(
            "adaptive needs max_physical_batch: the micro-batch the noise scale is measured with; at most "
            f"adaptive.min_batch / 2 = {adaptive.min_batch // 2} on one replica.")
    if adaptive.granularity % max_physical_batch:
        raise ValueError(
            f"adaptive.granularity ({adaptive.granularity}) must be a multiple of max_physical_batch "
            f"({max_physical_batch}) so that every batch is a whole number of micro-batches.")
    if max_physical_batch % replicas:
        raise ValueError(f"max_physical_batch ({max_physical_batch}) must divide by the {replicas} replicas.")
    if (adaptive.min_batch // max_physical_batch) * replicas < 2:
        raise ValueError(
            f"at adaptive.min_batch={adaptive.min_batch} one micro-batch of {max_physical_batch} on "
            f"{replicas} replica(s) leaves no small batch to measure the noise scale with; use "
            f"max_physical_batch <= {adaptive.min_batch // 2}.")


def _check_goodput(adaptive, max_physical_batch, replicas):
    """A GoodputBatch chooses physical batches up to its throughput model's limit, for its replica count."""
    throughput = adaptive.throughput
    if max_physical_batch != throughput.max_physical_batch:
        raise ValueError(
            f"with a GoodputBatch, max_physical_batch ({max_physical_batch}) must be its throughput model's "
            f"max_physical_batch ({throughput.max_physical_batch}): pass max_physical_batch="
            f"{throughput.max_physical_batch}, or build the ThroughputModel with the limit you mean.")
    if throughput.replicas != replicas:
        raise ValueError(
            f"the GoodputBatch's throughput model is for {throughput.replicas} replica(s) but the strategy has "
            f"{replicas}; build it with ThroughputModel(..., replicas={replicas}).")
