"""Residual networks of Goyal et al. (2017) and Smith et al. (2017), small versions for CPUs, input pipelines.

All networks end in a ``Dense(num_classes)`` producing **logits**.

=================  ============================================================================
name               architecture
=================  ============================================================================
``resnet50``       ResNet-50 v1 (``keras.applications.ResNet50``, random init), Goyal's
                   details: γ = 0 in the last BN of every residual block (each block starts as
                   the identity) and L2 weight decay on conv/dense kernels only (no decay on BN
                   parameters or biases).
``wrn``            Wide ResNet ``WRN-d-k`` (Zagoruyko & Komodakis 2016; Smith et al. use
                   WRN-16-4): 3×3 conv 16 → 3 groups of (d − 4)/6 pre-activation basic blocks
                   of width 16k, 32k, 64k (stride 1, 2, 2) → BN-ReLU → global average pool
                   → Dense. ``dropout`` between the two convs of a block (0 in Smith et al.).
``small_resnet``   A small post-activation ResNet for the quick presets: stem conv → ``stages``
                   × [``blocks`` basic blocks] with widths doubling per stage, global average
                   pool → Dense. Works on images (Conv2D) and on 1-D signals such as MNIST-1D
                   (Conv1D; a feature vector of shape ``(L,)`` becomes ``(L, 1)``).
=================  ============================================================================

Input pipelines (applied to a :class:`bstf.data.Data` with :func:`map_data`, before batching):
:func:`imagenet_train`/:func:`imagenet_eval` (random-resized crop 224 + flip / resize 256 and
centre crop 224, per-channel standardisation) and :func:`cifar_train`/:func:`cifar_eval`
(pad 4 + random 32×32 crop + flip, per-channel standardisation).
"""

import dataclasses

import keras
import tensorflow as tf

NAMES = ("resnet50", "wrn", "small_resnet")


# ----------------------------------------------------------------------------- weight decay
def _l2(weight_decay):
    """Keras L2 regulariser whose gradient is ``weight_decay · w`` (L2(l) adds l·Σw², gradient 2lw)."""
    return keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None


def with_kernel_weight_decay(model, weight_decay):
    """A copy of a functional or Sequential ``model`` with L2 ``weight_decay`` on every Conv/Dense kernel.

    BN parameters and biases get none (Goyal et al. 2017). Weights are copied.
    """
    if not weight_decay:
        return model
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] in ("Conv1D", "Conv2D", "Dense", "DepthwiseConv2D"):
            layer["config"]["kernel_regularizer"] = keras.regularizers.serialize(_l2(weight_decay))
    clone = model.__class__.from_config(config)
    clone.set_weights(model.get_weights())
    return clone


# ----------------------------------------------------------------------------- ResNet-50 (Goyal)
def resnet50(input_shape=(224, 224, 3), num_classes=1000, weight_decay=1e-4, zero_init_residual=True):
    """ResNet-50 v1 with Goyal et al.'s initialisation and weight-decay details (logits output)."""
    model = keras.applications.ResNet50(weights=None, input_shape=tuple(input_shape), classes=num_classes,
                                        classifier_activation=None)
    model = with_kernel_weight_decay(model, weight_decay)
    if zero_init_residual:
        for layer in model.layers:
            # keras.applications names the last BN of block m of stage n "conv{n}_block{m}_3_bn".
            if isinstance(layer, keras.layers.BatchNormalization) and layer.name.endswith("_3_bn"):
                layer.gamma.assign(tf.zeros_like(layer.gamma))
    return model


def zero_gamma_layers(model):
    """Names of the BN layers whose γ is all zero (the residual blocks' last BN under Goyal's init)."""
    return [layer.name for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization) and not bool(tf.reduce_any(layer.gamma != 0))]


# ----------------------------------------------------------------------------- building blocks
def _conv(rank):
    return keras.layers.Conv1D if rank == 1 else keras.layers.Conv2D


def _pool(rank):
    return keras.layers.GlobalAveragePooling1D if rank == 1 else keras.layers.GlobalAveragePooling2D


def _inputs(input_shape):
    """(input tensor, features with a channel axis, spatial rank) for images or 1-D signals."""
    shape = tuple(input_shape)
    inputs = keras.Input(shape=shape)
    if len(shape) == 1:
        return inputs, keras.layers.Reshape((shape[0], 1))(inputs), 1
    if len(shape) in (2, 3):
        return inputs, inputs, len(shape) - 1
    raise ValueError(f"input_shape must be (length,), (length, channels) or (height, width, channels), "
                     f"got {input_shape}.")


def _bn(name, bn_momentum=0.99, **kwargs):
    return keras.layers.BatchNormalization(momentum=bn_momentum, name=name, **kwargs)


def _basic_block(x, filters, stride, rank, weight_decay, zero_init, name, bn_momentum=0.99):
    """Post-activation basic block (conv-BN-ReLU-conv-BN + shortcut, ReLU)."""
    conv = _conv(rank)
    reg = _l2(weight_decay)
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv(filters, 1, strides=stride, use_bias=False, kernel_regularizer=reg, name=f"{name}_proj")(x)
        shortcut = _bn(f"{name}_proj_bn", bn_momentum)(shortcut)
    y = conv(filters, 3, strides=stride, padding="same", use_bias=False, kernel_regularizer=reg,
             name=f"{name}_conv1")(x)
    y = _bn(f"{name}_bn1", bn_momentum)(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = conv(filters, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"{name}_conv2")(y)
    y = _bn(f"{name}_bn2", bn_momentum, gamma_initializer="zeros" if zero_init else "ones")(y)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def small_resnet(input_shape, num_classes, width=16, stages=3, blocks=1, weight_decay=0.0,
                 zero_init_residual=True, bn_momentum=0.9, name="small_resnet"):
    """A small ResNet (basic blocks, Goyal's γ = 0 init) for images or 1-D signals (logits output).

    ``bn_momentum`` 0.9 (not Keras' 0.99): the quick presets' large batches make only a few hundred
    updates, too few for 0.99 moving averages to forget their initial values.
    """
    inputs, x, rank = _inputs(input_shape)
    reg = _l2(weight_decay)
    x = _conv(rank)(width, 3, padding="same", use_bias=False, kernel_regularizer=reg, name="stem")(x)
    x = _bn("stem_bn", bn_momentum)(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for s in range(stages):
        for b in range(blocks):
            stride = 2 if (s > 0 and b == 0) else 1
            x = _basic_block(x, width * 2**s, stride, rank, weight_decay, zero_init_residual, f"s{s + 1}b{b + 1}",
                             bn_momentum)
    x = _pool(rank)(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _preact_block(x, filters, stride, rank, weight_decay, dropout, name):
    """Pre-activation wide basic block (BN-ReLU-conv-[dropout]-BN-ReLU-conv + shortcut)."""
    conv = _conv(rank)
    reg = _l2(weight_decay)
    y = keras.layers.BatchNormalization(name=f"{name}_bn1")(x)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv(filters, 1, strides=stride, use_bias=False, kernel_regularizer=reg, name=f"{name}_proj")(y)
    y = conv(filters, 3, strides=stride, padding="same", use_bias=False, kernel_regularizer=reg,
             name=f"{name}_conv1")(y)
    y = keras.layers.BatchNormalization(name=f"{name}_bn2")(y)
    y = keras.layers.ReLU(name=f"{name}_relu2")(y)
    if dropout:
        y = keras.layers.Dropout(dropout, name=f"{name}_dropout")(y)
    y = conv(filters, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"{name}_conv2")(y)
    return keras.layers.Add(name=f"{name}_add")([shortcut, y])


def wrn(input_shape, num_classes, depth=16, widen=4, weight_decay=5e-4, dropout=0.0, name=None):
    """Wide ResNet WRN-``depth``-``widen`` (pre-activation, logits output); WRN-16-4 by default."""
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}.")
    n = (depth - 4) // 6
    inputs, x, rank = _inputs(input_shape)
    reg = _l2(weight_decay)
    x = _conv(rank)(16, 3, padding="same", use_bias=False, kernel_regularizer=reg, name="stem")(x)
    for g, filters in enumerate((16 * widen, 32 * widen, 64 * widen)):
        for b in range(n):
            stride = 2 if (g > 0 and b == 0) else 1
            x = _preact_block(x, filters, stride, rank, weight_decay, dropout, f"g{g + 1}b{b + 1}")
    x = keras.layers.BatchNormalization(name="final_bn")(x)
    x = keras.layers.ReLU(name="final_relu")(x)
    x = _pool(rank)(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"wrn_{depth}_{widen}")


# ----------------------------------------------------------------------------- input pipelines
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def map_data(data, fn, input_shape):
    """``data`` (a :class:`bstf.data.Data`) with ``fn(x) -> x`` applied to its features (before batching)."""
    ds = data.dataset.map(lambda x, y: (fn(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataclasses.replace(data, dataset=ds, input_shape=tuple(input_shape), arrays=None)


def _standardise(x, mean, std):
    return (tf.cast(x, tf.float32) - tf.constant(mean)) / tf.constant(std)


def imagenet_train(image, size=224):
    """Random-resized crop (8–100 % of the area, aspect 3/4–4/3) to ``size``, random flip, standardise."""
    image = tf.cast(image, tf.float32)
    begin, crop, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), area_range=(0.08, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0.0, use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop)
    image = tf.image.resize(image, (size, size))
    image = tf.image.random_flip_left_right(image)
    return _standardise(image, IMAGENET_MEAN, IMAGENET_STD)


def imagenet_eval(image, size=224, resize=256):
    """Resize the shorter side to ``resize``, centre crop ``size``, standardise."""
    image = tf.cast(image, tf.float32)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize / tf.reduce_min(shape)
    image = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32))
    image = tf.image.resize_with_crop_or_pad(image, size, size)
    return _standardise(image, IMAGENET_MEAN, IMAGENET_STD)


def cifar_train(image):
    """Pad 4, random 32×32 crop, random flip, standardise (the WRN / Smith et al. augmentation)."""
    image = tf.image.pad_to_bounding_box(tf.cast(image, tf.float32), 4, 4, 40, 40)
    image = tf.image.random_crop(image, (32, 32, 3))
    image = tf.image.random_flip_left_right(image)
    return _standardise(image, CIFAR_MEAN, CIFAR_STD)


def cifar_eval(image):
    """Standardise only."""
    return _standardise(image, CIFAR_MEAN, CIFAR_STD)
