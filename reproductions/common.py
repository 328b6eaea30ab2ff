"""Plumbing shared by every reproduction script (keskar, shen, goyal, smith).

A reproduction script is a thin absl ``main`` that turns flags into a config
dataclass and calls a testable ``run(config, workdir) -> dict``. Everything the
scripts have in common lives here, once:

* **flags** — ``--preset=quick|paper``, ``--workdir``, ``--strategy`` (a
  :func:`bstf.distribute.get_strategy` name; ``--tpu``, ``--num_cpu_devices``),
  ``--dataset`` (any :func:`bstf.data.load` name: ``digits``, ``mnist1d``,
  ``teacher``, ``tfds:<name>``, ``idx:<dir>``, ``npz:<file>``) with
  ``--data_dir``, ``--seeds`` (number of seeds), ``--epochs``,
  ``--train_examples``/``--test_examples``. They are defined when this module
  is imported; :func:`config_from_flags` starts from the preset's config and
  overrides the fields whose flag was given on the command line.
* **config** — :class:`Config`, the base dataclass of every script's config.
* **seeding** (:func:`set_seed`), **strategy** (:func:`make_strategy`,
  :func:`is_chief`, :func:`log` — absl logging on the chief only).
* **data** — :func:`load_data` (train and test :class:`bstf.data.Data` from a
  config), :func:`take`, :func:`split`, :func:`batched`.
* **models** — :func:`compile_classifier`, :func:`evaluate`, :func:`train`
  (``bstf.fit`` with a constant plan, or the plan given).
* **results** — :func:`aggregate` (mean and std over seeds of nested dicts),
  :func:`pm`, :func:`markdown_table`, :func:`comparison_table` (our numbers
  beside the paper's), :func:`write_results` (``results.json`` and
  ``results.md``).
* **plots** (matplotlib, Agg) — :func:`plot_curves`, :func:`plot_bars`,
  :func:`plot_histograms`.
* **TensorBoard** — :class:`Board`: scalars, per-epoch histories, hparams and
  the PNGs as images, written on the chief only.

Typical script::

    from reproductions import common

    @dataclasses.dataclass(frozen=True)
    class MyConfig(common.Config):
        batch_size: int = 32

    def quick():
        '''python reproductions/my.py --workdir=/tmp/my'''
        return MyConfig(preset="quick", dataset="digits", epochs=5)

    PRESETS = {"quick": quick, "paper": paper}

    def run(config, workdir):
        strategy = common.make_strategy(config)
        train, test = common.load_data(config)
        ...
        return common.write_results(workdir, summary=..., runs=..., config=config, markdown=...)

    def main(argv):
        common.check_no_args(argv)
        run(common.config_from_flags(PRESETS), common.workdir_from_flags("my"))

    if __name__ == "__main__":
        common.app.run(main)
"""

import contextlib
import dataclasses
import json
import numbers
import os
import shlex
import sys
import time

from absl import app, flags, logging  # noqa: F401  (app re-exported for the scripts)
import keras
import numpy as np
import tensorflow as tf

import bstf
import bstf.data
import bstf.distribute

FLAGS = flags.FLAGS
PRESET_NAMES = ("quick", "paper")


# ============================================================================ flags
def _define_flags():
    if "preset" in FLAGS:  # module reloaded: flags exist already
        return
    flags.DEFINE_enum("preset", "quick", list(PRESET_NAMES),
                      "quick: offline data, small nets, minutes on a CPU. paper: the paper's data, "
                      "networks and protocol (needs TFDS data in --data_dir and an accelerator).")
    flags.DEFINE_string("workdir", None, "Where results.json, results.md, PNGs and TensorBoard logs go "
                        "(default /tmp/<script name>).")
    flags.DEFINE_enum("strategy", None, list(bstf.distribute.NAMES),
                      "tf.distribute strategy (bstf.distribute.get_strategy name); default: the preset's.")
    flags.DEFINE_string("tpu", None, "TPU name or grpc:// address for --strategy=tpu ('local' on a TPU VM).")
    flags.DEFINE_integer("num_cpu_devices", None,
                         "With --strategy=mirrored on a CPU-only machine: split the CPU into N logical devices.")
    flags.DEFINE_string("dataset", None, "Any bstf.data.load name (digits, mnist1d, teacher, tfds:<name>, "
                        "idx:<dir>, npz:<file>); default: the preset's.")
    flags.DEFINE_string("data_dir", None, "TFDS data directory for tfds: data sets (never downloaded).")
    flags.DEFINE_integer("seeds", None, "Number of seeds (runs use seeds 0..N-1); default: the preset's.")
    flags.DEFINE_integer("epochs", None, "Epoch budget (the maximum when the script stops early); "
                         "default: the preset's.")
    flags.DEFINE_integer("train_examples", None, "Use only the first N training examples.")
    flags.DEFINE_integer("test_examples", None, "Use only the first N test examples.")


_define_flags()


# ============================================================================ config
def _check_int(name, value, low=1, optional=False):
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields every reproduction config has (scripts subclass it and add theirs).

    Attributes:
      preset: "quick" or "paper" (recorded; the preset functions set the rest).
      dataset: a :func:`bstf.data.load` name.
      dataset_kwargs: extra arguments for the loader (e.g. ``num_samples`` of mnist1d).
      data_dir: TFDS data directory (only for ``tfds:`` names).
      test_split: the split evaluated as test set.
      train_examples, test_examples: use only the first N examples (None: all).
      strategy: :func:`bstf.distribute.get_strategy` name; ``tpu`` its TPU
        address, ``num_cpu_devices`` the CPU split for "mirrored".
      seeds: the seeds of the repeated runs.
      epochs: epoch budget.
      command: the command line that made the config (recorded in results.md).
    """

    preset: str = "quick"
    dataset: str = "digits"
    dataset_kwargs: dict = dataclasses.field(default_factory=dict)
    data_dir: str = None
    test_split: str = "test"
    train_examples: int = None
    test_examples: int = None
    strategy: str = "default"
    tpu: str = None
    num_cpu_devices: int = None
    seeds: tuple = (0,)
    epochs: int = 10
    command: str = None

    def __post_init__(self):
        if self.preset not in PRESET_NAMES:
            raise ValueError(f"preset must be one of {PRESET_NAMES}, got {self.preset!r}.")
        if self.strategy not in bstf.distribute.NAMES:
            raise ValueError(f"strategy must be one of {bstf.distribute.NAMES}, got {self.strategy!r}.")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"dataset must be a non-empty bstf.data.load name, got {self.dataset!r}.")
        seeds = tuple(self.seeds) if isinstance(self.seeds, (list, tuple)) else None
        if not seeds or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in seeds):
            raise ValueError(f"seeds must be a non-empty tuple of integers, got {self.seeds!r}.")
        object.__setattr__(self, "seeds", seeds)
        _check_int("epochs", self.epochs)
        _check_int("train_examples", self.train_examples, optional=True)
        _check_int("test_examples", self.test_examples, optional=True)
        _check_int("num_cpu_devices", self.num_cpu_devices, optional=True)

    def to_dict(self):
        """The config as a JSON-friendly dict."""
        return to_jsonable(dataclasses.asdict(self))


_CONVERTERS = {"seeds": lambda n: tuple(range(n))}


def define_flag(kind, name, *args, **kwargs):
    """``flags.DEFINE_<kind>(name, *args, **kwargs)`` unless the flag exists already.

    Scripts share flag names (``--base_lr``, ``--base_batch``, ...); a process that imports several of
    them (the test suite) keeps the first definition — same name, same type — instead of failing.
    """
    if name not in FLAGS:
        getattr(flags, f"DEFINE_{kind}")(name, *args, **kwargs)


def config_from_flags(presets, converters=None, flag_values=FLAGS, argv=None):
    """The preset's config (``presets[--preset]()``) with the given flags applied.

    Every config field whose flag of the same name was given on the command
    line is replaced by the flag's value (``--seeds=N`` becomes seeds 0..N-1;
    ``converters`` maps other field names to functions converting a flag value,
    e.g. a comma-separated list into a tuple of ints). Changing ``--dataset``
    drops the preset's ``dataset_kwargs`` (they belong to the preset's data set).
    ``command`` records ``argv`` (default ``sys.argv``) as a shell command.
    """
    preset = flag_values["preset"].value
    if preset not in presets:
        raise ValueError(f"preset must be one of {sorted(presets)}, got {preset!r}.")
    config = presets[preset]()
    conv = {**_CONVERTERS, **(converters or {})}
    changes = {}
    for field in dataclasses.fields(config):
        name = field.name
        if name == "preset" or name not in flag_values or not flag_values[name].present:
            continue
        value = flag_values[name].value
        changes[name] = conv[name](value) if name in conv else value
    if "dataset" in changes and changes["dataset"] != config.dataset and "dataset_kwargs" not in changes:
        changes["dataset_kwargs"] = {}
    argv = sys.argv if argv is None else argv
    changes["command"] = " ".join(["python", *(shlex.quote(a) for a in argv)])
    return dataclasses.replace(config, **changes)


def workdir_from_flags(default_name, flag_values=FLAGS):
    """``--workdir``, or ``/tmp/<default_name>``."""
    return flag_values["workdir"].value or os.path.join("/tmp", default_name)


def check_no_args(argv):
    """absl passes the program name and any positional arguments; refuse the latter."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {argv[1:]} (all options are --flags).")


# ============================================================================ seeding, strategy, logging
def set_seed(seed):
    """Seeds Python, NumPy and TensorFlow (``keras.utils.set_random_seed``)."""
    keras.utils.set_random_seed(int(seed))


_STRATEGIES = {}
_current_strategy = None


def make_strategy(config):
    """The config's tf.distribute strategy (created once per name and arguments).

    It also becomes the strategy :func:`is_chief` and :func:`log` consult.
    """
    global _current_strategy
    kwargs = {}
    if config.strategy == "tpu":
        kwargs["tpu"] = config.tpu
    elif config.tpu is not None:
        raise ValueError(f"tpu={config.tpu!r} is only used with strategy 'tpu', got strategy {config.strategy!r}.")
    if config.num_cpu_devices is not None:
        kwargs["num_cpu_devices"] = config.num_cpu_devices
    key = (config.strategy, tuple(sorted(kwargs.items())))
    if key not in _STRATEGIES:
        _STRATEGIES[key] = bstf.distribute.get_strategy(config.strategy, **kwargs)
    _current_strategy = _STRATEGIES[key]
    return _current_strategy


def is_chief():
    """Whether this process writes files and logs (see :func:`bstf.distribute.is_chief`)."""
    return bstf.distribute.is_chief(_current_strategy)


def log(message, *args):
    """absl ``logging.info`` on the chief only."""
    if is_chief():
        logging.info(message, *args)


@contextlib.contextmanager
def timer(into, key="seconds"):
    """Context manager storing the wall-clock seconds of its block in ``into[key]``."""
    start = time.perf_counter()
    try:
        yield into
    finally:
        into[key] = time.perf_counter() - start


# ============================================================================ data
def load_data(config):
    """(train, test) :class:`bstf.data.Data` for a config (first N examples if asked)."""
    extra = dict(config.dataset_kwargs)
    if config.data_dir is not None:
        extra["data_dir"] = config.data_dir
    train = bstf.data.load(config.dataset, "train", **extra)
    test = bstf.data.load(config.dataset, config.test_split, **extra)
    return take(train, config.train_examples), take(test, config.test_examples)


def take(data, n):
    """The first ``n`` examples of ``data`` (all of them if ``n`` is None or too large)."""
    if n is None or n >= data.size:
        return data
    _check_int("n", n)
    arrays = None if data.arrays is None else (data.arrays[0][:n], data.arrays[1][:n])
    return dataclasses.replace(data, dataset=data.dataset.take(n), size=int(n), arrays=arrays)


def split(data, fraction, seed=0):
    """(rest, held_out): a seeded random ``fraction`` of ``data`` held out (e.g. validation)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}.")
    n_out = int(round(data.size * fraction))
    if not 0 < n_out < data.size:
        raise ValueError(f"fraction {fraction} of {data.size} examples leaves an empty part.")
    if data.arrays is not None:
        order = np.random.RandomState(seed).permutation(data.size)
        parts = []
        for idx in (order[n_out:], order[:n_out]):
            x, y = data.arrays[0][idx], data.arrays[1][idx]
            parts.append(dataclasses.replace(data, dataset=tf.data.Dataset.from_tensor_slices((x, y)),
                                             size=len(idx), arrays=(x, y)))
        return tuple(parts)
    rest = dataclasses.replace(data, dataset=data.dataset.skip(n_out), size=data.size - n_out)
    held = dataclasses.replace(data, dataset=data.dataset.take(n_out), size=n_out)
    return rest, held


def batched(data, batch_size, shuffle_seed=None, drop_remainder=False):
    """``data.dataset`` batched (and shuffled with ``shuffle_seed`` if given), prefetched."""
    ds = data.dataset
    if shuffle_seed is not None:
        ds = ds.shuffle(data.size, seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def arrays(data, max_examples=None):
    """(x, y) NumPy arrays of ``data`` (the first ``max_examples``)."""
    return data.numpy(max_examples)


# ============================================================================ models and training
def compile_classifier(model, optimizer):
    """Compiles a logits classifier: sparse cross-entropy (from logits) and ``accuracy``."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def evaluate(model, data, batch_size=1024):
    """{"loss", "accuracy"} of a compiled classifier on ``data`` (accuracy in [0, 1])."""
    out = model.evaluate(batched(data, batch_size), verbose=0, return_dict=True)
    return {"loss": float(out["loss"]), "accuracy": float(out["accuracy"])}


def constant_plan(train_size, learning_rate, batch_size, momentum=0.0):
    """A :class:`bstf.NoiseScalePlan` with a constant LR, batch and momentum."""
    return bstf.NoiseScalePlan(train_size, learning_rate, batch_size, base_momentum=momentum)


def train(model, train_data, epochs, *, plan=None, learning_rate=None, batch_size=None, momentum=0.0,
          **fit_kwargs):
    """Trains a compiled ``model`` with ``bstf.fit``; returns what ``bstf.fit`` returns.

    Either ``plan`` (a :class:`bstf.NoiseScalePlan`) or ``learning_rate`` and
    ``batch_size`` (a constant plan) must be given. ``fit_kwargs`` go to
    ``bstf.fit`` (``validation_data``, ``strategy``, ``max_physical_batch``,
    ``callbacks``, ``logdir``, ``checkpoint_dir``, ``seed``).
    """
    if plan is None:
        if learning_rate is None or batch_size is None:
            raise ValueError("train needs either plan or both learning_rate and batch_size, "
                             f"got learning_rate={learning_rate!r}, batch_size={batch_size!r}.")
        plan = constant_plan(train_data.size, learning_rate, batch_size, momentum)
    elif learning_rate is not None or batch_size is not None:
        raise ValueError("give either plan or learning_rate/batch_size, not both.")
    return bstf.fit(model, train_data, plan, epochs, **fit_kwargs)


def history_dict(history):
    """A Keras ``History`` (or a dict of per-epoch lists) as {metric: [floats]}."""
    raw = getattr(history, "history", history) or {}
    return {k: [float(v) for v in vs] for k, vs in raw.items()}


# ============================================================================ results
def to_jsonable(obj):
    """Converts dataclasses, NumPy scalars/arrays, tuples and dict keys into JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, tf.Tensor):
        return to_jsonable(obj.numpy())
    return obj


def mean_std(values):
    """(mean, std) of numbers; std is the sample std (ddof=1), 0 for a single value."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_std needs at least one value.")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def aggregate(trees):
    """(means, stds) of a list of nested dicts with the same structure and numeric leaves.

    Used to average per-seed results. Lists of numbers are averaged element-wise;
    integers equal in every tree (batch sizes, update counts) stay integers;
    other leaves (text) are taken from the first tree (std None).
    """
    if not trees:
        raise ValueError("aggregate needs at least one result.")
    first = trees[0]
    if isinstance(first, dict):
        means, stds = {}, {}
        for key in first:
            means[key], stds[key] = aggregate([t[key] for t in trees])
        return means, stds
    if isinstance(first, (list, tuple)) and first and isinstance(first[0], numbers.Number):
        a = np.asarray(trees, dtype=np.float64)
        return a.mean(0).tolist(), (a.std(0, ddof=1) if len(trees) > 1 else np.zeros(a.shape[1])).tolist()
    if isinstance(first, numbers.Integral) and not isinstance(first, bool) and all(t == first for t in trees):
        return first, 0  # e.g. batch sizes, update counts: stay integers
    if isinstance(first, numbers.Number) and not isinstance(first, bool):
        return mean_std(trees)
    return first, None


def pm(mean, std=None, digits=2, scale=1.0):
    """"mean ± std" (or just the mean) as text.

    ``mean`` may also be a list of per-seed values: mean ± sample std, or just
    the value when there is one.
    """
    if isinstance(mean, (list, tuple, np.ndarray)):
        mean, std = mean_std(mean) if len(mean) > 1 else (float(mean[0]), None)
    if mean is None:
        return "—"
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def _cell(value, digits=2):
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header, rows, digits=2):
    """A GitHub markdown table; floats get ``digits`` decimals, None becomes "—"."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {row!r} has {len(row)} cells, the header has {len(header)}.")
        lines.append("| " + " | ".join(_cell(c, digits) for c in row) + " |")
    return "\n".join(lines) + "\n"


def comparison_table(rows, ours="ours", paper="paper", digits=2):
    """A markdown table of ``(quantity, our value, paper value[, note])`` rows.

    Our value may be a number, a list of per-seed numbers (shown as mean ± std)
    or text; the paper's a number, text, or None ("—", not reported).
    """
    header = ["quantity", ours, paper]
    has_note = any(len(r) > 3 for r in rows)
    if has_note:
        header.append("note")
    body = []
    for r in rows:
        ours_v = pm(r[1], digits=digits) if isinstance(r[1], (list, tuple)) else r[1]
        row = [r[0], ours_v, r[2]]
        if has_note:
            row.append(r[3] if len(r) > 3 else "")
        body.append(row)
    return markdown_table(header, body, digits)


def write_results(workdir, *, summary, runs, config, markdown, **extra):
    """Writes ``results.json`` ({"summary", "runs", "config", **extra}) and ``results.md``.

    Files are written by the chief only; the results dict is returned everywhere.
    """
    results = to_jsonable({"summary": summary, "runs": runs,
                           "config": config.to_dict() if hasattr(config, "to_dict") else config, **extra})
    if is_chief():
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2, allow_nan=True)
        with open(os.path.join(workdir, "results.md"), "w") as f:
            f.write(markdown if markdown.endswith("\n") else markdown + "\n")
    return results


def machine_description():
    """One line naming the machine: CPU cores, accelerators, TF and Keras versions."""
    gpus = tf.config.list_physical_devices("GPU")
    accel = f"{len(gpus)} GPU" if gpus else "no GPU"
    return f"{os.cpu_count()} CPU cores, {accel}, TensorFlow {tf.__version__}, Keras {keras.__version__}"


# ============================================================================ plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    plt = _pyplot()
    if is_chief():
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curves(path, curves, *, xlabel, ylabel, title=None, logx=False, logy=False, vlines=(),
                right=None, right_ylabel=None):
    """Line plot of ``{label: (x, y)}`` (or ``(x, y, style_kwargs)``); returns ``path``.

    ``right`` holds further curves drawn against a second y axis labelled
    ``right_ylabel`` (e.g. loss on the left, accuracy on the right).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    handles = []
    for label, curve in curves.items():
        x, y, *style = curve
        handles += ax.plot(x, y, label=label, **(style[0] if style else {}))
    if right:
        ax2 = ax.twinx()
        for label, curve in right.items():
            x, y, *style = curve
            handles += ax2.plot(x, y, label=label, **(style[0] if style else {}))
        ax2.set_ylabel(right_ylabel or "")
    for v in vlines:
        ax.axvline(v, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize=8)
    return _save(fig, path)


def plot_bars(path, groups, *, ylabel, title=None, logy=False):
    """Grouped bars of ``{group: {series: value or (mean, std)}}``; returns ``path``."""
    plt = _pyplot()
    series = list(dict.fromkeys(s for g in groups.values() for s in g))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, s in enumerate(series):
        xs, hs, es = [], [], []
        for j, g in enumerate(groups.values()):
            if s in g:
                v = g[s]
                m, e = v if isinstance(v, (tuple, list)) else (v, 0.0)
                xs.append(j + (i - (len(series) - 1) / 2) * width)
                hs.append(m)
                es.append(e)
        ax.bar(xs, hs, width, yerr=es, capsize=3, label=s)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups))
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_histograms(path, histograms, *, xlabel, title=None, logy=True, density=True):
    """Step histograms of ``{label: (counts, edges)}`` (shared bins); returns ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (counts, edges) in histograms.items():
        counts = np.asarray(counts, dtype=np.float64)
        edges = np.asarray(edges, dtype=np.float64)
        if density and counts.sum() > 0:
            counts = counts / (counts.sum() * np.diff(edges))
        ax.stairs(counts, edges, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density" if density else "count")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


# ============================================================================ TensorBoard
class Board:
    """TensorBoard writer of one run (chief only; a no-op writer elsewhere).

    Args:
      logdir: the run's log directory (e.g. ``<workdir>/tensorboard/<run>``).
    """

    def __init__(self, logdir):
        self.logdir = logdir
        self._writer = tf.summary.create_file_writer(logdir) if is_chief() else tf.summary.create_noop_writer()

    def scalars(self, values, step):
        """Writes ``{tag: number}`` at ``step``."""
        with self._writer.as_default():
            for tag, value in values.items():
                tf.summary.scalar(tag, float(value), step=int(step))
        self._writer.flush()

    def history(self, history, first_step=1, prefix=""):
        """Writes per-epoch lists ``{tag: [values]}`` as scalars at steps first_step, first_step+1, ..."""
        with self._writer.as_default():
            for tag, values in history.items():
                for i, value in enumerate(values):
                    tf.summary.scalar(prefix + tag, float(value), step=first_step + i)
        self._writer.flush()

    def hparams(self, hparams, metrics=None, trial_id=None):
        """Records the run's hyper-parameters (and final ``metrics`` as step-0 scalars).

        Values that are not bool/int/float/str are recorded as text.
        """
        from tensorboard.plugins.hparams import api as hp

        clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
        with self._writer.as_default():
            hp.hparams(clean, trial_id=trial_id)
            for tag, value in (metrics or {}).items():
                tf.summary.scalar(tag, float(value), step=0)
        self._writer.flush()

    def images(self, paths, step=0):
        """Writes PNG files as TensorBoard images (tag: the file name without extension)."""
        if not is_chief():
            return
        with self._writer.as_default():
            for path in paths:
                image = tf.io.decode_png(tf.io.read_file(path), channels=4)
                tag = os.path.splitext(os.path.basename(path))[0]
                tf.summary.image(tag, image[None], step=step)
        self._writer.flush()

    def text(self, tag, markdown, step=0):
        """Writes markdown text (e.g. the results table)."""
        with self._writer.as_default():
            tf.summary.text(tag, markdown, step=step)
        self._writer.flush()

    def close(self):
        self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
