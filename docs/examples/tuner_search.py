"""keras-tuner search over the batch size with the learning rate coupled to it (docs/tuner.md).

    python docs/examples/tuner_search.py --workdir=/tmp/tuner      # ~1-2 minutes on 2 CPUs

Task: mnist1d (generated offline; 3200 train / 800 test), an MLP trained with
SGD + momentum for a fixed budget of 4 epochs. The *default* is what Keras
does when you do not choose: ``model.fit``'s batch size 32 and SGD's learning
rate 0.01. The search tries batch sizes 16-512 with the LR derived from the
batch by the linear rule (0.01 at batch 32) times a multiplier in {1, 3, 10},
scoring each trial on a validation split held out from the training data.
The best pair and the default are then retrained from the same initial
weights on the whole training split and compared on the test split.
"""

import argparse
import time

import keras
import keras_tuner as kt

import bstf

DEFAULT_BATCH, DEFAULT_LR = 32, 0.01  # keras Model.fit's and keras.optimizers.SGD's defaults


def build(hp, learning_rate):
    """A compiled MLP; the learning rate comes from the batch size being tried."""
    keras.utils.set_random_seed(0)  # same initial weights in every trial
    model = keras.Sequential([
        keras.Input((40,)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(keras.optimizers.SGD(learning_rate, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def run(workdir, max_trials=10, epochs=4, num_samples=4000):
    """Searches, then retrains default and best; returns a dict of the figures."""
    x, y = bstf.data.load("mnist1d", num_samples=num_samples).numpy()
    x_test, y_test = bstf.data.load("mnist1d", split="test", num_samples=num_samples).numpy()
    n_val = len(x) // 5  # validation split for the search; the test split is only used at the end
    x_tr, y_tr, x_val, y_val = x[n_val:], y[n_val:], x[:n_val], y[:n_val]

    hypermodel = bstf.tuner.BatchSizeHyperModel(
        build, base_lr=DEFAULT_LR, base_batch=DEFAULT_BATCH, batch_sizes=[16, 32, 64, 128, 256, 512],
        rule="linear", lr_multipliers=[1.0, 3.0, 10.0])
    tuner = bstf.tuner.get_tuner("random", hypermodel, objective="val_accuracy", max_trials=max_trials,
                                 seed=0, directory=workdir, project_name="bs_lr", overwrite=True)
    start = time.perf_counter()
    tuner.search(x_tr, y_tr, validation_data=(x_val, y_val), epochs=epochs, verbose=0)
    search_seconds = time.perf_counter() - start

    trials = sorted(
        ((t.hyperparameters.get("batch_size"), t.hyperparameters.get("lr_multiplier"), t.score)
         for t in tuner.oracle.trials.values() if t.score is not None),
        key=lambda t: -t[2])
    best_hp = tuner.get_best_hyperparameters(1)[0]
    best_batch, best_lr = best_hp.get("batch_size"), hypermodel.learning_rate(best_hp)

    def final(batch, lr):
        model = build(None, lr)
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0)
        seconds = time.perf_counter() - start
        return float(model.evaluate(x_test, y_test, verbose=0)[1]), seconds

    default_acc, default_s = final(DEFAULT_BATCH, DEFAULT_LR)
    best_acc, best_s = final(best_batch, best_lr)
    return dict(trials=[(b, m, DEFAULT_LR * b / DEFAULT_BATCH * m, s) for b, m, s in trials],
                search_seconds=search_seconds,
                default=(DEFAULT_BATCH, DEFAULT_LR, default_acc, default_s),
                best=(best_batch, best_lr, best_acc, best_s))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/tuner_search", help="keras-tuner's directory")
    p.add_argument("--max_trials", type=int, default=10, help="random-search trials")
    p.add_argument("--epochs", type=int, default=4, help="training budget per trial (epochs)")
    args = p.parse_args()
    r = run(args.workdir, args.max_trials, args.epochs)
    print(f"search: {len(r['trials'])} trials in {r['search_seconds']:.0f} s\n")
    print("| batch | LR multiplier | learning rate | val accuracy |\n|---:|---:|---:|---:|")
    for b, m, lr, s in r["trials"]:
        print(f"| {b} | {m:g} | {lr:.4g} | {100 * s:.1f} % |")
    print("\n| | batch | learning rate | test accuracy | seconds |\n|---|---:|---:|---:|---:|")
    for name in ("default", "best"):
        b, lr, acc, s = r[name]
        print(f"| {name} | {b} | {lr:.4g} | {100 * acc:.1f} % | {s:.1f} |")


if __name__ == "__main__":
    main()
