"""What is checked before the first step: data, plan, model and directories.

Pure functions; each raises a ``TypeError``/``ValueError`` whose message names the argument, the
problem and the fix, so that a bad run fails at the start in plain words instead of a TensorFlow
stack trace an epoch in.
"""

import tensorflow as tf

__all__ = ["as_dataset", "looks_batched", "check_labelled"]


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
