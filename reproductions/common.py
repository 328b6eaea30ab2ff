"""What every reproduction script shares before training: flags, config, strategy, data, the entry point.

A reproduction script is an experiment written as data over a shared runner
(the big_vision layout): presets are config dataclasses whose docstrings hold
the exact command, flags only pick the preset and override fields, and the
script keeps what is paper-specific — networks, protocol, the report. The
shared parts live in three modules:

* this one — **flags** (``--preset=quick|paper|tiny``, ``--workdir``,
  ``--strategy`` with ``--tpu``/``--num_cpu_devices``, ``--dataset`` with
  ``--data_dir``, ``--seeds``, ``--epochs``, ``--train_examples``,
  ``--test_examples``, ``--max_physical_batch``, ``--jit_compile``,
  ``--smoke``), the base :class:`Config`, :func:`config_from_flags`,
  the **strategy** (:func:`make_strategy`, :func:`is_chief`, :func:`log`),
  the **data** (:func:`load_data`, :func:`generated_data` for smoke runs,
  :func:`take`, :func:`split`), :func:`prepare` (strategy, data and every
  batch checked before the first training step) and the **entry point**
  :func:`run_script`: a user error (bad flag, data not prepared, no TPU, a
  flag combination that does not fit) ends the program with status 2 and one
  line ``<script>: error: <what and how to fix it>`` — no traceback;
* :mod:`reproductions.runner` — the one train–evaluate–record path (fixed
  result keys, one TensorBoard writer);
* :mod:`reproductions.report` — results.json/results.md, tables, plots.

Typical script::

    @dataclasses.dataclass(frozen=True)
    class MyConfig(common.Config):
        base_batch: int = 32

    def quick():
        '''python reproductions/my.py --workdir=/tmp/my'''
        return MyConfig(preset="quick", dataset="digits", epochs=5)

    PRESETS = {"quick": quick, "paper": paper, "tiny": tiny}

    def prepare(config):                       # everything checked before training
        return common.prepare(config, batches=[config.base_batch])

    def execute(setup, workdir):               # runner.fit_and_evaluate per run, then the report
        ...

    def run(config, workdir):
        return execute(prepare(config), workdir)

    if __name__ == "__main__":
        common.run_script("my", lambda: common.config_from_flags(PRESETS), prepare, execute)
"""

import dataclasses
import numbers
import os
import shlex
import sys

from absl import app, flags, logging
import keras
import numpy as np
import tensorflow as tf

import bstf
import bstf.data
import bstf.distribute
import bstf.training

FLAGS = flags.FLAGS
PRESET_NAMES = ("quick", "paper", "tiny")
GENERATED = "generated"
"""The ``dataset`` name of smoke runs: seeded random inputs of the paper's shape (:func:`generated_data`)."""


# ============================================================================ flags
SHARED_FLAGS = ("preset", "workdir", "strategy", "tpu", "num_cpu_devices", "dataset", "data_dir", "seeds", "epochs",
                "train_examples", "test_examples", "max_physical_batch", "jit_compile", "smoke")
"""The flags every script has (defined when this module is imported)."""


def _define_flags():
    if "preset" in FLAGS:  # module reloaded: flags exist already
        return
    flags.DEFINE_enum("preset", "quick", list(PRESET_NAMES),
                      "quick: offline data, small nets, minutes on a CPU. paper: the paper's data, networks and "
                      "protocol (needs TFDS data in --data_dir and an accelerator). tiny: seconds, for tests.")
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
    flags.DEFINE_float("epochs", None, "Epoch budget (the maximum when the script stops early); "
                       "default: the preset's.")
    flags.DEFINE_integer("train_examples", None, "Use only the first N training examples.")
    flags.DEFINE_integer("test_examples", None, "Use only the first N test examples.")
    flags.DEFINE_integer("max_physical_batch", None,
                         "Largest global batch fed at once; larger batches accumulate (default: the preset's).")
    flags.DEFINE_boolean("jit_compile", None, "Compile the train and test steps with XLA (static shapes, as on a "
                         "TPU); default: the preset's.")
    flags.DEFINE_boolean("smoke", False, "With --preset=paper: run the paper's networks at their real input shape "
                         "on generated data for a handful of updates (plans, accumulation, evaluation, report), "
                         "to catch a configuration that would crash before an accelerator hour is spent on it.")


_define_flags()


def define_flag(kind, name, *args, **kwargs):
    """``flags.DEFINE_<kind>(name, *args, **kwargs)`` unless the flag exists already.

    Scripts share flag names (``--base_lr``, ``--base_batch``, ...); a process that imports several of
    them (the test suite) keeps the first definition — same name, same type — instead of failing.
    """
    if name not in FLAGS:
        getattr(flags, f"DEFINE_{kind}")(name, *args, **kwargs)


# ============================================================================ config
def check_int(name, value, low=1, optional=False):
    """``ValueError`` unless ``value`` is an integer >= ``low`` (or None when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


def check_positive(name, value):
    """``ValueError`` unless ``value`` is a number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")


def check_fraction(name, value, high_open=True):
    """``ValueError`` unless ``value`` is a number in [0, 1) (or [0, 1])."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value and (
        value < 1 if high_open else value <= 1)
    if not ok:
        raise ValueError(f"{name} must be in [0, 1{')' if high_open else ']'}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class Config:
    """Fields every reproduction config has (scripts subclass it and add theirs).

    Attributes:
      preset: "quick", "paper" or "tiny" (recorded; the preset functions set the rest).
      dataset: a :func:`bstf.data.load` name, or ``"generated"`` (smoke runs: ``dataset_kwargs`` give
        ``input_shape``, ``num_classes``, ``train_size``, ``test_size``; see :func:`generated_data`).
      dataset_kwargs: extra arguments for the loader (e.g. ``num_samples`` of mnist1d).
      data_dir: TFDS data directory (only for ``tfds:`` names).
      test_split: the split evaluated as test set.
      train_examples, test_examples: use only the first N examples (None: all).
      strategy: :func:`bstf.distribute.get_strategy` name; ``tpu`` its TPU
        address, ``num_cpu_devices`` the CPU split for "mirrored".
      seeds: the seeds of the repeated runs.
      epochs: epoch budget (a float ends mid-epoch).
      max_physical_batch: largest global batch fed at once; bigger batches accumulate (None: never).
      eval_batch: batch of evaluation passes (``bstf.evaluate``).
      jit_compile: XLA-compile the train and test steps (static shapes, as on a TPU).
      smoke: the config is a smoke run of a paper preset (generated data, a handful of updates).
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
    epochs: float = 10
    max_physical_batch: int = None
    eval_batch: int = 1024
    jit_compile: bool = False
    smoke: bool = False
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
        check_positive("epochs", self.epochs)
        if float(self.epochs).is_integer():
            object.__setattr__(self, "epochs", int(self.epochs))
        check_int("train_examples", self.train_examples, optional=True)
        check_int("test_examples", self.test_examples, optional=True)
        check_int("num_cpu_devices", self.num_cpu_devices, optional=True)
        check_int("max_physical_batch", self.max_physical_batch, optional=True)
        check_int("eval_batch", self.eval_batch)
        if self.tpu is not None and self.strategy != "tpu":
            raise ValueError(f"--tpu={self.tpu} is only used with --strategy=tpu, got --strategy={self.strategy}; "
                             "drop --tpu or pass --strategy=tpu.")
        if self.num_cpu_devices is not None and self.strategy != "mirrored":
            raise ValueError(f"--num_cpu_devices is only used with --strategy=mirrored, got "
                             f"--strategy={self.strategy}; drop it or pass --strategy=mirrored.")


_CONVERTERS = {"seeds": lambda n: tuple(range(n))}


def config_from_flags(presets, converters=None, smoke=None, flag_values=FLAGS, argv=None):
    """The preset's config (``presets[--preset]()``) with the given flags applied.

    Every config field whose flag of the same name was given on the command
    line is replaced by the flag's value (``--seeds=N`` becomes seeds 0..N-1;
    ``converters`` maps other field names to functions converting a flag value,
    e.g. a comma-separated list into a tuple of ints). Changing ``--dataset``
    drops the preset's ``dataset_kwargs`` (they belong to the preset's data set).
    With ``--smoke`` (``--preset=paper`` only), ``smoke(config)`` — the script's
    smoke transformation — is applied to the result, and the flags given are
    applied again on top (so ``--epochs`` still wins). ``command`` records
    ``argv`` (default ``sys.argv``) as a shell command.
    """
    preset = flag_values["preset"].value
    if preset not in presets:
        raise ValueError(f"preset must be one of {sorted(presets)}, got {preset!r}.")
    changes = _flag_changes(presets[preset](), converters, flag_values)
    config = dataclasses.replace(presets[preset](), **changes)
    if "smoke" in flag_values and flag_values["smoke"].value:
        if preset != "paper" or smoke is None:
            raise ValueError("--smoke runs a paper preset's networks on generated data; use it with "
                             f"--preset=paper (got --preset={preset}).")
        config = dataclasses.replace(smoke(config), **{k: v for k, v in changes.items() if k != "dataset_kwargs"})
    argv = sys.argv if argv is None else argv
    return dataclasses.replace(config, command=" ".join(["python", *(shlex.quote(a) for a in argv)]))


def _flag_changes(config, converters, flag_values):
    conv = {**_CONVERTERS, **(converters or {})}
    changes = {}
    for field in dataclasses.fields(config):
        name = field.name
        if name in ("preset", "smoke") or name not in flag_values or not flag_values[name].present:
            continue
        value = flag_values[name].value
        try:
            changes[name] = conv[name](value) if name in conv else value
        except ValueError as e:
            given = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            raise ValueError(f"--{name}={given} is not valid: {e}") from None
    if "dataset" in changes and changes["dataset"] != config.dataset and "dataset_kwargs" not in changes:
        changes["dataset_kwargs"] = {}
    return changes


def workdir_from_flags(default_name, flag_values=FLAGS):
    """``--workdir``, or ``/tmp/<default_name>``."""
    return flag_values["workdir"].value or os.path.join("/tmp", default_name)


# ============================================================================ the entry point
USER_ERRORS = (app.UsageError, ValueError, TypeError, OSError, RuntimeError)
"""What a wrong command line, missing data or an unreachable TPU raise before training starts."""


def fail(prog, error):
    """Prints ``<prog>: error: <message>`` (one line) to stderr and exits with status 2."""
    message = " ".join(str(error).split()) or type(error).__name__
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()
    sys.exit(2)


def parse_flags(argv):
    """absl's flag parsing, but a bad flag exits with status 2 and one line (absl: status 1, two lines)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(os.path.basename(argv[0]), f"{e} (--helpshort lists the flags)")


def main(name, make_config, prepare, execute, argv):
    """The body of every script's absl ``main``.

    Flags become a config (``make_config()``), ``prepare(config)`` makes the
    strategy and the data and checks every batch — both before the first
    training step, so any error they raise (:data:`USER_ERRORS`) is the
    user's: one line on stderr, status 2. ``execute(setup, workdir)`` then runs
    the experiment; an error there is a bug and keeps its traceback.
    """
    prog = os.path.basename(argv[0]) if argv else f"{name}.py"
    try:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected positional arguments {argv[1:]}; every option is a --flag.")
        config = make_config()
        setup = prepare(config)
    except USER_ERRORS as e:
        fail(prog, e)
    return execute(setup, workdir_from_flags(name))


def run_script(name, make_config, prepare, execute):
    """``absl.app.run`` of :func:`main` with :func:`parse_flags` (the ``__main__`` of every script)."""
    def absl_main(argv):
        main(name, make_config, prepare, execute, argv)  # returns None: exit status 0

    app.run(absl_main, flags_parser=parse_flags)


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


# ============================================================================ data
def load_data(config):
    """(train, test) :class:`bstf.data.Data` for a config (first N examples if asked)."""
    if config.dataset == GENERATED:
        train, test = generated_data(**config.dataset_kwargs)
    else:
        extra = dict(config.dataset_kwargs)
        if config.data_dir is not None:
            extra["data_dir"] = config.data_dir
        train = bstf.data.load(config.dataset, "train", **extra)
        test = bstf.data.load(config.dataset, config.test_split, **extra)
    return take(train, config.train_examples), take(test, config.test_examples)


def generated_data(input_shape, num_classes, train_size, test_size, seed=0):
    """(train, test) :class:`bstf.data.Data` of seeded uniform [0, 1) inputs and uniform labels.

    The data of smoke runs: any input shape (224×224×3 images included)
    without holding it in memory — example ``i`` is generated on the fly from
    ``(seed, i)``, so every pass, worker and replica sees the same data.
    """
    shape = tuple(int(d) for d in input_shape)
    check_int("num_classes", num_classes, low=2)
    parts = []
    for offset, size, split in ((0, train_size, "train"), (train_size, test_size, "test")):
        check_int(f"{split}_size", size)

        def example(i, offset=offset):
            key = tf.stack([tf.constant(seed, tf.int64), i + offset])
            x = tf.random.stateless_uniform(shape, seed=key)
            y = tf.random.stateless_uniform((), seed=key[::-1], maxval=num_classes, dtype=tf.int64)
            return x, y

        ds = tf.data.Dataset.range(size).map(example, num_parallel_calls=tf.data.AUTOTUNE)
        parts.append(bstf.data.Data(ds, int(size), int(num_classes), shape, GENERATED, split))
    return tuple(parts)


def take(data, n):
    """The first ``n`` examples of ``data`` (all of them if ``n`` is None or too large)."""
    if n is None or n >= data.size:
        return data
    check_int("n", n)
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


def arrays(data, max_examples=None):
    """(x, y) NumPy arrays of ``data`` (the first ``max_examples``)."""
    return data.numpy(max_examples)


# ============================================================================ setup
@dataclasses.dataclass(frozen=True)
class Setup:
    """What :func:`prepare` checked: the config, its strategy and its (train, test) data."""

    config: Config
    strategy: tf.distribute.Strategy
    train: bstf.data.Data
    test: bstf.data.Data


def prepare(config, batches=(), transform=None):
    """The strategy and the data of ``config``, with every global batch of the experiment checked.

    Args:
      config: a :class:`Config`.
      batches: every global batch the experiment will train with (or a
        function of the training-set size returning them); each must divide by
        the replicas, split into micro-batches of at most
        ``config.max_physical_batch`` and fit in the training set.
      transform: ``transform(train, test) -> (train, test)`` (input pipelines such as crops).

    Raises:
      ValueError, RuntimeError, OSError: the strategy, the data or a batch
        does not fit (the message names the fix) — before any training step.
    """
    strategy = make_strategy(config)
    train, test = load_data(config)
    if transform is not None:
        train, test = transform(train, test)
    if callable(batches):
        batches = batches(train.size)
    for batch in sorted(set(batches)):
        check_batch(batch, train.size, strategy, config.max_physical_batch)
    return Setup(config, strategy, train, test)


def check_batch(batch, train_size, strategy, max_physical_batch=None):
    """``ValueError`` unless global ``batch`` fits the strategy, the physical batch and the training set."""
    bstf.distribute.check_global_batch(batch, strategy)
    bstf.training.physical_batch(batch, max_physical_batch, strategy.num_replicas_in_sync)
    if batch > train_size:
        raise ValueError(f"batch {batch} is larger than the training set ({train_size} examples); use "
                         "smaller batches or more training examples.")
