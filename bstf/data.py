"""Data sets by name: loaders for data already on disk, and offline generated defaults.

``bstf.data.load(name, split="train", data_dir=None, **kwargs)`` returns a :class:`Data`: an
*unbatched* ``tf.data.Dataset`` of ``(features, label)`` pairs (features ``float32``, label an
``int64`` scalar) with its ``size``, ``num_classes``, ``input_shape``, ``name`` and ``split``.
**Nothing is ever downloaded**: real data sets must already be on disk; the defaults are generated
locally. :func:`names` lists the names and prefixes below.

Names and formats
-----------------
``"tfds:<name>"``, ``"tfds:<name>:<config>"``, ``"tfds:<name>:<version>"``, ``"tfds:<name>:<config>:<version>"``
    A `TensorFlow Datasets <https://www.tensorflow.org/datasets>`_ data set already *prepared* in
    ``data_dir`` (default: TFDS's default, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). The
    TFDS spellings ``"tfds:<name>/<config>"`` and ``"tfds:<name>/<config>:<version>"`` work too;
    a version is digits and dots (``"3.0.1"``, ``"3.*.*"``). Community namespaces are not supported.
    A data set that is not prepared raises ``FileNotFoundError`` saying how to prepare it on a
    machine with internet (``tfds build <name> --data_dir=DIR``, plus ``--manual_dir=DIR`` for
    data sets such as ``imagenet2012`` whose archives are downloaded by hand) and copy ``DIR``
    here; bstf never calls ``download_and_prepare``. ``split`` is anything TFDS accepts and the
    prepared metadata knows: ``"train"``, ``"test"``, ``"validation"``, slices such as
    ``"train[:10%]"`` or ``"train[1000:]"``, unions such as ``"train+test"``. Features and labels
    are the data set's supervised keys; without those, ``"label"`` and the only other feature;
    override with ``keys=(feature_key, label_key)``. ``uint8`` features (images) are scaled to
    [0, 1], other numeric features are cast to ``float32``. ``size`` is the split's example count
    from the metadata, ``num_classes`` the label's ``ClassLabel.num_classes`` (or the
    ``num_classes`` kwarg). ``input_shape`` contains ``None`` for variable-sized images (e.g.
    ``imagenet2012``): resize before batching. Examples come in file order
    (``shuffle_files=False``). kwargs: ``keys``, ``num_classes``.

``"idx:<directory>"``
    A directory in the MNIST layout (MNIST, Fashion-MNIST, KMNIST, ...): split ``"train"`` reads
    ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte``, split ``"test"`` reads
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``; each file may be gzipped
    (``<file>.gz``), and the ``.idx3-ubyte`` spelling (dot instead of dash) is accepted. IDX format
    (:func:`read_idx`): a big-endian magic number ``0x00 0x00 <type> <ndim>`` (type ``0x08``
    uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64),
    then ``ndim`` big-endian uint32 dimensions, then the data in C order. Images are
    ``(n, rows, cols)`` (a trailing channel axis is added: MNIST gives ``(28, 28, 1)``) or
    ``(n, rows, cols, channels)``; labels ``(n,)``. uint8 pixels are scaled to [0, 1].
    kwargs: ``num_classes`` (default: largest label + 1).

``"npz:<path>"``
    A NumPy ``.npz`` archive (``np.savez``) holding ``x_<split>`` and ``y_<split>`` for each split,
    normally ``x_train, y_train, x_test, y_test`` (the layout of ``keras.datasets``); an archive
    with just ``x`` and ``y`` is a single ``"train"`` split. ``x`` is ``(n, *input_shape)``,
    ``y`` is ``(n,)`` or ``(n, 1)`` of non-negative integer class ids (integer-valued floats are
    accepted). uint8 features are scaled to [0, 1], anything else is cast to ``float32``.
    kwargs: ``num_classes`` (default: largest label + 1).

    A relative ``<directory>`` or ``<path>`` is resolved against ``data_dir`` when one is given.

``"digits"``
    scikit-learn's 1797 handwritten 8x8 digits (shipped with scikit-learn, no download), features
    ``(8, 8, 1)`` in [0, 1] (pixel / 16), 10 classes, split by a seeded stratified
    ``train_test_split`` into 1437 train / 360 test examples. kwargs: ``seed=0``.

``"mnist1d"``
    MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package's ``make_dataset``
    (its ``get_dataset``, which downloads, is not used). Features ``(40,)`` (standardised), 10
    classes; ``num_samples`` examples in total (rounded down to a multiple of 10, at least 10),
    the first 80 % train and the rest test (the package's split). kwargs: ``num_samples=5000``,
    ``seed=42`` (the package defaults). The global ``random``/``np.random`` states the package
    reseeds are restored afterwards.

``"teacher"``
    A seeded synthetic task: a random two-layer teacher network ``argmax(tanh(x W1) W2 + b)``
    labels standard Gaussian inputs ``x``; ``W1, W2`` have 1/sqrt(fan-in) Gaussian entries and the
    bias ``b`` is calibrated on a reference sample so every class is about equally likely. The
    first ``1 - test_fraction`` of the ``num_samples`` inputs are train, the rest test (disjoint
    inputs, same teacher). ``label_noise`` is the probability that a label is replaced by a
    *different* class chosen uniformly. The teacher depends only on ``(seed, input_dim, hidden,
    num_classes)``, the inputs only on ``(seed, input_dim, num_samples)``, so the same seed gives
    identical data and changing ``label_noise`` changes only labels. Features ``(input_dim,)``.
    kwargs: ``num_samples=10000``, ``input_dim=32``, ``num_classes=10`` (2 to 100),
    ``hidden=64``, ``label_noise=0.0`` (in [0, 1)), ``test_fraction=0.2``, ``seed=0``.

Arrays
------
Every data set except ``tfds:`` lives in memory: ``Data.numpy(max_examples)`` returns its
``(x, y)`` arrays (read-only views, no copy); for ``tfds:`` it iterates the dataset (cap it with
``max_examples``). :func:`load_arrays` is ``load(...).numpy(max_examples)``. Generated data sets
are cached in-process per argument tuple (``functools.lru_cache``), so repeated loads are free.

Errors
------
An unknown name raises ``ValueError`` listing the names and prefixes; an unknown split
``ValueError`` listing the valid splits; a missing ``data_dir``, directory, file or unprepared TFDS
data set ``FileNotFoundError`` naming the path; a malformed file ``ValueError``; bad generator
arguments ``ValueError``/``TypeError`` naming the argument, its value and the allowed range.
"""

import dataclasses
import functools
import gzip
import inspect
import os
import pathlib
import random
import re

import numpy as np
import tensorflow as tf

GENERATED = ("digits", "mnist1d", "teacher")
"""Names of the offline, locally generated data sets."""
PREFIXES = ("tfds:", "idx:", "npz:")
"""Prefixes of the names that read data from disk."""

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_VERSION = re.compile(r"^(\d+|\*)(\.(\d+|\*)){0,2}$")


@dataclasses.dataclass(frozen=True)
class Data:
    """A data set: an unbatched ``tf.data.Dataset`` of ``(features, label)`` plus facts about it.

    Attributes:
      dataset: unbatched ``tf.data.Dataset`` of ``(features float32, label int64 scalar)``.
      size: number of examples in ``dataset``.
      num_classes: number of classes (labels are in ``[0, num_classes)``).
      input_shape: shape of one example's features (may contain ``None`` for TFDS images of
        variable size).
      name: the name passed to :func:`load`.
      split: the split passed to :func:`load`.
      arrays: ``(x, y)`` NumPy arrays backing ``dataset`` (read-only), or ``None`` for TFDS.
    """

    dataset: tf.data.Dataset
    size: int
    num_classes: int
    input_shape: tuple
    name: str
    split: str
    arrays: tuple = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.dataset, tf.data.Dataset):
            raise TypeError(f"dataset must be a tf.data.Dataset, got {type(self.dataset).__name__}.")
        if not _is_int(self.size) or self.size < 0:
            raise ValueError(f"size must be an integer >= 0, got {self.size!r}.")
        if not _is_int(self.num_classes) or self.num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {self.num_classes!r}.")
        if not isinstance(self.input_shape, tuple):
            raise TypeError(f"input_shape must be a tuple, got {self.input_shape!r}.")

    def numpy(self, max_examples=None):
        """Returns ``(x, y)`` as NumPy arrays: the first ``max_examples`` examples, or all.

        Array-backed data sets return read-only views of their arrays (copy before writing);
        TFDS data sets are iterated, so pass ``max_examples`` for large ones.

        Args:
          max_examples: ``None`` (all) or a positive integer cap.

        Returns:
          ``x`` float32 of shape ``(n, *input_shape)`` and ``y`` int64 of shape ``(n,)``.
        """
        if max_examples is not None and (not _is_int(max_examples) or max_examples < 1):
            raise ValueError(f"max_examples must be None or a positive integer, got {max_examples!r}.")
        if self.arrays is not None:
            x, y = self.arrays
            return (x, y) if max_examples is None else (x[:max_examples], y[:max_examples])
        ds = self.dataset if max_examples is None else self.dataset.take(max_examples)
        pairs = list(ds.as_numpy_iterator())
        if not pairs:
            shape = tuple(0 if d is None else d for d in self.input_shape)
            return np.zeros((0, *shape), np.float32), np.zeros((0,), np.int64)
        return np.stack([x for x, _ in pairs]), np.array([y for _, y in pairs], np.int64)


def names():
    """Returns the supported names: the generated data sets and the on-disk prefixes.

    Returns:
      A tuple such as ``("digits", "mnist1d", "teacher", "tfds:<name>", "idx:<directory>",
      "npz:<path>")``; see the module docstring for each format.
    """
    return GENERATED + ("tfds:<name>", "idx:<directory>", "npz:<path>")


def load(name, split="train", data_dir=None, **kwargs):
    """Loads a data set by name; nothing is ever downloaded.

    Args:
      name: one of :func:`names` (see the module docstring for each name's format and kwargs).
      split: ``"train"`` or ``"test"`` (TFDS: any split or slice its metadata knows).
      data_dir: TFDS data directory for ``"tfds:"`` names; base directory for relative
        ``"idx:"``/``"npz:"`` paths; must be ``None`` for generated data sets.
      **kwargs: per-name options (``num_samples``, ``seed``, ``num_classes``, ``keys``, ...).

    Returns:
      A :class:`Data`.

    Raises:
      ValueError: unknown name, split or malformed data; bad kwargs values.
      TypeError: kwargs the name does not accept; non-string name or split.
      FileNotFoundError: missing ``data_dir``, directory or file; unprepared TFDS data set.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}.")
    if not isinstance(split, str):
        raise TypeError(f"split must be a string, got {type(split).__name__}.")
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be None or a path, got {type(data_dir).__name__}.")
    if name.startswith("tfds:"):
        return _load_tfds(name, split, data_dir, **kwargs)
    if name.startswith(("idx:", "npz:")):
        if not name[4:]:
            raise ValueError(f"a path is required after {name[:4]!r}, e.g. '{name[:4]}/data/mnist'.")
        path = pathlib.Path(name[4:]).expanduser()
        if data_dir is not None and not path.is_absolute():
            if not os.path.isdir(data_dir):
                raise FileNotFoundError(f"data_dir {str(data_dir)!r} does not exist.")
            path = pathlib.Path(data_dir) / path
        x, y = _load_idx(path, split) if name.startswith("idx:") else _load_npz(path, split)
        num_classes = kwargs.pop("num_classes", None)
        if kwargs:
            raise TypeError(f"unexpected arguments for {name[:4]!r} data: {sorted(kwargs)}; accepted: ['num_classes'].")
        return _from_arrays(x, y, name, split, num_classes)
    if name in GENERATED:
        if data_dir is not None:
            raise ValueError(
                f"data_dir is not used by the generated data set {name!r}; got data_dir={str(data_dir)!r}."
            )
        _check_split(split, ("train", "test"), name)
        x_tr, y_tr, x_te, y_te, k = _generate(name, kwargs)
        x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
        return Data(tf.data.Dataset.from_tensor_slices((x, y)), len(x), k, x.shape[1:], name, split, (x, y))
    raise ValueError(
        f"unknown data set {name!r}; supported: {list(names())} (TFDS data sets are named "
        "'tfds:<name>', e.g. 'tfds:mnist', and read from a prepared data_dir)."
    )


def load_arrays(name, split="train", data_dir=None, max_examples=None, **kwargs):
    """Loads a data set as NumPy arrays: ``load(name, split, data_dir, **kwargs).numpy(max_examples)``.

    Args:
      name, split, data_dir, kwargs: as for :func:`load`.
      max_examples: ``None`` (all) or a positive cap on the number of examples.

    Returns:
      ``(x float32 (n, *input_shape), y int64 (n,))``.
    """
    return load(name, split, data_dir, **kwargs).numpy(max_examples)


# ----------------------------------------------------------------------------- helpers
def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_split(split, valid, what):
    if split not in valid:
        raise ValueError(f"unknown split {split!r} for {what}; valid splits: {list(valid)}.")


def _readonly(*arrays):
    for a in arrays:
        a.setflags(write=False)
    return arrays


def _from_arrays(x, y, name, split, num_classes=None):
    """Validates and converts (x, y) arrays read from disk into a :class:`Data`."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255.0)
    elif np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_:
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{name} split {split!r}: features contain NaN or infinity.")
    else:
        raise ValueError(f"{name} split {split!r}: features must be numeric, got dtype {x.dtype}.")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{name} split {split!r}: labels must have shape (n,) or (n, 1) of class ids, got {y.shape}.")
    if x.ndim < 2:
        raise ValueError(f"{name} split {split!r}: features must have shape (n, *input_shape), got {x.shape}.")
    if len(x) != len(y):
        raise ValueError(f"{name} split {split!r}: features {x.shape} and labels {y.shape} must have the same length.")
    if len(y) == 0:
        raise ValueError(f"{name} split {split!r} is empty.")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise ValueError(f"{name} split {split!r}: labels must be integer class ids, got dtype {y.dtype}.")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise ValueError(f"{name} split {split!r}: labels must be >= 0, got {int(y.min())}.")
    if num_classes is None:
        num_classes = int(y.max()) + 1
    elif not _is_int(num_classes) or num_classes <= y.max():
        raise ValueError(f"num_classes must be an integer > the largest label {int(y.max())}, got {num_classes!r}.")
    x, y = _readonly(x, y)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    return Data(ds, len(x), int(num_classes), tuple(x.shape[1:]), name, split, (x, y))


# ----------------------------------------------------------------------------- TFDS
def _parse_tfds(name):
    """'tfds:mnist:3.0.1' -> 'mnist:3.0.1'; 'tfds:cifar10:cfg' -> 'cifar10/cfg'."""
    parts = name[len("tfds:"):].split(":")
    if not all(parts) or len(parts) > 3:
        raise ValueError(
            f"bad TFDS name {name!r}; use 'tfds:<name>', 'tfds:<name>:<config>', 'tfds:<name>:<version>' "
            "or 'tfds:<name>:<config>:<version>'."
        )
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return ":".join(parts) if _VERSION.match(parts[1]) else "/".join(parts)
    if not _VERSION.match(parts[2]) or "/" in parts[0]:
        raise ValueError(
            f"bad TFDS name {name!r}: expected 'tfds:<name>:<config>:<version>' with a version like 3.0.1."
        )
    return f"{parts[0]}/{parts[1]}:{parts[2]}"


def _load_tfds(name, split, data_dir, keys=None, num_classes=None, **unused):
    import tensorflow_datasets as tfds

    if unused:
        raise TypeError(f"unexpected arguments for 'tfds:' data: {sorted(unused)}; accepted: ['keys', 'num_classes'].")
    spec = _parse_tfds(name)
    if data_dir is not None and not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir {str(data_dir)!r} does not exist.")
    try:
        builder = tfds.builder(spec, data_dir=None if data_dir is None else os.fspath(data_dir))
    except (ValueError, AssertionError, KeyError) as e:  # unknown name, config or version
        raise ValueError(f"TFDS cannot find the data set {spec!r}: {str(e).strip().splitlines()[0]}") from None
    if not builder.is_prepared():
        base = spec.split(":")[0].split("/")[0]
        config = f"--config={builder.builder_config.name} " if builder.builder_config else ""
        raise FileNotFoundError(
            f"TFDS data set {spec!r} is not prepared in {os.fspath(builder.data_dir_root)} (no "
            f"{os.path.join(os.fspath(builder.data_dir), 'dataset_info.json')}). bstf never downloads. On a "
            f"machine with internet run `tfds build {base} {config}--data_dir=DIR` (or "
            f"`tfds.builder({spec!r}, data_dir=DIR).download_and_prepare()`; data sets downloaded by hand, "
            "such as imagenet2012, also need `--manual_dir=DIR_WITH_ARCHIVES`), then copy DIR here and "
            "pass it as data_dir."
        )
    info = builder.info
    try:
        size = int(info.splits[split].num_examples)
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"unknown split {split!r} for {name!r}; valid splits: {sorted(info.splits)} (and slices such as "
            f"'train[:10%]'): {str(e).strip().splitlines()[0]}"
        ) from None
    features = info.features
    feature_names = sorted(features.keys()) if hasattr(features, "keys") else []
    if keys is None:
        keys = info.supervised_keys
        if keys is None and "label" in feature_names and len(feature_names) == 2:
            keys = (next(k for k in feature_names if k != "label"), "label")
    if (not isinstance(keys, (tuple, list)) or len(keys) != 2
            or not all(isinstance(k, str) and k in feature_names for k in keys)):
        raise ValueError(
            f"keys must be (feature_key, label_key) naming two of the features {feature_names} of {spec!r}, "
            f"got {keys!r} (pass keys=... when the data set has no single supervised pair)."
        )
    x_key, y_key = keys
    if num_classes is None:
        num_classes = getattr(features[y_key], "num_classes", None)
        if num_classes is None:
            raise ValueError(f"the label {y_key!r} of {spec!r} is not a ClassLabel; pass num_classes=.")
    elif not _is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")

    ds = builder.as_dataset(split=split, shuffle_files=False)
    x_spec, y_spec = ds.element_spec[x_key], ds.element_spec[y_key]
    numeric = isinstance(x_spec, tf.TensorSpec) and (
        x_spec.dtype.is_integer or x_spec.dtype.is_floating or x_spec.dtype.is_bool)
    if not numeric:
        raise ValueError(f"feature {x_key!r} of {spec!r} must be a numeric tensor, got {x_spec}.")
    if not isinstance(y_spec, tf.TensorSpec) or not y_spec.dtype.is_integer or y_spec.shape.rank != 0:
        raise ValueError(f"label {y_key!r} of {spec!r} must be an integer scalar, got {y_spec}.")
    scale = x_spec.dtype == tf.uint8

    def convert(example):
        x = tf.cast(example[x_key], tf.float32)
        return (x / 255.0 if scale else x), tf.cast(example[y_key], tf.int64)

    ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    return Data(ds, size, int(num_classes), tuple(x_spec.shape), name, split)


# ----------------------------------------------------------------------------- IDX
def read_idx(path):
    """Reads one IDX file (gzipped if its name ends in ``.gz``) into a NumPy array.

    The format: magic number bytes ``0x00 0x00 <type> <ndim>`` (type ``0x08`` uint8, ``0x09``
    int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64, all big-endian),
    ``ndim`` big-endian uint32 dimensions, then ``prod(dims)`` values in C order.

    Args:
      path: file path.

    Returns:
      An array of shape ``dims`` in native byte order.

    Raises:
      ValueError: bad magic number, truncated header, or a data size that disagrees with the header.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number 0x{raw[:4].hex()}).")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise ValueError(f"{path}: truncated IDX header ({ndim} dimensions need {offset} bytes, file has {len(raw)}).")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header says shape {dims} ({expected} bytes) but {len(raw) - offset} bytes follow.")
    return np.frombuffer(raw, dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def _find(directory, base):
    dotted = base.replace("-idx", ".idx")
    for candidate in (base, base + ".gz", dotted, dotted + ".gz"):
        if (directory / candidate).is_file():
            return directory / candidate
    expected = ", ".join(f for pair in _IDX_FILES.values() for f in pair)
    raise FileNotFoundError(
        f"{directory} has no {base} (or {base}.gz); an IDX directory holds {expected}, each optionally gzipped (.gz)."
    )


def _load_idx(directory, split):
    _check_split(split, tuple(_IDX_FILES), f"IDX directory {str(directory)!r}")
    if not directory.is_dir():
        raise FileNotFoundError(f"IDX directory {str(directory)!r} does not exist.")
    image_path, label_path = (_find(directory, f) for f in _IDX_FILES[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim not in (3, 4):
        raise ValueError(
            f"{image_path}: images must have 3 or 4 dimensions (n, rows, cols[, channels]), got {images.shape}."
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{label_path}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}.")
    if len(images) != len(labels):
        raise ValueError(
            f"{directory}: {len(images)} images ({image_path.name}) but {len(labels)} labels ({label_path.name})."
        )
    return (images[..., None] if images.ndim == 3 else images), labels


# ----------------------------------------------------------------------------- npz
def _load_npz(path, split):
    if not path.is_file():
        raise FileNotFoundError(f"npz file {str(path)!r} does not exist.")
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        splits = sorted({k[2:] for k in keys if k.startswith("x_") and "y_" + k[2:] in keys}
                        | ({"train"} if {"x", "y"} <= keys else set()))
        if split not in splits:
            raise ValueError(
                f"unknown split {split!r} for {str(path)!r}; valid splits: {splits} "
                f"(the archive holds {sorted(keys)}; expected x_<split>/y_<split>, or x/y for 'train')."
            )
        if {f"x_{split}", f"y_{split}"} <= keys:
            return f[f"x_{split}"], f[f"y_{split}"]
        return f["x"], f["y"]


# ----------------------------------------------------------------------------- generated
def _generate(name, kwargs):
    """Validates kwargs against the generator's signature, then calls the cached generator."""
    fn = _GENERATORS[name]
    params = inspect.signature(fn).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise TypeError(f"unexpected arguments for {name!r}: {unknown}; accepted: {list(params)}.")
    args = {k: p.default for k, p in params.items()} | kwargs
    _VALIDATORS[name](**args)
    return fn(**{k: (int(v) if _is_int(v) else v) for k, v in args.items()})


def _positive(arg, value, minimum=1, maximum=None):
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        allowed = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
        raise ValueError(f"{arg} must be {allowed}, got {value!r}.")


def _seed(value):
    if not _is_int(value) or value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}.")


def _fraction(arg, value, low_open=False):
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not ok or not ((0 < value if low_open else 0 <= value) and value < 1):
        raise ValueError(f"{arg} must be in {'(0' if low_open else '[0'}, 1), got {value!r}.")


def _check_digits(seed):
    _seed(seed)


def _check_mnist1d(num_samples, seed):
    _positive("num_samples", num_samples, minimum=10)
    _seed(seed)


def _check_teacher(num_samples, input_dim, num_classes, hidden, label_noise, test_fraction, seed):
    _positive("num_samples", num_samples, minimum=2)
    _positive("input_dim", input_dim)
    _positive("num_classes", num_classes, minimum=2, maximum=100)
    _positive("hidden", hidden)
    _fraction("label_noise", label_noise)
    _fraction("test_fraction", test_fraction, low_open=True)
    _seed(seed)
    n_test = int(round(num_samples * test_fraction))
    if not 1 <= n_test < num_samples:
        raise ValueError(
            f"num_samples * test_fraction must leave at least one train and one test example, got "
            f"num_samples={num_samples}, test_fraction={test_fraction}."
        )


@functools.lru_cache(maxsize=16)
def _digits(seed=0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=360, stratify=y, random_state=seed)
    return (*_readonly(x_tr, y_tr, x_te, y_te), 10)


@functools.lru_cache(maxsize=16)
def _mnist1d(num_samples=5000, seed=42):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:  # make_dataset reseeds the global generators; give them back untouched
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    arrays = (d["x"].astype(np.float32), d["y"].astype(np.int64),
              d["x_test"].astype(np.float32), d["y_test"].astype(np.int64))
    return (*_readonly(*arrays), 10)


def _teacher_network(input_dim, num_classes, hidden, seed):
    """The teacher (W1, W2, b) for a seed; b balances the classes on a reference sample."""
    rng = np.random.default_rng([seed, 0])
    w1 = rng.standard_normal((input_dim, hidden)) / np.sqrt(input_dim)
    w2 = rng.standard_normal((hidden, num_classes)) / np.sqrt(hidden)
    logits = np.tanh(rng.standard_normal((8192 + 100 * num_classes, input_dim)) @ w1) @ w2
    b, step = np.zeros(num_classes), 0.1 * logits.std()
    for _ in range(300):  # move each bias towards an equal share of the reference sample
        share = np.bincount(np.argmax(logits + b, axis=1), minlength=num_classes) / len(logits)
        b += step * (np.log(1.0 / num_classes) - np.log(share + 1e-3))
    return w1, w2, b


@functools.lru_cache(maxsize=16)
def _teacher(num_samples=10000, input_dim=32, num_classes=10, hidden=64, label_noise=0.0, test_fraction=0.2, seed=0):
    w1, w2, b = _teacher_network(input_dim, num_classes, hidden, seed)
    x = np.random.default_rng([seed, 1]).standard_normal((num_samples, input_dim)).astype(np.float32)
    y = np.argmax(np.tanh(x.astype(np.float64) @ w1) @ w2 + b, axis=1).astype(np.int64)
    if label_noise > 0:
        rng = np.random.default_rng([seed, 2])
        flip = rng.random(num_samples) < label_noise
        y = np.where(flip, (y + rng.integers(1, num_classes, num_samples)) % num_classes, y)
    n_train = num_samples - int(round(num_samples * test_fraction))
    return (*_readonly(x[:n_train], y[:n_train], x[n_train:], y[n_train:]), num_classes)


_GENERATORS = {"digits": _digits, "mnist1d": _mnist1d, "teacher": _teacher}
_VALIDATORS = {"digits": _check_digits, "mnist1d": _check_mnist1d, "teacher": _check_teacher}
