"""Internal parts of :func:`bstf.fit` and :func:`bstf.evaluate` (not public API).

One concern per module; the loop itself lives in ``bstf/training.py``:

* ``steps``      — step functions under every tf.distribute strategy (Keras's fail under multi-worker).
* ``checks``     — what is checked before the first step: plan, data against the plan and the model,
                   directories.
* ``spec``       — the run's validated arguments and its phases.
* ``stream``     — the example stream: seeded shuffle, position-addressable, batched per phase.
* ``state``      — the run state: one atomic checkpoint (weights, optimizer, clock, metrics, record),
                   restore with fallback, the directory lock.
* ``report``     — progress bar, TensorBoard, history and phase records.
"""
