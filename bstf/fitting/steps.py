"""Step functions that work under every tf.distribute strategy.

Keras 3.15's own train/test functions fail under MultiWorkerMirroredStrategy: they reduce scalar
outputs with ``strategy.reduce("MEAN", v, axis=0)``. ``strategy_step`` runs the model's own
``train_step``/``test_step`` and averages its outputs over replicas instead.
"""

import keras
import numpy as np
import tensorflow as tf

__all__ = ["is_multi_worker", "strategy_step", "scalar"]


def is_multi_worker(strategy):
    """True for MultiWorkerMirroredStrategy (and other multi-worker, non-TPU strategies)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or (
        strategy.extended._in_multi_worker_mode() and not isinstance(strategy, tf.distribute.TPUStrategy))


def strategy_step(model, strategy, method):
    """``model.<method>`` (``"train_step"``/``"test_step"``) on one distributed batch, outputs averaged."""
    step_fn = getattr(model, method)

    @tf.function(reduce_retracing=True)
    def step(data):
        outputs = strategy.run(step_fn, args=(data,))
        return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), outputs)

    return step


def scalar(value):
    """A Python float from a scalar tensor, variable or array (first element)."""
    return float(np.asarray(keras.ops.convert_to_numpy(value)).reshape(-1)[0])
