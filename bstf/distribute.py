"""tf.distribute strategies by name, with clear errors.

``get_strategy(name)`` names:

* ``"default"`` — no distribution (``tf.distribute.get_strategy()``);
* ``"one_device"`` — ``OneDeviceStrategy`` on the first GPU, else the CPU;
* ``"mirrored"`` — ``MirroredStrategy`` over all local GPUs. On a machine
  without GPUs it mirrors over the logical CPUs: ``num_cpu_devices=N`` splits
  the CPU into ``N`` logical devices (possible only before TensorFlow
  initialises its devices; if they already exist it uses the first ``N``), so
  data parallelism can be run and tested on one CPU;
* ``"multi_worker"`` — ``MultiWorkerMirroredStrategy`` from the ``TF_CONFIG``
  environment variable (every worker runs the same program);
* ``"tpu"`` — ``TPUStrategy`` on the TPU named by ``tpu`` (``"local"`` on a
  Cloud TPU VM, a TPU name with ``zone``/``project``, or ``grpc://host:port``).
  When no TPU answers, a ``RuntimeError`` says so instead of a TF stack trace.

``check_global_batch(batch, strategy)`` returns the per-replica batch and
refuses a global batch that does not divide by the replica count;
``is_chief(strategy)`` tells which process should log and save.

Example::

    strategy = bstf.distribute.get_strategy("mirrored", num_cpu_devices=2)
    per_replica = bstf.distribute.check_global_batch(256, strategy)   # 128
"""

import json
import numbers
import os
import socket
from urllib.parse import urlparse

import tensorflow as tf

NAMES = ("default", "one_device", "mirrored", "multi_worker", "tpu")


def get_strategy(name="default", *, num_cpu_devices=None, tpu=None, zone=None, project=None):
    """A ``tf.distribute.Strategy`` by name.

    Args:
      name: one of ``NAMES`` (see the module docstring). A
        ``tf.distribute.Strategy`` instance is returned unchanged.
      num_cpu_devices: for ``"mirrored"`` only: mirror over this many logical
        CPU devices (splitting the CPU if TensorFlow is not initialised yet).
      tpu, zone, project: for ``"tpu"`` only: where the TPU is
        (``tf.distribute.cluster_resolver.TPUClusterResolver`` arguments).

    Raises:
      ValueError: unknown name, arguments that do not apply to the strategy,
        missing or invalid ``TF_CONFIG``.
      RuntimeError: no TPU found; the CPU cannot be split any more.
    """
    if isinstance(name, tf.distribute.Strategy):
        return name
    if name not in NAMES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {NAMES}.")
    if num_cpu_devices is not None and name != "mirrored":
        raise ValueError(f"num_cpu_devices only applies to 'mirrored', got strategy {name!r}.")
    given = {k: v for k, v in (("tpu", tpu), ("zone", zone), ("project", project)) if v is not None}
    if given and name != "tpu":
        raise ValueError(f"{', '.join(given)} only apply to 'tpu', got strategy {name!r}.")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        return _mirrored(num_cpu_devices)
    if name == "multi_worker":
        return _multi_worker()
    return _tpu(tpu, zone, project)


def _mirrored(num_cpu_devices):
    if num_cpu_devices is not None:
        if isinstance(num_cpu_devices, bool) or not isinstance(num_cpu_devices, numbers.Integral) \
                or num_cpu_devices < 1:
            raise ValueError(f"num_cpu_devices must be a positive integer, got {num_cpu_devices!r}.")
        split_cpu(int(num_cpu_devices))
        cpus = tf.config.list_logical_devices("CPU")[: int(num_cpu_devices)]
        # Logical CPUs share memory: reducing on one device is as fast as collectives and avoids
        # TensorFlow's reuse of collective instance keys across strategies in one process.
        return tf.distribute.MirroredStrategy([c.name for c in cpus],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    # CPU only: the same one-device reduction as above (collectives reuse instance keys across strategies
    # in one process: a second MirroredStrategy's CollectiveReduceV2 fails).
    return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")],
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


def split_cpu(num_devices):
    """Splits the CPU into ``num_devices`` logical devices.

    Works only before TensorFlow initialises its devices (any op, or listing
    logical devices, does). If TensorFlow already has at least
    ``num_devices`` logical CPUs this is a no-op; otherwise ``RuntimeError``.
    """
    if isinstance(num_devices, bool) or not isinstance(num_devices, numbers.Integral) or num_devices < 1:
        raise ValueError(f"num_devices must be a positive integer, got {num_devices!r}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    existing = tf.config.get_logical_device_configuration(cpu)
    if existing is not None and len(existing) >= num_devices:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have < num_devices:
            raise RuntimeError(
                f"cannot split the CPU into {num_devices} logical devices: TensorFlow is already "
                f"initialised with {have}. Call bstf.distribute.get_strategy('mirrored', "
                f"num_cpu_devices={num_devices}) before any other TensorFlow operation."
            ) from None


def _multi_worker():
    raw = os.environ.get("TF_CONFIG")
    example = '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
    if not raw:
        raise ValueError(
            "strategy 'multi_worker' needs the TF_CONFIG environment variable, set on every worker, "
            f"e.g. {example}."
        )
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        task_type, index = task["type"], int(task["index"])
        members = cluster[task_type]
        if not isinstance(members, list) or not 0 <= index < len(members):
            raise ValueError(f"task index {index} is not in cluster[{task_type!r}] = {members!r}")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"TF_CONFIG is not valid for 'multi_worker' ({type(e).__name__}: {e}); got {raw}; "
            f"expected e.g. {example}."
        ) from None
    return tf.distribute.MultiWorkerMirroredStrategy()


def _tpu(tpu, zone, project):
    where = f"at {tpu!r}" if tpu else "(no --tpu given and none found in the environment)"
    advice = (
        "On a Cloud TPU VM pass --tpu=local; otherwise pass the TPU name with --tpu (and --zone, "
        "--project) or its grpc://host:port address, or choose another strategy "
        f"({', '.join(n for n in NAMES if n != 'tpu')})."
    )
    if tpu and str(tpu).startswith("grpc://"):
        # Connecting to an address nobody listens on hangs inside TensorFlow; fail fast instead.
        url = urlparse(str(tpu))
        try:
            socket.create_connection((url.hostname, url.port), timeout=5).close()
        except (OSError, ValueError, TypeError) as e:
            raise RuntimeError(f"no TPU was found {where}: {e}. {advice}") from None
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu, zone=zone, project=project)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as e:  # ValueError, NotFoundError, URLError, ... depending on the setup
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RuntimeError(f"no TPU was found {where}: {type(e).__name__}: {first_line} {advice}") from None
    return tf.distribute.TPUStrategy(resolver)


def num_replicas(strategy=None):
    """Replicas that train in sync under ``strategy`` (default: the current one)."""
    return (strategy or tf.distribute.get_strategy()).num_replicas_in_sync


def check_global_batch(batch, strategy=None):
    """The per-replica batch of a global ``batch`` under ``strategy``.

    Raises:
      TypeError: ``batch`` is not an integer.
      ValueError: ``batch < 1``, or it does not divide by the number of
        replicas (the message names the nearest valid batches).
    """
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral):
        raise TypeError(f"global batch must be a positive integer, got {batch!r}.")
    if batch < 1:
        raise ValueError(f"global batch must be a positive integer, got {batch}.")
    n = num_replicas(strategy)
    if batch % n:
        lower, upper = (batch // n) * n, (batch // n + 1) * n
        nearest = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"global batch {batch} is not divisible by the {n} replicas of the strategy; "
            f"use a multiple of {n} (nearest: {nearest})."
        )
    return int(batch) // n


def is_chief(strategy=None):
    """Whether this process should log and save.

    True everywhere except on the non-chief workers of a multi-worker
    strategy: the chief is task ``chief`` if the cluster has one, else
    ``worker`` 0.
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in (resolver.cluster_spec().as_dict() or {})
    return task_type == "worker" and task_id == 0 and not has_chief
