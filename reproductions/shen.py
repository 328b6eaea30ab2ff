r"""Kevin Shen, "Effect of batch size on training dynamics": what a bigger batch changes, measured.

One model and data set, batch sizes from 32 up (``--batch_sizes``), plain SGD,
following the article's protocol: first find the best LR at batch 32 on the
task, then compare the batch sizes from it.

0. **LR sweep** — ``lr_grid`` at the base batch (and the largest batch), on
   ``sweep_seeds`` seeds, each scoring on its own held-out part of the
   training set; the best LR at the base batch becomes ``base_lr`` unless
   ``--base_lr`` is given.
1. **Fixed epoch budget** — test accuracy after every epoch for each batch
   size, with the LR fixed at ``base_lr`` and with the LR scaled linearly
   from ``base_lr`` at batch 32 (``bstf.schedules.scaled_learning_rate``).
2. **Control** — the largest batch (``control_batches``) trained for as many
   *updates* as the smallest batch makes in the budget (``plan.total_updates``
   counts them as ``bstf.fit`` does): if it still falls short, the small
   batch's advantage is not just "more updates".
3. **Distance from the initial weights** — ‖w − w₀‖ in total and per layer
   (``bstf.analysis.distance_from_init``), with fixed and scaled LR.
4. **Gradients** — raw gradient values of batches of the smallest and the
   largest size at the same (initial) weights, pooled over many trials into
   bins shared by the batch sizes, for all weights and for each layer, and
   the distribution of gradient norms (``bstf.analysis.gradient_histogram``).
5. **Accumulation vs the true batch** — the same effective batch at the
   base LR trained with the true batch and with micro-batches accumulated
   (``bstf.fit(..., max_physical_batch=...)``); train/test accuracy compared.

Every observation gets a verdict against the spread over seeds
(:func:`reproductions.report.direction_verdict`).

Every training run goes through the shared runner
(:func:`reproductions.runner.fit_and_evaluate`: ``bstf.fit`` with a constant
plan, ``bstf.evaluate``, the distance from the initial weights as the run's
measurement).

Outputs in ``--workdir``: ``results.json`` (``summary`` keyed by batch size:
``fixed_lr``, ``scaled_lr`` and, for the control batches, ``control`` — each a
:func:`reproductions.runner.summarise` entry plus ``distance_from_init`` —
and ``best_lr``, the gradient spread; ``runs`` the per-seed run records;
``accumulation``, ``lr_sweep``, ``gradients`` (``model`` and ``layers``) the other studies; ``base_lr``
its value and source; ``verdicts``),
``results.md``, PNGs and TensorBoard logs of every run under
``tensorboard/seed<N>/<study>_b<batch>``.

Run::

    python reproductions/shen.py --workdir=/tmp/shen                       # quick preset, CPU
    python reproductions/shen.py --preset=paper --data_dir=$HOME/tensorflow_datasets --workdir=/tmp/shen_mnist
    python reproductions/shen.py --preset=paper --smoke --workdir=/tmp/shen_smoke   # the paper's MLP, CPU

See docs/reproductions/shen.md.
"""

import contextlib
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
common.define_flag("float", "base_lr", None, "LR at --base_batch (default: the best LR of the sweep there).")
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


@dataclasses.dataclass(frozen=True)
class ShenConfig(common.Config):
    """Configuration of the Shen study (fields beyond :class:`common.Config`).

    Attributes:
      batch_sizes: the batch sizes compared (increasing).
      base_lr, base_batch: the LR at batch 32 — ``None`` (the article's protocol): the best LR of the
        sweep at ``base_batch``; the fixed-LR runs use it at every batch, the scaled runs
        ``scaled_learning_rate(base_lr, base_batch, batch, "linear")``.
      base_momentum: SGD momentum (0: plain SGD; the plan's ``base_momentum``).
      network: ``"mlp"`` (``depth`` × [Dense ``width``, ReLU], no BN, so that
        accumulation is exact) or a :data:`reproductions.networks.NAMES` entry.
      control_batches: batch sizes given a run with as many updates as the
        smallest batch (default: the largest).
      lr_grid: the LRs of the sweep; ``sweep_epochs`` its epochs (default
        ``epochs``); ``validation_fraction`` of the training set scores it;
        ``sweep_batches`` the batch sizes swept (default: the smallest and the
        largest, plus ``base_batch`` when the sweep sets ``base_lr``);
        ``sweep_seeds`` how many of ``seeds`` (default: all). The best LR of a
        batch size has the highest mean over the sweep seeds of the validation
        accuracy averaged over the last ``sweep_average_epochs`` epochs.
      histogram_batches: batch sizes of the gradient histograms (default:
        smallest and largest); ``histogram_trials`` random batches each,
        ``histogram_bins`` bins shared by the batch sizes (per layer and for
        the whole model).
      accumulation_batch, accumulation_micro_batch: effective batch and
        physical micro-batch of the accumulation comparison (default: the
        largest and the smallest batch size); its LR is the fixed base LR.
      tolerance: points of test accuracy within which the accumulated run
        counts as matching the true batch.
    """

    batch_sizes: tuple = (32, 64, 128, 256, 512, 1024)
    base_lr: float = None
    base_batch: int = 32
    base_momentum: float = 0.0
    network: str = "mlp"
    width: int = 128
    depth: int = 2
    control_batches: tuple = None
    lr_grid: tuple = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
    sweep_epochs: int = None
    validation_fraction: float = 0.1
    sweep_batches: tuple = None
    sweep_seeds: int = None
    sweep_average_epochs: int = 3
    histogram_batches: tuple = None
    histogram_trials: int = 1000
    histogram_bins: int = 100
    accumulation_batch: int = None
    accumulation_micro_batch: int = None
    tolerance: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        sizes = tuple(self.batch_sizes)
        for b in sizes:
            common.check_int("batch_sizes", b)
        if len(sizes) < 2 or list(sizes) != sorted(set(sizes)):
            raise ValueError(f"batch_sizes must be at least 2 strictly increasing integers, got {self.batch_sizes!r}.")
        object.__setattr__(self, "batch_sizes", sizes)
        if self.base_lr is not None:
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
        for b in self.sweep_sizes:
            common.check_int("sweep_batches", b)
        common.check_int("sweep_seeds", self.sweep_seeds, optional=True)
        if self.sweep_seeds is not None and self.sweep_seeds > len(self.seeds):
            raise ValueError(f"sweep_seeds must be at most the number of seeds ({len(self.seeds)}), "
                             f"got {self.sweep_seeds}.")
        common.check_int("sweep_average_epochs", self.sweep_average_epochs)
        common.check_positive("tolerance", self.tolerance)
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
    def sweep_sizes(self):
        """Batch sizes of the LR sweep, increasing (``base_batch`` among them when the sweep sets ``base_lr``)."""
        sizes = set(self.sweep_batches if self.sweep_batches is not None else (self.batch_sizes[0],
                                                                             self.batch_sizes[-1]))
        if self.base_lr is None:
            sizes.add(self.base_batch)
        return tuple(sorted(sizes))

    @property
    def accumulation(self):
        """(effective batch, micro-batch) of the accumulation comparison."""
        return (self.accumulation_batch or self.batch_sizes[-1], self.accumulation_micro_batch or self.batch_sizes[0])


# ----------------------------------------------------------------------------- presets
def quick():
    """Quick preset: MLP on MNIST-1D (8000 train), batch 32…1024, 15 epochs, 3 seeds; minutes on 2 CPUs.

    ``python reproductions/shen.py --workdir=/tmp/shen``

    The article's protocol: the base LR is the best LR of a sweep at batch 32
    (3 seeds, the full 15-epoch budget, 10 % of the training set held out;
    docs/results/pilots.md found 0.32 — the seed article's 0.01 is 32× below
    the best LR on this task and starves every fixed-LR run), then the
    fixed-LR and linearly scaled runs start from it. The grid stops at 1.28:
    batch 32 diverges at 2.56. 1000 gradient trials per batch size, as the
    article.
    """
    return ShenConfig(preset="quick", dataset="mnist1d", dataset_kwargs={"num_samples": 10000}, seeds=(0, 1, 2),
                      epochs=15, histogram_trials=1000, lr_grid=(0.04, 0.08, 0.16, 0.32, 0.64, 1.28))


def paper():
    """Paper preset: MNIST (TFDS), MLP 2 × 512, batch 32…1024, 30 epochs, 3 seeds, 1000 histogram trials.

    ``python reproductions/shen.py --preset=paper --data_dir=DIR --workdir=/tmp/shen_mnist``

    The base LR comes from the sweep at batch 32 (Shen found 0.01; the grid holds it).
    """
    return ShenConfig(preset="paper", dataset="tfds:mnist", width=512, depth=2, seeds=(0, 1, 2), epochs=30,
                      histogram_trials=1000, sweep_epochs=10,
                      lr_grid=(0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64))  # Shen's 0.01 and 0.08 inside


def tiny():
    """Tiny preset: seconds, for tests (batches 16 and 64 on 512 digit images, 2 epochs, every study).

    ``python reproductions/shen.py --preset=tiny --workdir=/tmp/shen_tiny``
    """
    return ShenConfig(preset="tiny", dataset="digits", train_examples=512, test_examples=128, seeds=(0,), epochs=2,
                      batch_sizes=(16, 64), base_batch=16, width=16, depth=1, lr_grid=(0.05, 0.1), sweep_epochs=1,
                      validation_fraction=0.125, histogram_trials=4, histogram_bins=8)


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
    optimizer = keras.optimizers.SGD(momentum=config.base_momentum)  # the LR comes from the plan
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
    # Gradient accumulation vs the true batch: same effective batch, LR (the fixed base LR, stable at every batch),
    # initial weights and data order. The true-batch run is the fixed-LR run of that batch when there is one.
    big, micro = config.accumulation
    lr = config.base_lr
    true_run = out["fixed_lr"].get(str(big)) or train_run("accumulation_true", big, lr, config.epochs)
    accumulated = train_run("accumulation", big, lr, config.epochs, max_physical_batch=micro,
                            name=f"accumulation_b{big}_micro{micro}")
    common.log("seed %d accumulation %d × %d: test %.2f%% vs %.2f%% with the true batch %d", seed, big // micro,
               micro, accumulated["test_accuracy"], true_run["test_accuracy"], big)
    out["accumulation"] = {"batch_size": big, "micro_batch": micro, "steps": big // micro, "learning_rate": lr,
                           "true": true_run, "accumulated": accumulated}
    return out


def lr_sweep(setup, workdir):
    """Validation accuracy (%) of every (batch, LR) of the sweep on ``sweep_seeds`` seeds, and the best LRs.

    Each seed holds out its own ``validation_fraction`` of the training set and starts every run from its own
    initial weights. The score of a run is its validation accuracy averaged over the last
    ``sweep_average_epochs`` epochs; the best LR of a batch size has the highest mean score over the seeds
    (``best_lr``); ``best_lr_per_seed`` is each seed's own argmax.
    """
    config = setup.config
    seeds = config.seeds[:config.sweep_seeds or len(config.seeds)]
    epochs = config.sweep_epochs or config.epochs
    last = min(config.sweep_average_epochs, epochs)
    scores = {str(b): {repr(lr): [] for lr in config.lr_grid} for b in config.sweep_sizes}
    for seed in seeds:
        fit_part, val_part = common.split(setup.train, config.validation_fraction, seed=seed)
        sweep_setup = dataclasses.replace(setup, train=fit_part, test=val_part)
        build = lambda: build_model(config, fit_part)  # noqa: E731
        init = runner.initial_weights(sweep_setup, build, seed)
        for batch in config.sweep_sizes:
            for lr in config.lr_grid:
                run = runner.Run(f"lr_sweep/seed{seed}/b{batch}_lr{lr:g}", _plan(config, fit_part.size, batch, lr),
                                 epochs, seed, {"study": "lr_sweep"}, curves=False)
                record, _ = runner.fit_and_evaluate(sweep_setup, run, build, workdir, init=init)
                scores[str(batch)][repr(lr)].append(float(np.mean(record["curves"]["val_accuracy"][-last:])))
    mean = {b: {lr: float(np.mean(v)) for lr, v in by_lr.items()} for b, by_lr in scores.items()}
    best = {b: float(max(m, key=m.get)) for b, m in mean.items()}
    per_seed = {b: [float(max(by_lr, key=lambda lr: by_lr[lr][i])) for i in range(len(seeds))]
                for b, by_lr in scores.items()}
    for b in best:
        common.log("LR sweep batch %s: best LR %g (validation %.2f%%, seeds %s)", b, best[b], mean[b][repr(best[b])],
                   per_seed[b])
    return {"epochs": epochs, "averaged_epochs": last, "seeds": list(seeds), "validation_examples": val_part.size,
            "validation_accuracy": mean, "validation_accuracy_per_seed": scores, "best_lr": best,
            "best_lr_per_seed": per_seed}


@contextlib.contextmanager
def _only_trainable(model, layer):
    """Makes ``layer`` the model's only trainable layer inside the block (gradients of its weights only)."""
    flags_before = [(l, l.trainable) for l in model.layers]
    try:
        for l, _ in flags_before:
            l.trainable = l is layer
        yield
    finally:
        for l, trainable in flags_before:
            l.trainable = trainable


def _histograms(config, model, train, seed):
    """{batch: pooled histogram of raw gradient values over the trials, bins shared by the batch sizes}."""
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
                               "norm_std": float(res.norms.std(ddof=1)) if res.trials > 1 else 0.0,
                               "outside": int(res.outside), "trials": res.trials, "values_per_trial": res.num_values}
    return results


def gradient_study(setup):
    """Pooled raw-gradient histograms and gradient norms at the initial weights (first seed).

    ``{"model": {batch: ...}, "layers": {layer: {batch: ...}}}``: for the whole model and for each layer
    with weights, ``histogram_trials`` random batches of each ``histogram_sizes`` size, their raw gradient
    values pooled into ``histogram_bins`` bins shared by the batch sizes (the smallest batch's range).
    """
    config, train = setup.config, setup.train
    seed = config.seeds[0]
    common.set_seed(seed)
    with setup.strategy.scope():
        model = build_model(config, train)
    out = {"model": _histograms(config, model, train, seed), "layers": {}}
    for layer in [l for l in model.layers if l.trainable_weights]:
        with _only_trainable(model, layer):
            out["layers"][layer.name] = _histograms(config, model, train, seed)
    return out


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
    sweep = lr_sweep(setup, workdir)
    source = "--base_lr" if config.base_lr is not None else (
        f"the best LR of the sweep at batch {config.base_batch} ({len(sweep['seeds'])} seeds)")
    if config.base_lr is None:  # the article's protocol: the best LR at the base batch, then fixed or scaled
        config = dataclasses.replace(config, base_lr=sweep["best_lr"][str(config.base_batch)])
        setup = dataclasses.replace(setup, config=config)
    common.log("Shen: base LR %g at batch %d (%s)", config.base_lr, config.base_batch, source)
    runs = [run_seed(setup, seed, workdir) for seed in config.seeds]
    gradients = gradient_study(setup)
    summary = _summary(config, runs, sweep, gradients)
    accumulation = _accumulation_summary(config, runs)
    verdicts = verdict_rows(config, runs, sweep, gradients, train.num_classes)
    pngs = _plots(config, runs, sweep, gradients, workdir, train.size)
    markdown = _markdown(config, summary, accumulation, runs, sweep, gradients, verdicts, source, train, test)
    runner.write_summary_board(workdir, pngs, markdown)
    return report.write_results(workdir, summary=summary, runs=runs, config=config, markdown=markdown,
                                paper=SHEN, base_lr={"value": config.base_lr, "source": source},
                                accumulation=accumulation, lr_sweep=sweep, gradients=gradients,
                                verdicts=[dict(zip(("claim", "paper", "ours", "verdict"), v)) for v in verdicts])


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
        summary[b]["best_lr"] = sweep["best_lr"].get(b)
        if b in gradients["model"]:
            summary[b]["gradient_value_std"] = gradients["model"][b]["value_std"]
            summary[b]["gradient_norm_mean"] = gradients["model"][b]["norm_mean"]
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
    for name, by_batch in (("model", gradients["model"]), *gradients["layers"].items()):
        hist = {f"batch {b}": (g["counts"], g["edges"]) for b, g in by_batch.items()}
        what = "all weights" if name == "model" else f"layer {name}"
        file = "gradient_histogram.png" if name == "model" else f"gradient_histogram_{name}.png"
        paths.append(report.plot_histograms(os.path.join(workdir, file), hist, xlabel="raw gradient value",
                                            title=f"Gradient values, {what}, pooled over {config.histogram_trials} "
                                            "batches (shared bins)"))
    model = gradients["model"]
    all_norms = np.concatenate([g["norms"] for g in model.values()])
    edges = np.histogram_bin_edges(all_norms, bins=40)
    norms = {f"batch {b}": (np.histogram(g["norms"], bins=edges)[0], edges) for b, g in model.items()}
    paths.append(report.plot_histograms(os.path.join(workdir, "gradient_norms.png"), norms, xlabel="‖g‖₂",
                                        logy=False, title="Gradient norm per batch"))
    return paths


def _per_seed(runs, study, batch, key="test_accuracy"):
    return [r[study][str(batch)][key] for r in runs]


def _trained_scaled(config, runs, num_classes):
    """The batch sizes whose scaled-LR runs trained in every seed; the others diverged.

    Trained: finite weights and a final training loss below a uniform guess's, ln(``num_classes``) — a run
    whose weights blew up without reaching NaN ends above it, at chance accuracy.
    """
    return [b for b in config.batch_sizes
            if all(np.isfinite(_per_seed(runs, "scaled_lr", b, "distance_from_init")))
            and all(loss < np.log(num_classes) for loss in _per_seed(runs, "scaled_lr", b, "train_loss"))]


def verdict_rows(config, runs, sweep, gradients, num_classes):
    """(claim, paper, ours, verdict) rows of Shen's observations, each checked against the spread over seeds."""
    small, big = config.batch_sizes[0], config.batch_sizes[-1]
    claims, rows = SHEN["claims"], []
    swept = [b for b in (small, big) if str(b) in sweep["best_lr_per_seed"]]
    if len(swept) == 2:
        d = report.difference(np.log2(sweep["best_lr_per_seed"][str(big)]),
                              np.log2(sweep["best_lr_per_seed"][str(small)]))
        rows.append((f"the best LR is larger at larger batches (batch {big} vs {small})",
                     f"{SHEN['best_lr_smallest']:g} at 32, {SHEN['best_lr_larger']:g} at larger batches",
                     f"{sweep['best_lr'][str(small)]:g} at {small}, {sweep['best_lr'][str(big)]:g} at {big} (per seed "
                     f"{sweep['best_lr_per_seed'][str(small)]} and {sweep['best_lr_per_seed'][str(big)]}); "
                     f"log₂ ratio {d.text()}", report.direction_verdict(d)))
    else:
        rows.append(("the best LR is larger at larger batches", "0.01 at 32, 0.08 larger", "—", report.NOT_TESTED))
    acc = [report.pm(_per_seed(runs, "fixed_lr", b)) for b in config.batch_sizes]
    d = report.difference(_per_seed(runs, "fixed_lr", small), _per_seed(runs, "fixed_lr", big))
    rows.append((claims["accuracy"], "yes", " → ".join(acc) + f" %; batch {small} − {big}: {d.text()}",
                 report.direction_verdict(d)))
    for b in config.controls:
        d = report.difference(_per_seed(runs, "fixed_lr", small), _per_seed(runs, "control", b))
        rows.append((claims["control"] + f" (batch {b})", "yes", f"batch {small} − control: {d.text()} points",
                     report.direction_verdict(d)))
    dist = [report.pm(_per_seed(runs, "fixed_lr", b, "distance_from_init"), digits=3) for b in config.batch_sizes]
    d = report.difference(_per_seed(runs, "fixed_lr", small, "distance_from_init"),
                          _per_seed(runs, "fixed_lr", big, "distance_from_init"))
    rows.append((claims["distance"], "yes", " → ".join(dist) + f"; batch {small} − {big}: {d.text(3)}",
                 report.direction_verdict(d)))
    rows.append(_scaled_distance_row(config, runs, num_classes))
    rows.append(_gradient_row(config, gradients))
    acc_true = [r["accumulation"]["true"]["test_accuracy"] for r in runs]
    acc_acc = [r["accumulation"]["accumulated"]["test_accuracy"] for r in runs]
    d = report.paired_difference(acc_acc, acc_true)  # same seed, weights and data order: compared in pairs
    rows.append((claims["accumulation"], "yes", f"accumulated − true, paired by seed: {d.text()} points test "
                 f"accuracy; tolerance {config.tolerance:g}", report.equality_verdict(d, config.tolerance)))
    return rows


def _scaled_distance_row(config, runs, num_classes):
    small = config.batch_sizes[0]
    finite = _trained_scaled(config, runs, num_classes)
    diverged = [b for b in config.batch_sizes if b not in finite]
    note = f" (diverged at batch {', '.join(map(str, diverged))})" if diverged else ""
    dist = " → ".join(report.pm(_per_seed(runs, "scaled_lr", b, "distance_from_init"), digits=2)
                      for b in config.batch_sizes)
    if small not in finite or len(finite) < 2:
        return (SHEN["claims"]["distance_scaled"], "yes", dist + note, report.NOT_SEPARABLE)
    top = finite[-1]
    d = report.difference(_per_seed(runs, "scaled_lr", top, "distance_from_init"),
                          _per_seed(runs, "scaled_lr", small, "distance_from_init"))
    return (SHEN["claims"]["distance_scaled"], "yes",
            f"{dist}{note}; batch {top} − {small}: {d.text(3)}", report.direction_verdict(d))


def _gradient_row(config, gradients):
    small, big = (str(b) for b in (config.histogram_sizes[0], config.histogram_sizes[-1]))
    model = gradients["model"]
    d = report.difference(model[small]["norms"], model[big]["norms"])
    layers = ", ".join(f"{name} {g[small]['value_std'] / g[big]['value_std']:.2f}×"
                       for name, g in gradients["layers"].items())
    return (SHEN["claims"]["gradients"], "yes",
            f"‖g‖ per trial {small} − {big}: {d.text(3)} ({model[small]['trials']} trials each); std of raw values "
            f"{model[small]['value_std']:.3g} vs {model[big]['value_std']:.3g} (per layer {layers})",
            report.direction_verdict(d))


def _sweep_table(config, sweep):
    sizes = list(sweep["validation_accuracy"])
    rows = []
    for lr in config.lr_grid:
        cells = []
        for b in sizes:
            mark = " **best**" if sweep["best_lr"][b] == lr else ""
            cells.append(report.pm(sweep["validation_accuracy_per_seed"][b][repr(lr)]) + mark)
        rows.append([f"{lr:g}", *cells])
    return report.markdown_table(["LR", *[f"batch {b}" for b in sizes]], rows)


def _gradient_table(gradients):
    rows = []
    for name, by_batch in (("all weights", gradients["model"]), *gradients["layers"].items()):
        for b, g in by_batch.items():
            rows.append([name, b, g["trials"], g["values_per_trial"], f"{g['value_std']:.3g}",
                         f"{g['norm_mean']:.3g} ± {g['norm_std']:.2g}", g["outside"]])
    return report.markdown_table(["weights", "batch", "trials", "values per trial", "std of raw values",
                                  "‖g‖ mean ± std over trials", "values outside the shared bins"], rows)


def _per_batch_table(config, summary, runs):
    rows = []
    for b in config.batch_sizes:
        s = summary[str(b)]
        rows.append([b, s["fixed_lr"]["updates"], report.pm(_per_seed(runs, "fixed_lr", b)),
                     report.pm(_per_seed(runs, "fixed_lr", b, "distance_from_init"), digits=3),
                     f"{s['scaled_lr']['learning_rate']:g}", report.pm(_per_seed(runs, "scaled_lr", b)),
                     report.pm(_per_seed(runs, "scaled_lr", b, "distance_from_init"), digits=3)])
    return report.markdown_table(
        ["batch", "updates", f"test acc % (LR {config.base_lr:g})", "‖w−w₀‖ (fixed LR)", "scaled LR",
         "test acc % (scaled LR)", "‖w−w₀‖ (scaled LR)"], rows)


def _control_table(config, summary, runs):
    small = config.batch_sizes[0]
    rows = [[small, f"{config.epochs:g}", summary[str(small)]["fixed_lr"]["updates"],
             report.pm(_per_seed(runs, "fixed_lr", small))]]
    for b in config.controls:
        c = summary[str(b)]["control"]
        rows.append([f"{b} (fixed budget)", f"{config.epochs:g}", summary[str(b)]["fixed_lr"]["updates"],
                     report.pm(_per_seed(runs, "fixed_lr", b))])
        rows.append([f"{b} (control)", f"{c['epochs']:g}", c["updates"], report.pm(_per_seed(runs, "control", b))])
    return report.markdown_table(["batch", "epochs", "updates", "test acc %"], rows)


def _accumulation_table(acc):
    return report.markdown_table(
        ["run", "train acc %", "test acc %", "‖w−w₀‖"],
        [[f"true batch {acc['batch_size']}", acc["true_train_accuracy"], acc["true_test_accuracy"],
          acc["true_distance_from_init"]],
         [f"{acc['batch_size'] // acc['micro_batch']} × {acc['micro_batch']} accumulated",
          acc["accumulated_train_accuracy"], acc["accumulated_test_accuracy"], acc["accumulated_distance_from_init"]]],
        digits=3)


def _markdown(config, summary, acc, runs, sweep, gradients, verdicts, source, train, test):
    n, small = len(runs), config.batch_sizes[0]
    lines = [
        f"# Shen — effect of batch size on training dynamics — {config.network} on {config.dataset}",
        "",
        f"- command: `{config.command or 'python reproductions/shen.py --preset=' + config.preset}`",
        f"- preset: {config.preset}{' (smoke run: generated data)' if config.smoke else ''}; machine: "
        f"{report.machine_description()}",
        f"- data: {train.size} train / {test.size} test examples; model: "
        + (f"MLP {config.depth} × [Dense {config.width}, ReLU]" if config.network == "mlp" else config.network)
        + f"; SGD (momentum {config.base_momentum:g}); {config.epochs} epochs; seeds {list(config.seeds)} "
        f"(mean ± std over {n} seed{'s' if n > 1 else ''}); gradients on seed {config.seeds[0]}",
        f"- base LR {config.base_lr:g} at batch {config.base_batch}: {source}; fixed-LR runs use it at every batch, "
        f"scaled runs {config.base_lr:g} × batch / {config.base_batch}.",
        f"- headroom: batch {small} at the base LR ends at {report.pm(_per_seed(runs, 'fixed_lr', small))} % test "
        f"accuracy (train {summary[str(small)]['fixed_lr']['train_accuracy']:.2f} %).",
        "",
        "## Verdicts", "", report.VERDICT_RULE, "", report.verdict_table(verdicts),
        "## LR sweep",
        "",
        f"Validation accuracy % ({sweep['validation_examples']} held-out training examples per seed), averaged "
        f"over the last {sweep['averaged_epochs']} of {sweep['epochs']} epochs, mean ± std over seeds "
        f"{sweep['seeds']}; the best LR has the highest mean (`lr_sweep.png`).",
        "",
        _sweep_table(config, sweep),
        "## Per batch size",
        "",
        _per_batch_table(config, summary, runs),
        "## Control: same number of updates",
        "",
        _control_table(config, summary, runs),
        "## Gradients at the initial weights",
        "",
        f"Raw gradient values of {config.histogram_trials} random batches per size (the article: 1000), pooled into "
        f"{config.histogram_bins} bins shared by the batch sizes — for all weights and for each layer "
        "(`gradient_histogram.png`, `gradient_histogram_<layer>.png`, `gradient_norms.png`).",
        "",
        _gradient_table(gradients),
        "## Gradient accumulation vs the true batch",
        "",
        f"Same effective batch, LR {runs[0]['accumulation']['learning_rate']:g}, same initial weights and data "
        "order; the accumulated run computes the gradient of each micro-batch and applies their mean once per "
        "effective batch (`bstf.fit(..., max_physical_batch=...)`). Mean over seeds.",
        "",
        _accumulation_table(acc),
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
if __name__ == "__main__":
    common.run_script("shen", config_from_flags, prepare, execute)
