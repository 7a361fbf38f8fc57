"""datasets.errors: user errors are one line on stderr with an exit code; bugs keep tracebacks."""

import subprocess
import sys
import textwrap

import pytest

from datasets.errors import UsageError, UserError, user_errors


def test_user_error_becomes_exit_code_and_one_line(capsys):
    @user_errors
    def task(cfg):
        raise UserError("no checkpoint at x.pth: give ckpt=runs/<name>/last.pth")

    with pytest.raises(SystemExit) as exc:
        task({})
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err == "error: no checkpoint at x.pth: give ckpt=runs/<name>/last.pth\n"


def test_usage_error_exit_code_2_and_debug_reraises(capsys):
    @user_errors
    def task(cfg):
        raise UsageError("epochs=-5: must be >= 1")

    with pytest.raises(SystemExit) as exc:
        task({})
    assert exc.value.code == 2
    with pytest.raises(UsageError):
        task({"debug": True})


def test_programming_errors_keep_their_traceback():
    @user_errors
    def task(cfg):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        task({})


def test_through_hydra_one_line(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """
            import hydra
            from datasets.errors import UserError, user_errors

            @hydra.main(version_base="1.3", config_path=None)
            @user_errors
            def main(cfg):
                raise UserError("bad thing: fix it")

            main()
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script), f"hydra.run.dir={tmp_path}/out"],
        capture_output=True,
        text=True,
        cwd=".",
        env={**__import__("os").environ, "PYTHONPATH": "."},
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == "error: bad thing: fix it"
    assert "Traceback" not in out.stderr


def test_user_error_from_a_dataloader_worker_prints_its_own_line(capsys):
    """torch re-raises a worker's exception as the same type with the worker's traceback in the
    message; the entry point prints only the error's own line."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    class Bad(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise UserError("images/x.jpg is empty (0 bytes)")

    @user_errors
    def task(cfg):
        for _ in DataLoader(Bad(), num_workers=1):
            pass

    torch.manual_seed(0)
    with pytest.raises(SystemExit) as exc:
        task({})
    assert exc.value.code == 1
    assert capsys.readouterr().err == "error: images/x.jpg is empty (0 bytes)\n"
