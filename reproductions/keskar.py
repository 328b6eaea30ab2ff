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

Outputs in ``--workdir``: ``results.json`` (summary keyed by network, per-seed
runs, config), ``results.md`` (our numbers beside the paper's Tables 2–4),
``interpolation.png``, ``sharpness.png``, and TensorBoard logs of every run
under ``tensorboard/`` (per-epoch scalars, hparams, final metrics, the PNGs).

Run::

    python reproductions/keskar.py --workdir=/tmp/keskar                   # quick preset, CPU
    python reproductions/keskar.py --preset=paper --network=C1 \
        --data_dir=$HOME/tensorflow_datasets --strategy=mirrored --workdir=/tmp/keskar_c1

See docs/reproductions/keskar.md.
"""

import dataclasses
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import bstf  # noqa: E402
import bstf.analysis  # noqa: E402
from reproductions import common, networks  # noqa: E402

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
# A seed shows the paper's direction when LB φ (first ε) is at least this many times SB φ and LB test
# accuracy is not above SB's (the paper: 7–170× sharper, 0.2–5 points lower).
SHARPER_FACTOR = 2.0


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
      learning_rate: ADAM's learning rate (Keras default 1e-3, as the authors' code).
      patience, min_delta: stop when the epoch's training loss has not improved
        by ``min_delta`` for ``patience`` epochs ("until the loss stops improving").
      epsilons: box sizes ε of the sharpness.
      subspace_dim: dimension p of the random subspace (100).
      sharpness_iterations: L-BFGS-B iterations (10).
      sharpness_examples: training examples in f of the sharpness (None: all).
      alphas: (first, last, points) of the parametric plot (−1, 2, 25).
      eval_batch: batch size for evaluation passes.
    """

    network: str = "F1-small"
    paper_network: str = None
    sb_batch: int = 256
    lb_fraction: float = 0.1
    lb_batch: int = None
    learning_rate: float = 1e-3
    patience: int = 10
    min_delta: float = 1e-4
    epsilons: tuple = (1e-3, 5e-4)
    subspace_dim: int = 100
    sharpness_iterations: int = 10
    sharpness_examples: int = None
    alphas: tuple = (-1.0, 2.0, 25)
    eval_batch: int = 1024

    def __post_init__(self):
        super().__post_init__()
        if self.network not in networks.NAMES:
            raise ValueError(f"network must be one of {networks.NAMES}, got {self.network!r}.")
        if self.compared_network not in PAPER:
            raise ValueError(f"paper_network must be one of {sorted(PAPER)}, got {self.compared_network!r}.")
        common._check_int("sb_batch", self.sb_batch)
        common._check_int("lb_batch", self.lb_batch, optional=True)
        if not 0 < self.lb_fraction <= 1:
            raise ValueError(f"lb_fraction must be in (0, 1], got {self.lb_fraction}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
        common._check_int("patience", self.patience)
        if not self.epsilons or any(not e > 0 for e in self.epsilons):
            raise ValueError(f"epsilons must be a non-empty tuple of numbers > 0, got {self.epsilons!r}.")
        object.__setattr__(self, "epsilons", tuple(float(e) for e in self.epsilons))
        common._check_int("subspace_dim", self.subspace_dim)
        common._check_int("sharpness_iterations", self.sharpness_iterations)
        common._check_int("sharpness_examples", self.sharpness_examples, optional=True)
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


PRESETS = {"quick": quick, "paper": paper}


# Offline data of the quick preset's networks: the MLP on MNIST-1D, the conv net on 8×8 digit images.
QUICK_DATA = {**{n: ("mnist1d", {}) for n in ("F1", "F2", "F1-small")},
              **{n: ("digits", {}) for n in ("C1", "C2", "C3", "C4", "C1-small")}}


def config_from_flags(flag_values=flags.FLAGS, argv=None):
    """The preset's config with the command-line flags applied.

    Unless ``--dataset`` is given, the data set follows ``--network``: the
    paper preset uses the paper's data (:data:`networks.PAPER_DATA`), the
    quick preset the offline data of :data:`QUICK_DATA`.
    """
    config = common.config_from_flags(PRESETS, flag_values=flag_values, argv=argv)
    if flag_values["dataset"].present:
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
def batch_sizes(config, train_size, strategy=None):
    """(SB, LB) for a training set of ``train_size`` examples (LB = lb_batch or round(lb_fraction·N))."""
    lb = config.lb_batch or max(1, int(round(config.lb_fraction * train_size)))
    replicas = (strategy or common.make_strategy(config)).num_replicas_in_sync
    lb -= lb % replicas  # a global batch must split evenly over the replicas
    for name, b in (("sb_batch", config.sb_batch), ("lb_batch", lb)):
        bstf.distribute.check_global_batch(b, strategy)
        if b > train_size:
            raise ValueError(f"{name} {b} is larger than the training set ({train_size} examples).")
    return config.sb_batch, lb


def _build(config, data, strategy, weights=None):
    with strategy.scope():
        model = networks.build(config.network, data.input_shape, data.num_classes)
        if weights is not None:
            model.set_weights(weights)
        common.compile_classifier(model, keras.optimizers.Adam(config.learning_rate))
    return model


def _measure(config, model, train, test, seed):
    """Accuracy (%), losses and sharpness of a trained model."""
    tr, te = common.evaluate(model, train, config.eval_batch), common.evaluate(model, test, config.eval_batch)
    out = {"train_accuracy": 100 * tr["accuracy"], "test_accuracy": 100 * te["accuracy"],
           "train_loss": tr["loss"], "test_loss": te["loss"], "sharpness": {}, "sharpness_subspace": {}}
    for eps in config.epsilons:
        for key, dim in (("sharpness", None), ("sharpness_subspace", config.subspace_dim)):
            res = bstf.analysis.sharpness(model, train, epsilon=eps, subspace_dim=dim,
                                          max_iter=config.sharpness_iterations, seed=seed,
                                          num_examples=config.sharpness_examples, batch_size=config.eval_batch)
            out[key][str(eps)] = float(res.sharpness)
    return out


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


def run_seed(config, seed, train, test, sb, lb, strategy, workdir):
    """Trains SB and LB from the same initial weights; returns the per-seed results."""
    common.set_seed(seed)
    init = _build(config, train, strategy).get_weights()
    result = {"seed": seed}
    trained = {}
    for regime, batch in zip(REGIMES, (sb, lb)):
        common.set_seed(seed)
        model = _build(config, train, strategy, init)
        logdir = os.path.join(workdir, "tensorboard", f"seed{seed}", regime)
        stop = keras.callbacks.EarlyStopping(monitor="loss", patience=config.patience, min_delta=config.min_delta)
        stats = {}
        with common.timer(stats, "train_seconds"):
            history = common.history_dict(common.train(
                model, train, config.epochs, learning_rate=config.learning_rate, batch_size=batch,
                strategy=strategy, callbacks=[stop], logdir=logdir, seed=seed, verbose=0))
        with common.timer(stats, "measure_seconds"):
            measured = _measure(config, model, train, test, seed)
        result[regime] = {"batch_size": batch, "epochs": len(history.get("loss", [])), **measured, **stats}
        trained[regime] = model
        common.log("seed %d %s (batch %d): %d epochs, train %.2f%% test %.2f%%, sharpness %s", seed,
                   regime.upper(), batch, result[regime]["epochs"], measured["train_accuracy"],
                   measured["test_accuracy"], measured["sharpness"])
        with common.Board(logdir) as board:
            board.hparams(
                {"network": config.network, "dataset": config.dataset, "regime": regime, "batch_size": batch,
                 "learning_rate": config.learning_rate, "seed": seed},
                {"final/train_accuracy": measured["train_accuracy"], "final/test_accuracy": measured["test_accuracy"],
                 **{f"final/sharpness_{k}": v for k, v in measured["sharpness"].items()},
                 **{f"final/sharpness_subspace_{k}": v for k, v in measured["sharpness_subspace"].items()}},
                trial_id=f"seed{seed}/{regime}")
    result["interpolation"] = _interpolation(config, trained["lb"], trained["sb"].get_weights(),
                                             trained["lb"].get_weights(), train, test)
    return result


def run(config, workdir):
    """Runs the experiment of ``config``; writes results.json/results.md/PNGs/TensorBoard in ``workdir``."""
    strategy = common.make_strategy(config)
    train, test = common.load_data(config)
    sb, lb = batch_sizes(config, train.size, strategy)
    common.log("Keskar: %s on %s (%d train, %d test), SB=%d LB=%d, seeds %s", config.network, config.dataset,
               train.size, test.size, sb, lb, config.seeds)
    runs = [run_seed(config, seed, train, test, sb, lb, strategy, workdir) for seed in config.seeds]
    means, stds = common.aggregate([{r: run[r] for r in REGIMES} for run in runs])
    summary = {config.network: {r: {**means[r], "std": {k: stds[r][k] for k in
                                                         ("train_accuracy", "test_accuracy", "sharpness",
                                                          "sharpness_subspace")}}
                                for r in REGIMES}}
    pngs = _plots(config, runs, workdir)
    markdown = _markdown(config, runs, train, test, sb, lb)
    with common.Board(os.path.join(workdir, "tensorboard", "summary")) as board:
        board.images(pngs)
        board.text("results", markdown)
    return common.write_results(workdir, summary=summary, runs=runs, config=config, markdown=markdown,
                                paper={config.compared_network: PAPER[config.compared_network]},
                                machine=common.machine_description())


# ----------------------------------------------------------------------------- report
def _plots(config, runs, workdir):
    interp = [r["interpolation"] for r in runs]
    alpha = interp[0]["alpha"]
    mean = {k: np.mean([i[k] for i in interp], axis=0) for k in interp[0] if k != "alpha"}
    path_i = common.plot_curves(
        os.path.join(workdir, "interpolation.png"),
        {"train loss": (alpha, mean["train_loss"], {"color": "tab:blue"}),
         "test loss": (alpha, mean["test_loss"], {"color": "tab:blue", "ls": "--"})},
        right={"train accuracy": (alpha, 100 * np.asarray(mean["train_accuracy"]), {"color": "tab:red"}),
               "test accuracy": (alpha, 100 * np.asarray(mean["test_accuracy"]), {"color": "tab:red", "ls": "--"})},
        xlabel="α  (0 = SB minimiser, 1 = LB minimiser)", ylabel="cross-entropy", right_ylabel="accuracy (%)",
        logy=True, vlines=(0.0, 1.0),
        title=f"{config.network}: f(α·x_LB + (1−α)·x_SB), mean of {len(runs)} seeds")
    groups = {}
    for key, label in (("sharpness", "full"), ("sharpness_subspace", f"{config.subspace_dim}-d")):
        for eps in config.epsilons:
            groups[f"{label}, ε={eps:g}"] = {
                r.upper(): common.mean_std([run[r][key][str(eps)] for run in runs]) for r in REGIMES}
    path_s = common.plot_bars(os.path.join(workdir, "sharpness.png"), groups, ylabel="sharpness φ", logy=True,
                              title=f"{config.network}: sharpness of SB and LB minimisers ({len(runs)} seeds)")
    return [path_i, path_s]


_SUBSPACE_NOTE = (
    "`bstf.analysis.sharpness` draws the subspace matrix A with N(0, 1/n) entries (unit-norm columns); the paper "
    "does not give A's scale, and with unit columns the box C_ε moves the n weights far less than in the full "
    "space, so subspace values are not comparable with Table 4 (see docs/reproductions/keskar.md).")
_NAN_NOTE = "Non-finite losses (nan) mean the network's outputs overflowed at those points."


def _pm_paper(v):
    return None if v is None else common.pm(*v)


def _pm_sig(values, figures=3):
    """mean ± std of per-seed values with about ``figures`` significant digits (sharpness spans decades)."""
    mean, std = common.mean_std(values)
    digits = 2 if abs(mean) >= 10 ** (figures - 1) or mean == 0 else max(
        2, figures - 1 - int(np.floor(np.log10(abs(mean)))))
    return common.pm(mean, std if len(values) > 1 else None, digits=min(digits, 8))


def _markdown(config, runs, train, test, sb, lb):
    paper = PAPER[config.compared_network]
    n = len(runs)

    def vals(r, key, eps=None):
        return [run[r][key] if eps is None else run[r][key][str(eps)] for run in runs]

    rows = []
    for key, label in (("train_accuracy", "train accuracy (%)"), ("test_accuracy", "test accuracy (%)")):
        for r in REGIMES:
            rows.append((f"{r.upper()} {label}", vals(r, key), _pm_paper(paper[r][key])))
    for key, label in (("sharpness", "sharpness φ, full space"),
                       ("sharpness_subspace", f"sharpness φ, {config.subspace_dim}-d subspace")):
        for eps in config.epsilons:
            for r in REGIMES:
                p = paper[r][key].get(str(eps))
                rows.append((f"{r.upper()} {label}, ε={eps:g}", _pm_sig(vals(r, key, eps)), _pm_paper(p)))
    table = common.comparison_table(rows, ours=f"ours ({config.network}, {n} seed{'s' if n > 1 else ''})",
                                    paper=f"Keskar et al. ({config.compared_network})")

    eps0 = str(config.epsilons[0])
    seed_rows, disagree = [], []
    for run in runs:
        s_sb, s_lb = run["sb"]["sharpness"][eps0], run["lb"]["sharpness"][eps0]
        ratio = s_lb / s_sb if s_sb > 0 else float("inf")
        sharper = s_lb >= SHARPER_FACTOR * s_sb
        worse = run["lb"]["test_accuracy"] <= run["sb"]["test_accuracy"]
        if not (sharper and worse):
            disagree.append(run["seed"])
        seed_rows.append([run["seed"], run["sb"]["epochs"], run["lb"]["epochs"], run["sb"]["test_accuracy"],
                          run["lb"]["test_accuracy"], f"{s_sb:.3g}", f"{s_lb:.3g}", f"{ratio:.1f}×",
                          "yes" if sharper and worse else "**no**"])
    per_seed = common.markdown_table(
        ["seed", "SB epochs", "LB epochs", "SB test %", "LB test %", f"SB φ(ε={eps0})", f"LB φ(ε={eps0})",
         "LB/SB φ", "paper's direction"], seed_rows)

    sharp_sb = np.mean(vals("sb", "sharpness", config.epsilons[0]))
    sharp_lb = np.mean(vals("lb", "sharpness", config.epsilons[0]))
    gap = np.mean(vals("sb", "test_accuracy")) - np.mean(vals("lb", "test_accuracy"))
    ours_ratio = f"{sharp_lb / sharp_sb:.1f}×" if sharp_sb > 0 else "∞ (SB φ = 0)"
    paper_sb, paper_lb = paper["sb"]["sharpness"].get(eps0), paper["lb"]["sharpness"].get(eps0)
    paper_ratio = f"{paper_lb[0] / paper_sb[0]:.0f}×" if paper_sb and paper_lb else "not reported"
    verdict = (f"Mean over {n} seed{'s' if n > 1 else ''}: LB sharpness (ε={eps0}) is **{ours_ratio}** the SB "
               f"sharpness (paper, {config.compared_network}: {paper_ratio}); "
               f"SB − LB test accuracy = **{gap:+.2f}** points (paper: "
               f"{paper['sb']['test_accuracy'][0] - paper['lb']['test_accuracy'][0]:+.2f}).")
    if disagree:
        verdict += (f" Seed{'s' if len(disagree) > 1 else ''} {disagree} do{'' if len(disagree) > 1 else 'es'} "
                    f"**not** show the paper's direction (LB φ ≥ {SHARPER_FACTOR:g}× SB φ *and* LB test accuracy "
                    "not above SB) — see the per-seed table.")
    else:
        verdict += (f" Every seed shows the paper's direction (LB φ ≥ {SHARPER_FACTOR:g}× SB φ and LB test accuracy "
                    "not above SB).")
    sub_sb = np.mean(vals("sb", "sharpness_subspace", config.epsilons[0]))
    sub_lb = np.mean(vals("lb", "sharpness_subspace", config.epsilons[0]))
    paper_sub_sb = paper["sb"]["sharpness_subspace"].get(eps0)
    paper_sub_lb = paper["lb"]["sharpness_subspace"].get(eps0)
    verdict += (f"\n\nIn the random {config.subspace_dim}-d subspace LB φ is "
                + (f"**{sub_lb / sub_sb:.3g}×**" if sub_sb > 0 else "—") + " SB φ (paper: "
                + (f"{paper_sub_lb[0] / paper_sub_sb[0]:.0f}×" if paper_sub_sb and paper_sub_lb else "not reported")
                + "). " + _SUBSPACE_NOTE)

    interp = runs[0]["interpolation"]
    lines = [
        f"# Keskar et al. (2017) — {config.network} on {config.dataset}",
        "",
        f"- command: `{config.command or 'python reproductions/keskar.py --preset=' + config.preset}`",
        f"- preset: {config.preset}; machine: {common.machine_description()}",
        f"- data: {train.size} train / {test.size} test examples; SB = {sb}, LB = {lb} "
        f"({100 * lb / train.size:.0f} % of the training set); ADAM lr {config.learning_rate:g}; early stopping "
        f"on the training loss (patience {config.patience}, min_delta {config.min_delta:g}, at most "
        f"{config.epochs} epochs); SB and LB start from the same initial weights",
        f"- sharpness: {config.sharpness_iterations} L-BFGS-B iterations on "
        f"{config.sharpness_examples or train.size} training examples (inference mode); subspace p = "
        f"{config.subspace_dim}; seeds {list(config.seeds)}",
        "",
        verdict,
        "",
        "## Our numbers beside the paper's (Tables 2, 3 and 4)",
        "",
        "Mean ± sample std over seeds. The paper's column is its network "
        f"{config.compared_network} on its data set"
        + (" — a different (bigger) problem than this preset's, so compare directions and ratios, not values."
           if config.network != config.compared_network or config.preset != "paper" else "."),
        "",
        table,
        "## Per seed",
        "",
        per_seed,
        "## Parametric plot (seed %d)" % runs[0]["seed"],
        "",
        "α = 0 is the SB minimiser, α = 1 the LB minimiser (`interpolation.png` shows the mean over seeds). "
        "Trainable weights follow the line; BatchNormalization moving statistics are interpolated on [0, 1] and "
        "held at the nearer minimiser's values outside it.",
        "",
        *([_NAN_NOTE, ""] if not np.all(np.isfinite(interp["train_loss"] + interp["test_loss"])) else []),
        common.markdown_table(
            ["α", "train loss", "test loss", "train acc %", "test acc %"],
            [[f"{a:.2f}", interp["train_loss"][i], interp["test_loss"][i], 100 * interp["train_accuracy"][i],
              100 * interp["test_accuracy"][i]]
             for i, a in enumerate(interp["alpha"]) if i % 3 == 0 or abs(a) < 1e-9 or abs(a - 1) < 1e-9],
            digits=3),
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main(argv):
    common.check_no_args(argv)
    run(config_from_flags(), common.workdir_from_flags("keskar"))


if __name__ == "__main__":
    app.run(main)
