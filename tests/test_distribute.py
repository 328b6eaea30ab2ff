import json
import socket

import pytest
import tensorflow as tf

from bstf import distribute


def test_names_construct():
    assert distribute.get_strategy("default") is tf.distribute.get_strategy()
    assert isinstance(distribute.get_strategy("one_device"), tf.distribute.OneDeviceStrategy)
    mirrored = distribute.get_strategy("mirrored", num_cpu_devices=2)  # conftest already split the CPU in 2
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.extended.worker_devices == ("/job:localhost/replica:0/task:0/device:CPU:0",
                                                "/job:localhost/replica:0/task:0/device:CPU:1")
    assert distribute.get_strategy("mirrored").num_replicas_in_sync == 2  # all logical CPUs, no GPU here
    assert distribute.get_strategy("mirrored", num_cpu_devices=1).num_replicas_in_sync == 1
    same = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert distribute.get_strategy(same) is same


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "tpu, match",
    [
        ("local", r"no TPU was found at 'local': NotFoundError"),  # what a Cloud TPU VM would use
        (None, r"no TPU was found \(no --tpu given"),
        ("grpc://127.0.0.1:{port}", r"no TPU was found at 'grpc://127\.0\.0\.1:\d+': .*refused"),
    ],
)
def test_tpu_not_found_is_a_clear_error(tpu, match):
    if tpu and "{port}" in tpu:
        tpu = tpu.format(port=_closed_port())
    with pytest.raises(RuntimeError, match=match) as info:
        distribute.get_strategy("tpu", tpu=tpu)
    message = str(info.value)
    assert "--tpu" in message and "Traceback" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # `from None`: no TF trace


def test_unknown_name_and_bad_arguments(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown strategy 'gpus'; choose one of \('default'"):
        distribute.get_strategy("gpus")
    with pytest.raises(ValueError, match="num_cpu_devices only applies to 'mirrored'"):
        distribute.get_strategy("default", num_cpu_devices=2)
    with pytest.raises(ValueError, match="num_cpu_devices must be a positive integer"):
        distribute.get_strategy("mirrored", num_cpu_devices=0)
    with pytest.raises(RuntimeError, match="cannot split the CPU into 8 logical devices"):
        distribute.get_strategy("mirrored", num_cpu_devices=8)  # TF is initialised with 2 already
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        distribute.get_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {}}))
    with pytest.raises(ValueError, match="TF_CONFIG is not valid for 'multi_worker' \\(KeyError: 'task'\\)"):
        distribute.get_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}))
    with pytest.raises(ValueError, match=r"task index 1 is not in cluster\['worker'\]"):
        distribute.get_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid.*JSONDecodeError"):
        distribute.get_strategy("multi_worker")
    with pytest.raises(ValueError, match="tpu, zone only apply to 'tpu', got strategy 'mirrored'"):
        distribute.get_strategy("mirrored", tpu="local", zone="us-central1-b")


def test_check_global_batch():
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    assert distribute.check_global_batch(64, mirrored) == 32
    assert distribute.check_global_batch(7) == 7
    with pytest.raises(ValueError, match=r"global batch 65 is not divisible by the 2 replicas.*nearest: 64 or 66"):
        distribute.check_global_batch(65, mirrored)
    with pytest.raises(ValueError, match=r"global batch 1 is not divisible by the 2 replicas.*nearest: 2\)"):
        distribute.check_global_batch(1, mirrored)
    with pytest.raises(ValueError, match="global batch must be a positive integer, got 0"):
        distribute.check_global_batch(0, mirrored)
    with pytest.raises(TypeError, match="global batch must be a positive integer, got 64.0"):
        distribute.check_global_batch(64.0, mirrored)


def test_is_chief(monkeypatch):
    assert distribute.is_chief(tf.distribute.get_strategy())

    class Resolver:
        def __init__(self, task_type, task_id, cluster):
            self.task_type, self.task_id, self._cluster = task_type, task_id, cluster

        def cluster_spec(self):
            return tf.train.ClusterSpec(self._cluster)

    class Fake:
        def __init__(self, *a):
            self.cluster_resolver = Resolver(*a)

    workers = {"worker": ["a:1", "b:2"]}
    assert distribute.is_chief(Fake("worker", 0, workers))
    assert not distribute.is_chief(Fake("worker", 1, workers))
    assert not distribute.is_chief(Fake("worker", 0, {**workers, "chief": ["c:3"]}))
    assert distribute.is_chief(Fake("chief", 0, {**workers, "chief": ["c:3"]}))
