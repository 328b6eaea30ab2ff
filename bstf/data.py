"""Data sets by name: real loaders for your data, offline defaults for everything else.

``bstf.data.load(name, split="train", data_dir=None, **kwargs)`` returns a
:class:`Data`: an *unbatched* ``tf.data.Dataset`` of ``(features float32,
label int64)`` with its size, number of classes and input shape. Names:

* ``"tfds:<name>"`` (also ``"tfds:<name>/<config>"`` or ``"tfds:<name>:<version>"``)
  — a TensorFlow Datasets data set already prepared in ``data_dir`` (never
  downloaded: an unprepared data set raises an error saying how to prepare
  it). Images become float32 in [0, 1]. Splits as TFDS accepts them, e.g.
  ``"train"``, ``"test"``, ``"train[:10%]"``.
* ``"idx:<directory>"`` — a directory in the MNIST layout
  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each gzipped
  (``.gz``) or not): MNIST, Fashion-MNIST, KMNIST, ... Split ``"train"`` or
  ``"test"``; pixels scaled to [0, 1] with a trailing channel axis.
* ``"npz:<path>"`` — a NumPy ``.npz`` with ``x_train, y_train, x_test,
  y_test`` (or ``x, y`` for a single ``"train"`` split). Integer features
  (uint8 images) are scaled to [0, 1].
* offline defaults, generated locally, no download:
  ``"digits"`` (scikit-learn's 1797 8×8 digits, shape (8, 8, 1), a seeded
  1437/360 train/test split), ``"mnist1d"`` (the ``mnist1d`` package's
  ``make_dataset``; ``num_samples`` default 5000, 80 % train; shape (40,)),
  and ``"teacher"`` (a seeded random two-layer teacher network labelling
  Gaussian inputs; ``num_samples``, ``input_dim``, ``num_classes``,
  ``label_noise``, ``seed``).
"""

import dataclasses
import functools
import gzip
import os
import pathlib

import numpy as np
import tensorflow as tf

GENERATED = ("digits", "mnist1d", "teacher")
PREFIXES = ("tfds:", "idx:", "npz:")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclasses.dataclass(frozen=True)
class Data:
    """A data set: an unbatched ``tf.data.Dataset`` of (features, label) and facts about it."""

    dataset: tf.data.Dataset
    size: int
    num_classes: int
    input_shape: tuple
    name: str
    split: str
    arrays: tuple = dataclasses.field(default=None, repr=False, compare=False)

    def numpy(self, max_examples=None):
        """(x, y) as NumPy arrays (the first ``max_examples``)."""
        if self.arrays is not None:
            x, y = self.arrays
            return (x, y) if max_examples is None else (x[:max_examples], y[:max_examples])
        ds = self.dataset if max_examples is None else self.dataset.take(max_examples)
        xs, ys = zip(*((x, y) for x, y in ds.as_numpy_iterator()))
        return np.stack(xs), np.array(ys)


def names():
    """The supported names and prefixes."""
    return GENERATED + tuple(p + "..." for p in PREFIXES)


def load(name, split="train", data_dir=None, **kwargs):
    """Loads a data set by name (see the module docstring); returns :class:`Data`."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}.")
    if name.startswith("tfds:"):
        return _load_tfds(name[len("tfds:"):], split, data_dir, **kwargs)
    if data_dir is not None:
        raise ValueError(f"data_dir is only used with 'tfds:' names, got data_dir={data_dir!r} for {name!r}.")
    if name.startswith("idx:"):
        x, y = _load_idx(name[len("idx:"):], split)
        return _from_arrays(x, y, name, split, kwargs.pop("num_classes", None), **kwargs)
    if name.startswith("npz:"):
        x, y = _load_npz(name[len("npz:"):], split)
        return _from_arrays(x, y, name, split, kwargs.pop("num_classes", None), **kwargs)
    if name in GENERATED:
        _check_split(split, ("train", "test"))
        x_tr, y_tr, x_te, y_te, k = _GENERATORS[name](**kwargs)
        x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
        return _from_arrays(x, y, name, split, k)
    raise ValueError(f"unknown data set {name!r}; use one of {GENERATED} or a name starting with {PREFIXES}.")


def _check_split(split, valid):
    if split not in valid:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(valid)}.")


def _from_arrays(x, y, name, split, num_classes=None, **unused):
    if unused:
        raise TypeError(f"unexpected arguments for {name!r}: {sorted(unused)}.")
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / 255.0
    x = x.astype(np.float32)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"{name}: {len(x)} features but {len(y)} labels.")
    if len(x) == 0:
        raise ValueError(f"{name} split {split!r} is empty.")
    if num_classes is None:
        num_classes = int(y.max()) + 1
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    return Data(ds, len(x), int(num_classes), tuple(x.shape[1:]), name, split, arrays=(x, y))


# ----------------------------------------------------------------------------- TFDS
def _load_tfds(spec, split, data_dir, **kwargs):
    import tensorflow_datasets as tfds

    if not spec:
        raise ValueError("a TFDS name is required after 'tfds:', e.g. 'tfds:mnist'.")
    if data_dir is not None and not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir {data_dir!r} does not exist.")
    try:
        builder = tfds.builder(spec, data_dir=data_dir)
    except Exception as e:  # unknown name, bad version
        raise ValueError(f"TFDS cannot find the data set {spec!r}: {str(e).splitlines()[0]}") from None
    try:
        ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    except (AssertionError, FileNotFoundError, tf.errors.NotFoundError):
        where = data_dir or "the default TFDS data directory (~/tensorflow_datasets)"
        raise FileNotFoundError(
            f"TFDS data set {spec!r} is not prepared in {where}. bstf never downloads data: prepare it "
            f"on a machine with internet (`tfds build {spec.split('/')[0]} --data_dir=DIR`, or for "
            "manually downloaded sets like imagenet2012 `--manual_dir=...`) and pass --data_dir=DIR."
        ) from None
    except (KeyError, ValueError) as e:
        raise ValueError(f"unknown split {split!r} for {spec!r}; available: {list(builder.info.splits)} ({e}).") from None
    try:
        size = int(builder.info.splits[split].num_examples)
    except KeyError:  # no split metadata (e.g. tfds.testing.mock_data): count the elements
        size = int(ds.cardinality())
        if size < 0:
            size = int(ds.reduce(0, lambda n, _: n + 1))
    label = builder.info.features["label"]
    num_classes = int(kwargs.pop("num_classes", label.num_classes))
    if kwargs:
        raise TypeError(f"unexpected arguments for tfds: {sorted(kwargs)}.")
    image_like = ds.element_spec[0].dtype == tf.uint8

    def convert(x, y):
        x = tf.cast(x, tf.float32) / 255.0 if image_like else tf.cast(x, tf.float32)
        return x, tf.cast(y, tf.int64)

    ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    shape = tuple(ds.element_spec[0].shape)
    return Data(ds, size, num_classes, shape, "tfds:" + spec, split)


# ----------------------------------------------------------------------------- IDX
def read_idx(path):
    """Reads one IDX file (gzipped or not) into a NumPy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}).")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header says {tuple(dims)} ({expected} bytes) but {len(raw) - offset} bytes follow.")
    return np.frombuffer(raw, dtype, offset=offset).reshape(dims)


def _find(directory, base):
    for candidate in (base, base + ".gz", base.replace("-idx", ".idx"), base.replace("-idx", ".idx") + ".gz"):
        path = directory / candidate
        if path.exists():
            return path
    raise FileNotFoundError(
        f"{directory} has no {base} (or {base}.gz); an IDX directory holds "
        f"{', '.join(f for pair in _IDX_FILES.values() for f in pair)}, each optionally gzipped."
    )


def _load_idx(directory, split):
    _check_split(split, tuple(_IDX_FILES))
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"IDX directory {str(directory)!r} does not exist.")
    images, labels = (read_idx(_find(directory, f)) for f in _IDX_FILES[split])
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} images but {len(labels)} labels in split {split!r}.")
    if images.ndim == 3:
        images = images[..., None]
    return images, labels


# ----------------------------------------------------------------------------- npz
def _load_npz(path, split):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"npz file {path!r} does not exist.")
    with np.load(path) as f:
        keys = set(f.files)
        if {f"x_{split}", f"y_{split}"} <= keys:
            return f[f"x_{split}"], f[f"y_{split}"]
        if split == "train" and {"x", "y"} <= keys:
            return f["x"], f["y"]
        splits = sorted({k[2:] for k in keys if k.startswith("x_")} | ({"train"} if "x" in keys else set()))
    raise ValueError(f"unknown split {split!r} for {path}; it has {splits} (arrays x_<split>, y_<split>).")


# ----------------------------------------------------------------------------- generated
def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def _split(x, y, test_fraction, seed):
    order = np.random.RandomState(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


@functools.lru_cache(maxsize=8)
def _digits(seed=0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    return (*_split(x, d.target.astype(np.int64), 360 / 1797, seed), 10)


@functools.lru_cache(maxsize=8)
def _mnist1d(num_samples=5000, seed=42):
    from mnist1d.data import get_dataset_args, make_dataset

    _positive("num_samples", num_samples)
    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    d = make_dataset(args)
    return (d["x"].astype(np.float32), d["y"].astype(np.int64),
            d["x_test"].astype(np.float32), d["y_test"].astype(np.int64), 10)


@functools.lru_cache(maxsize=8)
def _teacher(num_samples=10000, input_dim=32, num_classes=10, hidden=64, label_noise=0.0, seed=0, test_fraction=0.2):
    _positive("num_samples", num_samples)
    _positive("input_dim", input_dim)
    _positive("num_classes", num_classes)
    if not 0 <= label_noise < 1:
        raise ValueError(f"label_noise must be in [0, 1), got {label_noise}.")
    rng = np.random.RandomState(seed)
    w1 = rng.randn(input_dim, hidden) / np.sqrt(input_dim)
    w2 = rng.randn(hidden, num_classes) / np.sqrt(hidden)
    x = rng.randn(num_samples, input_dim).astype(np.float32)
    y = np.argmax(np.tanh(x @ w1) @ w2, axis=1)
    flip = rng.rand(num_samples) < label_noise
    y[flip] = rng.randint(num_classes, size=int(flip.sum()))
    return (*_split(x, y.astype(np.int64), test_fraction, seed), num_classes)


_GENERATORS = {"digits": _digits, "mnist1d": _mnist1d, "teacher": _teacher}
