"""What the multi-worker test scripts share (they run with ``tests/`` and the repository on ``sys.path``; see
``LocalWorkers.run_script`` in conftest.py): the task index, the saved data, the tiny classifier most of them
train, and the per-task results the test reads back with :func:`results`; also :class:`CrashAfter`, the
deterministic kill the resume tests inject in one process."""

import json
import os

import keras
import numpy as np


def task():
    """This worker's index in TF_CONFIG."""
    return json.loads(os.environ["TF_CONFIG"])["task"]["index"]


def data(path):
    """``(x, y)`` saved by the test with ``np.savez(path, x=..., y=...)``."""
    saved = np.load(path)
    return saved["x"], saved["y"]


def classifier(strategy, features=6, classes=2, seed=1, optimizer=None, **compile_kw):
    """Dense(8, tanh) → Dense(classes) logits, seeded, compiled in ``strategy``'s scope (SGD 0.1, momentum 0.9)."""
    with strategy.scope():
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((features,)), keras.layers.Dense(8, activation="tanh"),
                                  keras.layers.Dense(classes)])
        model.compile(optimizer or keras.optimizers.SGD(0.1, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True), **compile_kw)
    return model


def save(out, model, **fields):
    """This worker's final weights and ``fields`` (JSON) in ``out``, named by its task index."""
    np.savez(os.path.join(out, f"weights{task()}.npz"), *model.get_weights())
    with open(os.path.join(out, f"results{task()}.json"), "w") as f:
        json.dump(fields, f)


def results(out, task_index):
    """``(weights, fields)`` that worker ``task_index`` saved in ``out``."""
    weights = np.load(os.path.join(out, f"weights{task_index}.npz"))
    with open(os.path.join(out, f"results{task_index}.json")) as f:
        return [weights[k] for k in weights.files], json.load(f)


class CrashAfter(keras.callbacks.Callback):
    """Raises KeyboardInterrupt ("simulated kill") right after update ``at`` (1-based) of a fit."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.at:
            raise KeyboardInterrupt("simulated kill")
