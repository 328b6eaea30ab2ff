"""Overhead of bstf.callbacks.NoiseScaleMonitor against plain model.fit, same model, same run.

    python bench/noise_scale.py                       # defaults: mnist1d MLP, batch 128
    python bench/noise_scale.py --batch_size=64 --every_n_updates=50

Runs ``--repeats`` rounds; each round trains a fresh copy of the model for
``--updates`` updates with plain ``model.fit`` and with the monitor (at the
default interval and sizes unless overridden; alternating which goes first),
after a warm-up fit of each that traces the functions (one monitor instance is used
throughout, so its measurement function is traced once, in the warm-up, as in a
real run; that one-off cost is reported on its own line). Reports the median
wall time per update of both, the overhead in percent, the monitor's own
measured seconds per measurement and the cost of one measurement in train
steps. Figures go to stdout as a markdown table (pasted into
docs/performance.md, "## Noise-scale monitor").
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import bstf  # noqa: E402
import common  # noqa: E402  (bench/common.py)

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "mnist1d", "bstf.data.load name of the training set.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("updates", 1000, "Timed updates per fit.")
flags.DEFINE_integer("repeats", 7, "Rounds of (plain, monitored) fits.")
flags.DEFINE_integer("every_n_updates", 100, "NoiseScaleMonitor interval (its default).")
flags.DEFINE_integer("big_batch", 256, "NoiseScaleMonitor big_batch (its default).")
flags.DEFINE_integer("small_batch", None, "NoiseScaleMonitor small_batch (default big_batch // 8).")
flags.DEFINE_string("tensorboard_dir", None, "Also write TensorBoard summaries here (default: none).")
flags.DEFINE_integer("width", 256, "Hidden width of the MLP.")


def build(input_shape, num_classes, width):
    model = common.mlp(input_shape, num_classes, width)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def timed_fit(model, dataset, updates, callbacks):
    """(wall seconds, process CPU seconds) per update of one fit."""
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(dataset, steps_per_epoch=updates, epochs=1, verbose=0, callbacks=callbacks)
    return (time.perf_counter() - wall) / updates, (time.process_time() - cpu) / updates


def main(argv):
    del argv
    data = bstf.data.load(FLAGS.dataset)
    x, y = data.numpy()
    dataset = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).repeat()
               .batch(FLAGS.batch_size, drop_remainder=True).prefetch(2))
    plain_model = build(data.input_shape, data.num_classes, FLAGS.width)
    monitored_model = build(data.input_shape, data.num_classes, FLAGS.width)

    def monitor():
        return bstf.callbacks.NoiseScaleMonitor(
            (x, y), every_n_updates=FLAGS.every_n_updates, big_batch=FLAGS.big_batch,
            small_batch=FLAGS.small_batch, log_dir=FLAGS.tensorboard_dir)

    # One monitor for the whole run, as in a real training run: its measurement function is traced once
    # (in the warm-up; that one-off cost is reported separately), and every timed fit then reuses it.
    cb = monitor()
    timed_fit(plain_model, dataset, 20, [])  # warm-up: traces the train step
    timed_fit(monitored_model, dataset, 20, [cb])  # ... and the measurement function
    trace_seconds = cb.seconds
    plain, monitored, per_measurement, counts = [], [], [], []
    for r in range(FLAGS.repeats):
        order = ("plain", "monitored") if r % 2 == 0 else ("monitored", "plain")
        for kind in order:
            if kind == "plain":
                plain.append(timed_fit(plain_model, dataset, FLAGS.updates, []))
            else:
                n0, s0 = len(cb.history["updates"]), cb.seconds
                monitored.append(timed_fit(monitored_model, dataset, FLAGS.updates, [cb]))
                counts.append(len(cb.history["updates"]) - n0)
                per_measurement.append((cb.seconds - s0) / counts[-1])
    measurements = statistics.median(counts)
    wall_plain, wall_mon = [w for w, _ in plain], [w for w, _ in monitored]
    cpu_plain, cpu_mon = [c for _, c in plain], [c for _, c in monitored]
    med, ms = statistics.median, lambda t: f"{1e3 * t:.2f}"

    def overhead(a, b):
        return f"{100 * (b / a - 1):+.1f} %"

    t_plain, t_meas = med(wall_plain), med(per_measurement)
    small = FLAGS.small_batch or FLAGS.big_batch // 8
    print(f"model: MLP {data.input_shape} -> {FLAGS.width} -> {FLAGS.width} -> {data.num_classes} "
          f"({plain_model.count_params()} parameters) on {FLAGS.dataset}, batch {FLAGS.batch_size}, "
          f"{FLAGS.updates} updates x {FLAGS.repeats} rounds; monitor every {FLAGS.every_n_updates} updates, "
          f"big_batch {FLAGS.big_batch}, small_batch {small}; {measurements:g} measurements per fit")
    print()
    print("| | wall ms / update, median | wall, fastest round | CPU ms / update, median |")
    print("|---|---|---|---|")
    print(f"| plain model.fit | {ms(t_plain)} | {ms(min(wall_plain))} | {ms(med(cpu_plain))} |")
    print(f"| with NoiseScaleMonitor | {ms(med(wall_mon))} ({overhead(t_plain, med(wall_mon))}) | "
          f"{ms(min(wall_mon))} ({overhead(min(wall_plain), min(wall_mon))}) | "
          f"{ms(med(cpu_mon))} ({overhead(med(cpu_plain), med(cpu_mon))}) |")
    print()
    print(f"One measurement: {1e3 * t_meas:.1f} ms (median) = {t_meas / t_plain:.1f} plain train steps, i.e. "
          f"{100 * t_meas * measurements / (t_plain * FLAGS.updates):.1f} % of the plain fit's time "
          f"at this interval. One-off trace of the measurement function (first call): "
          f"{1e3 * trace_seconds:.0f} ms.")
    print()
    print("plain wall ms/update per round:", [round(1e3 * w, 3) for w in wall_plain])
    print("monitored wall ms/update per round:", [round(1e3 * w, 3) for w in wall_mon])


if __name__ == "__main__":
    app.run(main)
