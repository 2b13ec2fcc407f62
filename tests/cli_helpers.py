"""Running the `sparsevit` CLI in-process, as the tests of every command do."""
from sparsevit_cli.cli import main


def run_cli(args, capsys=None):
    """(exit code, stdout, stderr) of `sparsevit ARGS`; stdout/stderr are '' without capsys."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        code = e.code or 0
    if capsys is None:
        return code, "", ""
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, err, needle):
    """Bad input: exit code 2, one line on stderr naming the fault, never a traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0], err


def exit_code(args):
    return run_cli(args)[0]


def stopped_after(steps):
    """Inside: every training run stops after `steps` optimizer steps of its call, with a checkpoint and no model
    file, as an interruption would (the trainer's test-only STOP_AFTER_STEPS_ENV; `max_steps` is a setting)."""
    import os
    from unittest import mock
    from sparsevit_cli.train.trainer import STOP_AFTER_STEPS_ENV
    return mock.patch.dict(os.environ, {STOP_AFTER_STEPS_ENV: str(steps)})
