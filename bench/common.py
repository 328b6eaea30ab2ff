"""What the benchmarks share: the MLP they time (``python bench/<name>.py`` puts bench/ on ``sys.path``)."""

import keras


def mlp(input_shape, num_classes, width, seed=0):
    """The benchmarks' network, seeded and uncompiled: Flatten, two Dense(width, relu), Dense(num_classes) logits."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input(input_shape), keras.layers.Flatten(),
        keras.layers.Dense(width, activation="relu"), keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(num_classes),
    ])
