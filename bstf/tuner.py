"""keras-tuner search over the batch size, with the learning rate coupled to it.

Searching batch size and learning rate independently wastes trials: the good
LR moves with the batch (Goyal et al. 2017: linearly; Hoffer et al. 2017: as
the square root). :class:`BatchSizeHyperModel` searches the batch size and
*derives* the LR from it by a rule — optionally times a small multiplier that
is searched too — and applies the chosen batch to training.

Example:

    import keras, keras_tuner, bstf

    def build(hp, learning_rate):
        model = keras.Sequential([keras.Input((64,)),
                                  keras.layers.Dense(hp.Int("units", 32, 128, step=32), activation="relu"),
                                  keras.layers.Dense(10)])
        model.compile(keras.optimizers.SGD(learning_rate, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        return model

    hypermodel = bstf.tuner.BatchSizeHyperModel(
        build, base_lr=0.05, base_batch=32, batch_sizes=[16, 32, 64, 128],
        rule="linear", lr_multipliers=[0.5, 1.0, 2.0])
    tuner = bstf.tuner.get_tuner("random", hypermodel, objective="val_accuracy",
                                 max_trials=8, directory="/tmp/kt", project_name="bs")
    tuner.search(train_dataset, validation_data=val_dataset, epochs=5)  # unbatched datasets

The hyperparameters are named ``batch_size`` and ``lr_multiplier``; the
learning rate of each trial is ``scaled_learning_rate(base_lr, base_batch,
batch_size, rule) * lr_multiplier``.
"""

import numbers

import keras
import keras_tuner as kt
import tensorflow as tf

from bstf.schedules import scaled_learning_rate

_RULES = ("linear", "sqrt", "none")
_TUNERS = {
    "random": kt.RandomSearch,
    "bayesian": kt.BayesianOptimization,
    "hyperband": kt.Hyperband,
}


class BatchSizeHyperModel(kt.HyperModel):
    """A hypermodel whose batch size is searched and whose LR follows it.

    Args:
      build_model: either a callable ``build_model(hp, learning_rate)``
        returning a compiled Keras model (it may define further
        hyperparameters on ``hp``), or any ``keras_tuner.HyperModel`` whose
        ``build(hp)`` returns a compiled model — its optimizer's learning rate
        is then overwritten with the coupled one.
      base_lr: learning rate known to work at ``base_batch`` (> 0).
      base_batch: the reference batch size (>= 1).
      batch_sizes: batch sizes to search (positive integers).
      rule: "linear" (η₀·B/B₀), "sqrt" (η₀·√(B/B₀)) or "none".
      lr_multipliers: factors searched around the coupled LR (default: just 1).
      name, tunable: as for ``keras_tuner.HyperModel``.
    """

    def __init__(
        self,
        build_model,
        *,
        base_lr,
        base_batch,
        batch_sizes=(32, 64, 128, 256, 512),
        rule="linear",
        lr_multipliers=(1.0,),
        name=None,
        tunable=True,
    ):
        super().__init__(name=name, tunable=tunable)
        if not (isinstance(build_model, kt.HyperModel) or callable(build_model)):
            raise TypeError(
                "build_model must be a callable build_model(hp, learning_rate) or a "
                f"keras_tuner.HyperModel, got {type(build_model).__name__}."
            )
        if rule not in _RULES:
            raise ValueError(f"rule must be one of {_RULES}, got {rule!r}.")
        batch_sizes = list(batch_sizes)
        if not batch_sizes or any(
            isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 1 for b in batch_sizes
        ):
            raise ValueError(f"batch_sizes must be a non-empty list of integers >= 1, got {batch_sizes}.")
        lr_multipliers = [float(m) for m in lr_multipliers]
        if not lr_multipliers or any(not m > 0 for m in lr_multipliers):
            raise ValueError(f"lr_multipliers must be a non-empty list of numbers > 0, got {lr_multipliers}.")
        # Validates base_lr and base_batch with the rule's own checks.
        scaled_learning_rate(base_lr, base_batch, batch_sizes[0], rule)
        self.build_model = build_model
        self.base_lr = float(base_lr)
        self.base_batch = int(base_batch)
        self.batch_sizes = sorted(int(b) for b in set(batch_sizes))
        self.rule = rule
        self.lr_multipliers = sorted(set(lr_multipliers))

    def learning_rate(self, hp):
        """The coupled learning rate for the trial's hyperparameters."""
        batch = hp.get("batch_size")
        mult = hp.get("lr_multiplier")
        return scaled_learning_rate(self.base_lr, self.base_batch, batch, self.rule) * mult

    def declare_hyperparameters(self, hp):
        hp.Choice("batch_size", self.batch_sizes, ordered=True)
        if len(self.lr_multipliers) > 1:
            hp.Choice("lr_multiplier", self.lr_multipliers, ordered=True)
        else:
            hp.Fixed("lr_multiplier", self.lr_multipliers[0])

    def build(self, hp):
        self.declare_hyperparameters(hp)
        lr = self.learning_rate(hp)
        if isinstance(self.build_model, kt.HyperModel):
            model = self.build_model.build(hp)
            _check_compiled(model)
            model.optimizer.learning_rate = lr
        else:
            model = self.build_model(hp, lr)
            _check_compiled(model)
        return model

    def fit(self, hp, model, x=None, y=None, validation_data=None, **kwargs):
        """Trains with the trial's batch size (batching unbatched datasets)."""
        batch = hp.get("batch_size")
        if "batch_size" in kwargs:
            raise ValueError(
                "do not pass batch_size to search(): it is the searched hyperparameter "
                f"(one of {self.batch_sizes})."
            )
        if isinstance(x, tf.data.Dataset):
            x = _batch(x, batch, "x")
            if isinstance(validation_data, tf.data.Dataset):
                validation_data = _batch(validation_data, batch, "validation_data")
        else:
            kwargs["batch_size"] = batch
        if isinstance(self.build_model, kt.HyperModel):
            return self.build_model.fit(hp, model, x, y, validation_data=validation_data, **kwargs)
        return model.fit(x, y, validation_data=validation_data, **kwargs)


def _check_compiled(model):
    if not isinstance(model, keras.Model) or not getattr(model, "compiled", False):
        raise ValueError(
            "the model builder must return a compiled keras.Model "
            f"(got {type(model).__name__}; call model.compile(...) before returning it)."
        )


def _batch(dataset, batch, name):
    spec = dataset.element_spec
    first = tf.nest.flatten(spec)[0]
    if first.shape.rank and first.shape[0] is None:
        raise ValueError(
            f"{name} looks already batched (leading dimension None); pass an unbatched "
            "dataset: BatchSizeHyperModel batches it with the searched batch size."
        )
    return dataset.batch(batch).prefetch(tf.data.AUTOTUNE)


def get_tuner(name, hypermodel, **kwargs):
    """A keras-tuner tuner by name: "random", "bayesian" or "hyperband".

    ``kwargs`` go to the tuner (objective, max_trials or max_epochs,
    directory, project_name, seed, ...).
    """
    if name not in _TUNERS:
        raise ValueError(f"unknown tuner {name!r}; choose one of {sorted(_TUNERS)}.")
    if not isinstance(hypermodel, kt.HyperModel):
        raise TypeError(f"hypermodel must be a keras_tuner.HyperModel, got {type(hypermodel).__name__}.")
    return _TUNERS[name](hypermodel, **kwargs)
