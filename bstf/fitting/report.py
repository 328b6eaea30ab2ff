"""What a :func:`bstf.fit` run reports: its ledger (counters, Keras History, phase records), TensorBoard and
the progress bar. Objects with methods the loop calls; tag names come from :mod:`bstf.tags`.
"""

import contextlib
import dataclasses
import json
import math
import os
import time

import keras
import tensorflow as tf

from bstf import tags
from bstf.plan import sgd_noise


class Ledger:
    """What the run has done: examples, updates, epochs, the Keras ``History`` and one record per phase.

    Resumed from a run record (:meth:`record` writes its part of it), so a resumed run continues the
    same history, phase records and counters. A phase record is the phase's fields
    (:class:`bstf.plan.Phase`, as a dict) with ``updates`` counting the updates run and ``wall_time``
    the seconds spent in them (epoch ends and checkpoints excluded).
    """

    def __init__(self, spec, record=None):
        record = record or {}
        self.train_size, self.epochs = spec.train_size, spec.epochs
        self.examples, self.updates = record.get("examples", 0), record.get("updates", 0)
        self.skipped = record.get("skipped_updates", 0)
        self.phases = [dict(p) for p in record.get("phases", [])]
        self.history = keras.callbacks.History()
        self.history.history = {k: list(v) for k, v in record.get("history", {}).items()}
        done = self.examples >= self.epochs * self.train_size
        # the epoch the next update starts in (0-based; past the last one when the run is done)
        self.epoch = math.ceil(self.epochs) if done else int(self.examples // self.train_size)
        self.mid_epoch = not done and self.examples % self.train_size != 0  # resumed inside an epoch
        self._since = None

    def resume_history(self):
        """After ``on_train_begin`` (which empties ``History.epoch``): the epochs of the history so far."""
        self.history.epoch = list(range(len(next(iter(self.history.history.values()), []))))

    # ------------------------------------------------------------------ epochs
    @property
    def last_epoch(self):
        return math.ceil(self.epochs) - 1

    @property
    def epoch_end(self):
        """The clock at which the current epoch ends (the run's end for a final partial epoch)."""
        return min((self.epoch + 1) * self.train_size, self.epochs * self.train_size)

    def epoch_ended(self):
        return self.epoch <= self.last_epoch and self.examples >= self.epoch_end

    def epoch_examples(self):
        """(examples of the current epoch so far, the epoch's examples) for the progress bar."""
        start = self.epoch * self.train_size
        return int(min(self.examples, self.epoch_end) - start), int(self.epoch_end - start)

    # ------------------------------------------------------------------ phases and updates
    def begin_phase(self, phase):
        """Starts (or, resumed, continues) ``phase``'s record; returns the updates left in it."""
        done, rest = divmod(self.examples - phase.start_examples, phase.batch_size)
        if done < 0 or rest:
            raise ValueError(f"the checkpoint's clock ({self.examples} examples) is not at an update boundary of "
                             "the plan; the checkpoint belongs to another run.")
        if not self.phases or self.phases[-1]["index"] != phase.index:
            self.phases.append({**dataclasses.asdict(phase), "updates": 0, "wall_time": 0.0})
        self._since = time.perf_counter()
        return phase.updates - done

    def count(self, phase):
        """One update of ``phase`` done."""
        self.examples += phase.batch_size
        self.updates += 1
        self.phases[-1]["updates"] += 1

    def end_phase(self, adaptive):
        """The phase's time; an adaptive phase ends where the controller changed the batch."""
        self.phases[-1]["wall_time"] += time.perf_counter() - self._since
        if adaptive:
            self.phases[-1]["end_epoch"] = self.examples / self.train_size

    @contextlib.contextmanager
    def paused(self):
        """Time not counted in the phase's ``wall_time`` (epoch ends, checkpoints)."""
        self.phases[-1]["wall_time"] += time.perf_counter() - self._since
        try:
            yield
        finally:
            self._since = time.perf_counter()

    def update_of(self, examples, phase):
        """The 1-based number of the update of the current ``phase`` that started at ``examples``."""
        return self.updates - (self.examples - examples) // phase.batch_size + 1

    # ------------------------------------------------------------------ the record
    def record(self):
        """The ledger's part of the run record (JSON-able)."""
        return {"examples": int(self.examples), "updates": self.updates, "skipped_updates": self.skipped,
                "history": self.history.history, "phases": self.phases}

    def finish(self, seed):
        """The History ``bstf.fit`` returns."""
        h = self.history
        h.phases = [dict(p) for p in self.phases]
        h.updates, h.examples, h.seed, h.skipped_updates = self.updates, self.examples, seed, self.skipped
        return h


class Board:
    """TensorBoard (chief only): the ``train`` and ``validation`` runs under ``logdir``; tags from bstf.tags."""

    def __init__(self, spec):
        self.enabled = bool(spec.logdir) and spec.chief
        self.every, self.skip = spec.log_every_n_updates, spec.on_nonfinite == "skip" or spec.loss_scaled
        self.train_size = spec.train_size
        self.logged_phase = None  # start_examples of the phase of the last logged update
        if self.enabled:
            self.writers = {run: tf.summary.create_file_writer(os.path.join(spec.logdir, run))
                            for run in (tags.TRAIN, tags.VALIDATION)}

    def start(self, spec, seed):
        """Step 0: the run's hparams and the plan's image."""
        if not self.enabled:
            return
        from tensorboard.plugins.hparams import api as hp

        png = spec.plan.plot(spec.epochs, os.path.join(spec.logdir, "plan.png"))
        extra = {"epochs": spec.epochs, "max_physical_batch": spec.max_physical_batch, "seed": seed}
        params = {k: (v if isinstance(v, (bool, int, float, str)) else json.dumps(v))
                  for k, v in {**spec.plan.get_config(), **extra}.items() if v is not None}
        with self.writers[tags.TRAIN].as_default(step=0):
            hp.hparams(params)
            tf.summary.image(tags.PLAN, tf.image.decode_png(tf.io.read_file(png))[None])

    def due(self, update, phase):
        """Whether update ``update`` (1-based) of ``phase`` is logged: every ``log_every_n_updates``-th, and the
        first of each phase (and after a resume), so a phase of few large updates still shows its batch and LR."""
        return self.enabled and (update % self.every == 0 or phase.start_examples != self.logged_phase)

    def update(self, phase, used, ledger, logs, skipped):
        """Update ``ledger.updates + 1``, which started at ``ledger.examples``, used ``used`` (LR, momentum,
        and the loss scale under ``mixed_float16``)."""
        lr, m = used["learning_rate"], used["momentum"]
        values = {tags.LEARNING_RATE: lr, tags.MOMENTUM: m, tags.BATCH_SIZE: phase.batch_size,
                  tags.ACCUMULATION: phase.accumulation, tags.PHYSICAL_BATCH: phase.physical_batch,
                  tags.SGD_NOISE: sgd_noise(lr, self.train_size, phase.batch_size, m),
                  tags.EPOCH: ledger.examples / self.train_size, tags.UPDATES: ledger.updates + 1,
                  tags.EXAMPLES_SEEN: ledger.examples, tags.BATCH_LOSS: float(logs["loss"])}
        if self.skip:
            values[tags.SKIPPED_UPDATES] = skipped
        if "loss_scale" in used:
            values[tags.LOSS_SCALE] = used["loss_scale"]
        self.scalars(tags.TRAIN, values, ledger.examples)
        self.logged_phase = phase.start_examples

    def measured(self, estimate, examples):
        self.scalars(tags.TRAIN, {tags.MEASURED_B_SIMPLE: estimate.b_simple,
                                  tags.MEASURED_GRAD_NORM_SQ: estimate.grad_norm_sq,
                                  tags.MEASURED_TRACE_SIGMA: estimate.trace_sigma}, examples)

    def adascale(self, progress, examples):
        """A batch controller's AdaScale progress at the update that starts at ``examples``."""
        self.scalars(tags.TRAIN, {tags.ADASCALE_PROGRESS: progress}, examples)

    def decision(self, scalars, examples):
        """A goodput decision's fields (``None``: no decision), made after the update that ended at ``examples``."""
        if scalars is not None:
            self.scalars(tags.TRAIN, {tags.decision(k): v for k, v in scalars.items()}, examples)

    def epoch(self, metrics, epoch, examples):
        """Epoch ``epoch`` (1-based) ended at ``examples``: its train and ``val_`` metrics."""
        for k, v in metrics.items():
            run, name = (tags.VALIDATION, k[4:]) if k.startswith("val_") else (tags.TRAIN, k)
            self.scalars(run, {tags.epoch_metric(name): v}, epoch)
            self.scalars(run, {tags.examples_metric(name): v}, examples)

    def close(self, history, examples):
        if not self.enabled:
            return
        final = {tags.final_metric(k): v[-1] for k, v in history.history.items() if v}
        self.scalars(tags.TRAIN, final, examples)
        for writer in self.writers.values():
            writer.close()

    def scalars(self, run, values, step):
        if not self.enabled:
            return
        with self.writers[run].as_default(step=int(step)):
            for tag, value in values.items():
                tf.summary.scalar(tag, float(value))


class Progress:
    """What ``verbose`` prints (chief only): 1 a progress bar per epoch, 2 one line per epoch; both a line
    per phase when the batch changes during the run."""

    def __init__(self, spec):
        self.verbose = spec.verbose if spec.chief else 0
        self.epochs = math.ceil(spec.epochs)
        self.phase_lines = len(spec.phases) > 1 or spec.adaptive is not None
        self.bar, self._last = None, 0.0

    def begin_epoch(self, epoch, phase, target):
        """Epoch ``epoch`` (0-based) of ``target`` examples starts; its first update is in ``phase``."""
        if self.verbose != 1:
            return
        print(f"Epoch {epoch + 1}/{self.epochs} - phase {phase.index} - batch {phase.batch_size}"
              + (f" ({phase.accumulation} x {phase.physical_batch})" if phase.accumulation > 1 else ""))
        self.bar = keras.utils.Progbar(target, verbose=1, unit_name="example", stateful_metrics=["lr"])

    def phase(self, phase, adaptive):
        if not (self.verbose and self.phase_lines):
            return
        span = (f"epochs {phase.start_epoch:.3g}-{phase.end_epoch:.3g}" if not adaptive
                else f"from epoch {phase.start_epoch:.3g} (adaptive)")
        print(f"Phase {phase.index}: {span}, batch {phase.batch_size} ({phase.accumulation} x "
              f"{phase.physical_batch}), lr {phase.learning_rate:.4g}, momentum {phase.momentum:g}"
              + (f", {phase.updates} updates" if not adaptive else ""))

    def due(self):
        """Whether the bar is redrawn now (at most 5 times a second: it reads the loss, a host sync)."""
        return self.bar is not None and time.perf_counter() - self._last > 0.2

    def update(self, seen, logs, learning_rate):
        self._last = time.perf_counter()
        self.bar.update(seen, [("loss", float(logs["loss"])), ("lr", learning_rate)])

    def end_epoch(self, epoch, ledger, metrics):
        shown = {k: v for k, v in metrics.items() if not k.startswith("val_")}
        if self.bar is not None:
            self.bar.update(self.bar.target, list(shown.items()), finalize=True)
            self.bar = None
        elif self.verbose == 2:
            print(f"Epoch {epoch + 1}/{self.epochs} - examples {ledger.examples} - updates {ledger.updates} - "
                  + " - ".join(f"{k}: {v:.4f}" for k, v in metrics.items()))
