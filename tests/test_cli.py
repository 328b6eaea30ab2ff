import pytest

from bstf import cli

SMITH = ["plan", "--train_size=50000", "--base_lr=0.1", "--base_batch=128", "--momentum=0.9",
         "--milestones=60,120,160", "--factor=5", "--mode=increase_batch", "--max_batch=5120", "--epochs=200"]


def test_plan_prints_smith_table_and_png(tmp_path, capsys):
    png = tmp_path / "plan.png"
    assert cli.main(SMITH + ["--compare", f"--png={png}"]) == 0
    out = capsys.readouterr().out
    assert "5120" in out and "0.032" in out and "total updates: 29142  [mode=increase_batch]" in out
    assert "total updates: 78125  [mode=decay_lr]" in out and "[mode=hybrid]" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, match",
    [
        (SMITH[:-1], "the following arguments are required: --epochs"),
        (SMITH + ["--mode=grow"], "mode must be one of"),
        (SMITH + ["--momentum=1.5"], r"base_momentum must be in \[0, 1\)"),
        (SMITH + ["--milestones=120,60"], "milestones must be strictly increasing"),
        (["bogus"], "invalid choice: 'bogus'"),
    ],
)
def test_bad_flags_exit_2_without_traceback(argv, match, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert __import__("re").search(match, err), err


def test_find_batch_size_command(tmp_path, capsys):
    png = tmp_path / "f.png"
    code = cli.main(["find-batch-size", "--model=mlp", "--dataset=digits", "--max_batch=64",
                     "--num_updates=2", "--noise_scale=50", f"--png={png}"])
    out = capsys.readouterr().out
    assert code == 0 and "recommended batch size:" in out and png.exists()


def test_find_batch_size_bad_model(capsys):
    assert cli.main(["find-batch-size", "--model=resnet1000", "--noise_scale=5"]) == 2
    assert "--model must be one of" in capsys.readouterr().err
