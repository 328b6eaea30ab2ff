"""Tests for bstf.data: every loader against arrays the test writes or computes itself."""

import dataclasses
import gzip
import os
import random
import socket
import struct

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from bstf import data


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ----------------------------------------------------------------------------- IDX
def _write_idx(path, array, compress=False):
    """Writes the IDX format by hand: 0, 0, type code, ndim, big-endian dims, big-endian data."""
    codes = {np.dtype(np.uint8): (0x08, "u1"), np.dtype(np.float32): (0x0D, ">f4"), np.dtype(np.int32): (0x0C, ">i4")}
    code, big_endian = codes[array.dtype]
    payload = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(big_endian).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _mnist_dir(tmp_path, compress, n_train=12, n_test=5):
    rng = np.random.RandomState(0)
    arrays = {
        split: (rng.randint(0, 256, (n, 28, 28)).astype(np.uint8), rng.randint(0, 10, n).astype(np.uint8))
        for split, n in [("train", n_train), ("test", n_test)]
    }
    names = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    for split, (images, labels) in arrays.items():
        _write_idx(tmp_path / names[split][0], images, compress)
        _write_idx(tmp_path / names[split][1], labels, compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    arrays = _mnist_dir(tmp_path, compress)
    for split, (images, labels) in arrays.items():
        d = data.load(f"idx:{tmp_path}", split)
        assert (d.size, d.input_shape, d.split, d.name) == (len(images), (28, 28, 1), split, f"idx:{tmp_path}")
        assert d.num_classes == int(labels.max()) + 1
        x, y = zip(*d.dataset.as_numpy_iterator())
        x, y = np.stack(x), np.array(y)
        assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (len(images), 28, 28, 1)
        np.testing.assert_allclose(x[..., 0], images.astype(np.float64) / 255.0, rtol=1e-6, atol=0)
        np.testing.assert_array_equal(y, labels)
        assert x.min() >= 0.0 and x.max() <= 1.0
        np.testing.assert_array_equal(d.numpy()[0], x)  # the in-memory arrays are the dataset's


def test_read_idx_big_endian_types_and_alternative_names(tmp_path):
    floats = np.array([[1.5, -2.25], [1e-3, 3e5]], np.float32)
    _write_idx(tmp_path / "f.idx", floats)
    got = data.read_idx(tmp_path / "f.idx")
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_array_equal(got, floats)
    ints = np.array([70000, -3, 0], np.int32)
    _write_idx(tmp_path / "i.idx", ints, compress=True)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "i.idx.gz"), ints)
    # the dotted spelling of the file names (train-images.idx3-ubyte) and colour images (n, r, c, 3)
    images = np.arange(2 * 3 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 3)
    _write_idx(tmp_path / "train-images.idx3-ubyte", images, compress=True)
    _write_idx(tmp_path / "train-labels.idx1-ubyte", np.array([4, 1], np.uint8))
    d = data.load(f"idx:{tmp_path}")
    assert (d.size, d.input_shape, d.num_classes) == (2, (3, 3, 3), 5)
    np.testing.assert_allclose(d.numpy()[0][1, 2, 2], np.float32([51, 52, 53]) / 255, rtol=1e-6)


def test_idx_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="IDX directory .*missing' does not exist"):
        data.load(f"idx:{tmp_path / 'missing'}")
    with pytest.raises(FileNotFoundError, match=r"has no train-images-idx3-ubyte \(or train-images-idx3-ubyte.gz\).*"
                                                r"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"):
        data.load(f"idx:{tmp_path}")
    with pytest.raises(ValueError, match=r"unknown split 'validation'.*\['train', 'test'\]"):
        data.load(f"idx:{tmp_path}", "validation")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04rest")
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([5], np.uint8))
    with pytest.raises(ValueError, match="is not an IDX file .*0x01020304"):
        data.load(f"idx:{tmp_path}")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 2, 2) + b"\x00" * 7)
    with pytest.raises(ValueError, match=r"header says shape \(2, 2, 2\) \(8 bytes\) but 7 bytes follow"):
        data.load(f"idx:{tmp_path}")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + b"\x00\x00")
    with pytest.raises(ValueError, match="truncated IDX header"):
        data.load(f"idx:{tmp_path}")
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"3 images \(train-images-idx3-ubyte\) but 1 labels"):
        data.load(f"idx:{tmp_path}")


# ----------------------------------------------------------------------------- npz
def test_npz_splits_scaling_and_num_classes(tmp_path):
    rng = np.random.RandomState(1)
    x_train = rng.randint(0, 256, (6, 4, 4, 3)).astype(np.uint8)
    x_test = rng.randn(2, 4, 4, 3)  # float64: cast, not scaled
    np.savez(tmp_path / "d.npz", x_train=x_train, y_train=np.arange(6) % 3, x_test=x_test, y_test=np.array([[0], [2]]))
    tr, te = data.load(f"npz:{tmp_path / 'd.npz'}"), data.load(f"npz:{tmp_path / 'd.npz'}", "test")
    assert (tr.size, tr.num_classes, tr.input_shape) == (6, 3, (4, 4, 3))
    np.testing.assert_allclose(tr.numpy()[0], x_train / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(tr.numpy()[1], [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(te.numpy()[0], x_test.astype(np.float32))
    np.testing.assert_array_equal(te.numpy()[1], [0, 2])
    assert data.load(f"npz:{tmp_path / 'd.npz'}", num_classes=10).num_classes == 10
    # relative paths resolve against data_dir; x/y alone is a single train split
    np.savez(tmp_path / "xy.npz", x=np.ones((3, 2), np.float32), y=np.array([1.0, 0.0, 1.0]))
    xy = data.load("npz:xy.npz", data_dir=tmp_path)
    assert (xy.size, xy.num_classes, xy.input_shape) == (3, 2, (2,))
    np.testing.assert_array_equal(xy.numpy()[1], [1, 0, 1])
    with pytest.raises(ValueError, match=r"unknown split 'test'.*valid splits: \['train'\]"):
        data.load("npz:xy.npz", "test", data_dir=tmp_path)


def test_npz_errors(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((3, 2)), y_train=np.array([0, 1, 2]), x_test=np.zeros((1, 2)), y_test=[0])
    with pytest.raises(ValueError, match=r"unknown split 'validation'.*valid splits: \['test', 'train'\]"):
        data.load(f"npz:{path}", "validation")
    with pytest.raises(FileNotFoundError, match="npz file .*nope.npz' does not exist"):
        data.load(f"npz:{tmp_path / 'nope.npz'}")
    with pytest.raises(ValueError, match=r"num_classes must be an integer > the largest label 2, got 2"):
        data.load(f"npz:{path}", num_classes=2)
    with pytest.raises(TypeError, match=r"unexpected arguments for 'npz:' data: \['seed'\]"):
        data.load(f"npz:{path}", seed=1)
    for y, match in [(np.eye(3), r"labels must have shape \(n,\) or \(n, 1\)"),
                     (np.array([0, -1, 1]), "labels must be >= 0"),
                     (np.array([0.5, 1, 2]), "labels must be integer class ids"),
                     (np.array([0, 1]), "must have the same length")]:
        np.savez(path, x=np.zeros((3, 2)), y=y)
        with pytest.raises(ValueError, match=match):
            data.load(f"npz:{path}")
    np.savez(path, x=np.array([[0.0], [np.nan]]), y=np.array([0, 1]))
    with pytest.raises(ValueError, match="NaN or infinity"):
        data.load(f"npz:{path}")
    with pytest.raises(FileNotFoundError, match="data_dir .*nowhere' does not exist"):
        data.load("npz:d.npz", data_dir=tmp_path / "nowhere")


# ----------------------------------------------------------------------------- digits
def test_digits_exact_stratified_split():
    from sklearn.datasets import load_digits

    full = load_digits()
    tr, te = data.load("digits"), data.load("digits", "test")
    assert (tr.size, te.size, tr.num_classes, tr.input_shape, te.input_shape) == (1437, 360, 10, (8, 8, 1), (8, 8, 1))
    (x, y), (xt, yt) = tr.numpy(), te.numpy()
    assert x.dtype == np.float32 and y.dtype == np.int64 and 0.0 == x.min() and x.max() == 1.0
    # train + test is exactly the 1797 images (pixels / 16), each once
    both = np.concatenate([x, xt])[..., 0].reshape(1797, 64) * 16
    key = np.lexsort(both.T)
    full_key = np.lexsort(full.data.T)
    np.testing.assert_allclose(both[key], full.data[full_key], atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([y, yt])[key], full.target[full_key])
    # stratified: each class's test share is 360/1797 of its count, to within one example
    expected = np.bincount(full.target) * 360 / 1797
    assert np.abs(np.bincount(yt, minlength=10) - expected).max() <= 1.0
    # deterministic per seed; another seed gives another split
    np.testing.assert_array_equal(data.load("digits").numpy()[1], y)
    assert not np.array_equal(data.load("digits", seed=1).numpy()[1], y)


# ----------------------------------------------------------------------------- mnist1d
def test_mnist1d_offline_sized_and_leaves_global_rng_alone(no_network):
    from mnist1d.data import get_dataset_args, make_dataset

    np.random.seed(123)
    random.seed(123)
    before_np, before_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    d = data.load("mnist1d", num_samples=1005, seed=11)  # rounded down to 1000: 800 train / 200 test
    assert (np.random.random(), random.random()) == (before_np, before_py)
    assert (d.size, d.input_shape, d.num_classes) == (800, (40,), 10)
    te = data.load("mnist1d", "test", num_samples=1005, seed=11)
    assert te.size == 200
    args = get_dataset_args()
    args.num_samples, args.seed = 1005, 11
    ref = make_dataset(args)
    np.testing.assert_allclose(d.numpy()[0], ref["x"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(te.numpy()[1], ref["y_test"])
    assert np.bincount(d.numpy()[1], minlength=10).min() > 60


# ----------------------------------------------------------------------------- teacher
def test_teacher_seeded_balanced_disjoint_and_cached():
    a = data.load("teacher", num_samples=4000, seed=3)
    b = data.load("teacher", num_samples=4000, seed=3)
    c = data.load("teacher", num_samples=4000, seed=4)
    assert (a.size, a.input_shape, a.num_classes) == (3200, (32,), 10)
    assert a.arrays[0] is b.arrays[0]  # cached: the second load generated nothing
    np.testing.assert_array_equal(a.numpy()[1], b.numpy()[1])
    assert not np.array_equal(a.numpy()[0], c.numpy()[0])
    with pytest.raises(ValueError, match="read-only"):
        a.numpy()[0][0, 0] = 1.0  # callers cannot corrupt the cache
    x, y = a.numpy()
    shares = np.bincount(y, minlength=10) / len(y)
    assert shares.min() > 0.07 and shares.max() < 0.13, shares  # balanced, 0.1 each
    xt, yt = data.load("teacher", "test", num_samples=4000, seed=3).numpy()
    assert len(xt) == 800 and not (x[:, None, :] == xt[None, :, :]).all(-1).any()  # disjoint inputs
    assert abs(x.mean()) < 0.02 and abs(x.std() - 1) < 0.02  # standard Gaussian inputs


def test_teacher_is_learnable_and_label_noise_flips_the_requested_fraction():
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.linear_model import LogisticRegression

    kw = dict(num_samples=3000, input_dim=8, num_classes=4, seed=5)
    (x, y), (xt, yt) = data.load_arrays("teacher", **kw), data.load_arrays("teacher", "test", **kw)
    # The labels are a function of the inputs: simple students beat chance (0.25) by far.
    assert LogisticRegression(max_iter=1000).fit(x, y).score(xt, yt) > 0.75
    assert KNeighborsClassifier(5).fit(x, y).score(xt, yt) > 0.7
    xn, yn = data.load_arrays("teacher", label_noise=0.3, **kw)
    np.testing.assert_array_equal(xn, x)  # noise changes labels only
    flipped = np.mean(yn != y)
    assert abs(flipped - 0.3) < 0.03, flipped  # binomial sd 0.009 at n=2400
    assert (yn[yn != y] < 4).all() and (yn >= 0).all()


# ----------------------------------------------------------------------------- TFDS
def _prepare_tfds(name, data_dir, splits):
    """Writes a prepared TFDS directory by hand: tfrecords of serialized examples + metadata.

    splits maps a split name to (images, labels) (written as records) or to an int (metadata only,
    for tfds.testing.mock_data).
    """
    builder = tfds.builder(name, data_dir=str(data_dir))
    os.makedirs(builder.data_dir, exist_ok=True)
    infos = []
    for split, content in splits.items():
        template = tfds.core.ShardedFileTemplate(
            data_dir=builder.data_path, dataset_name=builder.name, split=split, filetype_suffix="tfrecord")
        if isinstance(content, int):
            infos.append(tfds.core.SplitInfo(
                name=split, shard_lengths=[content], num_bytes=0, filename_template=template))
            continue
        path = os.fspath(template.sharded_filepath(shard_index=0, num_shards=1))
        with tf.io.TFRecordWriter(path) as writer:
            for image, label in zip(*content):
                writer.write(builder.info.features.serialize_example({"image": image, "label": int(label)}))
        infos.append(tfds.core.SplitInfo(
            name=split, shard_lengths=[len(content[1])], num_bytes=os.path.getsize(path), filename_template=template))
    builder.info.set_splits(tfds.core.SplitDict(infos))
    builder.info.write_to_directory(builder.data_dir)


def test_tfds_reads_a_prepared_directory(tmp_path, no_network):
    rng = np.random.RandomState(2)
    images = rng.randint(0, 256, (20, 28, 28, 1)).astype(np.uint8)
    labels = rng.randint(0, 10, 20)
    _prepare_tfds("mnist", tmp_path, {"train": (images[:15], labels[:15]), "test": (images[15:], labels[15:])})
    d = data.load("tfds:mnist", data_dir=tmp_path)
    assert (d.size, d.input_shape, d.num_classes, d.name, d.split) == (15, (28, 28, 1), 10, "tfds:mnist", "train")
    x, y = d.numpy()
    assert x.dtype == np.float32 and y.dtype == np.int64 and d.arrays is None
    np.testing.assert_allclose(x, images[:15] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels[:15])
    # slices and unions: size from the metadata equals what the dataset yields
    for split, idx in [("train[:40%]", slice(0, 6)), ("train[10:]", slice(10, 15)), ("test", slice(15, 20)),
                       ("train+test", slice(0, 20))]:
        s = data.load("tfds:mnist:3.0.1", split, data_dir=str(tmp_path))
        xs, ys = s.numpy()
        assert s.size == len(ys) == idx.stop - idx.start, split
        np.testing.assert_array_equal(ys, labels[idx])
    np.testing.assert_array_equal(data.load_arrays("tfds:mnist", data_dir=tmp_path, max_examples=3)[1], labels[:3])
    match = r"unknown split 'validation' for 'tfds:mnist'; valid splits: \['test', 'train'\]"
    with pytest.raises(ValueError, match=match):
        data.load("tfds:mnist", "validation", data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"unknown split 'train\[:200%\]'"):
        data.load("tfds:mnist", "train[:200%]", data_dir=tmp_path)
    match = r"keys must be \(feature_key, label_key\) naming two of the features \['image', 'label'\]"
    with pytest.raises(ValueError, match=match):
        data.load("tfds:mnist", data_dir=tmp_path, keys=("pixels", "label"))


@pytest.mark.parametrize("name, shape, train_size", [("mnist", (28, 28, 1), 60000), ("cifar10", (32, 32, 3), 50000)])
def test_tfds_mock_data(tmp_path, no_network, name, shape, train_size):
    # mock_data replaces the records with random examples; USE_FILES reads the split metadata we write.
    _prepare_tfds(name, tmp_path, {"train": train_size, "test": 10000})
    with tfds.testing.mock_data(num_examples=7, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path)):
        d = data.load(f"tfds:{name}", data_dir=tmp_path)
        assert (d.size, d.input_shape, d.num_classes) == (train_size, shape, 10)
        x, y = d.numpy()
        assert x.shape == (7, *shape) and x.dtype == np.float32 and y.dtype == np.int64
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5 and ((0 <= y) & (y < 10)).all()
        assert data.load(f"tfds:{name}", "train[:10%]", data_dir=tmp_path).size == train_size // 10
        assert data.load(f"tfds:{name}", "test[50%:]", data_dir=tmp_path).size == 5000
        with pytest.raises(ValueError, match=r"valid splits: \['test', 'train'\]"):
            data.load(f"tfds:{name}", "validation", data_dir=tmp_path)


def test_tfds_not_prepared_is_a_clear_error_and_never_downloads(tmp_path, no_network):
    with pytest.raises(AssertionError, match="network access attempted"):  # the guard is active
        socket.create_connection(("127.0.0.1", 9))
    match = rf"'mnist' is not prepared in {tmp_path}.*tfds build mnist --data_dir=DIR"
    with pytest.raises(FileNotFoundError, match=match):
        data.load("tfds:mnist", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'cifar10:3.0.2' is not prepared.*download_and_prepare"):
        data.load("tfds:cifar10:3.0.2", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="manual_dir"):
        data.load("tfds:imagenet2012", data_dir=tmp_path)
    assert os.listdir(tmp_path) == []  # nothing was written, let alone downloaded
    with pytest.raises(FileNotFoundError, match=r"data_dir '.*missing' does not exist"):
        data.load("tfds:mnist", data_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="TFDS cannot find the data set 'no_such_set'"):
        data.load("tfds:no_such_set", data_dir=tmp_path)
    with pytest.raises(ValueError, match="TFDS cannot find the data set 'mnist:9.9.9'.*only: 3.0.1"):
        data.load("tfds:mnist:9.9.9", data_dir=tmp_path)
    with pytest.raises(TypeError, match=r"unexpected arguments for 'tfds:' data: \['seed'\]"):
        data.load("tfds:mnist", data_dir=tmp_path, seed=0)


@pytest.mark.parametrize(
    "name, spec",
    [("tfds:mnist", "mnist"), ("tfds:mnist:3.0.1", "mnist:3.0.1"), ("tfds:mnist:3.*.*", "mnist:3.*.*"),
     ("tfds:cifar10_corrupted:fog_1", "cifar10_corrupted/fog_1"),
     ("tfds:cifar10_corrupted/fog_1", "cifar10_corrupted/fog_1"),
     ("tfds:cifar10_corrupted:fog_1:1.0.0", "cifar10_corrupted/fog_1:1.0.0"),
     ("tfds:cifar10_corrupted/fog_1:1.0.0", "cifar10_corrupted/fog_1:1.0.0")],
)
def test_tfds_name_spellings(name, spec):
    assert data._parse_tfds(name) == spec


@pytest.mark.parametrize("name", ["tfds:", "tfds:mnist:", "tfds:a:b:c", "tfds:a:b:1:2", "tfds:a/b:c:1.0.0"])
def test_tfds_bad_names(name):
    with pytest.raises(ValueError, match="bad TFDS name"):
        data.load(name)


# ----------------------------------------------------------------------------- API and bad input
def test_names_numpy_and_data_validation():
    assert data.names() == ("digits", "mnist1d", "teacher", "tfds:<name>", "idx:<directory>", "npz:<path>")
    d = data.load("teacher", num_samples=50, test_fraction=0.2, seed=1)
    x, y = d.numpy(max_examples=7)
    assert x.shape == (7, 32) and y.shape == (7,) and d.size == 40
    # the dataset yields exactly the arrays
    xs, ys = zip(*d.dataset.as_numpy_iterator())
    np.testing.assert_array_equal(np.stack(xs), d.numpy()[0])
    np.testing.assert_array_equal(np.array(ys), d.numpy()[1])
    assert d.dataset.element_spec[1].dtype == tf.int64 and d.dataset.element_spec[0].shape == (32,)
    with pytest.raises(ValueError, match="max_examples must be None or a positive integer, got 0"):
        d.numpy(0)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1, got 0"):
        data.Data(d.dataset, 40, 0, (32,), "x", "train")
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.size = 3


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(name="imagenet"), ValueError,
         r"unknown data set 'imagenet'; supported: \['digits', 'mnist1d', 'teacher', 'tfds:<name>'"),
        (dict(name="mnist"), ValueError, "'tfds:mnist'"),
        (dict(name="digits", split="validation"), ValueError,
         r"unknown split 'validation' for digits; valid splits: \['train', 'test'\]"),
        (dict(name="teacher", num_samples=0), ValueError, "num_samples must be an integer >= 2, got 0"),
        (dict(name="teacher", num_samples=-5), ValueError, "num_samples must be an integer >= 2, got -5"),
        (dict(name="teacher", num_samples=2.5), ValueError, "num_samples must be an integer >= 2, got 2.5"),
        (dict(name="mnist1d", num_samples=0), ValueError, "num_samples must be an integer >= 10, got 0"),
        (dict(name="teacher", num_classes=1), ValueError, r"num_classes must be an integer in \[2, 100\], got 1"),
        (dict(name="teacher", label_noise=1.5), ValueError, r"label_noise must be in \[0, 1\), got 1.5"),
        (dict(name="teacher", test_fraction=0.0), ValueError, r"test_fraction must be in \(0, 1\), got 0.0"),
        (dict(name="teacher", num_samples=3, test_fraction=0.1), ValueError, "at least one train and one test example"),
        (dict(name="teacher", seed=-1), ValueError, "seed must be a non-negative integer, got -1"),
        (dict(name="teacher", widht=3), TypeError,
         r"unexpected arguments for 'teacher': \['widht'\]; accepted: \['num_samples'"),
        (dict(name="digits", data_dir="/x"), ValueError, "data_dir is not used by the generated data set 'digits'"),
        (dict(name=3), TypeError, "name must be a string, got int"),
        (dict(name="digits", split=0), TypeError, "split must be a string, got int"),
        (dict(name="idx:"), ValueError, "a path is required after 'idx:'"),
    ],
)
def test_bad_input(kwargs, err, match):
    with pytest.raises(err, match=match):
        data.load(**kwargs)
