"""The networks of Keskar et al. (2017), Table 1 and Appendix B, and small versions for CPUs.

All networks end in a ``Dense(num_classes)`` producing **logits** (the paper's
softmax is folded into the loss, ``from_logits=True``); they take any input
shape (MLPs flatten it first), so the quick presets can run them on small
offline data.

======  ===========================  ==========================================================
name    data in the paper            architecture
======  ===========================  ==========================================================
F1      MNIST (784 → 10)             5 × [Dense 512, BN, ReLU] → Dense 10
F2      TIMIT (360 → 1973)           7 × [Dense 512, BN, ReLU] → Dense 1973
C1      CIFAR-10                     2 × [Conv 5×5 64 same, BN, ReLU, MaxPool 3×3/2 same]
                                     → [Dense 384, BN, ReLU, Dropout .5] → [Dense 192, BN, ReLU,
                                     Dropout .5] → Dense 10
C2      CIFAR-10                     VGG-16-like: conv blocks 2×64, 2×128, 3×256, 3×512, 3×512
                                     (Conv 3×3 same, BN, ReLU; dropout .3 after the first conv,
                                     .4 after the other non-final convs of a block; MaxPool 2×2/2
                                     per block) → Dropout .5 → [Dense 512, BN, ReLU, Dropout .5]
                                     → Dense 10
C3, C4  CIFAR-100                    C1, C2 with 100 outputs
======  ===========================  ==========================================================

Sources: the paper's Appendix B and the authors' Keras code
(``network_zoo.py`` of github.com/keskarnitish/large-batch-training:
``shallownet`` = C1/C3, ``deepnet`` = C2/C4). Differences, kept on purpose:
the authors' Keras-0.x ``BatchNormalization(mode=2)`` normalised with batch
statistics also at test time; here BN is the standard Keras layer (moving
statistics at test time). F2's exact layer sizes are the paper's description
(360-dimensional acoustic features with context, 1973 output states);
TIMIT is licensed and not in TFDS, so F2 runs on user data (``--dataset=npz:...``).

Small versions for the quick presets (same structure, narrower):
``F1-small`` (3 × [Dense 256, BN, ReLU]) and ``C1-small`` (filters 16,
dense 128/64). ``num_classes`` and ``input_shape`` always come from the data.
"""

import keras

NAMES = ("F1", "F2", "C1", "C2", "C3", "C4", "F1-small", "C1-small")

# Data set of each paper network in the paper (TFDS names for the paper preset).
PAPER_DATA = {"F1": "tfds:mnist", "F2": None, "C1": "tfds:cifar10", "C2": "tfds:cifar10",
              "C3": "tfds:cifar100", "C4": "tfds:cifar100"}


def mlp(input_shape, num_classes, width, depth, name="mlp", batch_norm=True):
    """``depth`` × [Dense ``width``, BN, ReLU] → Dense ``num_classes`` (logits); no BN if ``batch_norm=False``."""
    layers = [keras.Input(shape=tuple(input_shape)), keras.layers.Flatten(name="flatten")]
    for i in range(1, depth + 1):  # fixed layer names: weight paths agree between models
        layers.append(keras.layers.Dense(width, name=f"dense_{i}"))
        if batch_norm:
            layers.append(keras.layers.BatchNormalization(name=f"bn_{i}"))
        layers.append(keras.layers.ReLU(name=f"relu_{i}"))
    layers.append(keras.layers.Dense(num_classes, name="logits"))
    return keras.Sequential(layers, name=name)


def shallow_conv(input_shape, num_classes, filters=64, dense=(384, 192), dropout=0.5, name="shallow_conv"):
    """Keskar's C1/C3 (``shallownet``): 2 conv-BN-ReLU-pool blocks, 2 dense-BN-ReLU-dropout layers."""
    _check_image(input_shape, name)
    layers = [keras.Input(shape=tuple(input_shape))]
    for _ in range(2):
        layers += [keras.layers.Conv2D(filters, 5, padding="same"), keras.layers.BatchNormalization(),
                   keras.layers.ReLU(), keras.layers.MaxPooling2D(3, strides=2, padding="same")]
    layers.append(keras.layers.Flatten())
    for units in dense:
        layers += [keras.layers.Dense(units), keras.layers.BatchNormalization(), keras.layers.ReLU(),
                   keras.layers.Dropout(dropout)]
    layers.append(keras.layers.Dense(num_classes))
    return keras.Sequential(layers, name=name)


VGG_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def vgg_like(input_shape, num_classes, blocks=VGG_BLOCKS, dense=512, name="vgg_like"):
    """Keskar's C2/C4 (``deepnet``, VGG-16-like with BN and dropout)."""
    _check_image(input_shape, name)
    layers = [keras.Input(shape=tuple(input_shape))]
    first = True
    for filters, convs in blocks:
        for i in range(convs):
            layers += [keras.layers.Conv2D(filters, 3, padding="same"), keras.layers.BatchNormalization(),
                       keras.layers.ReLU()]
            if i < convs - 1:
                layers.append(keras.layers.Dropout(0.3 if first else 0.4))
            first = False
        layers.append(keras.layers.MaxPooling2D(2, strides=2, padding="same"))
    layers += [keras.layers.Flatten(), keras.layers.Dropout(0.5), keras.layers.Dense(dense),
               keras.layers.BatchNormalization(), keras.layers.ReLU(), keras.layers.Dropout(0.5),
               keras.layers.Dense(num_classes)]
    return keras.Sequential(layers, name=name)


def _check_image(input_shape, name):
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"{name} needs images of shape (height, width, channels), got input_shape={input_shape}.")


def build(name, input_shape, num_classes):
    """The network ``name`` (one of :data:`NAMES`) for the given data shape and classes."""
    if name not in NAMES:
        raise ValueError(f"network must be one of {NAMES}, got {name!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    tag = name.lower().replace("-", "_")
    if name == "F1":
        return mlp(input_shape, num_classes, 512, 5, name=tag)
    if name == "F2":
        return mlp(input_shape, num_classes, 512, 7, name=tag)
    if name == "F1-small":
        return mlp(input_shape, num_classes, 256, 3, name=tag)
    if name in ("C1", "C3"):
        return shallow_conv(input_shape, num_classes, name=tag)
    if name == "C1-small":
        return shallow_conv(input_shape, num_classes, filters=16, dense=(128, 64), name=tag)
    return vgg_like(input_shape, num_classes, name=tag)
