"""Cost of the loss-scaled accumulated update: float32 vs mixed_float16 vs mixed_bfloat16, same model, same run.

    python bench/mixed_precision.py                       # defaults: B = 256, k = 4 (micro-batch 64)
    python bench/mixed_precision.py --mirrored=false --repeats=3

Per strategy (one device; with ``--mirrored``, MirroredStrategy on the CPU split
into 2 logical devices), five configurations of updates of batch ``B``:

- ``float32`` plain ``model.fit(batch_size=B)`` and ``Accumulate(SGD, k)``
  on micro-batches of ``B/k``;
- ``mixed_float16`` plain (Keras wraps SGD in its ``LossScaleOptimizer``) and
  ``Accumulate(LossScaleOptimizer(SGD), k)`` (bstf's ``LossScaledAccumulate``:
  one overflow check and one loss-scale decision per update);
- ``mixed_bfloat16`` ``Accumulate(SGD, k)`` (no loss scale).

Each gets a fresh model (same seed), its optimizer built before ``fit``, a
warm-up epoch that traces, then ``--repeats`` timed epochs, configurations
alternating within each round; reported: examples/s of the fastest epoch (wall
clock) and, per configuration, the CPU time (``time.process_time``, all
threads) of its cheapest epoch relative to float32 with the same batching —
the steadier figure on a CPU shared with other jobs. Then the optimizer alone: µs per
``optimizer.apply`` (one micro-step) of float32 gradients in a
``tf.while_loop`` (the optimizers taking turns, cheapest of ``3 × --repeats``
rounds), which isolates what loss scaling adds to the update from
the float16 compute (which on a CPU is emulated and slow; on a GPU it is what
Tensor Cores accelerate). Also (``--bstf_fit``) the same comparison through
``bstf.fit`` on one device: a plan of constant batch ``B``, ``max_physical_batch``
``B`` or ``B/k``, the model compiled with plain SGD (``mixed_float16``: Keras
wraps it in a ``LossScaleOptimizer``, bstf.fit wraps that in an Accumulate).
Figures go to stdout as markdown (pasted into
docs/performance.md, "## Mixed precision").
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import bstf  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 256, "Batch B of one update.")
flags.DEFINE_integer("k", 4, "Micro-batches per update (micro-batch B/k).")
flags.DEFINE_integer("examples", 8192, "Synthetic training examples (one timed epoch).")
flags.DEFINE_integer("features", 64, "Input features.")
flags.DEFINE_integer("width", 256, "Hidden width of the MLP.")
flags.DEFINE_integer("repeats", 5, "Timed epochs per configuration.")
flags.DEFINE_bool("mirrored", True, "Also run under MirroredStrategy on 2 logical CPUs.")
flags.DEFINE_bool("fit", True, "Time model.fit epochs (false: only the optimizer-alone table).")
flags.DEFINE_bool("bstf_fit", True, "Time bstf.fit epochs (one device): float32 vs mixed_float16 vs mixed_bfloat16.")

LSO = keras.optimizers.LossScaleOptimizer
tf.get_logger().setLevel("ERROR")  # MirroredStrategy's per-reduction INFO lines


def sgd():
    return keras.optimizers.SGD(0.05, momentum=0.9)


def configurations():
    """name -> (dtype policy, batch, optimizer factory, label)."""
    b, k = FLAGS.batch_size, FLAGS.k
    acc = f"`Accumulate`, k = {k} × {b // k}"
    return {
        "f32_plain": ("float32", b, sgd, f"plain, batch {b}"),
        "f32_acc": ("float32", b // k, lambda: bstf.optimizers.Accumulate(sgd(), k), acc),
        "f16_plain": ("mixed_float16", b, sgd, f"plain, batch {b} (Keras's `LossScaleOptimizer`)"),
        "f16_acc": ("mixed_float16", b // k, lambda: bstf.optimizers.Accumulate(LSO(sgd()), k),
                    f"`Accumulate(LossScaleOptimizer(SGD))`, k = {k} × {b // k}"),
        "bf16_acc": ("mixed_bfloat16", b // k, lambda: bstf.optimizers.Accumulate(sgd(), k), acc),
    }


def build(policy, optimizer, strategy):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = keras.Sequential([
                keras.Input((FLAGS.features,)),
                keras.layers.Dense(FLAGS.width, activation="relu"),
                keras.layers.Dense(FLAGS.width, activation="relu"),
                keras.layers.Dense(10),
            ])
            model.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            model.optimizer.build(model.trainable_variables)  # slots now, not in the first trace
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    return model


def run(strategy, x, y):
    models = {}
    for name, (policy, batch, make, _) in configurations().items():
        model = build(policy, make, strategy)
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)  # warm-up: traces
        models[name] = (model, batch, [], [])
    for _ in range(FLAGS.repeats):
        for model, batch, wall, cpu in models.values():
            start, start_cpu = time.perf_counter(), time.process_time()
            model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return {name: (len(x) / min(wall), min(cpu)) for name, (_, _, wall, cpu) in models.items()}


def apply_loop(model):
    """A tf.function applying the model's optimizer ``n`` times to fixed float32 gradients."""
    variables, optimizer = model.trainable_variables, model.optimizer
    grads = [tf.ones(v.shape) * 1e-3 for v in variables]

    @tf.function
    def loop(n):
        for _ in tf.range(n):
            optimizer.apply(grads, variables)

    return loop


def apply_costs(makers, applies=2000, rounds=None):
    """label -> (wall, CPU) microseconds per optimizer.apply (one micro-step) of float32 gradients.

    The optimizers take turns within each round (a load change on a shared CPU hits all of them); the
    cheapest round of each is reported.
    """
    loops = {}
    for label, make in makers.items():
        loop = apply_loop(build("float32", make, tf.distribute.get_strategy()))
        loop(tf.constant(8))  # trace
        loops[label] = (loop, [], [])
    for _ in range(rounds or 3 * FLAGS.repeats):
        for loop, wall, cpu in loops.values():
            start, start_cpu = time.perf_counter(), time.process_time()
            loop(tf.constant(applies))
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return {label: (min(wall) / applies * 1e6, min(cpu) / applies * 1e6) for label, (_, wall, cpu) in loops.items()}


def main(argv):
    del argv
    if FLAGS.batch_size % FLAGS.k:
        raise app.UsageError(f"--batch_size={FLAGS.batch_size} must be a multiple of --k={FLAGS.k}.")
    if FLAGS.mirrored:
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    rng = np.random.RandomState(0)
    x = rng.randn(FLAGS.examples, FLAGS.features).astype("float32")
    y = rng.randint(0, 10, FLAGS.examples)
    strategies = {"single device": tf.distribute.get_strategy()}
    if FLAGS.mirrored:
        strategies["Mirrored, 2 logical CPUs"] = tf.distribute.MirroredStrategy(
            ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    print(f"MLP {FLAGS.features}-{FLAGS.width}-{FLAGS.width}-10, SGD(0.05, momentum=0.9), {FLAGS.examples} "
          f"examples per epoch, best of {FLAGS.repeats} epochs, TF {tf.__version__} / Keras {keras.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.\n")
    if FLAGS.fit:
        fit_table(strategies, x, y)
    if FLAGS.bstf_fit:
        bstf_fit_table(x, y)
    optimizer_table()


def fit_table(strategies, x, y):
    print("| strategy | policy | configuration | examples/s (wall) | CPU time × float32, same batching |")
    print("|---|---|---|---:|---:|")
    configs = configurations()
    for strategy_name, strategy in strategies.items():
        results = run(strategy, x, y)
        for name, (policy, _, _, label) in configs.items():
            rate, cpu = results[name]
            base = results["f32_plain" if name.endswith("plain") else "f32_acc"][1]
            print(f"| {strategy_name} | {policy} | {label} | {rate:,.0f} | {cpu / base:.2f} |")


def bstf_fit_configurations():
    """name -> (dtype policy, max_physical_batch, label): bstf.fit of updates of B, plain or k micro-batches.

    Every model is compiled with plain SGD; under mixed_float16 ``model.compile`` wraps it in a
    LossScaleOptimizer and bstf.fit wraps that in an Accumulate (k >= 1: one loss-scale decision per update).
    """
    b, k = FLAGS.batch_size, FLAGS.k
    return {
        "f32_plain": ("float32", b, f"k = 1 × {b}"),
        "f32_acc": ("float32", b // k, f"k = {k} × {b // k}"),
        "f16_plain": ("mixed_float16", b, f"k = 1 × {b} (`LossScaledAccumulate`, k = 1)"),
        "f16_acc": ("mixed_float16", b // k, f"k = {k} × {b // k} (`LossScaledAccumulate`)"),
        "bf16_acc": ("mixed_bfloat16", b // k, f"k = {k} × {b // k}"),
    }


def bstf_fit_table(x, y):
    """bstf.fit epochs per configuration (one device), interleaved; the fastest epoch's update time (the
    phase's ``wall_time``: epoch ends excluded) and the cheapest epoch's CPU time relative to float32."""
    data = tf.data.Dataset.from_tensor_slices((x, y))
    plan = bstf.NoiseScalePlan(len(x), 0.05, FLAGS.batch_size, base_momentum=0.9)
    runs = {}
    for name, (policy, physical, _) in bstf_fit_configurations().items():
        model = build(policy, sgd, tf.distribute.get_strategy())
        bstf.fit(model, data, plan, 1, max_physical_batch=physical, shuffle=False, verbose=0, seed=0)  # traces
        runs[name] = (model, physical, [], [])
    for _ in range(FLAGS.repeats):
        for model, physical, wall, cpu in runs.values():
            start_cpu = time.process_time()
            history = bstf.fit(model, data, plan, 1, max_physical_batch=physical, shuffle=False, verbose=0, seed=0)
            cpu.append(time.process_time() - start_cpu)
            wall.append(sum(p["wall_time"] for p in history.phases))
    print("\n`bstf.fit` (single device), updates of B = "
          f"{FLAGS.batch_size}: examples/s of the fastest epoch's updates, CPU time of the cheapest epoch.\n")
    print("| policy | realisation | examples/s (updates) | CPU time × float32, same batching |")
    print("|---|---|---:|---:|")
    for name, (policy, _, label) in bstf_fit_configurations().items():
        _, _, wall, cpu = runs[name]
        base = min(runs["f32_plain" if name.endswith("plain") else "f32_acc"][3])
        print(f"| {policy} | {label} | {len(x) / min(wall):,.0f} | {min(cpu) / base:.2f} |")


def optimizer_table():
    k = FLAGS.k
    print("\nOptimizer alone (single device): `optimizer.apply` of float32 gradients in a `tf.while_loop`.\n")
    print("| optimizer | µs per call (wall) | CPU µs per call |")
    print("|---|---:|---:|")
    makers = {
        "Keras `SGD`, an update every call": sgd,
        "Keras `LossScaleOptimizer(SGD)`, an update every call": lambda: LSO(sgd()),
        f"bstf `Accumulate(SGD)`, k = {k}": lambda: bstf.optimizers.Accumulate(sgd(), k),
        f"bstf `Accumulate(LossScaleOptimizer(SGD))`, k = {k}": lambda: bstf.optimizers.Accumulate(LSO(sgd()), k),
        "bstf `Accumulate(SGD)`, k = 1": lambda: bstf.optimizers.Accumulate(sgd(), 1),
        "bstf `Accumulate(LossScaleOptimizer(SGD))`, k = 1": lambda: bstf.optimizers.Accumulate(LSO(sgd()), 1),
    }
    for label, (wall, cpu) in apply_costs(makers).items():
        print(f"| {label} | {wall:.0f} | {cpu:.0f} |")


if __name__ == "__main__":
    app.run(main)
