"""bstf.fitting.checks: every bad input refused before the first step, in plain words; good inputs pass."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import bstf
from bstf.fitting import checks

N = 240
RNG = np.random.RandomState(0)
X = RNG.randn(N, 6).astype("float32")
Y = RNG.randint(0, 3, N).astype("int64")
DATA = tf.data.Dataset.from_tensor_slices((X, Y))
UNKNOWN = DATA.filter(lambda x, y: True)  # same examples, unknown cardinality


def _plan(**kw):
    return bstf.NoiseScalePlan(**{"train_size": N, "base_lr": 0.05, "base_batch": 8, **kw})


# ============================================================================ check_plan
BAD_PLANS = [
    (_plan(base_batch=32, milestones=[1, 2], factor=4, mode="increase_batch"), 3,
     r"phase 2 \(epochs 2-3\) has a global batch of 512 but the training set has 240 examples: one update "
     r"would span 2.13 epochs\. Cap the batch with max_batch=240"),
    (_plan(milestones=[1], factor=1e30, mode="increase_batch"), 2, r"phase 1 \(epochs 1-2\) has a global batch of 8"),
    (_plan(base_lr=1e308, batch=16, lr_rule="linear"), 1, r"phase 0 \(epochs 0-1\) has a learning rate of inf"),
    (_plan(base_lr=1e39), 1, r"phase 0 .* learning rate of 1e\+39, which is not a finite positive float32"),
    (_plan(milestones=[1, 2], factor=1e30), 3, r"phase 2 .* learning rate of 5e-62, which is not a finite positive"),
    (_plan(), 1e17, "epochs=1e\\+17 of 240 examples overflow the int64 example clock"),
]


@pytest.mark.parametrize("plan, epochs, match", BAD_PLANS)
def test_check_plan_refuses_plans_that_cannot_be_realised(plan, epochs, match):
    with pytest.raises(ValueError, match=match):
        checks.check_plan(plan, epochs)


@pytest.mark.parametrize("plan, epochs", [
    (_plan(), 2),
    (_plan(milestones=[1], factor=2, mode="increase_batch"), 2),
    (_plan(base_batch=32, milestones=[1, 2], factor=4, mode="increase_batch"), 2),  # the 512 phase is not run
    (_plan(base_batch=60, milestones=[1], factor=4, mode="increase_batch"), 2),  # batch 240 = the whole set
])
def test_check_plan_passes_realisable_plans(plan, epochs):
    assert checks.check_plan(plan, epochs) is None


def test_check_plan_uses_the_given_train_size():
    with pytest.raises(ValueError, match="global batch of 8 but the training set has 5 examples"):
        checks.check_plan(_plan(), 1, train_size=5)


# ============================================================================ sizes
def test_count_examples_counts_up_to_the_limit():
    assert checks.count_examples(UNKNOWN, N + 1) == N
    assert checks.count_examples(UNKNOWN, 7) == 7
    assert checks.count_examples(UNKNOWN.filter(lambda x, y: y > 5), 10) == 0
    assert checks.count_examples(DATA.repeat(), N + 1) == N + 1


BAD_SIZES = [
    (DATA.take(100), 100, "train_data has 100 examples but plan.train_size is 240"),
    (UNKNOWN.take(100), None, "train_data has 100 examples but plan.train_size is 240"),
    (UNKNOWN.concatenate(UNKNOWN), None, "train_data has more than 240 examples but plan.train_size is 240"),
    (UNKNOWN.filter(lambda x, y: y > 5), None, "train_data is empty"),
    (DATA.take(0), 0, "train_data is empty"),
    (DATA.repeat(), None, r"train_data repeats forever; pass one epoch \(remove \.repeat\(\)\)"),
]


@pytest.mark.parametrize("dataset, size, match", BAD_SIZES)
def test_check_size_refuses_data_that_is_not_the_plans(dataset, size, match):
    with pytest.raises(ValueError, match=match):
        checks.check_size(dataset, size, N)


@pytest.mark.parametrize("dataset, size", [(DATA, N), (UNKNOWN, None)])
def test_check_size_passes_the_plans_data(dataset, size):
    assert checks.check_size(dataset, size, N) == N


# ============================================================================ data against the model
def _model(loss="sparse_categorical_crossentropy", outputs=3, features=6):
    model = keras.Sequential([keras.Input((features,)), keras.layers.Dense(outputs)])
    model.compile("sgd", loss)
    return model


def _with(x=X, y=Y):
    return tf.data.Dataset.from_tensor_slices((x, y))


ONE_HOT = np.eye(3, dtype="float32")[Y]
BAD_BATCHES = [
    (_model(), tf.data.Dataset.from_tensor_slices(X), "the labels are missing"),
    (_model(), _with(x=X[:, :5]), r"features of shape \(5,\) per example but the model's input takes \(6,\)"),
    (_model(), _with(x=X[:, :, None]), r"features of shape \(6, 1\) per example but the model's input takes \(6,\)"),
    (_model(), _with(x=X.astype(str)), "has string features but the model takes float32 inputs; convert them"),
    (_model(), _with(y=Y.astype(str)), "has string labels"),
    (_model(), _with(y=Y + 3), r"labels from 3 to 5 but the model has 3 outputs: sparse categorical labels must be "
                               r"integers in \[0, 3\)"),
    (_model(), _with(y=Y - 1), r"labels from -1 to 1 .* in \[0, 3\)"),
    (_model(), _with(y=Y + 0.5), r"labels from 0.5 to 2.5"),
    (_model(keras.losses.SparseCategoricalCrossentropy(from_logits=True)), _with(y=Y + 1), r"in \[0, 3\)"),
    (_model(keras.losses.sparse_categorical_crossentropy), _with(y=Y + 1), r"in \[0, 3\)"),
    (_model("SparseCategoricalCrossentropy"), _with(y=Y + 1), r"in \[0, 3\)"),
    (_model(), _with(y=ONE_HOT), "has one-hot labels .3 wide. but the loss is sparse_categorical_crossentropy"),
    (_model("categorical_crossentropy"), _with(y=np.eye(4, dtype="float32")[Y]),
     r"labels of shape \(4,\) per example but the loss is categorical_crossentropy over 3 outputs: one-hot encode"),
    (_model(keras.losses.CategoricalCrossentropy()), _with(), r"labels of shape \(\) per example .* width 3"),
    (_model(), DATA.filter(lambda x, y: y > 5), "train_data is empty"),
]


@pytest.mark.parametrize("model, dataset, match", BAD_BATCHES)
def test_check_batch_against_model_refuses_data_the_model_cannot_take(model, dataset, match):
    with pytest.raises(ValueError, match=match):
        checks.check_batch_against_model(model, dataset, "train_data")


def test_the_error_names_the_argument():
    with pytest.raises(ValueError, match=r"^validation_data has labels from 3 to 5"):
        checks.check_batch_against_model(_model(), _with(y=Y + 3), "validation_data")


def _two_inputs():
    a, b = keras.Input((6,), name="a"), keras.Input((2,), name="b")
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(3)(keras.layers.Concatenate()([a, b])))
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


GOOD_BATCHES = [
    (_model(), _with()),
    (_model(), _with(y=Y[:, None])),  # (n, 1) sparse labels
    (_model(), _with(x=X.astype("float64"))),  # numbers of another dtype: Keras casts
    (_model(), tf.data.Dataset.from_tensor_slices((X, Y, np.ones(N, "float32")))),
    (_model(keras.losses.CategoricalCrossentropy(from_logits=True)), _with(y=ONE_HOT)),
    (_model("mse", outputs=1), _with(y=X[:, 0])),
    (_two_inputs(), tf.data.Dataset.from_tensor_slices(({"b": X[:, :2], "a": X}, Y))),
]


@pytest.mark.parametrize("model, dataset", GOOD_BATCHES)
def test_check_batch_against_model_passes_good_data(model, dataset):
    assert checks.check_batch_against_model(model, dataset, "train_data") is None


def test_inputs_are_matched_by_name_and_count():
    with pytest.raises(ValueError, match=r"gives the features \['a', 'c'\] but the model's inputs are \['a', 'b'\]"):
        checks.check_batch_against_model(
            _two_inputs(), tf.data.Dataset.from_tensor_slices(({"c": X[:, :2], "a": X}, Y)), "train_data")
    with pytest.raises(ValueError, match=r"features of shape \(3,\) per example but the model's input takes \(2,\)"):
        checks.check_batch_against_model(
            _two_inputs(), tf.data.Dataset.from_tensor_slices(({"b": X[:, :3], "a": X}, Y)), "train_data")
    with pytest.raises(ValueError, match="gives 2 feature tensor.s. but the model takes 1 inputs"):
        checks.check_batch_against_model(_model(), tf.data.Dataset.from_tensor_slices(((X, X), Y)), "train_data")


def test_a_subclassed_model_without_known_inputs_gets_the_label_checks_it_can():
    model = Subclassed()
    model.compile("sgd", "sparse_categorical_crossentropy")
    assert checks.check_batch_against_model(model, _with(), "train_data") is None


# ============================================================================ check_writable
def test_check_writable_creates_the_directory_and_leaves_nothing(tmp_path):
    path = tmp_path / "runs" / "a"
    assert checks.check_writable(path, "checkpoint_dir") == str(path)
    assert os.listdir(path) == []
    assert checks.check_writable(None, "logdir") is None


def test_check_writable_refuses_what_cannot_be_written(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"checkpoint_dir '.*file' is not a writable directory"):
        checks.check_writable(tmp_path / "file", "checkpoint_dir")
    with pytest.raises(ValueError, match=r"logdir '.*file/sub' is not a writable directory"):
        checks.check_writable(tmp_path / "file" / "sub", "logdir")
    with pytest.raises(TypeError, match="logdir must be a path .str or os.PathLike., got int"):
        checks.check_writable(3, "logdir")

    def read_only(*args, **kwargs):  # as root, permissions do not stop writes: simulate a read-only disk
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tf.io.gfile, "GFile", read_only)
    with pytest.raises(ValueError, match="logdir .* is not a writable directory .PermissionError"):
        checks.check_writable(tmp_path / "ro", "logdir")


# ============================================================================ as_dataset, check_labelled
def test_as_dataset():
    assert checks.as_dataset(DATA, "train_data")[1] == N
    assert checks.as_dataset(UNKNOWN, "train_data")[1] is None
    data = bstf.data.Data(DATA, N, 3, (6,), "toy", "train")
    assert checks.as_dataset(data, "train_data") == (DATA, N)
    with pytest.raises(TypeError, match=r"validation_data must be an unbatched tf.data.Dataset .*got ndarray"):
        checks.as_dataset(X, "validation_data")
    with pytest.raises(ValueError, match=r"train_data looks batched .*dataset.unbatch"):
        checks.as_dataset(DATA.batch(4), "train_data")


# ============================================================================ check_optimizer
BAD_OPTIMIZERS = [
    (keras.optimizers.SGD(0.1, momentum=0.5), r"the plan assumes momentum 0.9 .* the optimizer's momentum is 0.5"),
    (keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5), momentum=0.9),
     "the optimizer was created with its own learning-rate schedule; bstf.fit sets the learning rate from the plan"),
    (bstf.optimizers.Accumulate(keras.optimizers.SGD(0.1, momentum=0.9), 2),
     "compiled with a bstf.optimizers.Accumulate; bstf.fit accumulates by itself"),
]


@pytest.mark.parametrize("optimizer, match", BAD_OPTIMIZERS)
def test_check_optimizer_refuses_what_the_plan_cannot_drive(optimizer, match):
    with pytest.raises(ValueError, match=match):
        checks.check_optimizer(optimizer, _plan(), "bstf.fit")


def test_check_optimizer_checks_a_loss_scale_optimizer_by_its_inner_one():
    lso = keras.optimizers.LossScaleOptimizer
    plan = _plan()
    sgd = lso(keras.optimizers.SGD(0.1, momentum=0.9))
    assert checks.check_optimizer(sgd, plan, "bstf.fit") is False
    assert checks.base_optimizer(sgd) is sgd.inner_optimizer
    assert checks.check_optimizer(lso(bstf.optimizers.SGD(0.1)), plan, "bstf.fit") is True
    with pytest.raises(ValueError, match=r"the plan assumes momentum 0.9 .* the optimizer's momentum is 0.5"):
        checks.check_optimizer(lso(keras.optimizers.SGD(0.1, momentum=0.5)), plan, "bstf.fit")


@pytest.mark.parametrize("optimizer, follows", [
    (bstf.optimizers.SGD(0.1, momentum=0.0), True),  # supports_momentum_schedule: the plan sets it
    (keras.optimizers.SGD(0.1, momentum=0.9), False),
    (keras.optimizers.Adam(1e-3), False),
])
def test_check_optimizer_tells_whether_the_momentum_follows_the_plan(optimizer, follows):
    assert checks.check_optimizer(optimizer, _plan(), "bstf.fit") is follows
