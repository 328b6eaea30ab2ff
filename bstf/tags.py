"""The TensorBoard tags :func:`bstf.fit` writes: one constant per tag, the one place their names live.

``bstf.fit(..., logdir=d)`` writes two runs, ``d/train`` (:data:`TRAIN`) and ``d/validation``
(:data:`VALIDATION`). The words are those of the glossary (docs/concepts.md): the global batch ``B``
(``batch_size``), the physical batch ``b`` (``physical_batch``), the accumulation steps ``k``
(``accumulation``), examples seen, updates, the SGD noise ``g`` (``sgd_noise``) and the gradient noise
scale ``B_simple`` (``measured_b_simple``).

Per-update tags (run ``train``, every ``log_every_n_updates`` updates), stepped by the examples seen when
the update starts:

* :data:`LEARNING_RATE`, :data:`MOMENTUM` — read from the optimizer before the update runs;
* :data:`BATCH_SIZE`, :data:`PHYSICAL_BATCH`, :data:`ACCUMULATION`, :data:`SGD_NOISE` — the phase as run;
* :data:`EPOCH`, :data:`UPDATES` (after the update), :data:`EXAMPLES_SEEN`, :data:`BATCH_LOSS`;
* :data:`SKIPPED_UPDATES` — with ``on_nonfinite="skip"`` or a loss scale: updates skipped so far;
* :data:`LOSS_SCALE` — with a ``LossScaleOptimizer`` (``mixed_float16``): the scale the update used.

Noise-scale measurement (``noise_scale_every_n_updates``), stepped by the examples seen after the update:
:data:`MEASURED_B_SIMPLE`, :data:`MEASURED_GRAD_NORM_SQ`, :data:`MEASURED_TRACE_SIGMA`.

Batch controller (``adaptive=``): :data:`ADASCALE_PROGRESS` every ``log_every_n_updates`` updates, stepped by
the examples seen when the update starts; a :class:`bstf.analysis.GoodputBatch`'s decisions, stepped by the
examples seen at the decision: :func:`decision` of every field of :class:`bstf.analysis.GoodputDecision` —
among them :data:`DECISION_BATCH` (the chosen B), :data:`DECISION_THROUGHPUT` (predicted),
:data:`DECISION_EFFICIENCY` and :data:`DECISION_GOODPUT`.

Per-epoch metric tags (runs ``train`` and ``validation``; Keras's ``epoch_`` naming):
:func:`epoch_metric` (step: the epoch, 1-based) and :func:`examples_metric` (step: examples seen — the
axis on which runs with different batch schedules compare). At the end of the run, in ``train``:
:func:`final_metric` of every history key. At step 0: the image :data:`PLAN` and the run's hparams.
"""

TRAIN = "train"
"""Run (sub-directory of ``logdir``) of the training scalars."""
VALIDATION = "validation"
"""Run of the validation metrics."""

LEARNING_RATE = "learning_rate"
"""The learning rate ε the update used."""
MOMENTUM = "momentum"
"""The momentum m the update used."""
BATCH_SIZE = "batch_size"
"""The global batch B: examples per update."""
PHYSICAL_BATCH = "physical_batch"
"""The physical batch b: global examples fed to the model at once (b = B / k)."""
ACCUMULATION = "accumulation"
"""The accumulation steps k: micro-batches per update."""
SGD_NOISE = "sgd_noise"
"""Smith et al.'s SGD noise g = εN/(B(1 − m)) of the update (the tag was ``noise_scale`` in bstf 0.1)."""
EPOCH = "epoch"
"""Epochs elapsed when the update starts (examples seen / N)."""
UPDATES = "updates"
"""Parameter updates of the run after this one."""
EXAMPLES_SEEN = "examples_seen"
"""Examples seen when the update starts (the clock)."""
BATCH_LOSS = "batch_loss"
"""The training loss after the update: Keras's running mean over the epoch so far."""
SKIPPED_UPDATES = "skipped_updates"
"""Updates skipped so far because their gradient was not finite (``on_nonfinite="skip"``), or, under
``mixed_float16``, because a micro-batch's scaled gradient overflowed (the loss scale skipped it)."""
LOSS_SCALE = "loss_scale"
"""The dynamic loss scale the update's micro-batches were multiplied by (``mixed_float16`` only)."""

MEASURED_B_SIMPLE = "measured_b_simple"
"""McCandlish et al.'s gradient noise scale B_simple = tr Σ / |G|² (EMA of the two-batch estimates)."""
MEASURED_GRAD_NORM_SQ = "measured_grad_norm_sq"
"""The estimate of |G|², the squared norm of the true gradient."""
MEASURED_TRACE_SIGMA = "measured_trace_sigma"
"""The estimate of tr Σ, the per-example gradient variance."""

ADASCALE_PROGRESS = "adascale_progress"
"""AdaScale's scale-invariant progress Σ r·B₀ in base-batch examples (Johnson et al. 2020), beside examples seen."""


def decision(field):
    """Tag of field ``field`` of a :class:`bstf.analysis.GoodputDecision`: ``decision_<field>``."""
    return f"decision_{field}"


DECISION_BATCH = decision("batch")
"""The global batch B the goodput controller chose."""
DECISION_THROUGHPUT = decision("throughput")
"""Its predicted throughput (examples per second) from the run's own timings."""
DECISION_EFFICIENCY = decision("efficiency")
"""Its statistical efficiency E(B) = (B_simple + B₀)/(B_simple + B) relative to the base batch."""
DECISION_GOODPUT = decision("goodput")
"""throughput × efficiency: base-batch examples' worth of progress per second."""

PLAN = "plan"
"""The plan's PNG (learning rate, batch, momentum, SGD noise against epochs), at step 0."""


def epoch_metric(name):
    """Tag of metric ``name`` (e.g. ``"loss"``) per epoch, stepped by the epoch: ``epoch_<name>``."""
    return f"epoch_{name}"


def examples_metric(name):
    """Tag of metric ``name`` per epoch, stepped by the examples seen: ``examples_<name>``."""
    return f"examples_{name}"


def final_metric(name):
    """Tag of history key ``name``'s last value, written once at the end of the run: ``final_<name>``."""
    return f"final_{name}"
