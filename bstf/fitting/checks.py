"""What is checked before the first step: data, plan, model and directories.

Pure functions; each raises a ``TypeError``/``ValueError`` whose message names the argument, the
problem and the fix, so that a bad run fails at the start in plain words instead of a TensorFlow
stack trace an epoch in.
"""

import os
import uuid

import keras
import numpy as np
import tensorflow as tf

__all__ = ["as_dataset", "looks_batched", "check_labelled", "check_plan", "count_examples", "check_size",
           "check_batch_against_model", "check_writable", "check_optimizer", "base_optimizer"]

_INT64_MAX = 2**63 - 1
_SAMPLE = 64  # examples of the first batch checked against the model
_F32_LOW, _F32_HIGH = float(np.finfo(np.float32).smallest_subnormal), float(np.finfo(np.float32).max)


def as_dataset(data, name):
    """``(dataset, size)`` of an unbatched ``tf.data.Dataset`` or a :class:`bstf.data.Data`.

    ``size`` is the example count when it is known (``Data.size`` or a known cardinality), else
    ``None``.

    Raises:
      TypeError: ``data`` is neither.
      ValueError: the dataset looks batched (see :func:`looks_batched`).
    """
    from bstf.data import Data

    if isinstance(data, Data):
        dataset, size = data.dataset, data.size
    elif isinstance(data, tf.data.Dataset):
        card = int(data.cardinality())
        dataset, size = data, (card if card >= 0 else None)
    else:
        raise TypeError(
            f"{name} must be an unbatched tf.data.Dataset or a bstf.data.Data (what bstf.data.load returns), "
            f"got {type(data).__name__}. For NumPy arrays use tf.data.Dataset.from_tensor_slices((x, y)).")
    if looks_batched(dataset):
        raise ValueError(
            f"{name} looks batched (every component has a leading None dimension); pass the unbatched "
            "dataset (e.g. dataset.unbatch()): bstf batches the data itself.")
    return dataset, size


def looks_batched(dataset):
    """True when every component of ``dataset``'s elements has a leading ``None`` dimension."""
    shapes = [s.shape for s in tf.nest.flatten(dataset.element_spec) if hasattr(s, "shape")]
    return bool(shapes) and all(s.rank is not None and s.rank >= 1 and s[0] is None for s in shapes)


def check_labelled(dataset, name):
    """Raises unless ``dataset``'s elements are ``(x, y)`` or ``(x, y, sample_weight)`` tuples."""
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        got = f"a tuple of {len(spec)}" if isinstance(spec, tuple) else type(spec).__name__
        raise ValueError(
            f"{name} must yield (x, y) or (x, y, sample_weight) tuples, got {got} elements "
            f"({spec}); the labels are missing. Build it as tf.data.Dataset.from_tensor_slices((x, y)).")


# ============================================================================ the plan
def check_plan(plan, epochs, train_size=None):
    """Refuses a plan that cannot be realised on ``train_size`` examples (default ``plan.train_size``).

    Every phase of a run of ``epochs`` epochs must have a global batch of at most ``train_size``
    (a bigger one spans several epochs per update) and a learning rate and noise that are finite and
    positive in float32 (what the train step computes with); the run's examples must fit the int64
    clock.
    """
    n = plan.train_size if train_size is None else train_size
    if epochs * n > _INT64_MAX:
        raise ValueError(f"epochs={epochs} of {n} examples overflow the int64 example clock; train fewer epochs.")
    for i, phase in enumerate(plan.phases(epochs)):
        where = f"phase {i} (epochs {phase.start_epoch:g}-{phase.end_epoch:g})"
        if phase.batch_size > n:
            raise ValueError(
                f"{where} has a global batch of {phase.batch_size} but the training set has {n} examples: one "
                f"update would span {phase.batch_size / n:.3g} epochs. Cap the batch with max_batch={n} (or "
                "less), or use fewer milestones or a smaller factor.")
        for what, value in (("learning rate", phase.learning_rate), ("noise scale", phase.noise_scale)):
            if not _F32_LOW <= value <= _F32_HIGH:  # also False for nan
                raise ValueError(
                    f"{where} has a {what} of {value:g}, which is not a finite positive float32 number; check "
                    "base_lr, factor and the milestones (a huge base_lr or a factor applied too often).")


# ============================================================================ the optimizer
def base_optimizer(optimizer):
    """The optimizer whose learning rate and momentum a plan sets: a ``LossScaleOptimizer``'s inner one."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


def check_optimizer(optimizer, plan, who):
    """Refuses an optimizer ``plan`` cannot drive; True when its momentum follows the plan's schedule.

    ``who`` names what drives it (``"bstf.fit"``, ``"FollowPlan"``) in the messages. A
    ``LossScaleOptimizer`` (``mixed_float16``) is checked by its inner optimizer, whose learning rate and
    momentum the plan sets.
    """
    from bstf.optimizers.accumulate import Accumulate

    if isinstance(optimizer, Accumulate):
        raise ValueError(
            f"the model is compiled with a bstf.optimizers.Accumulate; {who} accumulates by itself when the "
            "plan's batch exceeds the physical batch. Compile with the inner optimizer instead.")
    optimizer = base_optimizer(optimizer)  # a LossScaleOptimizer's LR and momentum are its inner optimizer's
    if isinstance(optimizer.get_config().get("learning_rate"), dict):  # a serialized LearningRateSchedule
        raise ValueError(
            f"the optimizer was created with its own learning-rate schedule; {who} sets the learning rate from "
            "the plan. Compile with a float learning_rate and put the schedule in the plan.")
    if getattr(optimizer, "supports_momentum_schedule", False):
        return True
    values = sorted(set(plan.momentum.values))
    if isinstance(optimizer, keras.optimizers.SGD):
        if len(values) > 1:
            raise ValueError(
                f"the plan changes the momentum ({values}) but keras.optimizers.SGD's momentum is fixed; "
                "compile with bstf.optimizers.SGD, whose momentum follows the plan.")
        if abs(optimizer.momentum - values[0]) > 1e-9:
            raise ValueError(
                f"the plan assumes momentum {values[0]} (its noise is eps*N/(B(1-m))) but the optimizer's momentum "
                f"is {optimizer.momentum}; compile with keras.optimizers.SGD(momentum={values[0]}) or "
                f"bstf.optimizers.SGD, or make the plan's base_momentum {optimizer.momentum}.")
    return False


# ============================================================================ the data
def count_examples(dataset, limit):
    """The examples of ``dataset``, counted up to ``limit`` (one pass over at most ``limit`` of them)."""
    return int(dataset.take(limit).reduce(np.int64(0), lambda count, _: count + 1))


def check_size(dataset, size, train_size, name="train_data"):
    """Refuses data whose example count is not ``train_size``; an unknown ``size`` is counted.

    Data of unknown cardinality is counted up to ``train_size + 1`` examples (one pass over the
    pipeline; ``dataset.apply(tf.data.experimental.assert_cardinality(n))`` skips it).
    """
    if int(dataset.cardinality()) == tf.data.INFINITE_CARDINALITY:
        raise ValueError(f"{name} repeats forever; pass one epoch (remove .repeat()): bstf repeats it itself.")
    counted = size is None
    if counted:
        size = count_examples(dataset, train_size + 1)
    if size == 0:
        raise ValueError(f"{name} is empty (a filter or a split removed every example); there is nothing to train on.")
    if size != train_size:
        has = f"more than {train_size}" if counted and size > train_size else str(size)
        raise ValueError(
            f"{name} has {has} examples but plan.train_size is {train_size}; the plan's epochs are epochs of "
            f"this data set: make the plan's train_size the data's size, or pass the whole data set.")
    return size


# ============================================================================ data against the model
def check_batch_against_model(model, dataset, name):
    """Checks the first examples of ``dataset`` against ``model``: labels, features, label range.

    Features must match the model's inputs in number, rank, known dimensions and kind (numbers, not
    strings). With a single output and a (sparse) categorical crossentropy loss, sparse labels must
    be integers in ``[0, outputs)`` and one-hot labels ``outputs`` wide.
    """
    check_labelled(dataset, name)
    try:
        first = next(iter(dataset.take(_SAMPLE).batch(_SAMPLE)))
    except StopIteration:
        raise ValueError(f"{name} is empty (a filter or a split removed every example).") from None
    x, y = first[0], first[1]
    inputs, outputs = _symbolic(model, "inputs"), _symbolic(model, "outputs")
    if inputs:
        _check_features(x, inputs, name)
    if outputs and len(outputs) == 1 and len(tf.nest.flatten(y)) == 1:
        _check_labels(tf.nest.flatten(y)[0], _loss_kind(model.loss), outputs[0].shape, name)


def _symbolic(model, attribute):
    """``model.inputs``/``outputs`` (KerasTensors), or None when unknown (subclassed, unbuilt models)."""
    try:
        return list(getattr(model, attribute) or [])
    except (AttributeError, ValueError):
        return None


def _check_features(x, inputs, name):
    if isinstance(x, dict):  # match by Input name; the dict's order is not the inputs' order
        named = {spec.name: spec for spec in inputs}
        if set(x) != set(named):
            raise ValueError(f"{name} gives the features {sorted(x)} but the model's inputs are {sorted(named)}.")
        pairs = [(x[key], named[key]) for key in sorted(x)]
    else:
        features = tf.nest.flatten(x)
        if len(features) != len(inputs):
            raise ValueError(
                f"{name} gives {len(features)} feature tensor(s) but the model takes {len(inputs)} inputs.")
        pairs = list(zip(features, inputs))
    for feature, spec in pairs:
        if not (feature.dtype.is_floating or feature.dtype.is_integer or feature.dtype.is_bool):
            raise ValueError(
                f"{name} has {feature.dtype.name} features but the model takes {spec.dtype} inputs; convert "
                "them to numbers in the pipeline (e.g. dataset.map(...) with tf.strings.to_number or a lookup).")
        got, want = tuple(feature.shape[1:]), tuple(spec.shape[1:])
        if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
            raise ValueError(
                f"{name} has features of shape {got} per example but the model's input takes {want}; "
                "reshape the features or fix the model's Input shape.")


def _loss_kind(loss):
    """"sparse", "categorical" or None (any other loss) for what ``model.compile`` was given."""
    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except ValueError:
            return None
    fn = getattr(loss, "fn", loss)  # Keras's loss classes (LossFunctionWrapper) hold the function
    return {"sparse_categorical_crossentropy": "sparse", "categorical_crossentropy": "categorical"}.get(
        getattr(fn, "__name__", None))


def _check_labels(labels, kind, output_shape, name):
    if not (labels.dtype.is_floating or labels.dtype.is_integer or labels.dtype.is_bool):
        raise ValueError(f"{name} has {labels.dtype.name} labels; convert them to numbers in the pipeline.")
    outputs, rank = output_shape[-1], len(output_shape)
    if kind is None or outputs is None or outputs < 2:
        return
    values = labels.numpy().astype("float64")
    if kind == "sparse":
        if labels.shape.rank == rank and labels.shape[-1] == outputs:
            raise ValueError(
                f"{name} has one-hot labels ({outputs} wide) but the loss is sparse_categorical_crossentropy; "
                "pass integer class ids, or compile with categorical_crossentropy.")
        if np.any(np.mod(values, 1)) or values.min() < 0 or values.max() >= outputs:
            raise ValueError(
                f"{name} has labels from {values.min():g} to {values.max():g} but the model has {outputs} outputs: "
                f"sparse categorical labels must be integers in [0, {outputs}). Fix the labels or the output layer.")
    elif labels.shape.rank != rank or labels.shape[-1] != outputs:
        raise ValueError(
            f"{name} has labels of shape {tuple(labels.shape[1:])} per example but the loss is "
            f"categorical_crossentropy over {outputs} outputs: one-hot encode them to width {outputs} "
            "(or compile with sparse_categorical_crossentropy for integer class ids).")


# ============================================================================ directories
def check_writable(path, name):
    """Creates directory ``path`` if needed and proves it writable (a probe file written and deleted).

    ``None`` passes. Works for local paths and ``tf.io.gfile`` URLs (``gs://...``).
    """
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(path).__name__}.")
    path = os.fspath(path)
    probe = os.path.join(path, f".bstf-probe-{uuid.uuid4().hex}")
    try:
        tf.io.gfile.makedirs(path)
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("probe")
        tf.io.gfile.remove(probe)
    except (OSError, tf.errors.OpError) as e:
        raise ValueError(
            f"{name} {path!r} is not a writable directory ({type(e).__name__}: {e}); choose a directory this "
            "process can create and write to.") from None
    return path
