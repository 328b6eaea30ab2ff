r"""Keskar et al. (2017): large-batch training converges to sharp minima that generalise worse.

Protocol (Section 2 and Appendix B of the paper): the same network, from the
same initial weights, is trained with ADAM with a small batch (SB, 256) and
a large batch (LB, 10 % of the training set) until the training loss stops
improving (here: early stopping on the training loss with ``patience`` epochs
and ``min_delta``, at most ``--epochs``). For each minimiser we report train
and test accuracy, Keskar's sharpness φ (``bstf.analysis.sharpness``) at
ε = 1e-3 and 5e-4 in the full space and in a random 100-dimensional subspace,
and the 1-D parametric plot of the loss and accuracy along
``α·x_LB + (1 − α)·x_SB``, α ∈ [−1, 2] at 25 points (``bstf.analysis.interpolate``).
Everything is repeated over ``--seeds``; the tables show mean ± std.

Both runs of a seed go through the shared runner
(:func:`reproductions.runner.fit_and_evaluate`: ``bstf.fit`` with a constant
plan and ``keras.callbacks.EarlyStopping``, ``bstf.evaluate``, then the
sharpness as the run's measurement).

Outputs in ``--workdir``: ``results.json`` (``summary`` keyed by network, then
regime: a :func:`reproductions.runner.summarise` entry plus the sharpness;
``runs`` the per-seed run records with their sharpness and the
interpolation), ``results.md`` (our numbers beside the paper's Tables 2–4),
``interpolation.png``, ``sharpness.png``, and TensorBoard logs of every run
under ``tensorboard/seed<N>/<sb|lb>`` (bstf.fit's curves, hparams, final
metrics; the PNGs and the table under ``tensorboard/summary``).

Run::

    python reproductions/keskar.py --workdir=/tmp/keskar                   # quick preset, CPU
    python reproductions/keskar.py --preset=paper --network=C1 \
        --data_dir=$HOME/tensorflow_datasets --strategy=mirrored --workdir=/tmp/keskar_c1
    python reproductions/keskar.py --preset=paper --network=C2 --smoke --workdir=/tmp/keskar_smoke   # CPU

See docs/reproductions/keskar.md.
"""

import dataclasses
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import bstf  # noqa: E402
import bstf.analysis  # noqa: E402
from reproductions import common, networks, report, runner  # noqa: E402

common.define_flag("enum", "network", None, list(networks.NAMES),
                  "Network (default: the preset's). With --preset=paper the data set follows it (F1: "
                  "tfds:mnist, C1/C2: tfds:cifar10, C3/C4: tfds:cifar100; F2: give --dataset); with "
                  "--preset=quick, C1-small runs on the offline digits images.")

# ----------------------------------------------------------------------------- the paper's numbers
# Table 2 (accuracy %, mean ± std over 5 runs), Table 3 (φ, full space), Table 4 (φ, 100-d subspace).
PAPER = {
    "F1": {"sb": {"train_accuracy": (99.66, 0.05), "test_accuracy": (98.03, 0.07),
                  "sharpness": {"0.001": (1.23, 0.83), "0.0005": (0.61, 0.27)},
                  "sharpness_subspace": {"0.001": (0.11, 0.00), "0.0005": (0.05, 0.00)}},
           "lb": {"train_accuracy": (99.92, 0.01), "test_accuracy": (97.81, 0.07),
                  "sharpness": {"0.001": (205.14, 69.52), "0.0005": (42.90, 17.14)},
                  "sharpness_subspace": {"0.001": (9.22, 0.56), "0.0005": (9.17, 0.14)}}},
    "F2": {"sb": {"train_accuracy": (99.99, 0.03), "test_accuracy": (64.02, 0.2),
                  "sharpness": {"0.001": (1.39, 0.02), "0.0005": (0.90, 0.05)},
                  "sharpness_subspace": {"0.001": (0.29, 0.02), "0.0005": (0.05, 0.00)}},
           "lb": {"train_accuracy": (98.35, 2.08), "test_accuracy": (59.45, 1.05),
                  "sharpness": {"0.001": (310.64, 38.46), "0.0005": (93.15, 6.81)},
                  "sharpness_subspace": {"0.001": (23.63, 0.54), "0.0005": (6.28, 0.19)}}},
    "C1": {"sb": {"train_accuracy": (99.89, 0.02), "test_accuracy": (80.04, 0.12),
                  "sharpness": {"0.001": (28.58, 3.13), "0.0005": (7.08, 0.88)},
                  "sharpness_subspace": {"0.001": (2.18, 0.23), "0.0005": (0.71, 0.15)}},
           "lb": {"train_accuracy": (99.66, 0.2), "test_accuracy": (77.26, 0.42),
                  "sharpness": {"0.001": (707.23, 43.04), "0.0005": (227.31, 23.23)},
                  "sharpness_subspace": {"0.001": (137.25, 21.60), "0.0005": (29.50, 7.48)}}},
    "C2": {"sb": {"train_accuracy": (99.99, 0.04), "test_accuracy": (89.24, 0.12),
                  "sharpness": {"0.001": (8.68, 1.32), "0.0005": (2.07, 0.86)},
                  "sharpness_subspace": {"0.001": (0.95, 0.34), "0.0005": (0.31, 0.08)}},
           "lb": {"train_accuracy": (99.99, 0.01), "test_accuracy": (87.26, 0.07),
                  "sharpness": {"0.001": (925.32, 38.29), "0.0005": (175.31, 18.28)},
                  "sharpness_subspace": {"0.001": (25.09, 2.61), "0.0005": (5.82, 0.52)}}},
    "C3": {"sb": {"train_accuracy": (99.56, 0.44), "test_accuracy": (49.58, 0.39),
                  "sharpness": {"0.001": (29.85, 5.98), "0.0005": (8.56, 0.99)},
                  "sharpness_subspace": {"0.001": (17.02, 2.20), "0.0005": (4.03, 1.45)}},
           "lb": {"train_accuracy": (99.88, 0.30), "test_accuracy": (46.45, 0.43),
                  "sharpness": {"0.001": (258.75, 8.96), "0.0005": (105.11, 13.22)},
                  "sharpness_subspace": {"0.001": (236.03, 31.26), "0.0005": (86.96, 27.39)}}},
    "C4": {"sb": {"train_accuracy": (99.10, 1.23), "test_accuracy": (63.08, 0.5),
                  "sharpness": {"0.001": (12.83, 3.84), "0.0005": (4.07, 0.87)},
                  "sharpness_subspace": {"0.001": (6.05, 1.13), "0.0005": (1.89, 0.33)}},
           "lb": {"train_accuracy": (99.57, 1.84), "test_accuracy": (57.81, 0.17),
                  "sharpness": {"0.001": (421.84, 36.97), "0.0005": (109.35, 16.57)},
                  "sharpness_subspace": {"0.001": (72.99, 10.96), "0.0005": (19.85, 4.12)}}},
}
REGIMES = ("sb", "lb")
SUBSPACE_KEYS = {"standard": "sharpness_subspace", "unit": "sharpness_subspace_unit"}
"""The record key of the subspace sharpness for each scale of A (``bstf.analysis.sharpness(subspace_scale=)``)."""


@dataclasses.dataclass(frozen=True)
class KeskarConfig(common.Config):
    """Configuration of the Keskar reproduction (fields beyond :class:`common.Config`).

    Attributes:
      network: a :data:`reproductions.networks.NAMES` entry.
      paper_network: the paper network whose numbers the tables show (default:
        ``network`` without ``-small``).
      sb_batch: small batch (256 in the paper).
      lb_fraction: large batch as a fraction of the training set (0.1);
        ``lb_batch`` sets it explicitly instead.
      base_lr: ADAM's learning rate (Keras default 1e-3, as the authors' code; the plan's ``base_lr``).
      patience, min_delta: stop when the epoch's training loss has not improved
        by ``min_delta`` for ``patience`` epochs ("until the loss stops improving").
      epsilons: box sizes ε of the sharpness.
      subspace_dim: dimension p of the random subspace (100).
      subspace_scales: the entries of the random A, each measured (``bstf.analysis.sharpness``'s
        ``subspace_scale``): ``"standard"`` N(0, 1) — recorded as ``sharpness_subspace`` — and ``"unit"``
        N(0, 1/n) — ``sharpness_subspace_unit``. The paper does not say which.
      sharpness_iterations: L-BFGS-B iterations (10).
      sharpness_examples: training examples in f of the sharpness (None: all).
      alphas: (first, last, points) of the parametric plot (−1, 2, 25).
    """

    network: str = "F1-small"
    paper_network: str = None
    sb_batch: int = 256
    lb_fraction: float = 0.1
    lb_batch: int = None
    base_lr: float = 1e-3
    patience: int = 10
    min_delta: float = 1e-4
    epsilons: tuple = (1e-3, 5e-4)
    subspace_dim: int = 100
    subspace_scales: tuple = ("standard", "unit")
    sharpness_iterations: int = 10
    sharpness_examples: int = None
    alphas: tuple = (-1.0, 2.0, 25)

    def __post_init__(self):
        super().__post_init__()
        if self.network not in networks.NAMES:
            raise ValueError(f"network must be one of {networks.NAMES}, got {self.network!r}.")
        if self.compared_network not in PAPER:
            raise ValueError(f"paper_network must be one of {sorted(PAPER)}, got {self.compared_network!r}.")
        common.check_int("sb_batch", self.sb_batch)
        common.check_int("lb_batch", self.lb_batch, optional=True)
        if not 0 < self.lb_fraction <= 1:
            raise ValueError(f"lb_fraction must be in (0, 1], got {self.lb_fraction}.")
        common.check_positive("base_lr", self.base_lr)
        common.check_int("patience", self.patience)
        if not self.epsilons or any(not e > 0 for e in self.epsilons):
            raise ValueError(f"epsilons must be a non-empty tuple of numbers > 0, got {self.epsilons!r}.")
        object.__setattr__(self, "epsilons", tuple(float(e) for e in self.epsilons))
        common.check_int("subspace_dim", self.subspace_dim)
        scales = tuple(self.subspace_scales)
        if not scales or any(v not in SUBSPACE_KEYS for v in scales) or len(set(scales)) != len(scales):
            raise ValueError(f"subspace_scales must be distinct names from {tuple(SUBSPACE_KEYS)}, got {scales!r}.")
        object.__setattr__(self, "subspace_scales", scales)
        common.check_int("sharpness_iterations", self.sharpness_iterations)
        common.check_int("sharpness_examples", self.sharpness_examples, optional=True)
        if len(self.alphas) != 3 or not self.alphas[0] < self.alphas[1] or int(self.alphas[2]) < 2:
            raise ValueError(f"alphas must be (first, last, points) with first < last and points >= 2, "
                             f"got {self.alphas!r}.")
        object.__setattr__(self, "alphas", (float(self.alphas[0]), float(self.alphas[1]), int(self.alphas[2])))

    @property
    def compared_network(self):
        """The paper network of the tables: ``paper_network``, or ``network`` without ``-small``."""
        return self.paper_network or self.network.replace("-small", "")


# ----------------------------------------------------------------------------- presets
def quick():
    """Quick preset: F1-style MLP on MNIST-1D, 3 seeds, a few minutes on 2 CPU cores.

    ``python reproductions/keskar.py --workdir=/tmp/keskar``

    MNIST-1D (``bstf.data.load("mnist1d")``: 4000 train / 1000 test, 40
    features, offline) with ``F1-small`` (3 × [Dense 256, BN, ReLU]). The
    training set is 15× smaller than MNIST's, so SB is scaled down with it:
    SB = 32 and LB = 10 % = 400 keep the paper's LB/SB ratio of order 10–20
    (MNIST: 6000/256 ≈ 23).
    """
    return KeskarConfig(preset="quick", dataset="mnist1d", network="F1-small", sb_batch=32, seeds=(0, 1, 2),
                        epochs=100, patience=10)


def paper():
    """Paper preset: the paper's network and data (F1 on MNIST by default), 5 seeds.

    ``python reproductions/keskar.py --preset=paper --network=F1 --data_dir=DIR --workdir=/tmp/keskar_f1``

    ``--network`` F1 (tfds:mnist), C1/C2 (tfds:cifar10), C3/C4 (tfds:cifar100);
    F2 needs TIMIT as ``--dataset=npz:...``. The data set follows the network
    unless ``--dataset`` is given. SB 256, LB 10 % of the training set, ADAM,
    early stopping on the training loss (patience 10, at most 200 epochs).
    """
    return KeskarConfig(preset="paper", dataset="tfds:mnist", network="F1", sb_batch=256, seeds=(0, 1, 2, 3, 4),
                        epochs=200, patience=10)


def tiny():
    """Tiny preset: seconds, for tests (C1-small on 256 digit images, 2 epochs, small sharpness budget).

    ``python reproductions/keskar.py --preset=tiny --workdir=/tmp/keskar_tiny``
    """
    return KeskarConfig(preset="tiny", dataset="digits", network="C1-small", train_examples=256, test_examples=128,
                        seeds=(0,), epochs=2, sb_batch=32, lb_fraction=0.25, subspace_dim=4, sharpness_iterations=2,
                        sharpness_examples=64, alphas=(-1.0, 2.0, 4), patience=1)


PRESETS = {"quick": quick, "paper": paper, "tiny": tiny}

# The paper networks' data: (input shape, classes, training-set size) — TIMIT's frame count for F2 is not
# in the paper; 60000 is used — and how much --smoke divides the batches and the training set by.
PAPER_SHAPES = {"F1": ((28, 28, 1), 10, 60000), "F2": ((360,), 1973, 60000), "C1": ((32, 32, 3), 10, 50000),
                "C2": ((32, 32, 3), 10, 50000), "C3": ((32, 32, 3), 100, 50000), "C4": ((32, 32, 3), 100, 50000)}
SMOKE_SCALE = {"F1": 1, "F2": 1, "C1": 8, "C2": 32, "C3": 8, "C4": 32}


def smoke(config):
    """The paper config as a smoke run of ``--network``: generated data of the paper's shape, a few updates.

    ``python reproductions/keskar.py --preset=paper --network=C2 --smoke --workdir=/tmp/keskar_smoke``

    The network at its real input shape and classes (:data:`PAPER_SHAPES`); SB,
    the training set (so LB = 10 % of it) and the physical batch 512 ÷
    :data:`SMOKE_SCALE` (1 for the MLPs: SB 256 and LB 6000 as in the paper, LB
    accumulated from micro-batches of at most 512); 0.2 epochs (two LB
    updates, ~47 SB updates); the sharpness in the full space and in the
    paper's 100-d subspace (A streamed: 7.3 GB peak for C2's 15M weights; the
    standard-normal A only) at ε = 1e-3 only, one L-BFGS-B iteration on 256 examples; 3 points of the
    parametric plot; one seed.
    """
    if config.network not in PAPER_SHAPES:
        raise ValueError(f"--smoke runs a paper network ({sorted(PAPER_SHAPES)}), got --network={config.network}.")
    shape, classes, size = PAPER_SHAPES[config.network]
    s = SMOKE_SCALE[config.network]
    return dataclasses.replace(
        config, dataset=common.GENERATED, dataset_kwargs=dict(input_shape=shape, num_classes=classes,
                                                              train_size=size // s, test_size=256),
        test_split="test", sb_batch=config.sb_batch // s, max_physical_batch=512 // s, epochs=0.2, seeds=(0,),
        epsilons=(1e-3,), subspace_scales=("standard",), sharpness_iterations=1, sharpness_examples=256,
        alphas=(-1.0, 2.0, 3), eval_batch=512, smoke=True)


# Offline data of the quick preset's networks: the MLP on MNIST-1D, the conv net on 8×8 digit images.
QUICK_DATA = {**{n: ("mnist1d", {}) for n in ("F1", "F2", "F1-small")},
              **{n: ("digits", {}) for n in ("C1", "C2", "C3", "C4", "C1-small")}}


def config_from_flags(flag_values=flags.FLAGS, argv=None):
    """The preset's config with the command-line flags applied (``--smoke``: :func:`smoke`).

    Unless ``--dataset`` (or ``--smoke``) is given, the data set follows
    ``--network``: the paper preset uses the paper's data
    (:data:`networks.PAPER_DATA`), the quick preset the offline data of
    :data:`QUICK_DATA`.
    """
    config = common.config_from_flags(PRESETS, smoke=smoke, flag_values=flag_values, argv=argv)
    if flag_values["dataset"].present or config.smoke or config.preset == "tiny":
        return config
    if config.preset == "paper":
        data = networks.PAPER_DATA.get(config.network)
        if data is None:
            raise app.UsageError(f"network {config.network} has no data set in TFDS (the paper used TIMIT); "
                                 "pass --dataset=npz:<file> or idx:<dir>.")
        return dataclasses.replace(config, dataset=data, dataset_kwargs={})
    if config.network in QUICK_DATA:
        name, kwargs = QUICK_DATA[config.network]
        if name != config.dataset:
            config = dataclasses.replace(config, dataset=name, dataset_kwargs=dict(kwargs))
    return config


# ----------------------------------------------------------------------------- the experiment
def batch_sizes(config, train_size, strategy):
    """(SB, LB) for a training set of ``train_size`` examples (LB = lb_batch or round(lb_fraction·N)).

    LB is rounded down to a multiple of the replicas; both are checked against the strategy, the physical
    batch and the training set.
    """
    lb = config.lb_batch or max(1, int(round(config.lb_fraction * train_size)))
    lb -= lb % strategy.num_replicas_in_sync  # a global batch must split evenly over the replicas
    for name, b in (("sb_batch", config.sb_batch), ("lb_batch", lb)):
        try:
            common.check_batch(b, train_size, strategy, config.max_physical_batch)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return config.sb_batch, lb


def build_model(config, data):
    """The config's network compiled with ADAM (its learning rate comes from the plan)."""
    model = networks.build(config.network, data.input_shape, data.num_classes)
    return runner.compile_classifier(model, keras.optimizers.Adam(config.base_lr), config.jit_compile)


def _sharpness(config, train, seed):
    """``measure(model)``: Keskar's sharpness φ at every ε, full space and random subspace (every A scale)."""
    spaces = [("sharpness", None, "standard")] + [(SUBSPACE_KEYS[scale], config.subspace_dim, scale)
                                                    for scale in config.subspace_scales]

    def measure(model):
        out = {key: {} for key, _, _ in spaces}
        start = time.perf_counter()
        for eps in config.epsilons:
            for key, dim, scale in spaces:
                res = bstf.analysis.sharpness(model, train, epsilon=eps, subspace_dim=dim,
                                              max_iter=config.sharpness_iterations, seed=seed,
                                              num_examples=config.sharpness_examples, batch_size=config.eval_batch,
                                              subspace_scale=scale)
                out[key][str(eps)] = float(res.sharpness)
        out["sharpness_seconds"] = time.perf_counter() - start
        return out

    return measure


def _interpolation(config, model, weights_sb, weights_lb, train, test):
    """Loss and accuracy (fraction) along α·x_LB + (1 − α)·x_SB on the train and test sets.

    Trainable weights move along the whole line (as in the authors' code); BatchNormalization moving
    statistics are interpolated on α ∈ [0, 1] and held at the nearer minimiser's values outside it
    (``interpolate``'s default: extrapolated, a moving variance can turn negative and the loss NaN).
    """
    first, last, points = config.alphas
    alphas = np.linspace(first, last, points)
    res = bstf.analysis.interpolate(model, weights_sb, weights_lb, {"train": train, "test": test}, alphas=alphas,
                                    batch_size=config.eval_batch)
    out = {"alpha": alphas.tolist()}
    for split_name in ("train", "test"):
        out[f"{split_name}_loss"] = [float(v) for v in res.loss[split_name]]
        out[f"{split_name}_accuracy"] = [float(v) for v in res.accuracy[split_name]]
    return out


def prepare(config):
    """Strategy and data of ``config``; SB and LB checked before training."""
    setup = common.prepare(config)
    batch_sizes(config, setup.train.size, setup.strategy)
    return setup


def run_seed(setup, seed, workdir):
    """Trains SB and LB from the same initial weights; returns the per-seed results."""
    config, train, test = setup.config, setup.train, setup.test
    build = lambda: build_model(config, train)  # noqa: E731
    init = runner.initial_weights(setup, build, seed)
    result = {"seed": seed}
    trained = {}
    for regime, batch in zip(REGIMES, batch_sizes(config, train.size, setup.strategy)):
        stop = keras.callbacks.EarlyStopping(monitor="loss", patience=config.patience, min_delta=config.min_delta)
        plan = bstf.NoiseScalePlan(train.size, config.base_lr, batch, base_momentum=0.0)
        run = runner.Run(f"seed{seed}/{regime}", plan, config.epochs, seed,
                         {"network": config.network, "regime": regime}, callbacks=(stop,),
                         max_physical_batch=config.max_physical_batch)
        record, trained[regime] = runner.fit_and_evaluate(setup, run, build, workdir, init=init,
                                                          measure=_sharpness(config, train, seed))
        result[regime] = record
        common.log("seed %d %s (batch %d): %g epochs, train %.2f%% test %.2f%%, sharpness %s", seed,
                   regime.upper(), batch, record["epochs"], record["train_accuracy"], record["test_accuracy"],
                   record["sharpness"])
    result["interpolation"] = _interpolation(config, trained["lb"], trained["sb"].get_weights(),
                                             trained["lb"].get_weights(), train, test)
    return result


def execute(setup, workdir):
    """Runs the prepared experiment; writes results.json/results.md/PNGs/TensorBoard in ``workdir``."""
    config, train, test = setup.config, setup.train, setup.test
    sb, lb = batch_sizes(config, train.size, setup.strategy)
    common.log("Keskar: %s on %s (%d train, %d test), SB=%d LB=%d, seeds %s", config.network, config.dataset,
               train.size, test.size, sb, lb, config.seeds)
    runs = [run_seed(setup, seed, workdir) for seed in config.seeds]
    summary = {config.network: {r: _summarise([run[r] for run in runs]) for r in REGIMES}}
    verdicts = verdict_rows(config, runs)
    pngs = _plots(config, runs, workdir)
    markdown = _markdown(config, runs, verdicts, train, test, sb, lb)
    runner.write_summary_board(workdir, pngs, markdown)
    return report.write_results(workdir, summary=summary, runs=runs, config=config, markdown=markdown,
                                paper={config.compared_network: PAPER[config.compared_network]},
                                verdicts=[dict(zip(("claim", "paper", "ours", "verdict"), v)) for v in verdicts])


def run(config, workdir):
    """:func:`prepare` then :func:`execute` (the testable whole experiment)."""
    return execute(prepare(config), workdir)


def _summarise(records):
    """:func:`runner.summarise` of one regime over seeds, with the sharpness' std."""
    entry = runner.summarise(records)
    keys = [k for k in ("sharpness", *SUBSPACE_KEYS.values()) if k in records[0]]
    _, stds = report.aggregate([{k: r[k] for k in keys} for r in records])
    return {**entry, **{f"{k}_std": stds[k] for k in keys}}


# ----------------------------------------------------------------------------- report
def _plots(config, runs, workdir):
    interp = [r["interpolation"] for r in runs]
    alpha = interp[0]["alpha"]
    mean = {k: np.mean([i[k] for i in interp], axis=0) for k in interp[0] if k != "alpha"}
    path_i = report.plot_curves(
        os.path.join(workdir, "interpolation.png"),
        {"train loss": (alpha, mean["train_loss"], {"color": "tab:blue"}),
         "test loss": (alpha, mean["test_loss"], {"color": "tab:blue", "ls": "--"})},
        right={"train accuracy": (alpha, 100 * np.asarray(mean["train_accuracy"]), {"color": "tab:red"}),
               "test accuracy": (alpha, 100 * np.asarray(mean["test_accuracy"]), {"color": "tab:red", "ls": "--"})},
        xlabel="α  (0 = SB minimiser, 1 = LB minimiser)", ylabel="cross-entropy", right_ylabel="accuracy (%)",
        logy=True, vlines=(0.0, 1.0),
        title=f"{config.network}: f(α·x_LB + (1−α)·x_SB), mean of {len(runs)} seeds")
    groups = {}
    for key, label in _spaces(config, f"{config.subspace_dim}-d"):
        for eps in config.epsilons:
            groups[f"{label}, ε={eps:g}"] = {
                r.upper(): report.mean_std([run[r][key][str(eps)] for run in runs]) for r in REGIMES}
    path_s = report.plot_bars(os.path.join(workdir, "sharpness.png"), groups, ylabel="sharpness φ", logy=True,
                              title=f"{config.network}: sharpness of SB and LB minimisers ({len(runs)} seeds)")
    return [path_i, path_s]


def _spaces(config, subspace="subspace"):
    """(record key, label) of every measured space: the full space, then the subspace of each A scale."""
    labels = {"standard": f"{subspace}, A ~ N(0, 1)", "unit": f"{subspace}, A ~ N(0, 1/n)"}
    return [("sharpness", "full space")] + [(SUBSPACE_KEYS[v], labels[v]) for v in config.subspace_scales]


_SUBSPACE_NOTE = (
    "The paper does not give the scale of the random subspace matrix A. With N(0, 1) entries (the common reading "
    "of \"randomly generated\", `bstf.analysis.sharpness`'s default `subspace_scale=\"standard\"`) the box C_ε "
    "moves the weights on the scale of the full-space box; with N(0, 1/n) entries (unit-norm columns, "
    "`\"unit\"`) about √n times less, so little that φ follows the gradient rather than the curvature. Both are "
    "reported beside Table 4 (see docs/reproductions/keskar.md).")
_NAN_NOTE = "Non-finite losses (nan) mean the network's outputs overflowed at those points."


def _pm_paper(v):
    return None if v is None else report.pm(*v)


def _pm_sig(values, figures=3):
    """mean ± std of per-seed values with about ``figures`` significant digits (sharpness spans decades)."""
    mean, std = report.mean_std(values)
    digits = 2 if abs(mean) >= 10 ** (figures - 1) or mean == 0 else max(
        2, figures - 1 - int(np.floor(np.log10(abs(mean)))))
    return report.pm(mean, std if len(values) > 1 else None, digits=min(digits, 8))


def _values(runs, regime, key, eps=None):
    """Per-seed values of ``runs[regime][key]`` (``[str(eps)]`` for the sharpness)."""
    return [run[regime][key] if eps is None else run[regime][key][str(eps)] for run in runs]


def verdict_rows(config, runs):
    """(claim, paper, ours, verdict) rows of Keskar's claims, each checked against the spread over seeds."""
    paper = PAPER[config.compared_network]
    rows = []
    for key, label in _spaces(config, f"random {config.subspace_dim}-d subspace"):
        for eps in config.epsilons:
            sb, lb = _values(runs, "sb", key, eps), _values(runs, "lb", key, eps)
            d = report.difference(lb, sb)
            p_sb, p_lb = (paper[r].get(key.replace("_unit", ""), {}).get(str(eps)) for r in REGIMES)
            paper_text = f"{p_sb[0]:g} / {p_lb[0]:g} ({p_lb[0] / p_sb[0]:.0f}×)" if p_sb and p_lb and p_sb[0] else "—"
            ratio = f"{np.mean(lb) / np.mean(sb):.3g}×" if np.mean(sb) > 0 else "—"
            rows.append((f"LB minimisers are sharper ({label}, ε = {eps:g})", paper_text,
                         f"SB {_pm_sig(sb)} / LB {_pm_sig(lb)} ({ratio}); LB − SB {_sig(d)}",
                         report.direction_verdict(d)))
    d = report.difference(_values(runs, "sb", "test_accuracy"), _values(runs, "lb", "test_accuracy"))
    p = paper["sb"]["test_accuracy"][0] - paper["lb"]["test_accuracy"][0]
    rows.append(("LB generalises worse (SB − LB test accuracy > 0)", f"{p:+.2f} points",
                 f"{d.text()} points", report.direction_verdict(d)))
    return rows


def _sig(d):
    """A :class:`report.Difference` with about 3 significant figures (sharpness spans decades)."""
    scale = max(abs(d.diff), d.spread or 0.0)
    digits = 2 if scale >= 10 or scale == 0 else min(8, max(2, 2 - int(np.floor(np.log10(scale)))))
    return d.text(digits)


def _comparison(config, runs):
    """Our numbers beside the paper's Tables 2, 3 and 4 (the subspace rows once per scale of A)."""
    paper, n = PAPER[config.compared_network], len(runs)
    rows = []
    for key, label in (("train_accuracy", "train accuracy (%)"), ("test_accuracy", "test accuracy (%)")):
        for r in REGIMES:
            rows.append((f"{r.upper()} {label}", _values(runs, r, key), _pm_paper(paper[r][key])))
    for key, label in _spaces(config, f"{config.subspace_dim}-d subspace"):
        for eps in config.epsilons:
            for r in REGIMES:
                p = paper[r][key.replace("_unit", "")].get(str(eps))
                rows.append((f"{r.upper()} sharpness φ, {label}, ε={eps:g}", _pm_sig(_values(runs, r, key, eps)),
                             _pm_paper(p)))
    return report.comparison_table(rows, ours=f"ours ({config.network}, {n} seed{'s' if n > 1 else ''})",
                                   paper=f"Keskar et al. ({config.compared_network})")


def _per_seed(config, runs):
    """Epochs, test accuracy, full-space φ at the first ε and the LB/SB ratio of every space, per seed."""
    eps0 = str(config.epsilons[0])
    rows = []
    for run in runs:
        ratios = []
        for key, _ in _spaces(config):
            s_sb, s_lb = run["sb"][key][eps0], run["lb"][key][eps0]
            ratios.append(f"{s_lb / s_sb:.3g}×" if s_sb > 0 else "∞")
        rows.append([run["seed"], f"{run['sb']['epochs']:g}", f"{run['lb']['epochs']:g}", run["sb"]["test_accuracy"],
                     run["lb"]["test_accuracy"], f"{run['sb']['sharpness'][eps0]:.3g}",
                     f"{run['lb']['sharpness'][eps0]:.3g}", *ratios])
    return report.markdown_table(
        ["seed", "SB epochs", "LB epochs", "SB test %", "LB test %", f"SB φ(ε={eps0})", f"LB φ(ε={eps0})",
         *[f"LB/SB φ, {label}" for _, label in _spaces(config)]], rows)


def _headroom(runs):
    return (f"Headroom: SB ends at {report.pm(_values(runs, 'sb', 'test_accuracy'))} % test accuracy "
            f"(train {np.mean(_values(runs, 'sb', 'train_accuracy')):.2f} %).")


def _interpolation_table(interp):
    return report.markdown_table(
        ["α", "train loss", "test loss", "train acc %", "test acc %"],
        [[f"{a:.2f}", interp["train_loss"][i], interp["test_loss"][i], 100 * interp["train_accuracy"][i],
          100 * interp["test_accuracy"][i]]
         for i, a in enumerate(interp["alpha"]) if i % 3 == 0 or abs(a) < 1e-9 or abs(a - 1) < 1e-9],
        digits=3)


def _markdown(config, runs, verdicts, train, test, sb, lb):
    interp = runs[0]["interpolation"]
    lines = [
        f"# Keskar et al. (2017) — {config.network} on {config.dataset}",
        "",
        f"- command: `{config.command or 'python reproductions/keskar.py --preset=' + config.preset}`",
        f"- preset: {config.preset}{' (smoke run: generated data)' if config.smoke else ''}; machine: "
        f"{report.machine_description()}",
        f"- data: {train.size} train / {test.size} test examples; SB = {sb}, LB = {lb} "
        f"({100 * lb / train.size:.0f} % of the training set); ADAM lr {config.base_lr:g}; early stopping "
        f"on the training loss (patience {config.patience}, min_delta {config.min_delta:g}, at most "
        f"{config.epochs} epochs); SB and LB start from the same initial weights",
        f"- sharpness: {config.sharpness_iterations} L-BFGS-B iterations on "
        f"{config.sharpness_examples or train.size} training examples (inference mode); subspace p = "
        f"{config.subspace_dim}; seeds {list(config.seeds)}",
        f"- {_headroom(runs)}",
        "",
        "## Verdicts", "", report.VERDICT_RULE, "", report.verdict_table(verdicts),
        _SUBSPACE_NOTE,
        "",
        "## Our numbers beside the paper's (Tables 2, 3 and 4)",
        "",
        "Mean ± sample std over seeds. The paper's column is its network "
        f"{config.compared_network} on its data set"
        + (" — a different (bigger) problem than this preset's, so compare directions and ratios, not values."
           if config.network != config.compared_network or config.preset != "paper" else "."),
        "",
        _comparison(config, runs),
        "## Per seed",
        "",
        _per_seed(config, runs),
        "## Parametric plot (seed %d)" % runs[0]["seed"],
        "",
        "α = 0 is the SB minimiser, α = 1 the LB minimiser (`interpolation.png` shows the mean over seeds). "
        "Trainable weights follow the line; BatchNormalization moving statistics are interpolated on [0, 1] and "
        "held at the nearer minimiser's values outside it.",
        "",
        *([_NAN_NOTE, ""] if not np.all(np.isfinite(interp["train_loss"] + interp["test_loss"])) else []),
        _interpolation_table(interp),
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
if __name__ == "__main__":
    common.run_script("keskar", config_from_flags, prepare, execute)
