"""Internal parts of :func:`bstf.fit` and :func:`bstf.evaluate` (not public API).

One concern per module; the loop itself lives in ``bstf/training.py``:

* ``spec``       — the run's validated arguments (:class:`~bstf.fitting.spec.RunSpec`) and its phases
                   (the plan's :class:`bstf.plan.Phase` with the physical batch and accumulation).
* ``checks``     — what is checked before the first step: plan, data against the plan and the model,
                   directories, the optimizer.
* ``stream``     — the example stream: seeded shuffle, position-addressable, batched per phase.
* ``trainer``    — one update: the optimizer set up for the plan (schedules, Accumulate, held values),
                   the traced step and its cache, the noise-scale meter.
* ``guard``      — the non-finite guard: stop at (``"raise"``) or skip (``"skip"``) a non-finite update.
* ``steps``      — step functions under every tf.distribute strategy (Keras's fail under multi-worker).
* ``state``      — the run state: one atomic checkpoint (weights, optimizer, clock, metrics, record),
                   restore with fallback, the directory lock.
* ``report``     — the ledger (counters, History, phase records), TensorBoard (tags from :mod:`bstf.tags`)
                   and the progress bar.
"""
