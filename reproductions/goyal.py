r"""Goyal et al. (2017): the linear scaling rule with gradual warmup keeps large-minibatch SGD accurate.

Protocol: the same network, from the same initial weights, is trained for the
same number of epochs at the base batch B0 with LR η0 and at k·B0 for every
``--multiples`` k with

* ``linear_warmup`` — η = k·η0 (linear scaling rule), reached by a gradual
  warmup from η0 over ``warmup_epochs`` (the paper's recipe);

and, at the ``ablation_multiples`` (default: the largest k, the paper's 8k),

* ``no_warmup`` — η = k·η0 from the first update;
* ``constant_warmup`` — η0 for ``warmup_epochs``, then a jump to k·η0;
* ``sqrt_warmup`` — η = √k·η0 (Hoffer et al.'s rule) with gradual warmup;
* ``no_scaling`` — η0 unchanged at k·B0 (no rule at all).

Every run is one :class:`bstf.NoiseScalePlan` (``lr_rule``, ``warmup_epochs``,
``milestones``, ``factor`` 10, ``mode="decay_lr"``) trained by ``bstf.fit``;
batches above ``max_physical_batch`` are reached by gradient accumulation
(one update per k micro-batches, loss normalised by the whole minibatch, as in
the paper), so the batch axis spans ≥ 32× on a CPU. SGD with Nesterov
momentum 0.9, weight decay on kernels only, γ = 0 in the last BN of each
residual block. We report top-1 test error (%) and the training curves of
small and large batches on the epoch (examples) axis.

Outputs in ``--workdir``: ``results.json`` (``summary`` keyed by batch size,
then variant, each with ``test_error``), ``results.md`` (beside Goyal's
Table 1 / Fig. 1), ``error_vs_batch.png``, ``curves.png`` (training error per
epoch, Fig. 2 style), ``test_curves.png``, and TensorBoard logs of every run
under ``tensorboard/`` (bstf.fit's per-update and per-epoch scalars, hparams,
the PNGs and the table under ``tensorboard/summary``).

Run::

    python reproductions/goyal.py --workdir=/tmp/goyal                     # quick preset, CPU, minutes
    python reproductions/goyal.py --preset=paper --data_dir=$HOME/tensorflow_datasets \
        --strategy=mirrored --workdir=/tmp/goyal_imagenet                  # ResNet-50 / ImageNet

See docs/reproductions/goyal.md.
"""

import dataclasses
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402

import bstf  # noqa: E402
from reproductions import common, resnets  # noqa: E402

common.define_flag("list", "multiples", None, "Batch multiples k of the base batch, e.g. 1,2,4,8,16,32 (default: the preset's).")
common.define_flag("list", "ablation_multiples", None, "Multiples k that also get the ablations (default: the largest).")
common.define_flag("list", "variants", None, "Ablation variants (default: all of " + ",".join(
    ("no_warmup", "constant_warmup", "sqrt_warmup", "no_scaling")) + ").")
common.define_flag("integer", "base_batch", None, "Base batch B0 (default: the preset's; 256 in the paper).")
common.define_flag("float", "base_lr", None, "LR η0 at B0 (default: the preset's; 0.1 in the paper).")
common.define_flag("float", "warmup_epochs", None, "Warmup epochs (default: the preset's; 5 in the paper).")
common.define_flag("integer", "max_physical_batch", None, "Largest batch fed at once; larger ones accumulate.")

VARIANTS = ("linear_warmup", "no_warmup", "constant_warmup", "sqrt_warmup", "no_scaling")
ABLATIONS = VARIANTS[1:]
# How each variant sets the plan: (lr_rule, warmup kind).
_RECIPES = {"linear_warmup": ("linear", "gradual"), "no_warmup": ("linear", None),
            "constant_warmup": ("linear", "constant"), "sqrt_warmup": ("sqrt", "gradual"),
            "no_scaling": ("none", None)}

# ----------------------------------------------------------------------------- the paper's numbers
# Top-1 ImageNet validation error (%) of ResNet-50, B0 = 256 (k = multiple of 256). Table 1 (k = 32, 8k:
# warmup ablations, mean ± std of 5 runs), Fig. 1 (error vs minibatch size), Table 1's √ rule line
# reported for 8k. None: not reported.
PAPER = {
    1: {"linear_warmup": (23.60, 0.12)},
    32: {"linear_warmup": (23.74, 0.09), "no_warmup": (24.84, 0.37), "constant_warmup": (25.88, 0.56),
         "sqrt_warmup": (26.22, None), "no_scaling": None},
    64: {"linear_warmup": (24.79, None)},
    128: {"linear_warmup": (27.55, None)},
    256: {"linear_warmup": (33.96, None)},
}
PAPER_BASE_BATCH = 256


@dataclasses.dataclass(frozen=True)
class GoyalConfig(common.Config):
    """Configuration of the Goyal reproduction (fields beyond :class:`common.Config`).

    Attributes:
      network: ``"small_resnet"`` (``width``, ``stages``, ``blocks``) or ``"resnet50"``.
      base_batch, base_lr: B0 and η0 (256 and 0.1 in the paper).
      multiples: the k of the batches k·B0 (increasing, starting at 1).
      ablation_multiples: the k that also get the ``variants`` (default: the largest).
      variants: the ablations run there (subset of :data:`ABLATIONS`).
      warmup_epochs: warmup length (5 in the paper).
      milestones, factor: LR ÷ ``factor`` at these epochs (30, 60, 80 and 10 in the paper).
      momentum, nesterov, weight_decay: SGD settings (0.9, Nesterov, 1e-4 on kernels only).
      max_physical_batch: largest batch fed at once (bigger batches accumulate; None: never).
      image_size: ImageNet-style crops of this size (random-resized crop + flip for training,
        resize-256 centre crop for test); None: use the features as they are.
      eval_batch: batch of evaluation passes.
    """

    network: str = "small_resnet"
    width: int = 12
    stages: int = 3
    blocks: int = 1
    base_batch: int = 16
    base_lr: float = 0.025
    multiples: tuple = (1, 2, 4, 8, 16, 32)
    ablation_multiples: tuple = None
    variants: tuple = ABLATIONS
    warmup_epochs: float = 2.0
    milestones: tuple = (6, 11, 14)
    factor: float = 10.0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    max_physical_batch: int = 256
    image_size: int = None
    eval_batch: int = 1000

    def __post_init__(self):
        super().__post_init__()
        if self.network not in ("small_resnet", "resnet50"):
            raise ValueError(f"network must be 'small_resnet' or 'resnet50', got {self.network!r}.")
        for name in ("width", "stages", "blocks", "base_batch", "eval_batch"):
            common._check_int(name, getattr(self, name))
        common._check_int("max_physical_batch", self.max_physical_batch, optional=True)
        common._check_int("image_size", self.image_size, optional=True)
        multiples = tuple(self.multiples)
        for k in multiples:
            common._check_int("multiples", k)
        if not multiples or multiples[0] != 1 or list(multiples) != sorted(set(multiples)):
            raise ValueError(f"multiples must be strictly increasing integers starting at 1, got {self.multiples!r}.")
        object.__setattr__(self, "multiples", multiples)
        if self.ablation_multiples is not None:
            abl = tuple(int(k) for k in self.ablation_multiples)
            if any(k not in multiples or k == 1 for k in abl):
                raise ValueError(f"ablation_multiples must be multiples > 1 from {multiples}, got {abl!r}.")
            object.__setattr__(self, "ablation_multiples", abl)
        variants = tuple(self.variants)
        if any(v not in ABLATIONS for v in variants):
            raise ValueError(f"variants must be a subset of {ABLATIONS}, got {self.variants!r}.")
        object.__setattr__(self, "variants", variants)
        if not self.base_lr > 0:
            raise ValueError(f"base_lr must be > 0, got {self.base_lr}.")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={self.epochs}), got {self.warmup_epochs}.")
        object.__setattr__(self, "milestones", tuple(self.milestones))
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}.")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}.")

    @property
    def ablations_at(self):
        """The multiples that get the ablation variants (default: the largest)."""
        return self.ablation_multiples if self.ablation_multiples is not None else (self.multiples[-1],)

    def runs(self):
        """(k, variant) of every run, in order."""
        out = [(k, "linear_warmup") for k in self.multiples]
        out += [(k, v) for k in self.ablations_at for v in self.variants]
        return out


# ----------------------------------------------------------------------------- presets
def quick():
    """Quick preset: small 1-D ResNet on MNIST-1D, B0 = 16, k = 1…32, 16 epochs; minutes on 2 CPUs.

    ``python reproductions/goyal.py --workdir=/tmp/goyal``

    MNIST-1D (``bstf.data.load("mnist1d", num_samples=10000)``: 8000 train /
    2000 test, offline) with a 3-stage ResNet of basic blocks (widths 12/24/48,
    γ = 0 init, BN momentum 0.9). The paper's 90-epoch schedule is compressed:
    16 epochs, LR ÷10 at 6/11/14, 2 warmup epochs (at batch 512 an epoch is
    only 15 updates; the paper's 5 warmup epochs at 8k are 780). B0 = 16 and
    η0 = 0.025, so that k = 32 (batch 512, the paper's 8k point) trains at
    η = 0.8; with ``--base_lr=0.05`` (η = 1.6 at k = 32) the linear rule breaks
    down at 32× (docs/reproductions/goyal.md). Batches above 256 are
    accumulated (BN statistics then come from 256-example micro-batches,
    like the paper's per-worker BN).
    """
    return GoyalConfig(preset="quick", dataset="mnist1d", dataset_kwargs={"num_samples": 10000}, seeds=(0,),
                       epochs=16)


def paper():
    """Paper preset: ResNet-50 on ImageNet (TFDS imagenet2012), B0 = 256, η0 = 0.1, 90 epochs, k up to 256.

    ``python reproductions/goyal.py --preset=paper --data_dir=DIR --strategy=mirrored --workdir=/tmp/goyal_imagenet``

    Goyal et al.'s recipe: η = 0.1·kn/256, gradual warmup over 5 epochs,
    ÷10 at epochs 30/60/80, Nesterov momentum 0.9, weight decay 1e-4 (none on
    BN and biases), γ = 0 on the last BN of each residual block, 224 crops.
    Batches 256 … 64k; the ablations at 8k (k = 32). Physical batch 256 per
    step (beyond it, accumulation).
    """
    return GoyalConfig(preset="paper", dataset="tfds:imagenet2012", test_split="validation", network="resnet50",
                       base_batch=256, base_lr=0.1, multiples=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                       ablation_multiples=(32,), warmup_epochs=5.0, milestones=(30, 60, 80), factor=10.0,
                       momentum=0.9, nesterov=True, weight_decay=1e-4, max_physical_batch=256, image_size=224,
                       seeds=(0,), epochs=90, eval_batch=250)


PRESETS = {"quick": quick, "paper": paper}
_ints = lambda values: tuple(int(v) for v in values)  # noqa: E731
CONVERTERS = {"multiples": _ints, "ablation_multiples": _ints, "variants": tuple}


# ----------------------------------------------------------------------------- plans
def make_plan(config, train_size, multiple, variant):
    """The :class:`bstf.NoiseScalePlan` of one run: batch ``multiple``·B0, LR by the variant's rule and warmup."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
    rule, warmup = _RECIPES[variant]
    return bstf.NoiseScalePlan(train_size, config.base_lr, config.base_batch, base_momentum=config.momentum,
               batch=multiple * config.base_batch, lr_rule=rule,
               warmup_epochs=config.warmup_epochs if warmup and multiple > 1 else 0.0,
               milestones=tuple(m for m in config.milestones if m < config.epochs), factor=config.factor,
               mode="decay_lr", warmup="constant" if warmup == "constant" else "linear")


# ----------------------------------------------------------------------------- the experiment
def _prepare(config, train, test):
    """ImageNet-style crops when ``image_size`` is set; the data as they are otherwise."""
    if config.image_size is None:
        return train, test
    shape = (config.image_size, config.image_size, 3)
    return (resnets.map_data(train, lambda x: resnets.imagenet_train(x, config.image_size), shape),
            resnets.map_data(test, lambda x: resnets.imagenet_eval(x, config.image_size), shape))


def build_model(config, input_shape, num_classes):
    """The config's network, compiled with SGD (Nesterov) — the LR and its schedule come from the plan."""
    if config.network == "resnet50":
        model = resnets.resnet50(input_shape, num_classes, weight_decay=config.weight_decay)
    else:
        model = resnets.small_resnet(input_shape, num_classes, width=config.width, stages=config.stages,
                                     blocks=config.blocks, weight_decay=config.weight_decay)
    optimizer = keras.optimizers.SGD(config.base_lr, momentum=config.momentum, nesterov=config.nesterov)
    return common.compile_classifier(model, optimizer)


def run_one(config, init, train, test, strategy, multiple, variant, seed, logdir):
    """Trains one (k, variant) from ``init``; returns its result dict (errors in %)."""
    common.set_seed(seed)
    plan = make_plan(config, train.size, multiple, variant)
    with strategy.scope():
        model = build_model(config, train.input_shape, train.num_classes)
        model.set_weights(init)
    max_physical = config.max_physical_batch
    if max_physical is not None and plan.max_batch_used <= max_physical:
        max_physical = None
    stats = {}
    with common.timer(stats, "wall_time_s"):
        history = common.train(model, train, config.epochs, plan=plan, validation_data=test, strategy=strategy,
                               max_physical_batch=max_physical, logdir=logdir, seed=seed, verbose=0)
    h = common.history_dict(history)
    te = common.evaluate(model, test, config.eval_batch)
    phase0 = history.phases[0]
    result = {
        "multiple": multiple, "variant": variant, "batch_size": plan.batch, "learning_rate": plan.at(
            config.warmup_epochs).learning_rate if config.warmup_epochs < config.epochs else plan.base_lr,
        "lr_rule": plan.lr_rule, "warmup_epochs": plan.warmup_epochs, "updates": int(history.updates),
        "accumulation": int(phase0["accumulation"]), "physical_batch": int(phase0["physical_batch"]),
        "test_error": 100 * (1 - te["accuracy"]), "test_loss": te["loss"],
        "train_error_curve": [100 * (1 - a) for a in h.get("accuracy", [])],
        "train_loss_curve": h.get("loss", []),
        "test_error_curve": [100 * (1 - a) for a in h.get("val_accuracy", [])],
        "examples": h.get("examples", []),
        **stats,
    }
    result["train_error"] = result["train_error_curve"][-1] if result["train_error_curve"] else None
    common.log("seed %d k=%d (batch %d) %s: LR %g, %d updates (accumulation %d): test error %.2f%% (%.0f s)",
               seed, multiple, plan.batch, variant, result["learning_rate"], result["updates"],
               result["accumulation"], result["test_error"], stats["wall_time_s"])
    with common.Board(logdir) as board:
        board.hparams({"multiple": multiple, "batch_size": plan.batch, "variant": variant, "lr_rule": plan.lr_rule,
                       "warmup_epochs": plan.warmup_epochs, "base_lr": config.base_lr, "seed": seed,
                       "dataset": config.dataset},
                      {"final/test_error": result["test_error"], "final/updates": result["updates"]})
    return result


def run_seed(config, seed, train, test, strategy, workdir):
    """Every (k, variant) of one seed from the same initial weights."""
    common.set_seed(seed)
    with strategy.scope():
        init = build_model(config, train.input_shape, train.num_classes).get_weights()
    out = {"seed": seed}
    for multiple, variant in config.runs():
        batch = multiple * config.base_batch
        logdir = os.path.join(workdir, "tensorboard", f"seed{seed}", f"b{batch}_{variant}")
        out.setdefault(str(batch), {})[variant] = run_one(config, init, train, test, strategy, multiple, variant,
                                                          seed, logdir)
    return out


def run(config, workdir):
    """Runs the experiment of ``config``; writes results.json/results.md/PNGs/TensorBoard in ``workdir``."""
    strategy = common.make_strategy(config)
    train, test = _prepare(config, *common.load_data(config))
    for k in config.multiples:
        bstf.distribute.check_global_batch(k * config.base_batch, strategy)
        if k * config.base_batch > train.size:
            raise ValueError(f"batch {k * config.base_batch} (k={k}) is larger than the training set "
                             f"({train.size} examples).")
    common.log("Goyal: %s on %s (%d train, %d test), B0 %d, η0 %g, k %s, ablations at k %s, seeds %s",
               config.network, config.dataset, train.size, test.size, config.base_batch, config.base_lr,
               config.multiples, config.ablations_at, config.seeds)
    runs = [run_seed(config, seed, train, test, strategy, workdir) for seed in config.seeds]
    summary = summarise(config, runs)
    pngs = _plots(config, summary, workdir)
    markdown = _markdown(config, summary, train, test)
    with common.Board(os.path.join(workdir, "tensorboard", "summary")) as board:
        board.images(pngs)
        board.text("results", markdown)
    return common.write_results(workdir, summary=summary, runs=runs, config=config, markdown=markdown,
                                paper=_paper_json(), machine=common.machine_description())


def summarise(config, runs):
    """{batch: {variant: mean results, ``test_error_std``, the paper's error}} over seeds."""
    summary = {}
    for multiple, variant in config.runs():
        b = str(multiple * config.base_batch)
        mean, std = common.aggregate([r[b][variant] for r in runs])
        paper = (PAPER.get(multiple) or {}).get(variant)
        summary.setdefault(b, {})[variant] = {
            **{k: mean[k] for k in ("multiple", "batch_size", "learning_rate", "lr_rule", "warmup_epochs", "updates",
                                    "accumulation", "test_error", "train_error", "test_error_curve",
                                    "train_error_curve", "train_loss_curve", "examples", "wall_time_s")},
            "test_error_std": std["test_error"],
            "test_error_per_seed": [r[b][variant]["test_error"] for r in runs],
            "paper_batch_size": multiple * PAPER_BASE_BATCH,
            "paper_test_error": None if paper is None else paper[0],
        }
    return summary


def _paper_json():
    return {str(k * PAPER_BASE_BATCH): {v: (None if e is None else {"test_error": e[0], "std": e[1]})
                                        for v, e in d.items()} for k, d in PAPER.items()}


# ----------------------------------------------------------------------------- report
_LABELS = {"linear_warmup": "linear rule + gradual warmup", "no_warmup": "linear rule, no warmup",
           "constant_warmup": "linear rule, constant warmup", "sqrt_warmup": "√ rule + gradual warmup",
           "no_scaling": "no LR scaling"}


def _plots(config, summary, workdir):
    paths = []
    batches = [k * config.base_batch for k in config.multiples]
    main = [summary[str(b)]["linear_warmup"]["test_error"] for b in batches]
    curves = {_LABELS["linear_warmup"]: (batches, main, {"marker": "o"})}
    for v in config.variants:
        xs = [k * config.base_batch for k in config.ablations_at]
        curves[_LABELS[v]] = (xs, [summary[str(b)][v]["test_error"] for b in xs], {"marker": "x", "ls": "none",
                                                                                    "markersize": 9})
    curves[f"batch {config.base_batch} (baseline)"] = (batches, [main[0]] * len(batches), {"ls": ":", "color": "grey"})
    paths.append(common.plot_curves(os.path.join(workdir, "error_vs_batch.png"), curves, xlabel="minibatch size",
                                    ylabel="test error (%)", logx=True,
                                    title="Test error vs minibatch size (Goyal et al. Fig. 1)"))
    big = config.ablations_at[-1] * config.base_batch
    for name, key, ylabel in (("curves.png", "train_error_curve", "training error (%)"),
                              ("test_curves.png", "test_error_curve", "test error (%)")):
        curves = {}
        base = summary[str(config.base_batch)]["linear_warmup"]
        curves[f"batch {config.base_batch}"] = (np.arange(1, len(base[key]) + 1), base[key], {"color": "k"})
        for v in ("linear_warmup",) + config.variants:
            r = summary[str(big)][v]
            curves[f"batch {big}, {_LABELS[v]}"] = (np.arange(1, len(r[key]) + 1), r[key])
        paths.append(common.plot_curves(os.path.join(workdir, name), curves, xlabel="epoch", ylabel=ylabel,
                                        vlines=config.milestones, title=f"{ylabel.capitalize()} per epoch: "
                                        f"batch {config.base_batch} vs {big} (Goyal et al. Fig. 2)"))
    return paths


def _err(r):
    return common.pm(r["test_error"], r["test_error_std"] if r["test_error_std"] else None)


def _markdown(config, summary, train, test):
    base_b = str(config.base_batch)
    base = summary[base_b]["linear_warmup"]
    rows = []
    for k in config.multiples:
        b = str(k * config.base_batch)
        for v in ("linear_warmup",) + (config.variants if k in config.ablations_at else ()):
            r = summary[b][v]
            paper = r["paper_test_error"]
            rows.append([b, f"{k}×", _LABELS[v], f"{r['learning_rate']:.4g}", r["updates"],
                         f"{r['accumulation']}×{r['batch_size'] // r['accumulation']}", _err(r),
                         f"{r['test_error'] - base['test_error']:+.2f}", r["paper_batch_size"],
                         "—" if paper is None else f"{paper:.2f}",
                         "—" if paper is None else f"{paper - PAPER[1]['linear_warmup'][0]:+.2f}"])
    table = common.markdown_table(
        ["batch", "k", "variant", "LR after warmup", "updates", "accum. × micro", "test error %", "Δ vs base",
         "paper batch", "paper error %", "paper Δ"], rows)

    big = str(config.ablations_at[-1] * config.base_batch)
    at_big = summary[big]
    lw = at_big["linear_warmup"]["test_error"]
    worst_main = max(summary[str(k * config.base_batch)]["linear_warmup"]["test_error"] for k in config.multiples)
    verdict = [f"Linear rule + gradual warmup: test error {base['test_error']:.2f} % at batch {base_b} and "
               f"{lw:.2f} % at batch {big} ({config.ablations_at[-1]}× — the paper: 23.60 % at 256 and 23.74 % at "
               f"8k); the worst batch on the linear+warmup curve is {worst_main - base['test_error']:+.2f} points "
               "from the base."]
    for v in config.variants:
        d = at_big[v]["test_error"] - lw
        verdict.append(f"{_LABELS[v]} at batch {big}: {at_big[v]['test_error']:.2f} % "
                       f"({d:+.2f} vs linear + gradual warmup"
                       + (f"; paper {PAPER[32][v][0] - PAPER[32]['linear_warmup'][0]:+.2f})"
                          if PAPER[32].get(v) else "; not in the paper)")
                       + ("" if d > 0 else " — **not worse here**, unlike the paper") + ".")
    lines = [
        f"# Goyal et al. (2017) — {config.network} on {config.dataset}",
        "",
        f"- command: `{config.command or 'python reproductions/goyal.py --preset=' + config.preset}`",
        f"- preset: {config.preset}; machine: {common.machine_description()}",
        f"- data: {train.size} train / {test.size} test examples; B0 = {config.base_batch}, η0 = {config.base_lr:g}; "
        f"{config.epochs} epochs, LR ÷{config.factor:g} at epochs {list(config.milestones)}, warmup "
        f"{config.warmup_epochs:g} epochs; SGD {'Nesterov ' if config.nesterov else ''}momentum {config.momentum:g}, "
        f"weight decay {config.weight_decay:g} on kernels; physical batch ≤ {config.max_physical_batch} "
        "(larger batches accumulate); every run starts from the same initial weights; seeds "
        f"{list(config.seeds)}",
        "",
        *[f"- {v}" for v in verdict],
        "",
        "## Test error vs minibatch size (Goyal et al. Table 1 / Fig. 1)",
        "",
        "Top-1 test error, mean ± sample std over seeds. The paper's columns are ResNet-50 on ImageNet at the "
        f"same multiple k of its base batch 256"
        + (" — a far bigger problem than this preset's, so compare the *differences* (Δ), not the values."
           if config.preset != "paper" else "."),
        "",
        table,
        "Plots: `error_vs_batch.png` (error vs batch), `curves.png` (training error per epoch, small vs large "
        "batch, Fig. 2 style), `test_curves.png` (test error per epoch).",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main(argv):
    common.check_no_args(argv)
    run(common.config_from_flags(PRESETS, converters=CONVERTERS), common.workdir_from_flags("goyal"))


if __name__ == "__main__":
    app.run(main)
