"""User errors in every script end with status 2 and one line naming the problem and the fix — no traceback.

In-process through ``common.parse_flags`` and ``common.main`` (the body of every script's absl main), and once
as a real command for each script (absl's app.run, a fresh Python).
"""

import os
import pathlib
import subprocess
import sys

import pytest

from reproductions import common, goyal, keskar, shen, smith

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = {"smith": smith, "goyal": goyal, "keskar": keskar, "shen": shen}
# The TFDS data set each script's paper preset reads (keskar: F1's MNIST by default).
PAPER_DATA = {"smith": "cifar10", "goyal": "imagenet2012", "keskar": "mnist", "shen": "mnist"}


def _exit_2(script, *args, capsys):
    """Runs ``<script>.py args`` in-process; returns its one stderr line (after checking status 2)."""
    module = SCRIPTS[script]
    argv = [f"{script}.py", *args]
    try:
        with pytest.raises(SystemExit) as excinfo:
            remaining = common.parse_flags(argv)
            common.main(script, module.config_from_flags, module.prepare, module.execute, remaining)
    finally:
        common.FLAGS.unparse_flags()
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{script}.py: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_tfds_data_not_prepared(script, tmp_path, capsys):
    err = _exit_2(script, "--preset=paper", f"--data_dir={tmp_path}", capsys=capsys)
    assert f"TFDS data set '{PAPER_DATA[script]}' is not prepared in {tmp_path}" in err
    assert "tfds build" in err and "pass it as data_dir" in err


@pytest.mark.parametrize("script, args, message", [
    ("smith", ["--base_batch=64", "--max_batch=32"], r"max_batch (32) must be >= base_batch (64)."),
    ("smith", ["--schedules=decay_lr,grow"], "schedules must be distinct names from"),
    ("goyal", ["--warmup_epochs=20"], "warmup_epochs must be in [0, epochs=16), got 20.0."),
    ("goyal", ["--multiples=1,x"], "--multiples=1,x is not valid: invalid literal for int()"),
    ("keskar", ["--preset=paper", "--network=F2"], "network F2 has no data set in TFDS (the paper used TIMIT); "
                                                   "pass --dataset=npz:<file> or idx:<dir>."),
    ("keskar", ["--preset=paper", "--network=C1-small", "--smoke"], "--smoke runs a paper network"),
    ("shen", ["--batch_sizes=64"], "batch_sizes must be at least 2 strictly increasing integers"),
    ("shen", ["--base_lr=0"], "base_lr must be > 0, got 0.0."),
])
def test_flag_combinations_that_do_not_fit(script, args, message, capsys):
    assert message in _exit_2(script, *args, capsys=capsys)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
@pytest.mark.parametrize("args, message", [
    (["--smoke"], "--smoke runs a paper preset's networks on generated data; use it with --preset=paper "
                  "(got --preset=quick)."),
    (["--tpu=local"], "--tpu=local is only used with --strategy=tpu, got --strategy=default"),
    (["--num_cpu_devices=2"], "--num_cpu_devices is only used with --strategy=mirrored"),
    (["--preset=tiny", "--train_examples=16"], "is larger than the training set (16 examples); use smaller "
                                               "batches or more training examples."),
    (["--preset=tiny", "--strategy=mirrored", "--max_physical_batch=1"], "the 2 replicas"),
    (["--strategy=gpu"], "--strategy"),
    (["--preset=tiny", "extra"], "unexpected positional arguments ['extra']; every option is a --flag."),
])
def test_shared_flag_errors(script, args, message, capsys):
    assert message in _exit_2(script, *args, capsys=capsys)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_the_command_exits_2_with_one_line(script, tmp_path):
    """The real command: absl's app.run, a fresh Python, TensorFlow's own logging silenced as users do."""
    proc = subprocess.run([sys.executable, str(ROOT / "reproductions" / f"{script}.py"), "--preset=paper",
                           f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=300, cwd=str(ROOT),
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert lines[-1].startswith(f"{script}.py: error: TFDS data set '{PAPER_DATA[script]}' is not prepared")
    assert sum(": error:" in line for line in lines) == 1
    assert not (tmp_path / "out").exists()  # nothing written
