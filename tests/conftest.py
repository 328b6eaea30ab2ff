"""Test set-up: split the CPU into 2 logical devices so MirroredStrategy can be
tested on one machine. Must run before TensorFlow initialises its devices."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

NUM_LOGICAL_CPUS = 2

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS
    )
except RuntimeError:  # already initialised (e.g. by a plugin); tests needing 2 devices skip
    pass


import socket  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def free_ports():
    """``free_ports(n)``: n TCP ports on 127.0.0.1 free right now (for local multi-worker clusters)."""

    def ports(n):
        socks = [socket.socket() for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        found = [s.getsockname()[1] for s in socks]
        for s in socks:
            s.close()
        return found

    return ports
