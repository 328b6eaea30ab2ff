"""bstf.fit against model.fit, the cost of a checkpoint, and time to accuracy of the three ways to realise an
LR decay.

    python bench/training.py                         # all parts, mnist1d MLP (a few minutes on 2 CPUs)
    python bench/training.py --part=overhead --repeats=7
    python bench/training.py --part=checkpoint
    python bench/training.py --part=plans --epochs=40

Part 1, overhead: the same MLP, data and batch; ``model.fit`` on a batched,
shuffled dataset vs ``bstf.fit`` with a constant plan (``verbose=0`` for
both, no TensorBoard), alternating which runs first, after a warm-up of each
that traces the step. Reports the median examples/s of both and the ratio.

Part 2, checkpoint: the same ``bstf.fit`` run with ``checkpoint_dir`` and a save every
``--checkpoint_every`` updates; each save (``RunState.save``: the non-finite check of every variable, the
record, TF's write, the manager's bookkeeping) is timed. Reports the median save, the checkpoint's size
and the save in units of the run's mean update time.

Part 3, time to accuracy: one g-schedule (Smith et al.: decay by ``--factor``
at ``--milestones``) realised as ``decay_lr``, ``increase_batch`` and
``hybrid``, each from the same initial weights. Reports final test accuracy,
parameter updates and wall clock, and the ratios against ``decay_lr``.

Figures go to stdout as markdown tables (pasted into docs/performance.md,
"## Training loop").
"""

import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import bstf  # noqa: E402
import common  # noqa: E402  (bench/common.py)

FLAGS = flags.FLAGS
flags.DEFINE_enum("part", "all", ["all", "overhead", "checkpoint", "plans"], "What to measure.")
flags.DEFINE_string("dataset", "mnist1d", "bstf.data.load name (offline).")
flags.DEFINE_integer("width", 256, "Hidden width of the MLP.")
flags.DEFINE_integer("batch_size", 128, "Overhead part: the batch of both loops.")
flags.DEFINE_integer("overhead_epochs", 20, "Overhead part: epochs per timed run.")
flags.DEFINE_integer("repeats", 7, "Overhead part: rounds of (model.fit, bstf.fit).")
flags.DEFINE_integer("checkpoint_every", 20, "Checkpoint part: updates between saves.")
flags.DEFINE_integer("epochs", 20, "Plans part: epochs.")
flags.DEFINE_float("lr", 0.05, "Plans part: base learning rate.")
flags.DEFINE_integer("base_batch", 16, "Plans part: starting batch.")
flags.DEFINE_list("milestones", ["5", "10", "15"], "Plans part: epochs where g drops.")
flags.DEFINE_float("factor", 5.0, "Plans part: g drop per milestone.")
flags.DEFINE_integer("max_batch", 4000, "Plans part: largest batch (beyond it the LR decays instead).")


def build(data, seed=0):
    model = common.mlp(data.input_shape, data.num_classes, FLAGS.width, seed)
    model.compile(keras.optimizers.SGD(FLAGS.lr, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def overhead(train):
    batch, epochs = FLAGS.batch_size, FLAGS.overhead_epochs
    plan = bstf.NoiseScalePlan(train.size, FLAGS.lr, batch)
    keras_ds = (train.dataset.shuffle(train.size, seed=0, reshuffle_each_iteration=True)
                .batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    per_epoch = (train.size // batch) * batch
    a, b = build(train), build(train)

    def run_keras(e):
        t = time.perf_counter()
        a.fit(keras_ds, epochs=e, verbose=0)
        return e * per_epoch / (time.perf_counter() - t)

    def run_bstf(e):
        t = time.perf_counter()
        h = bstf.fit(b, train, plan, e, verbose=0, seed=0)
        return h.examples / (time.perf_counter() - t)

    run_keras(1), run_bstf(1)  # warm-up: traces
    ks, bs = [], []
    for r in range(FLAGS.repeats):
        for kind in (("keras", "bstf") if r % 2 == 0 else ("bstf", "keras")):
            (ks if kind == "keras" else bs).append(run_keras(epochs) if kind == "keras" else run_bstf(epochs))
    k, s = statistics.median(ks), statistics.median(bs)
    ratios = sorted(b / a for a, b in zip(ks, bs))
    print(f"\n### Overhead: MLP {FLAGS.width}x2 on {FLAGS.dataset} ({train.size} examples), batch {batch}, "
          f"{epochs} epochs x {FLAGS.repeats} rounds (median)\n")
    print("| loop | examples/s | ratio |\n|---|---|---|")
    print(f"| model.fit | {k:,.0f} | 1.00 |")
    print(f"| bstf.fit (constant plan) | {s:,.0f} | {s / k:.2f} |")
    print(f"\nper-round ratios (bstf / keras, same round): {', '.join(f'{r:.2f}' for r in ratios)}")


def checkpoint(train):
    from bstf.fitting import state

    batch, epochs = FLAGS.batch_size, FLAGS.overhead_epochs
    plan = bstf.NoiseScalePlan(train.size, FLAGS.lr, batch)
    model, seconds = build(train), []
    real_save = state.RunState.save

    def timed_save(self, number, record):
        t = time.perf_counter()
        path = real_save(self, number, record)
        seconds.append(time.perf_counter() - t)
        return path

    state.RunState.save = timed_save
    try:
        with tempfile.TemporaryDirectory() as d:
            bstf.fit(model, train, plan, 1, verbose=0, seed=0)  # warm-up: traces
            t = time.perf_counter()
            h = bstf.fit(model, train, plan, epochs, verbose=0, seed=0, checkpoint_dir=d,
                         checkpoint_every_n_updates=FLAGS.checkpoint_every)
            wall = time.perf_counter() - t
            size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.startswith("ckpt-"))
            size /= len([f for f in os.listdir(d) if f.endswith(".index")])
    finally:
        state.RunState.save = real_save
    save, update = statistics.median(seconds), (wall - sum(seconds)) / h.updates
    print(f"\n### Checkpoint: MLP {FLAGS.width}x2 ({model.count_params():,} parameters, SGD momentum), "
          f"{len(seconds)} saves in {h.updates} updates\n")
    print("| checkpoint size | one save (median) | one update (mean) | save / update | run time in saves |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {size / 1e6:.2f} MB | {1e3 * save:.1f} ms | {1e3 * update:.2f} ms | {save / update:.0f} | "
          f"{100 * sum(seconds) / wall:.1f} % |")


def plans(train, test):
    milestones = [float(m) for m in FLAGS.milestones]
    base = bstf.NoiseScalePlan(train.size, FLAGS.lr, FLAGS.base_batch, milestones=milestones,
                               factor=FLAGS.factor, mode="decay_lr", max_batch=FLAGS.max_batch)
    rows = []
    for mode in ("decay_lr", "increase_batch", "hybrid"):
        plan = base.with_mode(mode)
        model = build(train)
        t = time.perf_counter()
        h = bstf.fit(model, train, plan, FLAGS.epochs, verbose=0, seed=0)
        wall = time.perf_counter() - t
        acc = model.evaluate(test.dataset.batch(1000), verbose=0, return_dict=True)["accuracy"]
        batches = "→".join(str(p["batch_size"]) for p in h.phases)
        rows.append((mode, 100 * acc, h.updates, wall, batches))
    print(f"\n### Time to accuracy: MLP {FLAGS.width}x2 on {FLAGS.dataset}, {FLAGS.epochs} epochs, g / "
          f"{FLAGS.factor:g} at epochs {FLAGS.milestones}, base batch {FLAGS.base_batch}, max batch "
          f"{FLAGS.max_batch}\n")
    print("| mode | batches | test accuracy | Δ vs decay_lr (pp) | updates | fewer updates | wall clock (s) | "
          "speed-up |\n|---|---|---|---|---|---|---|---|")
    a0, u0, w0 = rows[0][1], rows[0][2], rows[0][3]
    for mode, acc, updates, wall, batches in rows:
        print(f"| {mode} | {batches} | {acc:.2f} % | {acc - a0:+.2f} | {updates} | {u0 / updates:.2f}x | "
              f"{wall:.1f} | {w0 / wall:.2f}x |")


def main(argv):
    del argv
    train = bstf.data.load(FLAGS.dataset)
    test = bstf.data.load(FLAGS.dataset, split="test")
    if FLAGS.part in ("all", "overhead"):
        overhead(train)
    if FLAGS.part in ("all", "checkpoint"):
        checkpoint(train)
    if FLAGS.part in ("all", "plans"):
        plans(train, test)


if __name__ == "__main__":
    app.run(main)
