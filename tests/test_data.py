import gzip
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bstf import data


def _write_idx(path, array, compress):
    codes = {np.dtype(np.uint8): 0x08}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    rng = np.random.RandomState(0)
    arrays = {
        "train": (rng.randint(0, 256, (12, 28, 28)).astype(np.uint8), rng.randint(0, 10, 12).astype(np.uint8)),
        "test": (rng.randint(0, 256, (5, 28, 28)).astype(np.uint8), rng.randint(0, 10, 5).astype(np.uint8)),
    }
    for split, (images, labels) in arrays.items():
        img_name, lbl_name = data._IDX_FILES[split]
        _write_idx(tmp_path / img_name, images, compress)
        _write_idx(tmp_path / lbl_name, labels, compress)
    for split, (images, labels) in arrays.items():
        d = data.load(f"idx:{tmp_path}", split)
        assert (d.size, d.input_shape, d.split) == (len(images), (28, 28, 1), split)
        x, y = zip(*d.dataset.as_numpy_iterator())
        np.testing.assert_allclose(np.stack(x)[..., 0], images / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(np.array(y), labels)
        assert np.stack(x).dtype == np.float32 and np.array(y).dtype == np.int64


def test_idx_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="IDX directory .* does not exist"):
        data.load(f"idx:{tmp_path / 'missing'}")
    with pytest.raises(FileNotFoundError, match="has no train-images-idx3-ubyte"):
        data.load(f"idx:{tmp_path}")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04rest")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="is not an IDX file"):
        data.load(f"idx:{tmp_path}")
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        data.load(f"idx:{tmp_path}", "validation")


def test_npz(tmp_path):
    rng = np.random.RandomState(1)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.randint(0, 256, (6, 4, 4, 3)).astype(np.uint8), y_train=np.arange(6) % 3,
             x_test=rng.randn(2, 4, 4, 3).astype(np.float32), y_test=np.array([0, 2]))
    tr, te = data.load(f"npz:{path}"), data.load(f"npz:{path}", "test")
    assert (tr.size, tr.num_classes, tr.input_shape) == (6, 3, (4, 4, 3))
    assert float(tr.numpy()[0].max()) <= 1.0  # uint8 scaled
    np.testing.assert_array_equal(te.numpy()[1], [0, 2])
    with pytest.raises(ValueError, match=r"unknown split 'validation'.*\['test', 'train'\]"):
        data.load(f"npz:{path}", "validation")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load(f"npz:{tmp_path / 'nope.npz'}")


def test_digits():
    tr, te = data.load("digits"), data.load("digits", "test")
    assert (tr.size, te.size, tr.num_classes, tr.input_shape) == (1437, 360, 10, (8, 8, 1))
    x, y = tr.numpy()
    assert 0.0 <= x.min() and x.max() <= 1.0 and np.bincount(y).min() > 100
    # disjoint, deterministic split covering all 1797 images
    from sklearn.datasets import load_digits

    assert tr.size + te.size == len(load_digits().images)
    np.testing.assert_array_equal(data.load("digits").numpy()[1], y)


def test_mnist1d_offline_and_sized():
    d = data.load("mnist1d", num_samples=1000)
    assert (d.size, d.input_shape, d.num_classes) == (800, (40,), 10)
    assert data.load("mnist1d", "test", num_samples=1000).size == 200


def test_teacher_is_seeded_and_learnable():
    a = data.load("teacher", num_samples=2000, seed=3)
    b = data.load("teacher", num_samples=2000, seed=3)
    c = data.load("teacher", num_samples=2000, seed=4)
    np.testing.assert_array_equal(a.numpy()[0], b.numpy()[0])
    assert not np.array_equal(a.numpy()[0], c.numpy()[0])
    x, y = a.numpy()
    assert a.size == 1600 and np.bincount(y, minlength=10).max() < 0.5 * len(y)
    # A linear probe beats chance by far: the labels are a function of the inputs.
    from sklearn.linear_model import LogisticRegression

    xt, yt = data.load("teacher", "test", num_samples=2000, seed=3).numpy()
    assert LogisticRegression(max_iter=500).fit(x, y).score(xt, yt) > 0.4


def test_tfds_with_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=7):
        m = data.load("tfds:mnist")
        assert (m.size, m.input_shape, m.num_classes) == (7, (28, 28, 1), 10)
        x, y = next(m.dataset.as_numpy_iterator())
        assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1 and y.dtype == np.int64
        c = data.load("tfds:cifar10", split="test")
        assert (c.size, c.input_shape, c.num_classes) == (7, (32, 32, 3), 10)


def test_tfds_not_prepared_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not prepared in .*tfds build mnist --data_dir"):
        data.load("tfds:mnist", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="data_dir .* does not exist"):
        data.load("tfds:mnist", data_dir=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="TFDS cannot find the data set 'no_such_set'"):
        data.load("tfds:no_such_set", data_dir=str(tmp_path))


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: data.load("imagenet"), ValueError, "unknown data set 'imagenet'"),
        (lambda: data.load("digits", "validation"), ValueError, "unknown split 'validation'"),
        (lambda: data.load("teacher", num_samples=0), ValueError, "num_samples must be a positive integer"),
        (lambda: data.load("teacher", label_noise=1.5), ValueError, r"label_noise must be in \[0, 1\)"),
        (lambda: data.load("digits", data_dir="/x"), ValueError, "data_dir is only used with 'tfds:'"),
        (lambda: data.load(3), TypeError, "name must be a string"),
    ],
)
def test_bad_input(call, err, match):
    with pytest.raises(err, match=match):
        call()
