r"""Smith, Kindermans, Ying & Le (2017): don't decay the learning rate, increase the batch size.

SGD's noise g = εN/(B(1 − m)) (Smith et al.'s "noise scale"; bstf calls it the SGD noise) (ε LR, N training examples, B batch, m
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
same number of epochs through the shared runner
(:func:`reproductions.runner.fit_and_evaluate`: ``bstf.fit``, batches above
``max_physical_batch`` accumulate, then ``bstf.evaluate``). We report final
test accuracy, the number of parameter updates (equal to
``plan.total_updates(epochs)``) and ``train_seconds``, and plot test accuracy
against epochs (the schedules overlap) and against updates (increasing the
batch needs far fewer).

Outputs in ``--workdir``: ``results.json`` (``summary`` keyed by schedule —
``decay_lr``, ``hybrid``, ``increase_batch``, ``scaled_lr_batch``,
``increase_momentum`` — each a :func:`reproductions.runner.summarise` entry
plus ``planned_updates`` and ``paper_updates``; ``runs`` the per-seed run
records), ``results.md`` (beside the paper's outcomes),
``accuracy_vs_epochs.png``, ``accuracy_vs_updates.png`` (Fig. 2 style),
``schedules.png`` (LR, batch, momentum and g per epoch), and TensorBoard logs
under ``tensorboard/seed<N>/<schedule>`` (bstf.fit logs against examples seen,
so all schedules share one axis).

Run::

    python reproductions/smith.py --workdir=/tmp/smith                     # quick preset, CPU, minutes
    python reproductions/smith.py --preset=paper --data_dir=$HOME/tensorflow_datasets \
        --strategy=mirrored --workdir=/tmp/smith_cifar10                   # WRN-16-4 / CIFAR-10
    python reproductions/smith.py --preset=paper --smoke --workdir=/tmp/smith_smoke   # WRN-16-4, CPU, minutes

See docs/reproductions/smith.md.
"""

import dataclasses
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import bstf  # noqa: E402
from reproductions import common, networks, report, resnets, runner  # noqa: E402

SCHEDULES = ("decay_lr", "hybrid", "increase_batch", "scaled_lr_batch", "increase_momentum")
MAIN_SCHEDULES = SCHEDULES[:3]
NETWORKS = ("small_resnet", "wrn", "mlp")

common.define_flag("list", "schedules", None, "Schedules to train (default: all of " + ",".join(SCHEDULES) + ").")
common.define_flag("float", "base_lr", None, "Initial LR ε (default: the preset's; 0.1 in the paper).")
common.define_flag("integer", "base_batch", None, "Initial batch B (default: the preset's; 128 in the paper).")
common.define_flag("integer", "max_batch", None, "Largest batch of the plans (default: the preset's; 5120 in the paper).")

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

    The plan's fields use :class:`bstf.NoiseScalePlan`'s ``get_config`` names.

    Attributes:
      network: ``"small_resnet"`` (``width``, ``stages``, ``blocks``), ``"wrn"`` (``depth``, ``widen``) or
        ``"mlp"`` (``depth`` × [Dense ``width``, BN, ReLU], :func:`reproductions.networks.mlp`).
      base_lr, base_batch, base_momentum: ε, B and m of the first phase (0.1, 128, 0.9 in the paper).
      milestones, factor: g ÷ ``factor`` at these epochs (60, 120, 160 and 5 in the paper).
      max_batch: largest batch of the plans (5120 for CIFAR in the paper).
      hybrid_lr_milestones: how many leading milestones the hybrid realises by decaying ε.
      scale: k of ``scaled_lr_batch`` (ε and B × k).
      target_momentum: m of ``increase_momentum``.
      schedules: the schedules trained (subset of :data:`SCHEDULES`; the three main ones by default plus
        the two rescalings).
      weight_decay: L2 on kernels (5e-4 in the paper, the WRN default).
      augment: CIFAR augmentation (pad-4 random crop and flip) and standardisation of 32×32×3 images.
      tolerance: points of test accuracy within which two schedules count as matching (the verdicts).
    """

    network: str = "small_resnet"
    width: int = 12
    stages: int = 3
    blocks: int = 1
    depth: int = 16
    widen: int = 4
    base_lr: float = 0.05
    base_batch: int = 16
    base_momentum: float = 0.9
    milestones: tuple = (5, 10, 15)
    factor: float = 5.0
    max_batch: int = 640
    hybrid_lr_milestones: int = 1
    scale: float = 5.0
    target_momentum: float = 0.98
    schedules: tuple = SCHEDULES
    weight_decay: float = 5e-4
    augment: bool = False
    tolerance: float = 1.0
    max_physical_batch: int = 512
    eval_batch: int = 1000

    def __post_init__(self):
        super().__post_init__()
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}, got {self.network!r}.")
        for name in ("width", "stages", "blocks", "depth", "widen", "base_batch", "max_batch"):
            common.check_int(name, getattr(self, name))
        common.check_int("hybrid_lr_milestones", self.hybrid_lr_milestones, low=0)
        schedules = tuple(self.schedules)
        if not schedules or any(s not in SCHEDULES for s in schedules) or len(set(schedules)) != len(schedules):
            raise ValueError(f"schedules must be distinct names from {SCHEDULES}, got {self.schedules!r}.")
        object.__setattr__(self, "schedules", schedules)
        object.__setattr__(self, "milestones", tuple(self.milestones))
        common.check_positive("base_lr", self.base_lr)
        common.check_fraction("base_momentum", self.base_momentum)
        common.check_fraction("target_momentum", self.target_momentum)
        common.check_positive("scale", self.scale)
        common.check_positive("tolerance", self.tolerance)
        if self.max_batch < self.base_batch:
            raise ValueError(f"max_batch ({self.max_batch}) must be >= base_batch ({self.base_batch}).")
        # The plan validates the milestones and the factor: build one to fail early.
        bstf.NoiseScalePlan(1, self.base_lr, self.base_batch, base_momentum=self.base_momentum,
                            milestones=self.milestones, factor=self.factor)

    def base_plan(self, train_size, mode="decay_lr"):
        """The g-schedule as a :class:`bstf.NoiseScalePlan` realised by ``mode``."""
        return bstf.NoiseScalePlan(train_size, self.base_lr, self.base_batch, base_momentum=self.base_momentum,
                                   milestones=tuple(m for m in self.milestones if m < self.epochs),
                                   factor=self.factor, mode=mode, max_batch=self.max_batch,
                                   hybrid_lr_milestones=self.hybrid_lr_milestones)


# ----------------------------------------------------------------------------- presets
def quick():
    """Quick preset: MLP on MNIST-1D, ε = 0.05, B = 16 → 640, 20 epochs, 3 seeds; minutes on 2 CPUs.

    ``python reproductions/smith.py --workdir=/tmp/smith``

    MNIST-1D (8000 train / 2000 test, offline) with the MLP 3 × [Dense 256,
    BN, ReLU] (Keskar's F1-small) and weight decay 5e-4 on its kernels: the
    task chosen by the pilot of docs/results/pilots.md — decay_lr ends near
    76 % (a ResNet reaches 98–99 % on MNIST-1D, so every schedule saturated),
    and a schedule whose noise never decays ends 8–9 points lower, so the
    task can tell g-schedules apart. Smith's 200-epoch schedule is compressed
    10× with the phases made equal (g ÷ 5 at epochs 5, 10, 15 of 20), B = 16
    growing at most 40× (to 640 = 8 % of the data, as 128 → 5120 is 10 % of
    CIFAR-10), m = 0.9; ``scaled_lr_batch`` uses k = 5 and
    ``increase_momentum`` m = 0.98 (B × 5).
    """
    return SmithConfig(preset="quick", dataset="mnist1d", dataset_kwargs={"num_samples": 10000}, network="mlp",
                       width=256, depth=3, seeds=(0, 1, 2), epochs=20)


def paper():
    """Paper preset: WRN-16-4 on CIFAR-10 (TFDS cifar10), ε = 0.1, B = 128, m = 0.9, factor 5, 200 epochs.

    ``python reproductions/smith.py --preset=paper --data_dir=DIR --strategy=mirrored --workdir=/tmp/smith_cifar10``

    Smith et al.'s Sec. 5.1 recipe: g ÷ 5 at epochs 60, 120, 160; batch at most
    5120; weight decay 5e-4; pad-4 crop + flip augmentation. The rescalings
    of Sec. 5.2 use k = 5 (ε 0.5, B 640) and m = 0.98. Physical batch 512
    (beyond it, accumulation; BN statistics per 512-example micro-batch — the
    paper uses ghost batch norm over 128).
    """
    r = PAPER_RECIPE
    return SmithConfig(preset="paper", dataset="tfds:cifar10", network="wrn", depth=16, widen=4,
                       base_lr=r["base_lr"], base_batch=r["base_batch"], base_momentum=r["base_momentum"],
                       milestones=r["milestones"], factor=r["factor"], max_batch=r["max_batch"], scale=r["scale"],
                       target_momentum=r["target_momentum"], weight_decay=5e-4, max_physical_batch=512, augment=True,
                       seeds=(0,), epochs=r["epochs"])


def tiny():
    """Tiny preset: seconds, for tests (the pipeline end to end, two schedules, accumulation).

    ``python reproductions/smith.py --preset=tiny --workdir=/tmp/smith_tiny``
    """
    return SmithConfig(preset="tiny", dataset="mnist1d", dataset_kwargs={"num_samples": 500}, width=4, stages=2,
                       base_batch=8, milestones=(1, 2), epochs=3, max_batch=64, max_physical_batch=16, scale=2,
                       target_momentum=0.95, schedules=("decay_lr", "increase_batch"), eval_batch=100)


PRESETS = {"quick": quick, "paper": paper, "tiny": tiny}
CONVERTERS = {"schedules": tuple}
SMOKE_SCALE = 32
"""``--smoke`` divides the paper's global and physical batches by this (the accumulation factors stay)."""


def smoke(config):
    """The paper config as a smoke run: WRN-16-4 on generated 32×32×3 images, every schedule, 4 epochs.

    ``python reproductions/smith.py --preset=paper --smoke --workdir=/tmp/smith_smoke``

    The paper's batches ÷ :data:`SMOKE_SCALE` (B 128 → 4, max batch 5120 → 160,
    physical 512 → 16: the 5120 phase accumulates 10 micro-batches, as in the
    paper), its milestones compressed to epochs 1, 2, 3 of 4 (every phase of every
    schedule runs), CIFAR augmentation on, a training set as large as the
    largest batch (each epoch has at least one update at it).
    """
    s = SMOKE_SCALE
    config = dataclasses.replace(config, base_batch=config.base_batch // s, max_batch=config.max_batch // s,
                                 max_physical_batch=config.max_physical_batch // s, milestones=(1, 2, 3), epochs=4,
                                 seeds=(0,), eval_batch=64, smoke=True)
    n = max(make_plan(config, 10 ** 6, schedule).max_batch_used for schedule in config.schedules)
    return dataclasses.replace(config, dataset=common.GENERATED, test_split="test", dataset_kwargs=dict(
        input_shape=(32, 32, 3), num_classes=10, train_size=n, test_size=64))


def config_from_flags():
    """The preset's config with the command-line flags applied (``--smoke``: :func:`smoke`)."""
    return common.config_from_flags(PRESETS, converters=CONVERTERS, smoke=smoke)


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
                      base_momentum=r["base_momentum"], milestones=r["milestones"], factor=r["factor"],
                      max_batch=r["max_batch"], scale=r["scale"], target_momentum=r["target_momentum"],
                      epochs=r["epochs"])
    return {s: make_plan(cfg, r["train_size"], s).total_updates(r["epochs"]) for s in SCHEDULES}


# ----------------------------------------------------------------------------- the experiment
def build_model(config, data, momentum=None):
    """The config's network compiled with SGD at ``momentum`` (the LR comes from the plan)."""
    if config.network == "wrn":
        model = resnets.wrn(data.input_shape, data.num_classes, depth=config.depth, widen=config.widen,
                            weight_decay=config.weight_decay)
    elif config.network == "mlp":
        model = resnets.with_kernel_weight_decay(
            networks.mlp(data.input_shape, data.num_classes, config.width, config.depth), config.weight_decay)
    else:
        model = resnets.small_resnet(data.input_shape, data.num_classes, width=config.width, stages=config.stages,
                                     blocks=config.blocks, weight_decay=config.weight_decay)
    m = config.base_momentum if momentum is None else momentum
    return runner.compile_classifier(model, keras.optimizers.SGD(config.base_lr, momentum=m), config.jit_compile)


def _augment(config):
    if not config.augment:
        return None
    return lambda train, test: (resnets.map_data(train, resnets.cifar_train, (32, 32, 3)),
                                resnets.map_data(test, resnets.cifar_eval, (32, 32, 3)))


def prepare(config):
    """Strategy and data of ``config``; every batch of every schedule checked before training."""
    def batches(n):
        return [p.batch_size for s in config.schedules for p in make_plan(config, n, s).phases(config.epochs)]

    return common.prepare(config, batches, transform=_augment(config))


def run_seed(setup, seed, workdir):
    """Every schedule of one seed from the same initial weights: {schedule: run record}."""
    config, train = setup.config, setup.train
    init = runner.initial_weights(setup, lambda: build_model(config, train), seed)
    out = {"seed": seed}
    for schedule in config.schedules:
        plan = make_plan(config, train.size, schedule)
        run = runner.Run(f"seed{seed}/{schedule}", plan, config.epochs, seed, {"schedule": schedule},
                         max_physical_batch=config.max_physical_batch)
        record, _ = runner.fit_and_evaluate(setup, run, lambda: build_model(config, train, plan.momentum_value),
                                            workdir, init=init)
        common.log("seed %d %s: test %.2f%%, %d updates, max batch %d, %.0f s", seed, schedule,
                   record["test_accuracy"], record["updates"], record["max_batch"], record["train_seconds"])
        out[schedule] = record
    return out


def execute(setup, workdir):
    """Runs the prepared experiment; writes results.json/results.md/PNGs/TensorBoard in ``workdir``."""
    config, train, test = setup.config, setup.train, setup.test
    common.log("Smith: %s on %s (%d train, %d test), ε %g, B %d, m %g, g ÷ %g at %s, schedules %s, seeds %s",
               config.network, config.dataset, train.size, test.size, config.base_lr, config.base_batch,
               config.base_momentum, config.factor, config.milestones, config.schedules, config.seeds)
    runs = [run_seed(setup, seed, workdir) for seed in config.seeds]
    summary = summarise(config, runs, train.size)
    verdicts = verdict_rows(config, summary)
    pngs = _plots(config, summary, workdir, train.size)
    markdown = _markdown(config, summary, verdicts, train, test)
    runner.write_summary_board(workdir, pngs, markdown)
    return report.write_results(workdir, summary=summary, runs=runs, config=config, markdown=markdown,
                                paper={"recipe": PAPER_RECIPE, "updates": paper_updates(), "claims": PAPER_CLAIMS},
                                verdicts=[dict(zip(("claim", "paper", "ours", "verdict"), v)) for v in verdicts])


def run(config, workdir):
    """:func:`prepare` then :func:`execute` (the testable whole experiment)."""
    return execute(prepare(config), workdir)


def summarise(config, runs, train_size):
    """{schedule: :func:`runner.summarise` over seeds, update counts, and the comparison with decay_lr}.

    Besides the runner's keys each entry has ``planned_updates`` (the plan's count), ``paper_updates``
    (the paper recipe's), ``updates_to_target`` (updates of the first epoch whose mean test accuracy
    reaches ``target_accuracy`` = decay_lr's final mean − ``tolerance``; None if never) and, when decay_lr
    ran, :func:`compare_curves`'s keys (``largest_gap``, ``largest_gap_spread``, ``largest_gap_epoch``,
    ``final_gap``, ``final_gap_spread``, ``gap_curve``).
    """
    paper = paper_updates()
    summary = {s: {**runner.summarise([r[s] for r in runs]),
                   "planned_updates": make_plan(config, train_size, s).total_updates(config.epochs),
                   "paper_updates": paper[s]}
               for s in config.schedules}
    if "decay_lr" in summary:
        target = summary["decay_lr"]["test_accuracy"] - config.tolerance
        for s, entry in summary.items():
            entry["target_accuracy"] = target
            entry["updates_to_target"] = updates_to_reach(entry["curves"], target)
            if s != "decay_lr":
                entry.update(compare_curves(config, [r[s] for r in runs], [r["decay_lr"] for r in runs]))
    return summary


def first_decay(config):
    """The epoch of the first milestone inside the run (0 without one): curves are compared after it."""
    inside = [m for m in config.milestones if m < config.epochs]
    return int(min(inside)) if inside else 0


def compare_curves(config, records, reference):
    """Test-accuracy gap of one schedule to the reference at equal epochs after the first decay.

    Args:
      config: the :class:`SmithConfig`.
      records, reference: the per-seed run records of the schedule and of decay_lr (same seeds).

    Returns:
      ``largest_gap`` (points, schedule − reference, mean over seeds) at the epoch after the first
      decay where its magnitude is largest, its ``largest_gap_spread`` (:func:`report.difference`) and
      ``largest_gap_epoch`` (1-based: the end of that epoch); ``final_gap`` and ``final_gap_spread`` of
      the final test accuracy; ``gap_curve`` the mean gap at every epoch after the first decay.
    """
    start = first_decay(config)
    ours = np.array([r["curves"]["val_accuracy"] for r in records], np.float64)
    ref = np.array([r["curves"]["val_accuracy"] for r in reference], np.float64)
    gaps = [report.difference(ours[:, e], ref[:, e]) for e in range(start, ours.shape[1])]
    worst = max(range(len(gaps)), key=lambda i: abs(gaps[i].diff) if np.isfinite(gaps[i].diff) else np.inf)
    final = report.difference([r["test_accuracy"] for r in records], [r["test_accuracy"] for r in reference])
    return {"largest_gap": gaps[worst].diff, "largest_gap_spread": gaps[worst].spread,
            "largest_gap_epoch": start + worst + 1, "final_gap": final.diff, "final_gap_spread": final.spread,
            "gap_curve": [g.diff for g in gaps]}


def updates_to_reach(curves, target):
    """Updates at the end of the first epoch whose (mean) test accuracy is ≥ ``target``; None if none is."""
    for accuracy, updates in zip(curves["val_accuracy"], curves["updates"]):
        if accuracy >= target:
            return int(round(updates))
    return None


def _gap(entry, key):
    return report.Difference(entry[key], entry[f"{key}_spread"], len(entry["seeds"]))


def verdict_rows(config, summary):
    """(claim, paper, ours, verdict) rows: each claim of the paper checked against the spread over seeds."""
    if "decay_lr" not in summary:
        return []
    ref, tol, rows = summary["decay_lr"], config.tolerance, []
    for s in ("hybrid", "increase_batch"):
        if s in summary:
            e = summary[s]
            largest = _gap(e, "largest_gap")
            rows.append((f"{s}: the same test accuracy as decay_lr at every epoch (Fig. 2a)",
                         "curves overlap", f"largest gap after the first decay {largest.text()} points (epoch "
                         f"{e['largest_gap_epoch']}); final {_gap(e, 'final_gap').text()}; tolerance {tol:g}",
                         report.equality_verdict(largest, tol)))
    if "increase_batch" in summary:
        e = summary["increase_batch"]
        final = _gap(e, "final_gap")  # "no worse than decay_lr" (ending higher does not contradict Fig. 2b)
        no_worse = report.bound_verdict(report.Difference(-final.diff, final.spread, final.seeds), tol)
        reach, ref_reach = e["updates_to_target"], ref["updates_to_target"]
        fewer = reach is not None and ref_reach is not None and reach < ref_reach
        verdict = no_worse if no_worse != report.REPRODUCED else (
            report.REPRODUCED if fewer else report.NOT_REPRODUCED)
        rows.append(("increase_batch: decay_lr's accuracy with far fewer parameter updates (Fig. 2b)",
                     f"{summary_paper_ratio('increase_batch'):.2f}× fewer (the recipe's count)",
                     f"{ref['updates'] / e['updates']:.2f}× fewer in total; {_reached(e)} vs {_reached(ref)} updates "
                     f"to reach {e['target_accuracy']:.2f} % (decay_lr's final − {tol:g}); final {final.text()} points", verdict))
    if "scaled_lr_batch" in summary:
        e = summary["scaled_lr_batch"]
        rows.append(("scaled_lr_batch (B ∝ ε): similar test accuracy, fewer updates still (Sec. 5.2)",
                     f"{summary_paper_ratio('scaled_lr_batch'):.2f}× fewer", f"final {_gap(e, 'final_gap').text()} "
                     f"points, {ref['updates'] / e['updates']:.2f}× fewer updates; tolerance {tol:g}",
                     report.equality_verdict(_gap(e, "final_gap"), tol)))
    if "increase_momentum" in summary:
        e = summary["increase_momentum"]
        rows.append(("increase_momentum (B ∝ 1/(1 − m)): slightly lower test accuracy (Sec. 5.2)",
                     "slightly lower", f"final {_gap(e, 'final_gap').text()} points",
                     report.direction_verdict(_gap(e, "final_gap"), sign=-1)))
    return rows


def _reached(entry):
    return "never" if entry["updates_to_target"] is None else str(entry["updates_to_target"])


# ----------------------------------------------------------------------------- report
def _plots(config, summary, workdir, train_size):
    paths = []
    for name, key, xlabel, logx in (("accuracy_vs_epochs.png", None, "epoch", False),
                                    ("accuracy_vs_updates.png", "updates", "parameter updates", True)):
        curves = {}
        for s, r in summary.items():
            y = r["curves"]["val_accuracy"]
            x = np.arange(1, len(y) + 1) if key is None else r["curves"][key]
            curves[f"{s} ({r['updates']} updates)"] = (x, y)
        paths.append(report.plot_curves(os.path.join(workdir, name), curves, xlabel=xlabel, logx=logx,
                                        ylabel="test accuracy (%)", vlines=config.milestones if key is None else (),
                                        title=f"Test accuracy vs {xlabel} (Smith et al. Fig. 2)"))
    plans = [make_plan(config, train_size, s) for s in summary]
    path = os.path.join(workdir, "schedules.png")
    if common.is_chief():
        plans[0].plot(config.epochs, path, others=plans[1:])
    paths.append(path)
    return paths


def _final_table(summary):
    """Final test accuracy and updates of every schedule beside the paper recipe's update counts."""
    ref = summary.get("decay_lr")
    rows = []
    for s, r in summary.items():
        acc = report.pm(r["test_accuracy_per_seed"])
        d_acc = "—" if ref is None else f"{r['test_accuracy'] - ref['test_accuracy']:+.2f}"
        fewer = "—" if ref is None else f"{ref['updates'] / r['updates']:.2f}×"
        paper_fewer = f"{summary_paper_ratio(s):.2f}×"
        rows.append([s, acc, d_acc, r["updates"], fewer, r["max_batch"], f"{r['momentum']:g}",
                     f"{r['train_seconds']:.0f}", r["paper_updates"], paper_fewer, PAPER_CLAIMS[s]])
    return report.markdown_table(
        ["schedule", "test acc %", "Δ vs decay_lr", "updates", "fewer than decay_lr", "max batch", "momentum",
         "train s", "paper recipe updates", "paper fewer", "paper's outcome"], rows)


def _notes(summary):
    """The update saving of increase_batch and the reference arm's headroom, one line each."""
    ref, notes = summary.get("decay_lr"), []
    if ref is not None and "increase_batch" in summary:
        ratio = ref["updates"] / summary["increase_batch"]["updates"]
        notes.append(f"Increasing the batch takes **{ratio:.2f}×** fewer parameter updates than decaying the LR "
                     f"({summary['increase_batch']['updates']} vs {ref['updates']}; the paper's recipe: "
                     f"{summary_paper_ratio('increase_batch'):.2f}×).")
    if ref is not None:
        notes.append(f"Headroom: decay_lr ends at {report.pm(ref['test_accuracy_per_seed'])} % test accuracy, train "
                     f"{ref['train_accuracy']:.2f} %.")
    return notes


def _markdown(config, summary, verdicts, train, test):
    lines = [
        f"# Smith et al. (2017) — {config.network} on {config.dataset}",
        "",
        f"- command: `{config.command or 'python reproductions/smith.py --preset=' + config.preset}`",
        f"- preset: {config.preset}{' (smoke run: generated data)' if config.smoke else ''}; machine: "
        f"{report.machine_description()}",
        f"- data: {train.size} train / {test.size} test examples; ε = {config.base_lr:g}, B = {config.base_batch}, "
        f"m = {config.base_momentum:g}; g ÷ {config.factor:g} at epochs {list(config.milestones)} of {config.epochs}; "
        f"max batch {config.max_batch}; scaled_lr_batch k = {config.scale:g}; increase_momentum m = "
        f"{config.target_momentum:g}; weight decay {config.weight_decay:g}; physical batch ≤ "
        f"{config.max_physical_batch} (larger batches accumulate); every schedule starts from the same initial "
        f"weights; seeds {list(config.seeds)}",
        *[f"- {n}" for n in _notes(summary)],
        "",
        *_verdict_section(verdicts),
        *_curve_section(config, summary),
        "## Final test accuracy and parameter updates",
        "",
        "Mean ± sample std over seeds. Smith et al. give curves, not tables: the paper columns are the update "
        "counts of its WRN-16-4 / CIFAR-10 recipe (ε 0.1, B 128 → ≤ 5120, 200 epochs, computed by "
        "`bstf.NoiseScalePlan`) and its qualitative outcome.",
        "",
        _final_table(summary),
        "## Phases",
        "",
        report.markdown_table(["schedule", "epochs", "LR", "batch", "accumulation", "momentum", "SGD noise g",
                               "updates"], _phase_rows(summary)),
        "Plots: `accuracy_vs_epochs.png`, `accuracy_vs_updates.png` (Fig. 2 style), `schedules.png` (LR, batch, "
        "momentum and SGD noise g per epoch).",
    ]
    return "\n".join(lines)


def _verdict_section(verdicts):
    if not verdicts:
        return []
    return ["## Verdicts", "", report.VERDICT_RULE, "", report.verdict_table(verdicts)]


def _curve_section(config, summary):
    """The curve comparison (Fig. 2a: per epoch; Fig. 2b: per update) as a table."""
    if "decay_lr" not in summary:
        return []
    rows = []
    for s, e in summary.items():
        largest = "—" if s == "decay_lr" else f"{_gap(e, 'largest_gap').text()} (epoch {e['largest_gap_epoch']})"
        final = "—" if s == "decay_lr" else _gap(e, "final_gap").text()
        rows.append([s, largest, final, e["updates"], _reached(e)])
    target = summary["decay_lr"]["target_accuracy"]
    return ["## Curves after the first decay", "",
            f"Test accuracy of each schedule minus decay_lr's at equal epochs after the first decay (epoch "
            f"{first_decay(config)}), mean over seeds ± spread: the largest gap and the final one; and the "
            f"parameter updates each schedule needs before its mean test accuracy reaches {target:.2f} % "
            f"(decay_lr's final − {config.tolerance:g}; `accuracy_vs_updates.png`).", "",
            report.markdown_table(["schedule", "largest gap (points)", "final gap (points)", "updates in total",
                                   f"updates to reach {target:.2f} %"], rows)]


def _phase_rows(summary):
    rows = []
    for s, r in summary.items():
        for p in r["phases"]:
            rows.append([s, f"{p['start_epoch']:g}–{p['end_epoch']:g}", f"{p['learning_rate']:.4g}",
                         p["batch_size"], p["accumulation"], f"{p['momentum']:g}", f"{p['sgd_noise']:.4g}",
                         p["updates"]])
    return rows


def summary_paper_ratio(schedule):
    """decay_lr updates / ``schedule`` updates under the paper's recipe."""
    u = paper_updates()
    return u["decay_lr"] / u[schedule]


# ----------------------------------------------------------------------------- main
if __name__ == "__main__":
    common.run_script("smith", config_from_flags, prepare, execute)
