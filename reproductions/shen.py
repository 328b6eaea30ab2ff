r"""Kevin Shen, "Effect of batch size on training dynamics": what a bigger batch changes, measured.

One model and data set, batch sizes from 32 up (``--batch_sizes``), plain SGD:

1. **Fixed epoch budget** — test accuracy after every epoch for each batch
   size, with the LR fixed at ``base_lr`` (0.01) and with the LR scaled
   linearly from 0.01 at batch 32 (``bstf.schedules.scaled_learning_rate``).
2. **Control** — the largest batch (``control_batches``) trained for as many
   *updates* as the smallest batch makes in the budget (``plan.total_updates``
   counts them as ``bstf.fit`` does): if it still falls short, the small
   batch's advantage is not just "more updates".
3. **Distance from the initial weights** — ‖w − w₀‖ in total and per layer
   (``bstf.analysis.distance_from_init``), with fixed and scaled LR.
4. **Best LR per batch size** — a small LR sweep (``lr_grid``) scored on a
   held-out part of the training set (first seed only).
5. **Gradients** — raw gradient values of batches of the smallest and the
   largest size at the same (initial) weights, pooled over many trials into
   shared bins, and the distribution of gradient norms
   (``bstf.analysis.gradient_histogram``).
6. **Accumulation vs the true batch** — the same effective batch trained
   with the true batch and with micro-batches accumulated
   (``bstf.fit(..., max_physical_batch=...)``); train/test accuracy compared.

Every training run goes through the shared runner
(:func:`reproductions.runner.fit_and_evaluate`: ``bstf.fit`` with a constant
plan, ``bstf.evaluate``, the distance from the initial weights as the run's
measurement).

Outputs in ``--workdir``: ``results.json`` (``summary`` keyed by batch size:
``fixed_lr``, ``scaled_lr`` and, for the control batches, ``control`` — each a
:func:`reproductions.runner.summarise` entry plus ``distance_from_init`` —
and ``best_lr``, the gradient spread; ``runs`` the per-seed run records;
``accumulation``, ``lr_sweep`` and ``gradients`` the other studies),
``results.md``, PNGs and TensorBoard logs of every run under
``tensorboard/seed<N>/<study>_b<batch>``.

Run::

    python reproductions/shen.py --workdir=/tmp/shen                       # quick preset, CPU
    python reproductions/shen.py --preset=paper --data_dir=$HOME/tensorflow_datasets --workdir=/tmp/shen_mnist
    python reproductions/shen.py --preset=paper --smoke --workdir=/tmp/shen_smoke   # the paper's MLP, CPU

See docs/reproductions/shen.md.
"""

import dataclasses
import math
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

import bstf  # noqa: E402
import bstf.analysis  # noqa: E402
from bstf.schedules import scaled_learning_rate  # noqa: E402
from reproductions import common, networks, report, runner  # noqa: E402

common.define_flag("list", "batch_sizes", None,
                  "Batch sizes to compare, e.g. 32,64,128,256,512,1024 (default: the preset's).")
common.define_flag("float", "base_lr", None, "LR at --base_batch (default: the preset's, 0.01).")
common.define_flag("integer", "base_batch", None, "Batch size of --base_lr (default 32).")

# Shen's observations (blog post), as the table's reference column.
SHEN = {
    "best_lr_smallest": 0.01,
    "best_lr_larger": 0.08,
    "claims": {
        "accuracy": "at equal epochs, larger batches reach lower test accuracy (fixed LR)",
        "control": "trained for the same number of updates, the large batch still does not catch up",
        "distance": "larger batches end closer to the initial weights at equal epochs (fixed LR)",
        "distance_scaled": "with the LR scaled linearly, larger batches move further from the initial weights",
        "gradients": "small-batch gradients are more spread out (noisier) than large-batch gradients",
        "accumulation": "gradient accumulation matches the true batch of the same effective size",
    },
}


# Differences below these count as "≈" in the report (not a confirmation, not a contradiction).
ACCURACY_TOLERANCE = 1.0   # points of test accuracy
DISTANCE_TOLERANCE = 0.01  # relative (distances, gradient spreads)


@dataclasses.dataclass(frozen=True)
class ShenConfig(common.Config):
    """Configuration of the Shen study (fields beyond :class:`common.Config`).

    Attributes:
      batch_sizes: the batch sizes compared (increasing).
      base_lr, base_batch: LR 0.01 at batch 32; the scaled runs use
        ``scaled_learning_rate(base_lr, base_batch, batch, "linear")``.
      base_momentum: SGD momentum (0: plain SGD; the plan's ``base_momentum``).
      network: ``"mlp"`` (``depth`` × [Dense ``width``, ReLU], no BN, so that
        accumulation is exact) or a :data:`reproductions.networks.NAMES` entry.
      control_batches: batch sizes given a run with as many updates as the
        smallest batch (default: the largest).
      lr_grid: the LRs of the sweep; ``sweep_epochs`` its epochs (default
        ``epochs``); ``validation_fraction`` of the training set scores it.
      histogram_batches: batch sizes of the gradient histograms (default:
        smallest and largest); ``histogram_trials`` random batches each,
        ``histogram_bins`` shared bins.
      accumulation_batch, accumulation_micro_batch: effective batch and
        physical micro-batch of the accumulation comparison (default: the
        largest and the smallest batch size); its LR is the scaled LR.
    """

    batch_sizes: tuple = (32, 64, 128, 256, 512, 1024)
    base_lr: float = 0.01
    base_batch: int = 32
    base_momentum: float = 0.0
    network: str = "mlp"
    width: int = 128
    depth: int = 2
    control_batches: tuple = None
    lr_grid: tuple = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
    sweep_epochs: int = None
    validation_fraction: float = 0.1
    histogram_batches: tuple = None
    histogram_trials: int = 1000
    histogram_bins: int = 100
    accumulation_batch: int = None
    accumulation_micro_batch: int = None

    def __post_init__(self):
        super().__post_init__()
        sizes = tuple(self.batch_sizes)
        for b in sizes:
            common.check_int("batch_sizes", b)
        if len(sizes) < 2 or list(sizes) != sorted(set(sizes)):
            raise ValueError(f"batch_sizes must be at least 2 strictly increasing integers, got {self.batch_sizes!r}.")
        object.__setattr__(self, "batch_sizes", sizes)
        common.check_positive("base_lr", self.base_lr)
        common.check_int("base_batch", self.base_batch)
        common.check_fraction("base_momentum", self.base_momentum)
        if self.network != "mlp" and self.network not in networks.NAMES:
            raise ValueError(f"network must be 'mlp' or one of {networks.NAMES}, got {self.network!r}.")
        for name, values in (("control_batches", self.controls), ("histogram_batches", self.histogram_sizes)):
            for b in values:
                common.check_int(name, b)
        if any(b not in sizes or b == sizes[0] for b in self.controls):
            raise ValueError(f"control_batches must be batch sizes larger than the smallest, got {self.controls!r}.")
        if not self.lr_grid or any(not lr > 0 for lr in self.lr_grid):
            raise ValueError(f"lr_grid must be a non-empty tuple of LRs > 0, got {self.lr_grid!r}.")
        object.__setattr__(self, "lr_grid", tuple(float(lr) for lr in self.lr_grid))
        common.check_int("sweep_epochs", self.sweep_epochs, optional=True)
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}.")
        common.check_int("histogram_trials", self.histogram_trials)
        common.check_int("histogram_bins", self.histogram_bins)
        big, micro = self.accumulation
        common.check_int("accumulation_batch", big)
        common.check_int("accumulation_micro_batch", micro)
        if big % micro or big == micro:
            raise ValueError(f"accumulation_batch ({big}) must be a multiple > 1 of accumulation_micro_batch ({micro}).")

    # Defaults that follow batch_sizes (fields stay None so dataclasses.replace keeps them following).
    @property
    def controls(self):
        """Batch sizes given an equal-updates control run (default: the largest)."""
        return tuple(self.control_batches) if self.control_batches is not None else (self.batch_sizes[-1],)

    @property
    def histogram_sizes(self):
        """Batch sizes of the gradient histograms, increasing (default: smallest and largest)."""
        hist = self.histogram_batches if self.histogram_batches is not None else (self.batch_sizes[0],
                                                                                  self.batch_sizes[-1])
        return tuple(sorted(hist))

    @property
    def accumulation(self):
        """(effective batch, micro-batch) of the accumulation comparison."""
        return (self.accumulation_batch or self.batch_sizes[-1], self.accumulation_micro_batch or self.batch_sizes[0])


# ----------------------------------------------------------------------------- presets
def quick():
    """Quick preset: MLP on MNIST-1D (8000 train), batch 32…1024, 15 epochs, 1 seed; minutes on 2 CPUs.

    ``python reproductions/shen.py --workdir=/tmp/shen``

    The LR sweep reaches 2.56: on MNIST-1D the best 5-epoch LR of this MLP
    is above 0.32 at every batch size, so a grid ending there only finds its edge.
    """
    return ShenConfig(preset="quick", dataset="mnist1d", dataset_kwargs={"num_samples": 10000}, seeds=(0,),
                      epochs=15, histogram_trials=300, lr_grid=(0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56),
                      sweep_epochs=5)


def paper():
    """Paper preset: MNIST (TFDS), MLP 2 × 512, batch 32…1024, 30 epochs, 3 seeds, 1000 histogram trials.

    ``python reproductions/shen.py --preset=paper --data_dir=DIR --workdir=/tmp/shen_mnist``
    """
    return ShenConfig(preset="paper", dataset="tfds:mnist", width=512, depth=2, seeds=(0, 1, 2), epochs=30,
                      histogram_trials=1000, sweep_epochs=10,
                      lr_grid=(0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64))  # Shen's 0.01 and 0.08 inside


def tiny():
    """Tiny preset: seconds, for tests (batches 16 and 64 on 512 digit images, 2 epochs, every study).

    ``python reproductions/shen.py --preset=tiny --workdir=/tmp/shen_tiny``
    """
    return ShenConfig(preset="tiny", dataset="digits", train_examples=512, test_examples=128, seeds=(0,), epochs=2,
                      batch_sizes=(16, 64), width=16, depth=1, lr_grid=(0.05,), sweep_epochs=1, validation_fraction=0.125,
                      histogram_trials=4, histogram_bins=8)


PRESETS = {"quick": quick, "paper": paper, "tiny": tiny}
CONVERTERS = {"batch_sizes": lambda values: tuple(int(v) for v in values)}


def smoke(config):
    """The paper config as a smoke run: the MLP 2 × 512 on generated 28×28×1 images, every study, 1 epoch.

    ``python reproductions/shen.py --preset=paper --smoke --workdir=/tmp/shen_smoke``

    The paper's batch sizes 32 … 1024 (1024 accumulated from micro-batches of
    32 in the accumulation study), 2048 training examples, one epoch (the
    control runs 32 epochs at batch 1024), two LRs in the sweep, 8 gradient
    trials, one seed.
    """
    return dataclasses.replace(config, dataset=common.GENERATED, test_split="test", dataset_kwargs=dict(
        input_shape=(28, 28, 1), num_classes=10, train_size=2048, test_size=256), epochs=1, seeds=(0,),
        lr_grid=(0.01, 0.08), sweep_epochs=1, histogram_trials=8, smoke=True)


def config_from_flags(flag_values=flags.FLAGS, argv=None):
    """The preset's config with the command-line flags applied (``--batch_sizes`` as integers)."""
    return common.config_from_flags(PRESETS, CONVERTERS, smoke=smoke, flag_values=flag_values, argv=argv)


# ----------------------------------------------------------------------------- building blocks
def build_model(config, data):
    """The config's network compiled with plain SGD (its LR comes from the plan)."""
    if config.network == "mlp":
        model = networks.mlp(data.input_shape, data.num_classes, config.width, config.depth, name="mlp",
                             batch_norm=False)
    else:
        model = networks.build(config.network, data.input_shape, data.num_classes)
    optimizer = keras.optimizers.SGD(config.base_lr, momentum=config.base_momentum)
    return runner.compile_classifier(model, optimizer, config.jit_compile)


def _distance(start):
    """``measure(model)``: ‖w − w₀‖ in total and per layer from the weights ``start``."""
    def measure(model):
        distance = bstf.analysis.distance_from_init(start, model)
        return {"distance_from_init": distance.total,
                "distance_from_init_per_layer": {_layer_name(k): v for k, v in distance.per_layer.items()}}

    return measure


def _layer_name(path):
    """'mlp/dense_1' -> 'dense_1' (the model name is dropped)."""
    return path.split("/", 1)[1] if "/" in path else path


def _plan(config, train_size, batch, lr):
    return bstf.NoiseScalePlan(train_size, lr, batch, base_momentum=config.base_momentum)


def control_epochs(train_size, small_batch, batch, epochs):
    """Smallest number of epochs at ``batch`` with at least the updates of ``epochs`` epochs at ``small_batch``."""
    target = bstf.NoiseScalePlan(train_size, 1.0, small_batch, base_momentum=0.0).total_updates(epochs)
    plan = bstf.NoiseScalePlan(train_size, 1.0, batch, base_momentum=0.0)
    e = max(1, math.floor(target * batch / train_size))
    while plan.total_updates(e) < target:
        e += 1
    return e


class _Trainer:
    """Trains the runs of one seed from the same initial weights (``trainer(study, batch, lr, epochs)``)."""

    def __init__(self, setup, seed, workdir):
        self.setup, self.seed, self.workdir = setup, seed, workdir
        self.build = lambda: build_model(setup.config, setup.train)
        self.init = runner.initial_weights(setup, self.build, seed)
        with setup.strategy.scope():
            start = self.build()
            start.set_weights(self.init)
        self.measure = _distance(bstf.analysis.trainable_weights(start))

    def __call__(self, study, batch, lr, epochs, max_physical_batch=None, name=None):
        plan = _plan(self.setup.config, self.setup.train.size, batch, lr)
        run = runner.Run(f"seed{self.seed}/{name or f'{study}_b{batch}'}", plan, epochs, self.seed,
                         {"study": study}, max_physical_batch=max_physical_batch)
        return runner.fit_and_evaluate(self.setup, run, self.build, self.workdir, init=self.init,
                                       measure=self.measure)[0]


# ----------------------------------------------------------------------------- the study
def run_seed(setup, seed, workdir):
    """Studies 1–3 and 6 for one seed (every run starts from the same initial weights)."""
    config = setup.config
    train_run = _Trainer(setup, seed, workdir)
    out = {"seed": seed, "fixed_lr": {}, "scaled_lr": {}, "control": {}}
    for batch in config.batch_sizes:
        fixed = out["fixed_lr"][str(batch)] = train_run("fixed_lr", batch, config.base_lr, config.epochs)
        lr = scaled_learning_rate(config.base_lr, config.base_batch, batch, "linear")
        # At the base batch the scaled LR is the fixed one: the same run.
        scaled = out["scaled_lr"][str(batch)] = (fixed if lr == config.base_lr else
                                                 train_run("scaled_lr", batch, lr, config.epochs))
        common.log("seed %d batch %d: test %.2f%% (LR %g), %.2f%% (LR %g); distance %.3f / %.3f", seed, batch,
                   fixed["test_accuracy"], config.base_lr, scaled["test_accuracy"], lr,
                   fixed["distance_from_init"], scaled["distance_from_init"])
    small = config.batch_sizes[0]
    for batch in config.controls:
        epochs = control_epochs(setup.train.size, small, batch, config.epochs)
        control = out["control"][str(batch)] = train_run("control", batch, config.base_lr, epochs)
        common.log("seed %d control batch %d: %d epochs (%d updates): test %.2f%%", seed, batch, epochs,
                   control["updates"], control["test_accuracy"])
    # Gradient accumulation vs the true batch: same effective batch, LR (scaled), initial weights and data order.
    # The true-batch run is the scaled-LR run of that batch when there is one.
    big, micro = config.accumulation
    lr = scaled_learning_rate(config.base_lr, config.base_batch, big, "linear")
    true_run = out["scaled_lr"].get(str(big)) or train_run("accumulation_true", big, lr, config.epochs)
    accumulated = train_run("accumulation", big, lr, config.epochs, max_physical_batch=micro,
                            name=f"accumulation_b{big}_micro{micro}")
    common.log("seed %d accumulation %d × %d: test %.2f%% vs %.2f%% with the true batch %d", seed, big // micro,
               micro, accumulated["test_accuracy"], true_run["test_accuracy"], big)
    out["accumulation"] = {"batch_size": big, "micro_batch": micro, "steps": big // micro, "learning_rate": lr,
                           "true": true_run, "accumulated": accumulated}
    return out


def lr_sweep(setup, workdir):
    """Validation accuracy (%) after ``sweep_epochs`` for every (batch, LR); first seed only."""
    config = setup.config
    seed = config.seeds[0]
    fit_part, val_part = common.split(setup.train, config.validation_fraction, seed=seed)
    sweep_setup = dataclasses.replace(setup, train=fit_part, test=val_part)
    build = lambda: build_model(config, fit_part)  # noqa: E731
    init = runner.initial_weights(sweep_setup, build, seed)
    epochs = config.sweep_epochs or config.epochs
    table = {}
    for batch in config.batch_sizes:
        table[str(batch)] = {}
        for lr in config.lr_grid:
            run = runner.Run(f"lr_sweep/b{batch}_lr{lr:g}", _plan(config, fit_part.size, batch, lr), epochs, seed,
                             {"study": "lr_sweep"}, curves=False)
            record, _ = runner.fit_and_evaluate(sweep_setup, run, build, workdir, init=init)
            table[str(batch)][repr(lr)] = record["test_accuracy"]  # accuracy on the validation part
        best = max(table[str(batch)], key=lambda k: table[str(batch)][k])
        common.log("LR sweep batch %d: best LR %s (validation %.2f%%)", batch, best, table[str(batch)][best])
    best_lr = {b: float(max(accs, key=accs.get)) for b, accs in table.items()}
    return {"epochs": epochs, "validation_examples": val_part.size, "validation_accuracy": table, "best_lr": best_lr}


def gradient_study(setup):
    """Pooled raw-gradient histograms (shared bins) and gradient norms at the initial weights (first seed)."""
    config, train = setup.config, setup.train
    seed = config.seeds[0]
    common.set_seed(seed)
    with setup.strategy.scope():
        model = build_model(config, train)
    batches = config.histogram_sizes
    results = {}
    # Bins from the smallest batch (the widest distribution), shared by all batch sizes.
    first = bstf.analysis.gradient_histogram(model, train, batches[0], trials=config.histogram_trials,
                                             bins=config.histogram_bins, seed=seed)
    edges = first.edges
    for batch in batches:
        res = first if batch == batches[0] else bstf.analysis.gradient_histogram(
            model, train, batch, trials=config.histogram_trials, bins=config.histogram_bins,
            range=(float(edges[0]), float(edges[-1])), seed=seed)
        centers = 0.5 * (res.edges[1:] + res.edges[:-1])
        counts = res.counts.astype(np.float64)
        mean = float(np.sum(counts * centers) / counts.sum())
        std = float(np.sqrt(np.sum(counts * (centers - mean) ** 2) / counts.sum()))
        results[str(batch)] = {"counts": res.counts.tolist(), "edges": res.edges.tolist(), "norms": res.norms.tolist(),
                               "value_std": std, "norm_mean": float(res.norms.mean()),
                               "norm_std": float(res.norms.std()), "outside": int(res.outside),
                               "trials": res.trials, "values_per_trial": res.num_values}
    return results


def prepare(config):
    """Strategy and data of ``config``; every batch size (and the accumulation's micro-batch) checked."""
    setup = common.prepare(config, config.batch_sizes)
    big, micro = config.accumulation
    common.check_batch(big, setup.train.size, setup.strategy, micro)
    return setup


def execute(setup, workdir):
    """Runs the prepared study; writes results.json/results.md/PNGs/TensorBoard in ``workdir``."""
    config, train, test = setup.config, setup.train, setup.test
    common.log("Shen: %s on %s (%d train, %d test), batches %s, seeds %s", config.network, config.dataset,
               train.size, test.size, config.batch_sizes, config.seeds)
    runs = [run_seed(setup, seed, workdir) for seed in config.seeds]
    sweep = lr_sweep(setup, workdir)
    gradients = gradient_study(setup)
    summary = _summary(config, runs, sweep, gradients)
    accumulation = _accumulation_summary(config, runs)
    pngs = _plots(config, runs, sweep, gradients, workdir, train.size)
    markdown = _markdown(config, summary, accumulation, runs, sweep, gradients, train, test)
    runner.write_summary_board(workdir, pngs, markdown)
    return report.write_results(workdir, summary=summary, runs=runs, config=config, markdown=markdown,
                                paper=SHEN, accumulation=accumulation, lr_sweep=sweep, gradients=gradients)


def run(config, workdir):
    """:func:`prepare` then :func:`execute` (the testable whole study)."""
    return execute(prepare(config), workdir)


def _summary(config, runs, sweep, gradients):
    """{batch: {"fixed_lr", "scaled_lr"[, "control"]: :func:`runner.summarise` over seeds, "best_lr", gradients}}."""
    summary = {}
    for batch in config.batch_sizes:
        b = str(batch)
        summary[b] = {study: runner.summarise([r[study][b] for r in runs])
                      for study in ("fixed_lr", "scaled_lr", "control") if b in runs[0][study]}
        summary[b]["best_lr"] = sweep["best_lr"][b]
        if b in gradients:
            summary[b]["gradient_value_std"] = gradients[b]["value_std"]
            summary[b]["gradient_norm_mean"] = gradients[b]["norm_mean"]
    return summary


def _accumulation_summary(config, runs):
    """Mean over seeds of the accumulation comparison (true batch vs accumulated micro-batches)."""
    acc = {k: report.aggregate([r["accumulation"][k] for r in runs])[0] for k in ("true", "accumulated")}
    return {"batch_size": config.accumulation[0], "micro_batch": config.accumulation[1],
            **{f"{k}_{q}": acc[k][q] for k in acc for q in ("train_accuracy", "test_accuracy", "distance_from_init")}}


# ----------------------------------------------------------------------------- report
def _plots(config, runs, sweep, gradients, workdir, train_size):
    batches = config.batch_sizes
    paths = []
    for key, name, what in (("fixed_lr", "accuracy_fixed_lr.png", f"LR {config.base_lr:g}"),
                            ("scaled_lr", "accuracy_scaled_lr.png", "LR scaled linearly")):
        curves = {}
        for b in batches:
            curve = np.mean([r[key][str(b)]["curves"]["val_accuracy"] for r in runs], axis=0)
            lr = runs[0][key][str(b)]["learning_rate"]
            curves[f"batch {b} (LR {lr:g})"] = (np.arange(1, len(curve) + 1), curve)
        paths.append(report.plot_curves(os.path.join(workdir, name), curves, xlabel="epoch",
                                        ylabel="test accuracy (%)", title=f"Test accuracy per epoch, {what}"))
    small = batches[0]
    curves = {}
    for label, run_key, b in [(f"batch {small}", "fixed_lr", small)] + [
            (f"batch {b} (control: same updates)", "control", b) for b in config.controls]:
        curve = np.mean([r[run_key][str(b)]["curves"]["val_accuracy"] for r in runs], axis=0)
        curves[label] = (runs[0][run_key][str(b)]["curves"]["updates"], curve)
    paths.append(report.plot_curves(os.path.join(workdir, "control.png"), curves, xlabel="parameter updates",
                                    ylabel="test accuracy (%)", logx=True,
                                    title=f"Test accuracy per update, LR {config.base_lr:g}"))
    dist = {label: (batches, [np.mean([r[key][str(b)]["distance_from_init"] for r in runs]) for b in batches],
                    {"marker": "o"})
            for key, label in (("fixed_lr", f"LR {config.base_lr:g}"), ("scaled_lr", "LR scaled linearly"))}
    paths.append(report.plot_curves(os.path.join(workdir, "distance.png"), dist, xlabel="batch size",
                                    ylabel="‖w − w₀‖₂", logx=True, logy=True,
                                    title=f"Distance from the initial weights after {config.epochs} epochs"))
    layers = list(runs[0]["fixed_lr"][str(batches[0])]["distance_from_init_per_layer"])
    groups = {layer: {f"batch {b}": float(np.mean([r["fixed_lr"][str(b)]["distance_from_init_per_layer"][layer]
                                                   for r in runs])) for b in batches} for layer in layers}
    paths.append(report.plot_bars(os.path.join(workdir, "distance_per_layer.png"), groups, ylabel="‖w − w₀‖₂",
                                  title=f"Distance per layer, LR {config.base_lr:g}"))
    sweep_curves = {f"batch {b}": ([float(k) for k in accs], list(accs.values()), {"marker": "o"})
                    for b, accs in sweep["validation_accuracy"].items()}
    paths.append(report.plot_curves(os.path.join(workdir, "lr_sweep.png"), sweep_curves, xlabel="learning rate",
                                    ylabel="validation accuracy (%)", logx=True,
                                    title=f"LR sweep, {sweep['epochs']} epochs"))
    hist = {f"batch {b}": (g["counts"], g["edges"]) for b, g in gradients.items()}
    paths.append(report.plot_histograms(os.path.join(workdir, "gradient_histogram.png"), hist,
                                        xlabel="raw gradient value",
                                        title=f"Gradient values pooled over {config.histogram_trials} batches"))
    all_norms = np.concatenate([g["norms"] for g in gradients.values()])
    edges = np.histogram_bin_edges(all_norms, bins=40)
    norms = {f"batch {b}": (np.histogram(g["norms"], bins=edges)[0], edges) for b, g in gradients.items()}
    paths.append(report.plot_histograms(os.path.join(workdir, "gradient_norms.png"), norms, xlabel="‖g‖₂",
                                        logy=False, title="Gradient norm per batch"))
    return paths


def _decreasing(values, tolerance):
    """Verdict on "values fall": "yes" (overall drop > tolerance, no rise > tolerance), "≈" or "**no**"."""
    if values[0] - values[-1] <= tolerance:
        return "≈" if abs(values[0] - values[-1]) <= tolerance else "**no**"
    return "yes" if all(b - a <= tolerance for a, b in zip(values, values[1:])) else "**no** (not monotone)"


def _sign(diff, tolerance):
    """Verdict on "diff > 0": "yes", "**no**", or "≈" when |diff| <= tolerance."""
    return "yes" if diff > tolerance else "**no**" if diff < -tolerance else "≈"


def _markdown(config, summary, acc, runs, sweep, gradients, train, test):
    batches = config.batch_sizes
    n = len(runs)

    def per_seed(key, b, q):
        return [r[key][str(b)][q] for r in runs]

    rows = []
    for b in batches:
        s = summary[str(b)]
        rows.append([b, s["fixed_lr"]["updates"], report.pm(per_seed("fixed_lr", b, "test_accuracy")),
                     report.pm(per_seed("fixed_lr", b, "distance_from_init"), digits=3),
                     f"{s['scaled_lr']['learning_rate']:g}", report.pm(per_seed("scaled_lr", b, "test_accuracy")),
                     report.pm(per_seed("scaled_lr", b, "distance_from_init"), digits=3), f"{s['best_lr']:g}"])
    main_table = report.markdown_table(
        ["batch", "updates", f"test acc % (LR {config.base_lr:g})", "‖w−w₀‖ (fixed LR)", "scaled LR",
         "test acc % (scaled LR)", "‖w−w₀‖ (scaled LR)", "best LR (sweep)"], rows)

    small = batches[0]
    fixed = {b: summary[str(b)]["fixed_lr"] for b in batches}
    control_rows = [[small, f"{config.epochs:g}", fixed[small]["updates"], fixed[small]["test_accuracy"]]]
    for b in config.controls:
        c = summary[str(b)]["control"]
        control_rows.append([f"{b} (fixed budget)", f"{config.epochs:g}", fixed[b]["updates"],
                             fixed[b]["test_accuracy"]])
        control_rows.append([f"{b} (control)", f"{c['epochs']:g}", c["updates"], c["test_accuracy"]])
    control_table = report.markdown_table(["batch", "epochs", "updates", "test acc %"], control_rows)

    grad_rows = [[b, g["trials"], g["values_per_trial"], f"{g['value_std']:.3g}",
                  f"{g['norm_mean']:.3g} ± {g['norm_std']:.2g}", g["outside"]] for b, g in gradients.items()]
    grad_table = report.markdown_table(["batch", "trials", "values per trial", "std of raw values",
                                        "‖g‖ mean ± std", "values outside the shared bins"], grad_rows)

    acc_table = report.markdown_table(
        ["run", "train acc %", "test acc %", "‖w−w₀‖"],
        [[f"true batch {acc['batch_size']}", acc["true_train_accuracy"], acc["true_test_accuracy"],
          acc["true_distance_from_init"]],
         [f"{acc['batch_size'] // acc['micro_batch']} × {acc['micro_batch']} accumulated", acc["accumulated_train_accuracy"],
          acc["accumulated_test_accuracy"], acc["accumulated_distance_from_init"]]], digits=3)

    # Shen's claims, checked against our numbers: "yes" / "**no**" beyond a tolerance, "≈" within it
    # (ACCURACY_TOLERANCE points of test accuracy, DISTANCE_TOLERANCE relative distance).
    fixed_acc = [fixed[b]["test_accuracy"] for b in batches]
    fixed_d = [fixed[b]["distance_from_init"] for b in batches]
    scaled_d = [summary[str(b)]["scaled_lr"]["distance_from_init"] for b in batches]
    diverged = [b for b, d in zip(batches, scaled_d) if not np.isfinite(d)]  # scaled LR too large
    stable_d = [d for d in scaled_d if np.isfinite(d)] or [float("nan")]
    control_gap = min(fixed[small]["test_accuracy"] - summary[str(b)]["control"]["test_accuracy"]
                      for b in config.controls)
    g_small, g_big = gradients[str(config.histogram_sizes[0])], gradients[str(config.histogram_sizes[-1])]
    larger_best = [summary[str(b)]["best_lr"] for b in batches[1:]]
    acc_gap = abs(acc["true_test_accuracy"] - acc["accumulated_test_accuracy"])
    tol, rel = ACCURACY_TOLERANCE, DISTANCE_TOLERANCE

    claims = [
        ("best LR at the smallest batch", f"{SHEN['best_lr_smallest']:g} (batch 32)",
         f"{summary[str(small)]['best_lr']:g} (batch {small})", ""),
        ("best LR at larger batches", f"{SHEN['best_lr_larger']:g}",
         ", ".join(f"{lr:g}" for lr in larger_best), f"batches {list(batches[1:])}"),
        (SHEN["claims"]["accuracy"], "yes", _decreasing(fixed_acc, tol),
         " → ".join(f"{a:.1f}" for a in fixed_acc) + " %"),
        (SHEN["claims"]["control"], "yes", _sign(control_gap, tol),
         "control " + ", ".join(f"{summary[str(b)]['control']['test_accuracy']:.1f}" for b in config.controls) + " % "
         f"vs {fixed[small]['test_accuracy']:.1f} % at batch {small}"),
        (SHEN["claims"]["distance"], "yes", _decreasing([np.log(d) for d in fixed_d], np.log1p(rel)),
         " → ".join(f"{d:.2f}" for d in fixed_d)),
        (SHEN["claims"]["distance_scaled"], "yes", _sign(np.log(stable_d[-1] / stable_d[0]), np.log1p(rel)),
         " → ".join(f"{d:.2f}" for d in scaled_d)
         + (f" (diverged at batch {', '.join(map(str, diverged))}: compared up to the last finite one)"
            if diverged else "")),
        (SHEN["claims"]["gradients"], "yes", _sign(np.log(g_small["value_std"] / g_big["value_std"]), np.log1p(rel)),
         f"std {g_small['value_std']:.3g} vs {g_big['value_std']:.3g}; ‖g‖ {g_small['norm_mean']:.3g} vs "
         f"{g_big['norm_mean']:.3g}"),
        (SHEN["claims"]["accumulation"], "yes",
         "— (diverged)" if not (np.isfinite(acc["true_distance_from_init"]) and
                               np.isfinite(acc["accumulated_distance_from_init"]))
         else "yes" if acc_gap <= tol else "**no**",
         f"test {acc['true_test_accuracy']:.2f} vs {acc['accumulated_test_accuracy']:.2f} %"),
    ]
    claims_table = report.markdown_table(["Shen's observation", "Shen", "ours", "numbers"], claims)
    lines = [
        f"# Shen — effect of batch size on training dynamics — {config.network} on {config.dataset}",
        "",
        f"- command: `{config.command or 'python reproductions/shen.py --preset=' + config.preset}`",
        f"- preset: {config.preset}{' (smoke run: generated data)' if config.smoke else ''}; machine: "
        f"{report.machine_description()}",
        f"- data: {train.size} train / {test.size} test examples; model: "
        + (f"MLP {config.depth} × [Dense {config.width}, ReLU]" if config.network == "mlp" else config.network)
        + f"; SGD (momentum {config.base_momentum:g}); {config.epochs} epochs; seeds {list(config.seeds)} "
        f"(mean ± std over {n} seed{'s' if n > 1 else ''}); LR sweep and gradients on seed {config.seeds[0]}",
        "",
        "## Shen's observations, checked",
        "",
        f"\"≈\": the difference is within {ACCURACY_TOLERANCE:g} point of test accuracy or "
        f"{100 * DISTANCE_TOLERANCE:g} % of distance / gradient spread (too small to call with "
        f"{n} seed{'s' if n > 1 else ''}).",
        "",
        claims_table,
        "## Per batch size",
        "",
        f"Fixed LR = {config.base_lr:g}; scaled LR = {config.base_lr:g} × batch / {config.base_batch}. "
        f"Best LR: highest validation accuracy ({sweep['validation_examples']} held-out training examples) after "
        f"{sweep['epochs']} epochs over {list(config.lr_grid)}.",
        "",
        main_table,
        "## Control: same number of updates",
        "",
        control_table,
        "## Gradients at the initial weights",
        "",
        f"Raw gradient values of {config.histogram_trials} random batches per size, pooled into "
        f"{config.histogram_bins} bins shared by all sizes (`gradient_histogram.png`, `gradient_norms.png`).",
        "",
        grad_table,
        "## Gradient accumulation vs the true batch",
        "",
        f"Same effective batch, LR {runs[0]['accumulation']['learning_rate']:g}, same initial weights and data "
        "order; the accumulated run computes the gradient of each micro-batch and applies their mean once per "
        "effective batch (`bstf.fit(..., max_physical_batch=...)`).",
        "",
        acc_table,
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
if __name__ == "__main__":
    common.run_script("shen", config_from_flags, prepare, execute)
