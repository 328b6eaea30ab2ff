"""Batch-size finder: throughput on this hardware x the gradient noise scale.

``find_batch_size(model, data)`` answers "what batch size should I use?" for a
given model, data set and machine:

1. **Throughput curve.** It times training steps at batch sizes 2^k (from
   ``min_batch``) until memory runs out (out-of-memory is caught and reported),
   the data is too small, ``max_batch`` is reached, or throughput stops
   improving (``plateau_tolerance``).
2. **Gradient noise scale** B_noise at the model's current weights
   (McCandlish et al. 2018, via :func:`bstf.analysis.noise_scale`), unless
   given.
3. **Recommendation.** McCandlish's model says reaching a target loss takes
   S = S_min(1 + B_noise/B) updates and E = E_min(1 + B/B_noise) examples.
   With the measured time per update t(B), the predicted time to target is
   S(B)·t(B) ∝ (1 + B_noise/B)·t(B); the finder recommends the batch that
   minimises it (among the measured sizes), reports the predicted
   steps/examples trade-off, the learning rate coupled to it by the chosen
   rule, and a suggested :class:`bstf.NoiseScalePlan`.

The model's weights and optimizer state (a ``mixed_float16`` model's loss
scale included) are restored afterwards. Under ``mixed_float16`` the throughput
is that of the compiled train step (loss-scaled), and the noise scale is
measured on unscaled float32 gradients (see :mod:`bstf.analysis.noise_scale`).
"""

import dataclasses
import math
import time

import keras
import tensorflow as tf

from bstf._checks import check_int
from bstf.analysis import _common
from bstf.schedules import scaled_learning_rate


@dataclasses.dataclass(frozen=True)
class BatchMeasurement:
    """Throughput of one batch size (``status`` is "ok", "oom" or "too_large")."""

    batch_size: int
    examples_per_second: float = float("nan")
    seconds_per_update: float = float("nan")
    status: str = "ok"


@dataclasses.dataclass
class BatchSizeReport:
    """What :func:`find_batch_size` measured and recommends."""

    measurements: list
    noise_scale: float
    recommended_batch: int
    learning_rate: float
    lr_rule: str
    base_lr: float
    base_batch: int
    train_size: int
    stop_reason: str

    @property
    def ok(self):
        return [m for m in self.measurements if m.status == "ok"]

    def predicted(self, batch_size):
        """McCandlish trade-off at ``batch_size``: (S/S_min, E/E_min, relative time)."""
        b, bn = float(batch_size), self.noise_scale
        steps = 1.0 + bn / b
        examples = 1.0 + b / bn
        m = {x.batch_size: x for x in self.ok}.get(batch_size)
        time_rel = steps * m.seconds_per_update if m else float("nan")
        return steps, examples, time_rel

    def table(self):
        """Plain-text table, time to target relative to the recommended batch."""
        best_time = self.predicted(self.recommended_batch)[2]
        lines = [
            f"{'batch':>7} {'examples/s':>11} {'s/update':>9} {'S/S_min':>8} "
            f"{'E/E_min':>8} {'time/best':>9}  note",
        ]
        for m in self.measurements:
            if m.status != "ok":
                lines.append(f"{m.batch_size:>7} {'-':>11} {'-':>9} {'-':>8} {'-':>8} {'-':>9}  {m.status}")
                continue
            steps, examples, t = self.predicted(m.batch_size)
            note = "<- recommended" if m.batch_size == self.recommended_batch else ""
            lines.append(
                f"{m.batch_size:>7} {m.examples_per_second:>11.0f} {m.seconds_per_update:>9.4f} "
                f"{steps:>8.2f} {examples:>8.2f} {t / best_time:>9.2f}  {note}"
            )
        return "\n".join(lines)

    def summary(self):
        """The table plus the recommendation in words."""
        b = self.recommended_batch
        steps, examples, _ = self.predicted(b)
        return "\n".join(
            [
                self.table(),
                "",
                f"gradient noise scale B_noise ~ {self.noise_scale:.1f} "
                f"(throughput sweep stopped: {self.stop_reason})",
                f"recommended batch size: {b}  (predicted {steps:.2f}x the minimum number of "
                f"updates and {examples:.2f}x the minimum number of examples)",
                f"learning rate: {self.learning_rate:.6g}  ({self.lr_rule} rule from "
                f"{self.base_lr:g} at batch {self.base_batch})",
                "suggested plan: bstf.NoiseScalePlan("
                f"train_size={self.train_size}, base_lr={self.base_lr:g}, "
                f"base_batch={self.base_batch}, batch={b}, lr_rule={self.lr_rule!r}, "
                "warmup_epochs=5, milestones=..., mode='increase_batch', "
                f"max_batch={max(m.batch_size for m in self.ok)})",
            ]
        )

    def plot(self, path):
        """PNG: throughput and predicted time-to-target against batch size."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ok = self.ok
        bs = [m.batch_size for m in ok]
        best_time = self.predicted(self.recommended_batch)[2]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.plot(bs, [m.examples_per_second for m in ok], "o-")
        ax1.set(xscale="log", xlabel="batch size", ylabel="examples / s", title="throughput")
        ax2.plot(bs, [self.predicted(b)[2] / best_time for b in bs], "o-")
        ax2.axvline(self.noise_scale, ls="--", c="gray", label=f"B_noise ~ {self.noise_scale:.0f}")
        ax2.axvline(self.recommended_batch, ls=":", c="C3", label=f"recommended {self.recommended_batch}")
        ax2.set(xscale="log", xlabel="batch size", ylabel="predicted time to target (rel.)",
                title="S_min(1 + B_noise/B) x time per update")
        ax2.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _as_dataset(data):
    """(unbatched dataset, size) of finite data in any form ``bstf.analysis`` accepts."""
    dataset, size = _common.as_dataset(data)
    if size is None:
        raise ValueError(
            "data is a tf.data.Dataset of unknown size; pass a finite dataset of known size (e.g. "
            "`dataset.take(n)`) or a bstf.data.Data."
        )
    return dataset, size


def measure_throughput(model, dataset, batch_size, num_updates=10, warmup_updates=2):
    """Examples/s of ``model``'s compiled train step at ``batch_size``.

    Times ``num_updates`` calls of the model's train function after
    ``warmup_updates`` untimed ones (which include tracing). Raises
    ``tf.errors.ResourceExhaustedError`` when the batch does not fit.
    """
    batches = dataset.repeat().batch(batch_size, drop_remainder=True).prefetch(2)
    strategy = model.distribute_strategy
    it = iter(strategy.experimental_distribute_dataset(batches))
    model.make_train_function()
    step = model.train_function  # the same compiled step model.fit runs
    for _ in range(warmup_updates):
        _sync(step(it))
    start = time.perf_counter()
    for _ in range(num_updates):
        out = step(it)
    _sync(out)
    seconds = (time.perf_counter() - start) / num_updates
    return BatchMeasurement(batch_size, batch_size / seconds, seconds)


def _sync(logs):
    if hasattr(logs, "get_value"):  # Keras wraps step outputs in a tf.experimental.Optional
        logs = logs.get_value()
    for v in tf.nest.flatten(logs):
        if hasattr(v, "numpy"):
            v.numpy()


def find_batch_size(
    model,
    data,
    *,
    min_batch=8,
    max_batch=None,
    num_updates=10,
    noise_scale=None,
    noise_scale_batches=(32, 512),
    noise_scale_num_batches=8,
    base_lr=None,
    base_batch=None,
    lr_rule="linear",
    plateau_tolerance=0.05,
    verbose=0,
):
    """Measures throughput per batch size and recommends a batch size and LR.

    Args:
      model: a compiled Keras model (its loss is used for the noise scale).
      data: a bstf.data.Data, an unbatched ``tf.data.Dataset`` of (x, y), or
        (x, y) arrays: the training data (only a few batches are read).
      min_batch: smallest batch size tried (>= 1); sizes are ``min_batch·2^k``.
      max_batch: largest batch size tried (default: the data size).
      num_updates: timed updates per batch size (>= 1).
      noise_scale: B_noise if already known; otherwise measured with
        :func:`bstf.analysis.noise_scale` using ``noise_scale_batches``
        (small, big) and ``noise_scale_num_batches`` pairs.
      base_lr, base_batch: the LR known to work at ``base_batch`` (defaults:
        the optimizer's current LR at ``min_batch``); the recommended batch's
        LR is coupled to it by ``lr_rule`` ("linear", "sqrt" or "none").
      plateau_tolerance: stop when a doubling improves examples/s by less
        than this fraction (0 disables the plateau stop).
      verbose: 1 prints each measurement.

    Returns:
      A :class:`BatchSizeReport`; ``report.summary()`` is the text,
      ``report.plot(path)`` the PNG.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}.")
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError("model must be compiled (model.compile(optimizer=..., loss=...)) before find_batch_size.")
    min_batch = check_int("min_batch", min_batch)
    num_updates = check_int("num_updates", num_updates)
    if lr_rule not in ("linear", "sqrt", "none"):
        raise ValueError(f"lr_rule must be one of 'linear', 'sqrt', 'none', got {lr_rule!r}.")
    if not 0 <= plateau_tolerance < 1:
        raise ValueError(f"plateau_tolerance must be in [0, 1), got {plateau_tolerance}.")
    dataset, size = _as_dataset(data)
    if size < min_batch:
        raise ValueError(
            f"the data has {size} examples, fewer than min_batch={min_batch}; "
            "pass more data or a smaller min_batch."
        )
    max_batch = check_int("max_batch", size if max_batch is None else max_batch)
    if max_batch < min_batch:
        raise ValueError(f"max_batch ({max_batch}) must be >= min_batch ({min_batch}).")
    if noise_scale is not None and not noise_scale > 0:
        raise ValueError(f"noise_scale must be > 0, got {noise_scale}.")
    if base_lr is None:
        base_lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    if base_batch is None:
        base_batch = min_batch
    base_batch = check_int("base_batch", base_batch)

    # Build the model and its optimizer first, so that the state saved here is all the state the sweep
    # changes (an unbuilt optimizer — its slots, a LossScaleOptimizer's dynamic scale — would be restored
    # into the wrong variables by position).
    _common.ensure_built(model, next(iter(dataset.batch(1).take(1)))[0])
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    saved_weights = [v.numpy() for v in model.weights]
    saved_opt = [v.numpy() for v in model.optimizer.variables]
    try:
        measurements, stop_reason = _sweep(
            model, dataset, size, min_batch, max_batch, num_updates, plateau_tolerance, verbose
        )
        ok = [m for m in measurements if m.status == "ok"]
        if not ok:
            raise ValueError(
                f"the model does not fit in memory even at the smallest batch size {min_batch}; "
                "try a smaller min_batch or a smaller model."
            )
        # Noise scale at the original weights.
        for v, w in zip(model.weights, saved_weights):
            v.assign(w)
        if noise_scale is None:
            noise_scale = _measure_noise_scale(
                model, dataset, size, noise_scale_batches, noise_scale_num_batches
            )
    finally:
        for v, w in zip(model.weights, saved_weights):
            v.assign(w)
        for v, w in zip(model.optimizer.variables, saved_opt):
            v.assign(w)

    best = min(ok, key=lambda m: (1.0 + noise_scale / m.batch_size) * m.seconds_per_update)
    return BatchSizeReport(
        measurements=measurements,
        noise_scale=float(noise_scale),
        recommended_batch=best.batch_size,
        learning_rate=scaled_learning_rate(base_lr, base_batch, best.batch_size, lr_rule),
        lr_rule=lr_rule,
        base_lr=float(base_lr),
        base_batch=base_batch,
        train_size=size,
        stop_reason=stop_reason,
    )


def _sweep(model, dataset, size, min_batch, max_batch, num_updates, tolerance, verbose):
    measurements, batch = [], min_batch
    while True:
        if batch > max_batch:
            return measurements, f"reached max_batch={max_batch}"
        if batch > size:
            measurements.append(BatchMeasurement(batch, status="too_large"))
            return measurements, f"batch {batch} exceeds the {size} examples given"
        try:
            m = measure_throughput(model, dataset, batch, num_updates=num_updates)
        except tf.errors.ResourceExhaustedError:
            measurements.append(BatchMeasurement(batch, status="oom"))
            return measurements, f"out of memory at batch {batch}"
        measurements.append(m)
        if verbose:
            print(f"batch {batch:>6}: {m.examples_per_second:10.0f} examples/s")
        ok = [x for x in measurements if x.status == "ok"]
        if tolerance and len(ok) >= 3:
            a, b, c = (x.examples_per_second for x in ok[-3:])
            if b < a * (1 + tolerance) and c < b * (1 + tolerance):
                return measurements, "throughput stopped improving"
        batch *= 2


def _measure_noise_scale(model, dataset, size, batches, num_batches):
    from bstf import analysis

    small, big = batches
    big = min(big, size)
    small = min(small, big // 2)
    if small < 1:
        raise ValueError(f"the data ({size} examples) is too small to measure the noise scale.")
    result = analysis.noise_scale(
        model, dataset, small_batch=small, big_batch=big, num_batches=num_batches
    )
    b = float(result.b_simple)
    if not math.isfinite(b) or b <= 0:
        raise ValueError(
            f"the measured gradient noise scale is not positive ({b}); the gradient signal is "
            "too weak to estimate at these weights; pass noise_scale= or more noise_scale_num_batches."
        )
    return b
