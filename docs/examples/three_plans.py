"""One noise-scale schedule, three ways: decay the LR, grow the batch, or both (Smith et al. 2017).

    python docs/examples/three_plans.py --logdir=/tmp/three_plans      # ~2 minutes on 2 CPUs
    tensorboard --logdir=/tmp/three_plans

The same MLP, from the same initial weights, trained on mnist1d (generated
offline) with g = εN/(B(1−m)) divided by 5 at epochs 10, 20 and 25, realised as
``decay_lr`` (ε ÷ 5), ``increase_batch`` (B × 5) and ``hybrid`` (ε first, then
B). Each run logs to ``<logdir>/<mode>``; TensorBoard's ``examples_accuracy``
charts put the three on one axis (examples seen), and ``learning_rate`` /
``batch_size`` show how each realised the schedule. The table printed at the
end has test accuracy, parameter updates and wall clock.
"""

import argparse
import os
import time

import keras

import bstf


def model_for(data, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input(data.input_shape),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(data.num_classes),
    ])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def run(logdir, epochs=30, num_samples=5000):
    """Trains the three plans; returns {mode: (test accuracy, updates, seconds)}."""
    train = bstf.data.load("mnist1d", num_samples=num_samples)
    test = bstf.data.load("mnist1d", split="test", num_samples=num_samples)
    scale = epochs / 30
    plan = bstf.NoiseScalePlan(train.size, base_lr=0.05, base_batch=32, base_momentum=0.9,
                               milestones=[10 * scale, 20 * scale, 25 * scale], factor=5,
                               max_batch=min(4000, train.size))  # no update larger than an epoch
    results = {}
    for mode in ("decay_lr", "increase_batch", "hybrid"):
        model = model_for(train)
        start = time.perf_counter()
        history = bstf.fit(model, train, plan.with_mode(mode), epochs, validation_data=test,
                           logdir=os.path.join(logdir, mode), seed=0, verbose=0)
        seconds = time.perf_counter() - start
        results[mode] = (history.history["val_accuracy"][-1], history.updates, seconds)
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logdir", default="/tmp/three_plans", help="TensorBoard root (one run per mode)")
    p.add_argument("--epochs", type=int, default=30, help="epochs per run")
    p.add_argument("--num_samples", type=int, default=5000, help="mnist1d examples generated (80 %% train)")
    args = p.parse_args()
    results = run(args.logdir, args.epochs, args.num_samples)
    print("| mode | test accuracy | updates | seconds |\n|---|---|---|---|")
    for mode, (acc, updates, seconds) in results.items():
        print(f"| {mode} | {100 * acc:.1f} % | {updates} | {seconds:.0f} |")
    print(f"\ntensorboard --logdir={args.logdir}")


if __name__ == "__main__":
    main()
