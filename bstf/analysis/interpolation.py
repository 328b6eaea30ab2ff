"""1-D linear interpolation between two solutions (Keskar et al. 2017, Fig. 3).

Loss and accuracy of the weights ``(1 − α)·a + α·b`` for ``α`` in
``[−1, 2]`` (25 points by default), on each given data set (e.g. train and
test). In Keskar et al. ``a`` is the small-batch and ``b`` the large-batch
minimiser: the curve is flat around the small-batch end and steep around the
large-batch end.

All floating-point weights of ``model.get_weights()`` are interpolated,
including BatchNormalization moving statistics; the model is evaluated in
inference mode. Accuracy is computed when the model is a classifier with
more than one output unit: sparse categorical accuracy (argmax of the output
vs. the integer label) for integer labels, categorical accuracy for one-hot
labels; otherwise it is ``None`` (regression or single-unit outputs, whose
threshold depends on whether they are logits).
"""

import dataclasses

import numpy as np
import tensorflow as tf

from bstf.analysis import _common


@dataclasses.dataclass
class InterpolationResult:
    """``loss[name]`` and ``accuracy[name]`` (arrays over ``alphas``, or ``None``) per data set."""

    alphas: np.ndarray
    loss: dict
    accuracy: dict


def _as_weight_list(weights, name, model):
    if hasattr(weights, "get_weights"):
        weights = weights.get_weights()
    if not isinstance(weights, (list, tuple)):
        raise TypeError(f"{name} must be a list of arrays (model.get_weights()) or a model, got {type(weights).__name__}.")
    weights = [np.asarray(w) for w in weights]
    reference = model.get_weights()
    if len(weights) != len(reference):
        raise ValueError(f"{name} has {len(weights)} arrays but the model has {len(reference)} weights.")
    paths = [v.path for v in model.weights]
    for i, (w, r) in enumerate(zip(weights, reference)):
        if w.shape != r.shape:
            raise ValueError(
                f"{name}[{i}] ({paths[i] if i < len(paths) else i}) has shape {w.shape}, "
                f"the model's weight has shape {r.shape}."
            )
    return weights


def interpolate_weights(weights_a, weights_b, alpha):
    """``(1 − α)·a + α·b`` for floating arrays; other dtypes are taken from ``a``."""
    if len(weights_a) != len(weights_b):
        raise ValueError(f"weights_a has {len(weights_a)} arrays, weights_b has {len(weights_b)}.")
    out = []
    for i, (a, b) in enumerate(zip(weights_a, weights_b)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise ValueError(f"weights_a[{i}] has shape {a.shape} but weights_b[{i}] has shape {b.shape}.")
        if np.issubdtype(a.dtype, np.floating):
            out.append(((1.0 - alpha) * a.astype(np.float64) + alpha * b.astype(np.float64)).astype(a.dtype))
        else:
            out.append(a)
    return out


def interpolate(model, weights_a, weights_b, data, alphas=np.linspace(-1.0, 2.0, 25), batch_size=1024,
                num_examples=None, loss=None, non_trainable="clamp"):
    """Loss and accuracy along the line from ``weights_a`` (α=0) to ``weights_b`` (α=1).

    Args:
      model: the Keras model both weight sets belong to (compiled with a loss,
        or pass ``loss``).
      weights_a, weights_b: ``model.get_weights()``-style lists, or models of
        the same architecture.
      data: one data set, or a dict ``{name: data}`` (e.g. ``{"train": ...,
        "test": ...}``); each a :class:`bstf.data.Data`, an unbatched
        ``tf.data.Dataset`` of ``(x, y)`` or a tuple ``(x, y)`` of arrays.
      alphas: interpolation coefficients.
      batch_size: evaluation batch size.
      num_examples: use only the first this many examples of each set.
      loss: optional loss replacing the compiled one.
      non_trainable: how non-trainable weights (BatchNormalization moving
        statistics) follow α: ``"clamp"`` (default) interpolates them on
        [0, 1] and holds them at the nearer end outside it — extrapolated, a
        moving variance ``(1 − α)·v_a + α·v_b`` can turn negative and the
        loss NaN; ``"interpolate"`` moves them along the whole line like the
        trainable weights.

    Returns:
      :class:`InterpolationResult`; the model's weights are restored.
    """
    if non_trainable not in ("clamp", "interpolate"):
        raise ValueError(f"non_trainable must be 'clamp' or 'interpolate', got {non_trainable!r}.")
    batch_size = _common.check_int("batch_size", batch_size)
    alphas = np.asarray(alphas, np.float64).reshape(-1)
    if alphas.size == 0 or not np.all(np.isfinite(alphas)):
        raise ValueError(f"alphas must be a non-empty sequence of finite numbers, got {alphas}.")
    if not isinstance(data, dict):
        data = {"data": data}
    if not data:
        raise ValueError("data must contain at least one data set.")
    sets = {name: _common.as_arrays(d, num_examples, name=f"data[{name!r}]") for name, d in data.items()}
    first = next(iter(sets.values()))
    _common.ensure_built(model, _common.slice_structure(first[0], 0, 1))
    a = _as_weight_list(weights_a, "weights_a", model)
    b = _as_weight_list(weights_b, "weights_b", model)
    loss_fn = _common.make_loss_from_predictions(model, loss)

    @tf.function(reduce_retracing=True)
    def evaluate(xb, yb):
        y_pred = model(xb, training=False)
        return tf.cast(loss_fn(xb, yb, y_pred), tf.float32), _correct(yb, y_pred)

    losses = {name: np.zeros(alphas.size) for name in sets}
    accs = {name: np.zeros(alphas.size) for name in sets}
    has_acc = {name: True for name in sets}
    original = model.get_weights()
    trainable = [v.trainable for v in model.weights]  # the order of get_weights()
    try:
        for i, alpha in enumerate(alphas):
            weights = interpolate_weights(a, b, alpha)
            if non_trainable == "clamp" and not 0.0 <= alpha <= 1.0:
                held = interpolate_weights(a, b, min(max(alpha, 0.0), 1.0))
                weights = [w if t else h for w, h, t in zip(weights, held, trainable)]
            model.set_weights(weights)
            for name, (x, y) in sets.items():
                total, correct = 0.0, 0.0
                for xb, yb, m in _common.batches(x, y, batch_size):
                    value, c = evaluate(xb, yb)
                    total += float(value) * m
                    if c is None:
                        has_acc[name] = False
                    else:
                        correct += float(c)
                losses[name][i] = total / len(y)
                accs[name][i] = correct / len(y)
    finally:
        model.set_weights(original)
    return InterpolationResult(
        alphas=alphas, loss=losses, accuracy={k: (v if has_acc[k] else None) for k, v in accs.items()}
    )


def _correct(y, y_pred):
    """Number of correct predictions, or None when accuracy is not defined (see module doc)."""
    if isinstance(y_pred, (list, tuple, dict)) or y_pred.shape.rank is None or y_pred.shape.rank < 2:
        return None
    classes = y_pred.shape[-1]
    if classes is None or classes < 2:
        return None
    predicted = tf.argmax(y_pred, axis=-1)
    if y.shape.rank == y_pred.shape.rank and y.shape[-1] == classes:  # one-hot
        target = tf.argmax(y, axis=-1)
    elif y.dtype.is_integer and (y.shape.rank == y_pred.shape.rank - 1 or
                                 (y.shape.rank == y_pred.shape.rank and y.shape[-1] == 1)):
        target = tf.reshape(y, tf.shape(predicted))
    else:
        return None
    return tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(target, predicted.dtype)), tf.float32))


def plot_interpolation(result, path=None, title=None, labels=("a", "b")):
    """Keskar Fig. 3-style plot: loss (solid, left axis) and accuracy (dashed, right axis) vs α.

    Args:
      result: an :class:`InterpolationResult`.
      path: if given, the figure is saved there (PNG, 120 dpi).
      title: figure title.
      labels: names of the α=0 and α=1 endpoints (e.g. ``("SB", "LB")``).

    Returns:
      The matplotlib ``Figure`` (Agg backend; close it when done).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange"]
    ax2 = None
    for i, name in enumerate(result.loss):
        c = colors[i % len(colors)]
        ax.plot(result.alphas, result.loss[name], "-", color=c, label=f"{name} loss")
        if result.accuracy.get(name) is not None:
            ax2 = ax2 or ax.twinx()
            ax2.plot(result.alphas, 100 * result.accuracy[name], "--", color=c, label=f"{name} accuracy")
    ax.set_xlabel(f"α   (0 = {labels[0]}, 1 = {labels[1]})")
    ax.set_ylabel("loss")
    if all(np.all(v > 0) for v in result.loss.values()):
        ax.set_yscale("log")
    for x in (0.0, 1.0):
        ax.axvline(x, color="gray", lw=0.5)
    handles, names = ax.get_legend_handles_labels()
    if ax2 is not None:
        ax2.set_ylabel("accuracy (%)")
        h2, n2 = ax2.get_legend_handles_labels()
        handles, names = handles + h2, names + n2
    ax.legend(handles, names, fontsize=8, loc="upper center")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
