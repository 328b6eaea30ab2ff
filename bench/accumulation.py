"""Throughput of gradient accumulation: plain batch B vs bstf Accumulate vs Keras's built-in, same model, same run.

    python bench/accumulation.py                          # defaults: B = 256, k = 4 (micro-batch 64)
    python bench/accumulation.py --batch_size=512 --k=8 --repeats=5

Three ways to make updates of batch ``B`` on one device:

- ``plain``: ``model.fit(batch_size=B)``;
- ``bstf``: ``bstf.optimizers.Accumulate(SGD, steps=k)``, ``model.fit(batch_size=B/k)``;
- ``keras``: ``SGD(gradient_accumulation_steps=k)``, ``model.fit(batch_size=B/k)``;

plus, for reference, plain ``model.fit(batch_size=B/k)`` (the same forward and
backward passes as accumulation, an update after each);

and, with ``--mirrored`` (default on), the same three under ``MirroredStrategy``
on the CPU split into 2 logical devices (Keras's built-in accumulation fails
there; the table says so). Each configuration gets a fresh model (same seed),
its optimizer built before ``fit``, a warm-up epoch that traces the train
function, then ``--repeats`` timed epochs (configurations alternate within
each round). Reported: examples/s of the fastest epoch (the best-of-N of
``timeit``: on a CPU shared with other jobs the median moves by ±50 % between
runs, the best much less), the ratio to ``plain`` of the same
strategy, and how many times ``train_step`` was traced over the whole run
(warm-up included). Figures go to stdout as a markdown table (pasted into
docs/performance.md, "## Gradient accumulation"), followed by the cost of
one ``optimizer.apply`` alone (µs per micro-step), which the end-to-end
figures are too noisy to resolve on a shared CPU.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import bstf  # noqa: E402
import common  # noqa: E402  (bench/common.py)

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 256, "Batch B of one update.")
flags.DEFINE_integer("k", 4, "Micro-batches per update (micro-batch B/k).")
flags.DEFINE_integer("examples", 8192, "Synthetic training examples (one timed epoch).")
flags.DEFINE_integer("features", 64, "Input features.")
flags.DEFINE_integer("width", 256, "Hidden width of the MLP.")
flags.DEFINE_integer("repeats", 7, "Timed epochs per configuration.")
flags.DEFINE_bool("mirrored", True, "Also run under MirroredStrategy on 2 logical CPUs.")


def build(optimizer, strategy):
    with strategy.scope():
        model = common.mlp((FLAGS.features,), 10, FLAGS.width)
        model.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.optimizer.build(model.trainable_variables)  # slots now, not in the first trace
    traces = []
    train_step = model.train_step
    model.train_step = lambda data: (traces.append(1), train_step(data))[1]  # runs once per trace
    return model, traces


def configurations():
    b, k = FLAGS.batch_size, FLAGS.k
    sgd = dict(learning_rate=0.05, momentum=0.9)
    return {
        "plain": (b, lambda: keras.optimizers.SGD(**sgd)),
        "micro": (b // k, lambda: keras.optimizers.SGD(**sgd)),
        "bstf": (b // k, lambda: bstf.optimizers.Accumulate(keras.optimizers.SGD(**sgd), steps=k)),
        "keras": (b // k, lambda: keras.optimizers.SGD(**sgd, gradient_accumulation_steps=k)),
    }


def run(strategy, x, y):
    results = {}
    models = {}
    for name, (batch, make) in configurations().items():
        try:
            model, traces = build(make, strategy)
            model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)  # warm-up: traces
            models[name] = (model, traces, batch, [])
        except Exception as e:  # Keras's accumulation under MirroredStrategy
            message = str(e)
            if "merge_call" in message:
                message = message[message.index("`merge_call`"):].split(".")[0]
            results[name] = f"fails: {type(e).__name__}: {message.splitlines()[0][:80]}"
    for _ in range(FLAGS.repeats):
        for name, (model, _, batch, times) in models.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
            times.append(time.perf_counter() - start)
    for name, (model, traces, batch, times) in models.items():
        results[name] = (len(x) / min(times), len(traces))
    return results


def apply_cost(make, applies=2000):
    """Microseconds per optimizer.apply (one micro-step), the train step's other work excluded."""
    model, _ = build(make, tf.distribute.get_strategy())
    variables = model.trainable_variables
    grads = [tf.ones(v.shape) * 1e-3 for v in variables]
    optimizer = model.optimizer

    @tf.function
    def loop(n):
        for _ in tf.range(n):
            optimizer.apply(grads, variables)

    loop(tf.constant(8))  # trace
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        loop(tf.constant(applies))
        times.append(time.perf_counter() - start)
    return min(times) / applies * 1e6


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
        strategies["Mirrored, 2 logical CPUs"] = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    b, k = FLAGS.batch_size, FLAGS.k
    labels = {
        "plain": f"plain `model.fit`, batch {b}",
        "micro": f"plain `model.fit`, batch {b // k} (k× more updates; reference)",
        "bstf": f"bstf `Accumulate`, k = {k} × {b // k}",
        "keras": f"Keras `gradient_accumulation_steps={k}`, {k} × {b // k}",
    }
    print(f"MLP {FLAGS.features}-{FLAGS.width}-{FLAGS.width}-10, SGD(0.05, momentum=0.9), {FLAGS.examples} "
          f"examples per epoch, best of {FLAGS.repeats} epochs, TF {tf.__version__} / Keras {keras.__version__}.\n")
    print("| strategy | configuration | examples/s | × plain | × Keras built-in | train_step traces |")
    print("|---|---|---:|---:|---:|---:|")
    for strategy_name, strategy in strategies.items():
        results = run(strategy, x, y)
        plain = results["plain"][0]
        keras_rate = results["keras"][0] if isinstance(results["keras"], tuple) else None
        for name in ("plain", "micro", "bstf", "keras"):
            r = results[name]
            if isinstance(r, str):
                print(f"| {strategy_name} | {labels[name]} | {r} | – | – | – |")
                continue
            vs_keras = f"{r[0] / keras_rate:.2f}" if keras_rate else "–"
            print(f"| {strategy_name} | {labels[name]} | {r[0]:,.0f} | {r[0] / plain:.2f} | {vs_keras} | {r[1]} |")
    print("\nOptimizer alone (single device): `optimizer.apply` of the model's gradients in a `tf.while_loop`.\n")
    print("| optimizer | µs per call (micro-step) |")
    print("|---|---:|")
    optimizers = configurations()
    for name, label in (("micro", "Keras `SGD`, an update every call"), ("bstf", f"bstf `Accumulate`, k = {k}"),
                        ("keras", f"Keras `gradient_accumulation_steps={k}`")):
        print(f"| {label} | {apply_cost(optimizers[name][1]):.0f} |")


if __name__ == "__main__":
    app.run(main)
