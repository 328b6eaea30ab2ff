"""Layers for large-batch training: ghost batch normalization (Hoffer et al. 2017).

Keras 3 removed ``BatchNormalization(virtual_batch_size=...)``; this module
brings it back as its own layer.
"""

import numbers

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="bstf")
class GhostBatchNormalization(keras.layers.BatchNormalization):
    """Batch normalization over "ghost" batches of ``virtual_batch_size`` examples.

    Hoffer, Hubara, Soudry 2017 ("Train longer, generalize better"): with a
    large batch, normalizing each slice of ``virtual_batch_size`` consecutive
    examples with its own mean and variance keeps the regularizing noise of
    small-batch BN.

    *Training* (``training=True``): the batch of ``B`` examples is split into
    ``n = B / virtual_batch_size`` ghost batches along axis 0; each is
    normalized with its own (biased) mean and variance over every axis but
    the feature ``axis``, then scaled by ``gamma`` and shifted by ``beta``.
    The moving statistics are updated as if BN had seen the ghost batches one
    after the other (the paper's Algorithm 1)::

        moving = mⁿ·moving + (1−m)·Σᵢ m^(n−1−i)·statᵢ      (i = 0 … n−1)

    so the output and the moving mean/variance equal those of
    ``keras.layers.BatchNormalization`` applied chunk by chunk, and equal
    plain BN when ``virtual_batch_size`` is the batch size.

    *Inference*: the moving statistics, exactly as ``BatchNormalization``.

    Under gradient accumulation (``bstf.optimizers.Accumulate``) the layer
    sees each micro-batch in its own forward pass: the ghost batches are
    slices of the micro-batch, and the moving statistics are updated once
    per micro-batch (k times per optimizer update). Under a
    ``tf.distribute`` strategy each replica normalizes its own slices.

    Args:
      virtual_batch_size: examples per ghost batch, an integer >= 1; the
        (per-replica) batch must be a multiple of it.
      axis: as for ``keras.layers.BatchNormalization``, except that it may
        not be the batch axis 0.
      momentum: as for ``keras.layers.BatchNormalization``, a float in [0, 1).
      epsilon: as for ``keras.layers.BatchNormalization``.
      **kwargs: ``center``, ``scale``, ``*_initializer``, ``*_regularizer``,
        ``*_constraint`` and the base-layer arguments, as for
        ``keras.layers.BatchNormalization``. ``renorm`` and
        ``synchronized`` are not supported.

    Raises:
      ValueError: ``virtual_batch_size < 1``; ``axis`` is 0; ``renorm`` or
        ``synchronized`` requested; in training, a static batch size that is
        not a multiple of ``virtual_batch_size`` (a dynamic one fails at run
        time with an ``InvalidArgumentError`` naming the sizes); a mask.
      TypeError: ``virtual_batch_size`` is not an integer.
    """

    def __init__(self, virtual_batch_size, axis=-1, momentum=0.99, epsilon=1e-3, **kwargs):
        if isinstance(virtual_batch_size, bool) or not isinstance(virtual_batch_size, numbers.Integral):
            raise TypeError(
                f"virtual_batch_size must be an integer >= 1, got {virtual_batch_size!r} "
                f"of type {type(virtual_batch_size).__name__}."
            )
        if virtual_batch_size < 1:
            raise ValueError(f"virtual_batch_size must be an integer >= 1, got {virtual_batch_size}.")
        for name in ("renorm", "synchronized"):
            if kwargs.get(name):
                raise ValueError(f"GhostBatchNormalization does not support {name}=True.")
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be a float in [0, 1), got {momentum!r}.")
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not epsilon > 0:
            raise ValueError(f"epsilon must be a float > 0, got {epsilon!r}.")
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"axis must be an integer (the feature axis), got {axis!r}.")
        if axis == 0:
            raise ValueError("axis must not be 0: axis 0 is the batch axis that ghost batches split.")
        super().__init__(axis=axis, momentum=momentum, epsilon=epsilon, **kwargs)
        self.virtual_batch_size = int(virtual_batch_size)

    def build(self, input_shape):
        rank = len(input_shape)
        if rank < 2:
            raise ValueError(f"GhostBatchNormalization needs inputs of rank >= 2 (batch, ...), got shape {input_shape}.")
        if self.axis % rank == 0:
            raise ValueError(f"axis must not be the batch axis 0, got axis={self.axis} for rank {rank}.")
        super().build(input_shape)

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable):
            return super().call(inputs, training=training, mask=mask)
        if mask is not None:
            raise ValueError("GhostBatchNormalization does not support masks in training.")
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = ops.cast(inputs, compute_dtype)
        rank = len(x.shape)
        axis = self.axis % rank
        v = self.virtual_batch_size
        batch = x.shape[0]
        checks = []
        if batch is not None:
            if batch % v:
                raise ValueError(
                    f"The batch size {batch} is not a multiple of virtual_batch_size={v}: "
                    "use a batch size that divides into ghost batches (e.g. drop_remainder=True)."
                )
            n = batch // v
        else:
            batch = tf.shape(x)[0]
            checks.append(
                tf.debugging.assert_equal(
                    batch % v, 0, message=f"GhostBatchNormalization: batch size must be a multiple of "
                    f"virtual_batch_size={v}; got batch size"
                )
            )
            n = batch // v
        with tf.control_dependencies(checks):
            ghosts = tf.reshape(x, tf.concat([[n, v], tf.shape(x)[1:]], axis=0))
        if isinstance(n, int):
            ghosts = tf.ensure_shape(ghosts, [n, v] + list(x.shape[1:]))
        # Ghost axis 0, examples axis 1, the input's axis a becomes a + 1.
        reduce_axes = [1] + [a + 1 for a in range(1, rank) if a != axis]
        mean, variance = tf.nn.moments(ghosts, axes=reduce_axes, keepdims=True)
        param_shape = [1] * (rank + 1)
        param_shape[axis + 1] = x.shape[axis]
        inv = tf.math.rsqrt(variance + self.epsilon)
        if self.scale:
            inv = inv * tf.reshape(ops.cast(self.gamma, compute_dtype), param_shape)
        offset = -mean * inv
        if self.center:
            offset = offset + tf.reshape(ops.cast(self.beta, compute_dtype), param_shape)
        outputs = tf.reshape(ghosts * inv + offset, tf.shape(x))
        outputs = tf.ensure_shape(outputs, x.shape)

        # Moving statistics: the ghost batches in sequence, as BN applied chunk by chunk would leave them.
        per_ghost_mean = tf.reshape(mean, [-1, x.shape[axis]])  # (n, C)
        per_ghost_var = tf.reshape(variance, [-1, x.shape[axis]])
        m = tf.constant(self.momentum, compute_dtype)
        n_float = tf.cast(n, compute_dtype)
        exponents = n_float - 1.0 - tf.range(n_float, dtype=compute_dtype)  # n-1, ..., 0
        weights = (1.0 - m) * tf.pow(m, exponents)[:, None]
        keep = tf.pow(m, n_float)
        moving_mean = ops.cast(self.moving_mean, compute_dtype)
        moving_variance = ops.cast(self.moving_variance, compute_dtype)
        self.moving_mean.assign(ops.cast(moving_mean * keep + tf.reduce_sum(weights * per_ghost_mean, 0),
                                         self.moving_mean.dtype))
        self.moving_variance.assign(ops.cast(moving_variance * keep + tf.reduce_sum(weights * per_ghost_var, 0),
                                             self.moving_variance.dtype))
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config["virtual_batch_size"] = self.virtual_batch_size
        return config
