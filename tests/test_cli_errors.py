"""Command-line usage errors (Click/Typer) are one line and exit 2, like user errors; help still works;
library warnings stay off the terminal unless asked for."""
import logging
import warnings

import pytest

from sparsevit_cli.cli import main
from sparsevit_cli.errors import quiet_warnings
from cli_helpers import assert_one_line_error, run_cli


@pytest.mark.parametrize("argv,needle", [
    (["export", "--checkpoint", "m.safetensors"], "Missing option '--out'"),
    (["export", "--checkpoint", "m", "--out", "x.onnx", "--batch-size", "two"], "Invalid value for '--batch-size'"),
    (["export", "--checkpoint", "m", "--out", "x.onnx", "--format", "tflite"], "'tflite' is not one of"),
    (["export", "--checkpoint", "m", "--out", "x.onnx", "--dtype", "fp16"], "'fp16' is not one of 'fp32'"),
    (["visualize", "--checkpoint", "m", "--image", "i.png", "--out", "v.png", "--bogus"], "No such option: --bogus"),
    (["info"], "Missing argument"),
    (["info", "a", "b"], "unexpected extra argument"),
    (["no-such-command"], "No such command 'no-such-command'"),
    (["measure", "--repeats", "0"], "--repeats"),
])
def test_usage_errors_are_one_line_exit_2(argv, needle, capsys):
    code, stdout, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, needle)
    assert "--help" in err and "╭" not in err and not stdout  # a hint, no box


@pytest.mark.parametrize("argv", [[], ["--help"], ["export", "--help"], ["info", "--help"]])
def test_help_still_works(argv, capsys):
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0 and not err
    assert "Usage" in stdout or "usage" in stdout.lower()


def test_library_warnings_are_quiet_unless_verbose(caplog):
    def noisy():
        warnings.warn("timm: interpolating position embeddings", UserWarning)
        logging.getLogger("timm.models").warning("timm logger warning")

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_warnings():
            noisy()
        assert not seen
        with quiet_warnings(), quiet_warnings(verbose=True):  # --verbose inside the CLI's quiet default
            noisy()
        assert [str(w.message) for w in seen] == ["timm: interpolating position embeddings"]
    assert [r.getMessage() for r in caplog.records] == ["timm logger warning"]  # only the verbose one
    assert logging.getLogger("timm").level == logging.NOTSET  # restored afterwards


def test_an_unexpected_failure_is_one_line_with_exit_3_and_a_traceback_only_with_verbose(monkeypatch, capsys):
    """A bug (not bad input) still never prints a traceback by default; --verbose shows it."""
    import sparsevit_cli.commands.measure as measure

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero\nsecond line")
    monkeypatch.setattr(measure, "measured_models", broken)
    code, _, err = run_cli(["measure"], capsys)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 3 and len(lines) == 1 and "internal error" in lines[0] and "ZeroDivisionError" in lines[0], err
    with pytest.raises(ZeroDivisionError):
        main(["--verbose", "measure"])
