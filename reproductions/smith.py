r"""Smith, Kindermans, Ying & Le (2017): don't decay the learning rate, increase the batch size.

SGD's noise scale g = εN/(B(1 − m)) (ε LR, N training examples, B batch, m
momentum) falls by ``factor`` at each milestone of a step-decay schedule.
One :class:`bstf.NoiseScalePlan` holds that g-schedule and realises it as

* ``decay_lr`` — ε ÷ factor at each milestone (the conventional schedule);
* ``hybrid`` — ε ÷ factor at the first milestone, then B × factor;
* ``increase_batch`` — B × factor at each milestone (up to ``max_batch``; the
  rest of a reduction that would pass it decays ε);

and two rescalings of ``increase_batch`` that keep g while cutting updates:

* ``scaled_lr_batch`` — ``plan.scaled(k)``: ε and B × k (B ∝ ε);
* ``increase_momentum`` — ``plan.with_momentum(m)``: B × (1 − m₀)/(1 − m)
  (B ∝ 1/(1 − m); the paper notes slightly lower accuracy).

Every schedule trains the same network from the same initial weights for the
same number of epochs with ``bstf.fit`` (batches above ``max_physical_batch``
accumulate). We report final test accuracy, the number of parameter updates
(``history.updates``, equal to ``plan.total_updates(epochs)``) and wall
clock, and plot test accuracy against epochs (the schedules overlap) and
against updates (increasing the batch needs far fewer).

Outputs in ``--workdir``: ``results.json`` (``summary`` keyed by schedule —
``decay_lr``, ``hybrid``, ``increase_batch``, ``scaled_lr_batch``,
``increase_momentum`` — each with ``test_accuracy``, ``updates``,
``wall_time_s``), ``results.md`` (beside the paper's outcomes),
``accuracy_vs_epochs.png``, ``accuracy_vs_updates.png`` (Fig. 2 style),
``schedules.png`` (LR, batch, momentum and g per epoch), and TensorBoard logs
under ``tensorboard/<schedule>`` (bstf.fit logs against examples seen, so all
schedules share one axis).

Run::

    python reproductions/smith.py --workdir=/tmp/smith                     # quick preset, CPU, minutes
    python reproductions/smith.py --preset=paper --data_dir=$HOME/tensorflow_datasets \
        --strategy=mirrored --workdir=/tmp/smith_cifar10                   # WRN-16-4 / CIFAR-10

See docs/reproductions/smith.md.
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

SCHEDULES = ("decay_lr", "hybrid", "increase_batch", "scaled_lr_batch", "increase_momentum")
MAIN_SCHEDULES = SCHEDULES[:3]

common.define_flag("list", "schedules", None, "Schedules to train (default: all of " + ",".join(SCHEDULES) + ").")
common.define_flag("float", "base_lr", None, "Initial LR ε (default: the preset's; 0.1 in the paper).")
common.define_flag("integer", "base_batch", None, "Initial batch B (default: the preset's; 128 in the paper).")
common.define_flag("integer", "max_batch", None, "Largest batch of the plans (default: the preset's; 5120 in the paper).")
common.define_flag("integer", "max_physical_batch", None, "Largest batch fed at once; larger ones accumulate.")

# ----------------------------------------------------------------------------- the paper's outcomes
# Smith et al. report these as curves (Fig. 2, 3, 5) and statements, not tables; the update counts of the
# published WRN-16-4 / CIFAR-10 recipe are computed by the plan from its configuration (see PAPER_RECIPE).
PAPER_CLAIMS = {
    "decay_lr": "reference schedule",
    "hybrid": "same test accuracy per epoch as decay_lr (Fig. 2a)",
    "increase_batch": "same test accuracy per epoch as decay_lr, far fewer updates (Fig. 2)",
    "scaled_lr_batch": "B ∝ ε: similar accuracy, fewer updates still (Sec. 5.2, Fig. 5)",
    "increase_momentum": "B ∝ 1/(1 − m): fewest updates, slightly lower test accuracy (Sec. 5.2, Fig. 5)",
}
PAPER_RECIPE = dict(train_size=50_000, base_lr=0.1, base_batch=128, base_momentum=0.9, milestones=(60, 120, 160),
                    factor=5.0, max_batch=5120, epochs=200, scale=5, target_momentum=0.98)


@dataclasses.dataclass(frozen=True)
class SmithConfig(common.Config):
    """Configuration of the Smith reproduction (fields beyond :class:`common.Config`).

    Attributes:
      network: ``"small_resnet"`` (``width``, ``stages``, ``blocks``) or ``"wrn"`` (``depth``, ``widen``).
      base_lr, base_batch, momentum: ε, B and m of the first phase (0.1, 128, 0.9 in the paper).
      milestones, factor: g ÷ ``factor`` at these epochs (60, 120, 160 and 5 in the paper).
      max_batch: largest batch of the plans (5120 for CIFAR in the paper).
      hybrid_lr_milestones: how many leading milestones the hybrid realises by decaying ε.
      scale: k of ``scaled_lr_batch`` (ε and B × k).
      target_momentum: m of ``increase_momentum``.
      schedules: the schedules trained (subset of :data:`SCHEDULES`; the three main ones by default plus
        the two rescalings).
      weight_decay: L2 on kernels (5e-4 in the paper, the WRN default).
      max_physical_batch: largest batch fed at once (bigger batches accumulate; None: never).
      augment: CIFAR augmentation (pad-4 random crop and flip) and standardisation of 32×32×3 images.
      eval_batch: batch of evaluation passes.
    """

    network: str = "small_resnet"
    width: int = 12
    stages: int = 3
    blocks: int = 1
    depth: int = 16
    widen: int = 4
    base_lr: float = 0.05
    base_batch: int = 16
    momentum: float = 0.9
    milestones: tuple = (5, 10, 15)
    factor: float = 5.0
    max_batch: int = 640
    hybrid_lr_milestones: int = 1
    scale: float = 5.0
    target_momentum: float = 0.98
    schedules: tuple = SCHEDULES
    weight_decay: float = 5e-4
    max_physical_batch: int = 512
    augment: bool = False
    eval_batch: int = 1000

    def __post_init__(self):
        super().__post_init__()
        if self.network not in ("small_resnet", "wrn"):
            raise ValueError(f"network must be 'small_resnet' or 'wrn', got {self.network!r}.")
        for name in ("width", "stages", "blocks", "depth", "widen", "base_batch", "max_batch", "eval_batch"):
            common._check_int(name, getattr(self, name))
        common._check_int("max_physical_batch", self.max_physical_batch, optional=True)
        common._check_int("hybrid_lr_milestones", self.hybrid_lr_milestones, low=0)
        schedules = tuple(self.schedules)
        if not schedules or any(s not in SCHEDULES for s in schedules) or len(set(schedules)) != len(schedules):
            raise ValueError(f"schedules must be distinct names from {SCHEDULES}, got {self.schedules!r}.")
        object.__setattr__(self, "schedules", schedules)
        object.__setattr__(self, "milestones", tuple(self.milestones))
        if not self.base_lr > 0:
            raise ValueError(f"base_lr must be > 0, got {self.base_lr}.")
        for name in ("momentum", "target_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale}.")
        if self.max_batch < self.base_batch:
            raise ValueError(f"max_batch ({self.max_batch}) must be >= base_batch ({self.base_batch}).")
        # The plan validates the milestones and the factor: build one to fail early.
        bstf.NoiseScalePlan(1, self.base_lr, self.base_batch, base_momentum=self.momentum,
                            milestones=self.milestones, factor=self.factor)

    def base_plan(self, train_size, mode="decay_lr"):
        """The g-schedule as a :class:`bstf.NoiseScalePlan` realised by ``mode``."""
        return bstf.NoiseScalePlan(train_size, self.base_lr, self.base_batch, base_momentum=self.momentum,
                                   milestones=tuple(m for m in self.milestones if m < self.epochs),
                                   factor=self.factor, mode=mode, max_batch=self.max_batch,
                                   hybrid_lr_milestones=self.hybrid_lr_milestones)


# ----------------------------------------------------------------------------- presets
def quick():
    """Quick preset: small 1-D ResNet on MNIST-1D, ε = 0.05, B = 16 → 640, 20 epochs; minutes on 2 CPUs.

    ``python reproductions/smith.py --workdir=/tmp/smith``

    MNIST-1D (8000 train / 2000 test, offline), the 3-stage ResNet of the
    Goyal quick preset. Smith's 200-epoch schedule is compressed 10× with the
    phases made equal (g ÷ 5 at epochs 5, 10, 15 of 20), B = 16 growing at
    most 40× (to 640, as 128 → 5120 in the paper), m = 0.9; ``scaled_lr_batch``
    uses k = 5 and ``increase_momentum`` m = 0.98 (B × 5).
    """
    return SmithConfig(preset="quick", dataset="mnist1d", dataset_kwargs={"num_samples": 10000}, seeds=(0,),
                       epochs=20)


def paper():
    """Paper preset: WRN-16-4 on CIFAR-10 (TFDS cifar10), ε = 0.1, B = 128, m = 0.9, factor 5, 200 epochs.

    ``python reproductions/smith.py --preset=paper --data_dir=DIR --strategy=mirrored --workdir=/tmp/smith_cifar10``

    Smith et al.'s Sec. 5.1 recipe: g ÷ 5 at epochs 60, 120, 160; batch at most
    5120; weight decay 5e-4; pad-4 crop + flip augmentation. The rescalings
    of Sec. 5.2 use k = 5 (ε 0.5, B 640) and m = 0.98. Physical batch 512
    (beyond it, accumulation; BN statistics per 512-example micro-batch — the
    paper uses ghost batch norm over 128).
    """
    return SmithConfig(preset="paper", dataset="tfds:cifar10", network="wrn", depth=16, widen=4,
                       base_lr=PAPER_RECIPE["base_lr"], base_batch=PAPER_RECIPE["base_batch"],
                       momentum=PAPER_RECIPE["base_momentum"], milestones=PAPER_RECIPE["milestones"],
                       factor=PAPER_RECIPE["factor"], max_batch=PAPER_RECIPE["max_batch"],
                       scale=PAPER_RECIPE["scale"], target_momentum=PAPER_RECIPE["target_momentum"],
                       weight_decay=5e-4, max_physical_batch=512, augment=True, seeds=(0,),
                       epochs=PAPER_RECIPE["epochs"])


PRESETS = {"quick": quick, "paper": paper}
CONVERTERS = {"schedules": tuple}


# ----------------------------------------------------------------------------- plans
def make_plan(config, train_size, schedule):
    """The :class:`bstf.NoiseScalePlan` of ``schedule`` (all share one g-schedule)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}.")
    if schedule in MAIN_SCHEDULES:
        return config.base_plan(train_size, schedule)
    plan = config.base_plan(train_size, "increase_batch")
    return plan.scaled(config.scale) if schedule == "scaled_lr_batch" else plan.with_momentum(config.target_momentum)


def paper_updates():
    """Updates of each schedule under the paper's WRN-16-4 / CIFAR-10 recipe (computed by the plan)."""
    r = PAPER_RECIPE
    cfg = SmithConfig(preset="paper", dataset="tfds:cifar10", base_lr=r["base_lr"], base_batch=r["base_batch"],
                      momentum=r["base_momentum"], milestones=r["milestones"], factor=r["factor"],
                      max_batch=r["max_batch"], scale=r["scale"], target_momentum=r["target_momentum"],
                      epochs=r["epochs"])
    return {s: make_plan(cfg, r["train_size"], s).total_updates(r["epochs"]) for s in SCHEDULES}


# ----------------------------------------------------------------------------- the experiment
def _prepare(config, train, test):
    if not config.augment:
        return train, test
    return (resnets.map_data(train, resnets.cifar_train, (32, 32, 3)),
            resnets.map_data(test, resnets.cifar_eval, (32, 32, 3)))


def build_model(config, input_shape, num_classes, momentum=None):
    """The config's network compiled with SGD at ``momentum`` (the LR comes from the plan)."""
    if config.network == "wrn":
        model = resnets.wrn(input_shape, num_classes, depth=config.depth, widen=config.widen,
                            weight_decay=config.weight_decay)
    else:
        model = resnets.small_resnet(input_shape, num_classes, width=config.width, stages=config.stages,
                                     blocks=config.blocks, weight_decay=config.weight_decay)
    m = config.momentum if momentum is None else momentum
    return common.compile_classifier(model, keras.optimizers.SGD(config.base_lr, momentum=m))


def run_one(config, init, train, test, strategy, schedule, seed, logdir):
    """Trains one schedule from ``init``; returns its result dict (accuracy in %)."""
    common.set_seed(seed)
    plan = make_plan(config, train.size, schedule)
    with strategy.scope():
        model = build_model(config, train.input_shape, train.num_classes, plan.momentum_value)
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
    phases = [{k: p[k] for k in ("start_epoch", "end_epoch", "batch_size", "accumulation", "learning_rate",
                                 "momentum", "updates", "wall_time")} for p in history.phases]
    result = {
        "schedule": schedule, "test_accuracy": 100 * te["accuracy"], "test_loss": te["loss"],
        "train_accuracy": 100 * h["accuracy"][-1] if h.get("accuracy") else None,
        "updates": int(history.updates), "planned_updates": plan.total_updates(config.epochs),
        "max_batch": plan.max_batch_used, "momentum": plan.momentum_value,
        "test_accuracy_curve": [100 * a for a in h.get("val_accuracy", [])],
        "updates_curve": h.get("updates", []), "examples_curve": h.get("examples", []),
        "batch_size_curve": h.get("batch_size", []), "learning_rate_curve": h.get("learning_rate", []),
        "phases": phases, **stats,
    }
    common.log("seed %d %s: test %.2f%%, %d updates, max batch %d, %.0f s", seed, schedule,
               result["test_accuracy"], result["updates"], result["max_batch"], stats["wall_time_s"])
    with common.Board(logdir) as board:
        board.hparams({"schedule": schedule, "base_lr": config.base_lr, "base_batch": config.base_batch,
                       "momentum": plan.momentum_value, "max_batch": plan.max_batch_used, "seed": seed,
                       "dataset": config.dataset},
                      {"final/test_accuracy": result["test_accuracy"], "final/updates": result["updates"]})
    return result


def run_seed(config, seed, train, test, strategy, workdir):
    """Every schedule of one seed from the same initial weights."""
    common.set_seed(seed)
    with strategy.scope():
        init = build_model(config, train.input_shape, train.num_classes).get_weights()
    out = {"seed": seed}
    for schedule in config.schedules:
        logdir = os.path.join(workdir, "tensorboard", schedule if len(config.seeds) == 1 else f"seed{seed}_{schedule}")
        out[schedule] = run_one(config, init, train, test, strategy, schedule, seed, logdir)
    return out


def run(config, workdir):
    """Runs the experiment of ``config``; writes results.json/results.md/PNGs/TensorBoard in ``workdir``."""
    strategy = common.make_strategy(config)
    train, test = _prepare(config, *common.load_data(config))
    for s in config.schedules:
        plan = make_plan(config, train.size, s)
        for b in sorted({p.batch_size for p in plan.phases(config.epochs)}):
            bstf.distribute.check_global_batch(b, strategy)
            if b > train.size:
                raise ValueError(f"schedule {s} reaches batch {b}, larger than the training set ({train.size}).")
    common.log("Smith: %s on %s (%d train, %d test), ε %g, B %d, m %g, g ÷ %g at %s, schedules %s, seeds %s",
               config.network, config.dataset, train.size, test.size, config.base_lr, config.base_batch,
               config.momentum, config.factor, config.milestones, config.schedules, config.seeds)
    runs = [run_seed(config, seed, train, test, strategy, workdir) for seed in config.seeds]
    summary = summarise(config, runs)
    pngs = _plots(config, summary, workdir, train.size)
    markdown = _markdown(config, summary, train, test)
    with common.Board(os.path.join(workdir, "tensorboard", "summary")) as board:
        board.images(pngs)
        board.text("results", markdown)
    return common.write_results(workdir, summary=summary, runs=runs, config=config, markdown=markdown,
                                paper={"recipe": PAPER_RECIPE, "updates": paper_updates(), "claims": PAPER_CLAIMS},
                                machine=common.machine_description())


def summarise(config, runs):
    """{schedule: mean results over seeds, ``test_accuracy_std``, the paper recipe's update count}."""
    summary = {}
    paper = paper_updates()
    for s in config.schedules:
        mean, std = common.aggregate([{k: v for k, v in r[s].items() if k != "phases"} for r in runs])
        summary[s] = {
            **{k: mean[k] for k in ("test_accuracy", "train_accuracy", "updates", "planned_updates", "max_batch",
                                    "momentum", "wall_time_s", "test_accuracy_curve", "updates_curve",
                                    "examples_curve", "batch_size_curve", "learning_rate_curve")},
            "test_accuracy_std": std["test_accuracy"],
            "test_accuracy_per_seed": [r[s]["test_accuracy"] for r in runs],
            "phases": runs[0][s]["phases"],
            "paper_updates": paper[s],
        }
    return summary


# ----------------------------------------------------------------------------- report
def _plots(config, summary, workdir, train_size):
    paths = []
    for name, key, xlabel, logx in (("accuracy_vs_epochs.png", None, "epoch", False),
                                    ("accuracy_vs_updates.png", "updates_curve", "parameter updates", True)):
        curves = {}
        for s, r in summary.items():
            y = r["test_accuracy_curve"]
            x = np.arange(1, len(y) + 1) if key is None else r[key]
            curves[f"{s} ({r['updates']} updates)"] = (x, y)
        paths.append(common.plot_curves(os.path.join(workdir, name), curves, xlabel=xlabel, logx=logx,
                                        ylabel="test accuracy (%)", vlines=config.milestones if key is None else (),
                                        title=f"Test accuracy vs {xlabel} (Smith et al. Fig. 2)"))
    plans = [make_plan(config, train_size, s) for s in summary]
    path = os.path.join(workdir, "schedules.png")
    if common.is_chief():
        plans[0].plot(config.epochs, path, others=plans[1:])
    paths.append(path)
    return paths


def _markdown(config, summary, train, test):
    ref = summary.get("decay_lr")
    rows = []
    for s, r in summary.items():
        acc = common.pm(r["test_accuracy"], r["test_accuracy_std"] or None)
        d_acc = "—" if ref is None else f"{r['test_accuracy'] - ref['test_accuracy']:+.2f}"
        fewer = "—" if ref is None else f"{ref['updates'] / r['updates']:.2f}×"
        paper_fewer = f"{summary_paper_ratio(s):.2f}×"
        rows.append([s, acc, d_acc, r["updates"], fewer, r["max_batch"], f"{r['momentum']:g}",
                     f"{r['wall_time_s']:.0f}", r["paper_updates"], paper_fewer, PAPER_CLAIMS[s]])
    table = common.markdown_table(
        ["schedule", "test acc %", "Δ vs decay_lr", "updates", "fewer than decay_lr", "max batch", "momentum",
         "wall s", "paper recipe updates", "paper fewer", "paper's outcome"], rows)
    verdict = []
    main = [s for s in MAIN_SCHEDULES if s in summary]
    if len(main) > 1:
        accs = [summary[s]["test_accuracy"] for s in main]
        spread = max(accs) - min(accs)
        listed = ", ".join(f"{s} {a:.2f} %" for s, a in zip(main, accs))
        verdict.append(f"The {len(main)} main schedules end within **{spread:.2f}** points of test accuracy "
                       f"({listed}); the paper: "
                       "near-identical curves per epoch.")
    if ref is not None and "increase_batch" in summary:
        ratio = ref["updates"] / summary["increase_batch"]["updates"]
        verdict.append(f"Increasing the batch takes **{ratio:.2f}×** fewer parameter updates than decaying the LR "
                       f"({summary['increase_batch']['updates']} vs {ref['updates']}; the paper's recipe: "
                       f"{summary_paper_ratio('increase_batch'):.2f}×).")
    for s in ("scaled_lr_batch", "increase_momentum"):
        if s in summary and ref is not None:
            r = summary[s]
            verdict.append(f"{s}: {r['test_accuracy']:.2f} % ({r['test_accuracy'] - ref['test_accuracy']:+.2f} vs "
                           f"decay_lr) with {ref['updates'] / r['updates']:.1f}× fewer updates.")
    phase_rows = []
    for s, r in summary.items():
        for p in r["phases"]:
            phase_rows.append([s, f"{p['start_epoch']:g}–{p['end_epoch']:g}", f"{p['learning_rate']:.4g}",
                               p["batch_size"], p["accumulation"], f"{p['momentum']:g}", p["updates"]])
    lines = [
        f"# Smith et al. (2017) — {config.network} on {config.dataset}",
        "",
        f"- command: `{config.command or 'python reproductions/smith.py --preset=' + config.preset}`",
        f"- preset: {config.preset}; machine: {common.machine_description()}",
        f"- data: {train.size} train / {test.size} test examples; ε = {config.base_lr:g}, B = {config.base_batch}, "
        f"m = {config.momentum:g}; g ÷ {config.factor:g} at epochs {list(config.milestones)} of {config.epochs}; "
        f"max batch {config.max_batch}; scaled_lr_batch k = {config.scale:g}; increase_momentum m = "
        f"{config.target_momentum:g}; weight decay {config.weight_decay:g}; physical batch ≤ "
        f"{config.max_physical_batch} (larger batches accumulate); every schedule starts from the same initial "
        f"weights; seeds {list(config.seeds)}",
        "",
        *[f"- {v}" for v in verdict],
        "",
        "## Final test accuracy and parameter updates",
        "",
        "Mean ± sample std over seeds. Smith et al. give curves, not tables: the paper columns are the update "
        "counts of its WRN-16-4 / CIFAR-10 recipe (ε 0.1, B 128 → ≤ 5120, 200 epochs, computed by "
        "`bstf.NoiseScalePlan`) and its qualitative outcome.",
        "",
        table,
        "## Phases",
        "",
        common.markdown_table(["schedule", "epochs", "LR", "batch", "accumulation", "momentum", "updates"], phase_rows),
        "Plots: `accuracy_vs_epochs.png`, `accuracy_vs_updates.png` (Fig. 2 style), `schedules.png` (LR, batch, "
        "momentum and noise scale per epoch).",
    ]
    return "\n".join(lines)


def summary_paper_ratio(schedule):
    """decay_lr updates / ``schedule`` updates under the paper's recipe."""
    u = paper_updates()
    return u["decay_lr"] / u[schedule]


# ----------------------------------------------------------------------------- main
def main(argv):
    common.check_no_args(argv)
    run(common.config_from_flags(PRESETS, converters=CONVERTERS), common.workdir_from_flags("smith"))


if __name__ == "__main__":
    app.run(main)
