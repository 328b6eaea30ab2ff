"""Time to a target test accuracy: fixed batches, a noise-scale plan, AdaptiveBatch, the goodput controller.

    python bench/goodput.py                      # both tasks, 3 seeds (tens of minutes on 2 CPUs)
    python bench/goodput.py --tasks=mlp --seeds=1
    python bench/goodput.py --quick              # a tiny smoke version (about a minute)

Two offline tasks (``bstf.data``, nothing downloaded): ``mlp``, an MLP
40 → 256 → 256 → 10 on MNIST-1D, and ``conv``, a small 1-d conv net (three
Conv1D layers of 32 filters) on the same data. Per task and seed, every arm
trains from the same initial weights and data order for the task's epoch
budget; the arms of one seed run back to back in a rotated order (the
machine's drift spreads over all of them), after a warm-up fit that pays the
process's one-off TensorFlow start-up. The arms:

* ``fixed B`` for every B of the grid: a constant batch with the linear LR
  rule (``lr = base_lr · B / base_batch``);
* ``plan``: a ``NoiseScalePlan`` in ``increase_batch`` mode (the batch grows
  by ``factor`` at the milestones, the LR stays);
* ``adaptive``: ``bstf.analysis.AdaptiveBatch`` (B ≈ B_simple, linear rule),
  micro-batches of a fixed physical batch;
* ``goodput``: ``bstf.analysis.GoodputBatch`` (the batch and its physical
  realisation that maximise throughput × statistical efficiency, AdaScale LR).

A callback evaluates the test accuracy every ``eval_every`` epochs (its time
is excluded from the wall clock, which otherwise counts everything from the
call of ``bstf.fit``: tracing, probes, measurements). The table reports, as
mean ± std over the seeds, the wall clock, examples and updates until the
first evaluation at or above the target — one table per target: an early
one and one near the plateau the good fixed batches reach — and the accuracy
at the end of the budget; "best fixed" is the grid's fixed batch with the least mean wall clock
among those that reached the target in every seed. The aim of issue 16: the
goodput arm at ≤ 0.8× the best fixed batch's wall clock at equal final
accuracy (within the seeds' spread). Figures go to stdout as markdown
(pasted into docs/performance.md, "## Goodput").
"""

import dataclasses
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import bstf  # noqa: E402
from bstf import analysis  # noqa: E402

FLAGS = flags.FLAGS
ARMS = ("fixed", "plan", "adaptive", "goodput")


# ============================================================================ configuration
@dataclasses.dataclass(frozen=True)
class Task:
    """One benchmark task: data, model, budget, target and the arms' settings."""

    name: str
    model: str  # "mlp" or "conv"
    num_samples: int  # MNIST-1D examples in total (80 % train)
    epochs: float
    targets: tuple  # test accuracies: an early one and one near the plateau of the good fixed batches
    grid: tuple  # fixed batches
    base_lr: float = 0.05
    base_batch: int = 32
    momentum: float = 0.9
    plan: tuple = (128, (3.0, 6.0, 9.0), 2.0)  # increase_batch: start batch, milestones, factor
    min_batch: int = 64
    max_batch: int = 1024  # controllers and plan: the largest global batch
    max_physical_batch: int = 1024  # goodput: largest physical batch; plan: accumulate beyond it
    adaptive_physical_batch: int = 32  # AdaptiveBatch's micro-batch (its min_batch is twice that)
    every_n_updates: int = 40  # controllers: updates between decisions
    timing_window: int = 5  # goodput: updates per timing (bstf.fit's log_every_n_updates)
    eval_every: float = 0.25  # epochs between two test evaluations


TASKS = {
    "mlp": Task("mlp", "mlp", 10_000, 15, (0.74, 0.77), (32, 64, 128, 256, 512, 1024)),
    "conv": Task("conv", "conv", 10_000, 12, (0.93, 0.95), (32, 64, 128, 256, 512)),
}


def quick(task):
    """A tiny version of ``task`` (smoke test: seconds, not a measurement)."""
    return dataclasses.replace(task, num_samples=1000, epochs=2, targets=(0.2,), grid=(64, 256),
                               plan=(64, (1.0,), 2.0), max_batch=512, max_physical_batch=256,
                               every_n_updates=5, eval_every=0.5)


@dataclasses.dataclass(frozen=True)
class Arm:
    """``kind`` in :data:`ARMS`; ``batch`` is the fixed arm's batch."""

    kind: str
    batch: int = 0

    @property
    def name(self):
        return f"fixed {self.batch}" if self.kind == "fixed" else self.kind


def arms_of(task, kinds=ARMS):
    """The arms of ``task``: one fixed arm per grid batch, then the others in ``kinds``."""
    out = [Arm("fixed", b) for b in task.grid] if "fixed" in kinds else []
    return out + [Arm(k) for k in kinds if k != "fixed"]


def rotated(arms, seed):
    """The arms' order for ``seed``: rotated by the seed's index (interleaving)."""
    i = seed % len(arms)
    return list(arms[i:]) + list(arms[:i])


def configure(task, arm, train_size):
    """``(plan, extra bstf.fit keyword arguments)`` of ``arm``."""
    common = dict(base_lr=task.base_lr, base_batch=task.base_batch)
    if arm.kind == "fixed":
        return bstf.NoiseScalePlan(train_size, **common, base_momentum=task.momentum, batch=arm.batch,
                                   lr_rule="linear"), {}
    if arm.kind == "plan":
        start, milestones, factor = task.plan
        plan = bstf.NoiseScalePlan(train_size, **common, base_momentum=task.momentum, batch=start,
                                   lr_rule="linear", milestones=milestones, factor=factor,
                                   mode="increase_batch", max_batch=task.max_batch)
        return plan, {"max_physical_batch": task.max_physical_batch}
    plan = bstf.NoiseScalePlan(train_size, **common, base_momentum=task.momentum)
    if arm.kind == "adaptive":
        b = task.adaptive_physical_batch
        controller = analysis.AdaptiveBatch(2 * b, task.max_batch, every_n_updates=task.every_n_updates,
                                            lr_rule="linear", granularity=b, **common)
        return plan, {"adaptive": controller, "max_physical_batch": b}
    if arm.kind == "goodput":
        physical = [b for b in (2**j for j in range(5, 20)) if b <= task.max_physical_batch]
        throughput = analysis.ThroughputModel(task.max_physical_batch, physical_batches=physical)
        controller = analysis.GoodputBatch(task.min_batch, task.max_batch, task.every_n_updates, "adascale",
                                           throughput=throughput, granularity=32, **common)
        return plan, {"adaptive": controller, "max_physical_batch": task.max_physical_batch,
                      "log_every_n_updates": task.timing_window}
    raise ValueError(f"arm kind must be one of {ARMS}, got {arm.kind!r}.")


# ============================================================================ data and models
@dataclasses.dataclass(frozen=True)
class TaskData:
    train: bstf.data.Data
    x_test: np.ndarray
    y_test: np.ndarray


def load(task):
    train = bstf.data.load("mnist1d", num_samples=task.num_samples)
    x, y = bstf.data.load("mnist1d", split="test", num_samples=task.num_samples).numpy()
    return TaskData(train, np.asarray(x), np.asarray(y))


def build_model(task, data, seed):
    """The task's network, seeded, compiled with SGD(momentum) (bstf.fit sets its LR)."""
    keras.utils.set_random_seed(seed)
    shape, classes = data.train.input_shape, data.train.num_classes
    if task.model == "mlp":
        layers = [keras.layers.Dense(256, activation="relu"), keras.layers.Dense(256, activation="relu")]
    else:
        layers = [keras.layers.Reshape((*shape, 1))] + [
            keras.layers.Conv1D(32, 5, strides=s, padding="same", activation="relu") for s in (1, 2, 2)
        ] + [keras.layers.Flatten()]
    model = keras.Sequential([keras.Input(shape), *layers, keras.layers.Dense(classes)])
    model.compile(keras.optimizers.SGD(task.base_lr, momentum=task.momentum),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


# ============================================================================ measuring
@dataclasses.dataclass(frozen=True)
class Evaluation:
    seconds: float  # wall clock since the start of the fit, evaluations excluded
    examples: int
    updates: int
    accuracy: float


def first_crossing(evaluations, target):
    """The first :class:`Evaluation` with ``accuracy >= target``, or ``None``."""
    return next((e for e in evaluations if e.accuracy >= target), None)


class TargetWatch(keras.callbacks.Callback):
    """Evaluates the test accuracy every ``every`` examples on the run's clock, off the wall clock.

    ``clock`` is left ``None``: bstf.fit binds its own. ``start`` marks the
    beginning of the timed run.
    """

    def __init__(self, x, y, every):
        super().__init__()
        self.clock = None
        self.x, self.y, self.every = tf.constant(x), np.asarray(y), int(every)
        self.evaluations, self.excluded, self.updates, self.t0 = [], 0.0, 0, None
        self.next = self.every

    def start(self):
        self.t0 = time.perf_counter()

    def set_model(self, model):
        super().set_model(model)
        self._predict = tf.function(lambda x: tf.argmax(model(x, training=False), axis=-1), autograph=False)

    def on_train_batch_end(self, batch, logs=None):
        self.updates += 1
        examples = int(self.clock.examples.numpy())
        if examples >= self.next:
            self.evaluate(examples)
            self.next = (examples // self.every + 1) * self.every

    def evaluate(self, examples):
        now = time.perf_counter()
        accuracy = float(np.mean(self._predict(self.x).numpy() == self.y))
        self.evaluations.append(Evaluation(now - self.t0 - self.excluded, examples, self.updates, accuracy))
        self.excluded += time.perf_counter() - now
        return accuracy

    def final(self, examples):
        """The accuracy at the end of the run (evaluated unless the last evaluation was there)."""
        if self.evaluations and self.evaluations[-1].examples == examples:
            return self.evaluations[-1].accuracy
        return self.evaluate(examples)


@dataclasses.dataclass(frozen=True)
class Result:
    """One run of one arm."""

    task: str
    arm: str
    seed: int
    evaluations: tuple  # of Evaluation, in order
    final_accuracy: float
    seconds: float  # the whole fit, evaluations excluded
    batches: str  # the batches the run trained with, in order

    def crossing(self, target):
        return first_crossing(self.evaluations, target)


def batch_path(phases, limit=6):
    """``"64→128→512"``: the run's successive global batches (repeats merged, at most ``limit`` shown)."""
    batches = []
    for p in phases:
        if not batches or batches[-1] != p["batch_size"]:
            batches.append(p["batch_size"])
    shown = [str(b) for b in batches[:limit]]
    return "→".join(shown) + ("→…" if len(batches) > limit else "")


def run(task, arm, seed, data):
    """Trains ``arm`` on ``task`` from ``seed``'s initial weights; returns its :class:`Result`."""
    model = build_model(task, data, seed)
    plan, extra = configure(task, arm, data.train.size)
    watch = TargetWatch(data.x_test, data.y_test, max(1, round(task.eval_every * data.train.size)))
    watch.start()
    history = bstf.fit(model, data.train, plan, task.epochs, seed=seed, verbose=0, callbacks=[watch], **extra)
    seconds = time.perf_counter() - watch.t0 - watch.excluded
    final = watch.final(history.examples)
    return Result(task.name, arm.name, seed, tuple(watch.evaluations), final, seconds, batch_path(history.phases))


def warm_up(task, data):
    """A short fit that pays TensorFlow's one-off start-up cost before anything is timed."""
    model = build_model(task, data, 0)
    plan, _ = configure(task, Arm("fixed", task.grid[-1]), data.train.size)
    bstf.fit(model, data.train, plan, min(1, task.epochs), seed=0, verbose=0)


# ============================================================================ the table
@dataclasses.dataclass(frozen=True)
class Row:
    """An arm's results over the seeds (means and standard deviations over the seeds that reached)."""

    arm: str
    runs: int
    reached: int
    seconds: tuple  # (mean, std) to target
    examples: tuple
    updates: tuple
    final_accuracy: tuple  # over every run
    batches: str  # the first seed's


def _mean_std(values):
    values = list(values)
    if not values:
        return (float("nan"), float("nan"))
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(results, target):
    """One :class:`Row` per arm (in the order the arms first appear) for reaching ``target``."""
    rows = []
    for arm in dict.fromkeys(r.arm for r in results):
        runs = sorted((r for r in results if r.arm == arm), key=lambda r: r.seed)
        hit = [c for c in (r.crossing(target) for r in runs) if c is not None]
        rows.append(Row(arm, len(runs), len(hit), _mean_std(c.seconds for c in hit),
                        _mean_std(c.examples for c in hit), _mean_std(c.updates for c in hit),
                        _mean_std(r.final_accuracy for r in runs), runs[0].batches))
    return rows


def best_fixed(rows):
    """The fixed-batch row that reached the target in every run with the least mean time (or None)."""
    fixed = [r for r in rows if r.arm.startswith("fixed") and r.reached == r.runs]
    return min(fixed, key=lambda r: r.seconds[0], default=None)


def _pm(pair, fmt):
    return "–" if pair[0] != pair[0] else f"{pair[0]:{fmt}} ± {pair[1]:{fmt}}"


def table(rows):
    """The markdown table of ``rows``; the time ratio is against :func:`best_fixed`."""
    best = best_fixed(rows)
    lines = ["| arm | batches (seed 0) | reached | wall clock to target (s) | × best fixed | examples to target | "
             "updates to target | final accuracy (%) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "–" if best is None or r.reached == 0 else f"{r.seconds[0] / best.seconds[0]:.2f}"
        name = f"**{r.arm}** (best fixed)" if r is best else r.arm
        final = (100 * r.final_accuracy[0], 100 * r.final_accuracy[1])
        lines.append(f"| {name} | {r.batches} | {r.reached}/{r.runs} | {_pm(r.seconds, '.1f')} | {ratio} | "
                     f"{_pm(r.examples, ',.0f')} | {_pm(r.updates, ',.0f')} | {_pm(final, '.2f')} |")
    return "\n".join(lines)


def headline(rows, arm="goodput"):
    """One sentence: ``arm``'s wall clock / the best fixed batch's, and whether the final accuracies agree."""
    best = best_fixed(rows)
    mine = next((r for r in rows if r.arm == arm), None)
    if best is None or mine is None or mine.reached == 0:
        why = ("no fixed batch reached the target in every seed" if best is None
               else f"no {arm} arm ran" if mine is None else f"{arm} never reached it")
        return f"{arm} vs best fixed: no ratio ({why})."
    ratio = mine.seconds[0] / best.seconds[0]
    gap = mine.final_accuracy[0] - best.final_accuracy[0]
    spread = max(mine.final_accuracy[1], best.final_accuracy[1])
    verdict = "within" if abs(gap) <= spread else "outside"
    aim = "met" if ratio <= 0.8 and verdict == "within" and mine.reached == mine.runs else "not met"
    return (f"{arm} / {best.arm} (best fixed): {ratio:.2f}× wall clock to target ({mine.reached}/{mine.runs} "
            f"seeds reached); final accuracy {100 * gap:+.2f} pp, {verdict} the seeds' spread "
            f"(±{100 * spread:.2f} pp). Aim ≤ 0.80× at equal accuracy: {aim}.")


# ============================================================================ main
def _define_flags():
    flags.DEFINE_list("tasks", list(TASKS), f"Tasks to run, of {list(TASKS)}.")
    flags.DEFINE_list("arms", list(ARMS), f"Arm kinds to run, of {list(ARMS)}.")
    flags.DEFINE_integer("seeds", 3, "Seeds per arm (initial weights and data order).")
    flags.DEFINE_bool("quick", False, "Tiny smoke version: small data, 2 epochs, 1 seed, a 2-batch grid.")
    flags.DEFINE_float("epochs", None, "Override every task's epoch budget.")
    flags.DEFINE_list("targets", None, "Override every task's target test accuracies (e.g. 0.7,0.75).")
    flags.DEFINE_list("grid", None, "Override every task's fixed-batch grid.")


def bench_task(task, kinds, seeds):
    """Runs every arm of ``task`` for every seed, interleaved; returns the :class:`Result` list."""
    data = load(task)
    warm_up(task, data)
    arms, results = arms_of(task, kinds), []
    for seed in range(seeds):
        for arm in rotated(arms, seed):
            r = run(task, arm, seed, data)
            results.append(r)
            print(f"  {task.name} seed {seed} {arm.name}: {r.seconds:.1f} s, final {100 * r.final_accuracy:.2f} %, "
                  f"batches {r.batches}", flush=True)
    return results


def _task(name):
    task = quick(TASKS[name]) if FLAGS.quick else TASKS[name]
    overrides = {"epochs": FLAGS.epochs,
                 "targets": None if FLAGS.targets is None else tuple(float(t) for t in FLAGS.targets),
                 "grid": None if FLAGS.grid is None else tuple(int(b) for b in FLAGS.grid)}
    return dataclasses.replace(task, **{k: v for k, v in overrides.items() if v is not None})


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.tasks) - set(TASKS)) + sorted(set(FLAGS.arms) - set(ARMS))
    if unknown:
        raise app.UsageError(f"unknown tasks/arms {unknown}; tasks are {list(TASKS)}, arms {list(ARMS)}.")
    seeds = 1 if FLAGS.quick else FLAGS.seeds
    load_before = os.getloadavg()[0]
    for task in map(_task, FLAGS.tasks):
        results = bench_task(task, FLAGS.arms, seeds)
        for target in task.targets:
            rows = summarise(results, target)
            print(f"\n### {task.name}: MNIST-1D ({task.num_samples} examples, 80 % train), {task.epochs:g} epochs, "
                  f"target test accuracy {100 * target:g} %, {seeds} seed(s), base LR {task.base_lr:g} at batch "
                  f"{task.base_batch}, momentum {task.momentum:g}\n")
            print(table(rows))
            print(f"\n{headline(rows)}\n", flush=True)
    print(f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
