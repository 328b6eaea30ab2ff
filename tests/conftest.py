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


import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402


class LocalWorkers:
    """A MultiWorkerMirroredStrategy cluster of local processes on 127.0.0.1 ports (one TF_CONFIG each)."""

    def __init__(self, ports):
        self.cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}

    def start(self, command, cwd=None, **env):
        """One process per worker running ``command`` (a list), stdout and stderr merged; ``env`` added."""
        return [subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3", **env,
                 "TF_CONFIG": json.dumps({"cluster": self.cluster, "task": {"type": "worker", "index": i}})})
            for i in range(len(self.cluster["worker"]))]

    def run(self, command, timeout=300, cwd=None, **env):
        """Start the workers, wait for all (killed after ``timeout`` s: workers that disagree hang in mismatched
        collectives), assert every one exited 0 and return their outputs."""
        procs = self.start(command, cwd=cwd, **env)
        try:
            outs = [p.communicate(timeout=timeout)[0] for p in procs]
        finally:
            for p in procs:
                p.kill()
        assert all(p.returncode == 0 for p in procs), "\n".join(out[-3000:] for out in outs)
        return outs


    def script(self, directory, source):
        """The command of a worker script: ``source`` written to ``directory``/worker.py after a preamble that
        puts the repository and tests/ on ``sys.path`` (this checkout's bstf and tests/workers.py)."""
        path = os.path.join(str(directory), "worker.py")
        with open(path, "w") as f:
            f.write(f"import sys\nsys.path[:0] = [{ROOT!r}, {TESTS!r}]\n{source}")
        return [sys.executable, path]

    def run_script(self, directory, source, timeout=300, **env):
        """:meth:`run` the :meth:`script` of ``source``."""
        return self.run(self.script(directory, source), timeout=timeout, **env)


TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


@pytest.fixture
def local_workers(free_ports):
    """``local_workers(n=2)``: a :class:`LocalWorkers` cluster on n free ports; ``.run([sys.executable, script])``."""
    return lambda n=2: LocalWorkers(free_ports(n))
