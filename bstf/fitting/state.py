"""The run state of :func:`bstf.fit`: one atomic checkpoint, a restore that falls back, a directory lock.

Everything a resume needs is ONE ``tf.train.Checkpoint``: the trackables (model, optimizer, clock, metric
variables, ...) and the run record, a JSON dict (plan config, epochs, seed, history, phases, controller
states, examples, updates) held as a ``tf.train.experimental.PythonState`` inside the same checkpoint. The
weights and the record therefore can never disagree.

Save protocol (``tf.train.CheckpointManager`` numbering ``ckpt-<number>``) and what a kill leaves:

1. checks: record JSON-able, ``record["examples"]`` == the clock, every float variable finite; a failure
   raises and writes nothing.
2. TF writes the tensors to ``ckpt-N_temp/`` — a kill leaves a temp dir: the previous state is used (the
   temp dir is removed at the next restore).
3. TF renames the data to ``ckpt-N.data-*``, then writes ``ckpt-N.index`` — a kill leaves data without an
   index, or a truncated index: ``ckpt-N`` is unusable, restore warns and uses the previous one.
4. the manager rewrites its ``checkpoint`` file, then deletes checkpoints beyond ``max_to_keep`` — a kill
   here leaves ``ckpt-N`` complete: it is used (restore never trusts the ``checkpoint`` file; it lists
   ``ckpt-*`` files itself and tries them newest first).

Restore validates a checkpoint by reading every tensor (checksums) before touching any object, so a bad one
never half-restores (the cost: a resume reads the checkpoint twice). Unusable checkpoints newer than the one
restored are moved to ``unusable/`` (they must not come back later as "newest") and the ``checkpoint`` file
is rewritten to the usable ones. ``ckpt-*`` files of which none is usable are an error
(:class:`CheckpointError`), never a silent restart.

Lock: the chief holds ``fcntl.flock`` on ``<directory>/bstf.lock`` until :meth:`RunState.close`; the kernel
drops it when the process dies, so a SIGKILLed run never leaves it stuck. Not taken for non-local paths
(``gs://...``) or without ``fcntl`` (Windows): there two runs on one directory are not detected. A child
forked without exec inherits the lock.

Multi-worker: every worker calls :meth:`RunState.save` (saving is collective under
MultiWorkerMirroredStrategy); non-chief workers write to a private temporary directory, deleted by
:meth:`close`. Every worker restores from ``directory`` (shared storage), reaching the same checkpoint.
"""

import json
import os
import re
import shutil
import socket
import tempfile
import time
import warnings

import keras
import tensorflow as tf

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

from bstf._checks import check_int
from bstf.clock import Clock

LOCK_FILE = "bstf.lock"
UNUSABLE_DIR = "unusable"
_RECORD_KEY = "record/.ATTRIBUTES/py_state"  # where tf.train.Checkpoint(record=PythonState) stores it
_FILE = re.compile(r"^ckpt-(\d+)\.(index|data-\d{5}-of-(\d{5}))$")
_TEMP = re.compile(r"^ckpt-\d+_temp$")


class CheckpointError(RuntimeError):
    """The checkpoint directory cannot be used as asked (nothing usable, non-finite state, locked)."""


class NonFiniteError(CheckpointError):
    """A save was refused because a float variable holds NaN or infinity (nothing was written)."""


class LockedError(CheckpointError):
    """Another live process holds the directory's lock."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped at restore (the warning names the file and the reason)."""


class _Unusable(Exception):
    pass


class _Record(tf.train.experimental.PythonState):
    """The run record, JSON text, saved inside the checkpoint."""

    def __init__(self):
        self.text = "null"

    def serialize(self):
        return self.text

    def deserialize(self, string_value):
        self.text = string_value.decode() if isinstance(string_value, bytes) else string_value


class RunState:
    """Everything a resume needs, saved as one ``tf.train.Checkpoint``.

    Args:
      directory: the run's checkpoint directory (local path or ``gs://``); created by the chief.
      trackables: name -> trackable (model, optimizer, metric variables, ...). Must hold ``"clock"``, the
        run's :class:`bstf.Clock`; ``"record"`` is reserved. Build the objects (optimizer variables
        included) before :meth:`restore`.
      chief: whether this worker writes ``directory`` and takes its lock.
      max_to_keep: checkpoints kept (>= 1; 2 lets a broken newest one fall back).

    Call :meth:`restore` once, then :meth:`save` as often as needed, then :meth:`close` (or use ``with``).
    Raises :class:`LockedError` if another live process holds ``directory``.
    """

    def __init__(self, directory, trackables, *, chief=True, max_to_keep=2):
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a path, got {type(directory).__name__}.")
        if not isinstance(trackables.get("clock"), Clock) or "record" in trackables:
            raise TypeError("trackables must hold the run's bstf.Clock as 'clock' and no 'record' entry.")
        self._max_to_keep = check_int("max_to_keep", max_to_keep)
        self.directory, self.chief, self.latest = os.fspath(directory), chief, None
        self._clock, self._record, self._manager, self._lock = trackables["clock"], _Record(), None, None
        self._checkpoint = tf.train.Checkpoint(**trackables, record=self._record)
        if chief:
            tf.io.gfile.makedirs(self.directory)
            self._lock = _take_lock(self.directory)
        self._writes = self.directory if chief else tempfile.mkdtemp(prefix="bstf-worker-")

    def restore(self, expect):
        """Restores the newest usable checkpoint; returns its record, or None if there is no checkpoint.

        ``expect``: the run's identity (``{key: JSON value}``); a saved record that differs in a key
        raises ValueError naming the key. Unusable checkpoints are skipped with a :class:`CheckpointWarning`;
        if none is usable, :class:`CheckpointError`. After restoring, the clock must equal
        ``record["examples"]`` (else :class:`CheckpointError`).
        """
        found = _scan(self.directory)
        skipped = []
        for number in sorted(found, reverse=True):
            prefix = os.path.join(self.directory, f"ckpt-{number}")
            try:
                record = _read(prefix, found[number])
            except _Unusable as e:
                warnings.warn(f"skipping checkpoint {prefix}: {e}", CheckpointWarning, stacklevel=2)
                skipped.append((number, str(e)))
                continue
            _check_identity(self.directory, record, expect)
            self._checkpoint.restore(prefix).assert_existing_objects_matched()
            _check_clock(prefix, record, self._clock)
            self.latest = prefix
            if self.chief:
                self._tidy([n for n, _ in skipped], sorted(set(found) - {n for n, _ in skipped}))
            return record
        if found:
            reasons = "".join(f"\n  - {reason}" for _, reason in skipped)
            raise CheckpointError(
                f"checkpoint_dir {self.directory!r} holds checkpoints but none can be used:{reasons}\n"
                f"Nothing was restored. To start over, delete {self.directory!r} (or move its ckpt-* files "
                "away), or use another checkpoint_dir.")
        if self.chief:
            self._tidy([], [])
        return None

    def save(self, number, record):
        """Writes the trackables and ``record`` as checkpoint ``ckpt-<number>``; returns its path.

        Raises (writing nothing) TypeError if ``record`` is not a JSON-able dict, ValueError if
        ``record["examples"]`` differs from the clock, :class:`NonFiniteError` if a float variable is not
        finite. All workers must call it (collective under MultiWorkerMirroredStrategy); their checks agree
        because their variables do.
        """
        number = check_int("number", number, minimum=0)
        text = _dump(record)
        if record.get("examples") != int(self._clock.examples.numpy()):
            raise ValueError(f"record['examples'] ({record.get('examples')!r}) must equal the clock "
                             f"({int(self._clock.examples.numpy())} examples).")
        bad = _nonfinite(self._checkpoint)
        if bad:
            raise NonFiniteError(
                f"refusing to save checkpoint {number}: non-finite values in {', '.join(bad[:5])}"
                f"{f' (+{len(bad) - 5} more)' if len(bad) > 5 else ''}; the last good checkpoint is "
                f"{self.latest or 'none'}.")
        if self._manager is None:
            self._manager = tf.train.CheckpointManager(self._checkpoint, self._writes,
                                                       max_to_keep=self._max_to_keep, checkpoint_name="ckpt")
        self._record.text = text
        path = self._manager.save(checkpoint_number=number)
        if self.chief:
            self.latest = path
        return path

    def close(self):
        """Releases the lock (chief) or deletes the private directory (non-chief). Idempotent."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        if not self.chief:
            shutil.rmtree(self._writes, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _tidy(self, skipped, usable):
        """Chief, after restore: quarantine skipped checkpoints, drop temp dirs, rewrite the state file."""
        names = tf.io.gfile.listdir(self.directory)
        for number in skipped:
            tf.io.gfile.makedirs(os.path.join(self.directory, UNUSABLE_DIR))
            for name in names:
                if (m := _FILE.match(name.rstrip("/"))) and int(m.group(1)) == number:
                    tf.io.gfile.rename(os.path.join(self.directory, name),
                                       os.path.join(self.directory, UNUSABLE_DIR, name), overwrite=True)
        for name in names:
            if _TEMP.match(name.rstrip("/")):
                tf.io.gfile.rmtree(os.path.join(self.directory, name))
        paths = [os.path.join(self.directory, f"ckpt-{n}") for n in usable]
        state = os.path.join(self.directory, "checkpoint")
        if paths:  # the public tf.compat.v1 twin writes absolute paths; this keeps the directory movable
            now = time.time()  # timestamps after last_preserved: the manager may delete them (max_to_keep)
            tf.__internal__.train.update_checkpoint_state(
                self.directory, paths[-1], paths, save_relative_paths=True,
                all_model_checkpoint_timestamps=[now] * len(paths), last_preserved_timestamp=now - 1)
        elif tf.io.gfile.exists(state):
            tf.io.gfile.remove(state)


def _take_lock(directory):
    """An open file holding an exclusive flock on ``directory``'s lock file, or None (non-local path)."""
    if fcntl is None or "://" in directory:
        return None
    f = open(os.path.join(directory, LOCK_FILE), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise LockedError(
            f"checkpoint_dir {directory!r} is in use by {holder}; two runs on one directory would overwrite "
            "each other's checkpoints. Wait for that run to end (or stop it), or use another checkpoint_dir."
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()} on host {socket.gethostname()}")
    f.flush()
    return f


def _scan(directory):
    """{number: [file names]} of the ``ckpt-<number>.index/.data-*`` files in ``directory``."""
    if not tf.io.gfile.isdir(directory):
        return {}
    found = {}
    for name in tf.io.gfile.listdir(directory):
        if m := _FILE.match(name):
            found.setdefault(int(m.group(1)), []).append(name)
    return found


def _read(prefix, names):
    """The record of checkpoint ``prefix`` after reading every tensor, or _Unusable naming file and reason."""
    base = os.path.basename(prefix)
    if base + ".index" not in names:
        raise _Unusable(f"{prefix}.index is missing (deleted, or its save was interrupted)")
    data = sorted(n for n in names if n != base + ".index")
    shards = int(_FILE.match(data[0]).group(3)) if data else 1
    missing = [f"{prefix}.data-{i:05d}-of-{shards:05d}" for i in range(shards)
               if f"{base}.data-{i:05d}-of-{shards:05d}" not in data]
    if missing:
        raise _Unusable(f"{', '.join(missing)} is missing")
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as e:  # any failure to parse the index makes the checkpoint unusable
        raise _Unusable(f"{prefix}.index cannot be read ({_why(e)})") from None
    text = None
    try:
        for key in reader.get_variable_to_dtype_map():  # one tensor at a time: verifies every checksum
            value = reader.get_tensor(key)
            text = value if key == _RECORD_KEY else text
    except Exception as e:  # truncated or corrupt data: IndexError, OpError (checksum), ...
        raise _Unusable(f"{', '.join(os.path.join(os.path.dirname(prefix), n) for n in data)} "
                        f"cannot be read ({_why(e)})") from None
    if text is None:
        raise _Unusable(f"{prefix} holds no run record (not written by bstf's RunState)")
    try:
        record = json.loads(text.decode())
    except ValueError as e:
        raise _Unusable(f"{prefix}'s run record is not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise _Unusable(f"{prefix}'s run record is not a dict")
    return record


def _why(error):
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _dump(record):
    if not isinstance(record, dict):
        raise TypeError(f"record must be a dict, got {type(record).__name__}.")
    try:
        return json.dumps(record, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"record must be JSON-serialisable: {e}") from None


def _check_identity(directory, record, expect):
    for key, value in expect.items():
        saved = record.get(key)
        if json.dumps(saved, sort_keys=True) != json.dumps(value, sort_keys=True):
            raise ValueError(
                f"checkpoint_dir {directory!r} holds a run with a different {key} ({saved!r} vs now "
                f"{value!r}); refusing to mix them. Use another checkpoint_dir, or delete it to start over.")


def _check_clock(prefix, record, clock):
    examples = int(clock.examples.numpy())
    if record.get("examples") != examples:
        raise CheckpointError(
            f"checkpoint {prefix} is inconsistent: its clock is at {examples} examples but its run record at "
            f"{record.get('examples')!r}. It was not written by bstf's RunState; delete it to start over.")


def _nonfinite(checkpoint):
    """Names of the float variables reachable from ``checkpoint`` that hold NaN or infinity."""
    found = [v for v in tf.train.TrackableView(checkpoint).descendants()
             if isinstance(v, (tf.Variable, keras.Variable)) and tf.as_dtype(v.dtype).is_floating]
    if not found:
        return []
    finite = tf.stack([tf.reduce_all(tf.math.is_finite(v.value if isinstance(v, keras.Variable) else v))
                       for v in found]).numpy()
    return [getattr(v, "path", None) or v.name for v, ok in zip(found, finite) if not ok]
