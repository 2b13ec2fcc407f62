"""`sparsevit search` end to end on a micro Swin model file: outputs, budgets, resume, errors, torchrun."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import timm
import torch
import yaml

from sparsevit_cli import sparsify
from sparsevit_cli.model_file import save_model
from sparsevit_cli.cli import main
from sparsevit_cli.io import read_sparsity_file
from sparsevit_cli.data.demo import write_demo_data
from sparsevit_cli.methods import get_method
from sparsevit_cli.tasks import build_task_model
from sparsevit_cli.commands import search as search_run
from cli_helpers import assert_one_line_error, run_cli

MICRO_ARGS = {"img_size": 64, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 2,
              "num_classes": 10}
SMALL_GA = ["--population", "6", "--generations", "3", "--parents", "3", "--mutations", "3",
            "--crossovers", "3", "--mutation-prob", "0.5", "--eval-samples", "6", "--confirm-samples", "6", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("searchdata") / "data"
    write_demo_data(d, img_size=64, n_train=10, n_val=12, seed=0)
    return d


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    backbone = sparsify(timm.create_model("swin_tiny_patch4_window7_224", **MICRO_ARGS))
    path = tmp_path_factory.mktemp("searchmodel") / "adapted.safetensors"
    save_model(path, build_task_model(backbone, "classification", 10),
               {"method": "sparsevit", "model": "swin_tiny_patch4_window7_224", "model_args": MICRO_ARGS,
                "img_size": 64, "task": "classification", "num_classes": 10, "sparsity": [[0.0], [0.0]],
                "space": "swin_auto"})
    return path


def search_args(model_file, data_dir, out, *extra):
    return ["search", "--checkpoint", str(model_file), "--data", str(data_dir), "--out", str(out), *SMALL_GA, *extra]


def micro_macs(config):
    backbone = sparsify(timm.create_model("swin_tiny_patch4_window7_224", **MICRO_ARGS))
    return get_method("sparsevit").macs(backbone, config, 64) / 1e9


def test_mac_budget_search_writes_outputs_within_budget(tmp_path, model_file, data_dir, capsys):
    out = tmp_path / "s"
    code, stdout, err = run_cli(search_args(model_file, data_dir, out, "--budget-macs", "50%"), capsys)
    assert code == 0, err
    best = yaml.safe_load((out / "best.yaml").read_text())
    dense = micro_macs([[0.0], [0.0]])
    assert best["gmacs"] == pytest.approx(micro_macs(best["sparsity"]))
    assert best["gmacs"] <= 0.5 * dense + 1e-12 and best["dense_gmacs"] == pytest.approx(dense)
    history = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) >= 6 and all(h["cost"] <= 0.5 * dense + 1e-12 for h in history)
    # the pick is a searched config, reported with its score on the confirmation images
    assert best["sparsity"] in [h["config"] for h in history]
    assert best["metric_value"] == best["confirmation"]["pick"]["confirm_metric"]
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "top candidates" in stdout
    # the file is what finetune and measure take
    assert read_sparsity_file(out / "best.yaml")["sparsity"] == best["sparsity"]


def test_pick_gain_shown_keeps_uniform_unless_a_gain_is_shown(tmp_path, model_file, data_dir, capsys):
    out = tmp_path / "s"
    code, stdout, err = run_cli(search_args(model_file, data_dir, out, "--budget-macs", "50%", "--pick",
                                            "gain-shown"), capsys)
    assert code == 0, err
    best = yaml.safe_load((out / "best.yaml").read_text())
    conf = best["confirmation"]
    assert conf["rule"] == "gain-shown"
    if conf["gain_over_uniform"]:  # shown: the best on the confirmation split, as under --pick best
        assert best["sparsity"] == conf["candidates"][0]["config"] and conf["set_aside"] is None
    else:  # not shown: the best uniform config, and the candidate set aside is reported when there was one
        assert best["sparsity"] == conf["uniform"]["config"]
        assert (conf["set_aside"] is not None) == (conf["candidates"][0]["config"] != conf["uniform"]["config"])
    assert best["metric_value"] == conf["pick"]["confirm_metric"]


def test_latency_budget_with_table_reports_table_error(tmp_path, model_file, data_dir, capsys):
    out, table = tmp_path / "s", tmp_path / "lat.json"
    code, _, err = run_cli(search_args(model_file, data_dir, out, "--budget-latency", "10000ms",
                                       "--latency-table", str(table)), capsys)
    assert code == 0, err
    assert table.is_file()
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["cost_unit"] == "ms" and best["cost"] <= best["budget"]
    assert best["latency_table_median_abs_error"] >= 0.0
    history = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines()]
    assert all(h["cost"] <= best["budget"] for h in history)


def test_resume_after_interruption_gives_the_same_best(tmp_path, model_file, data_dir, capsys, monkeypatch):
    full = tmp_path / "full"
    assert run_cli(search_args(model_file, data_dir, full, "--budget-macs", "60%"), capsys)[0] == 0

    class Killed(BaseException):  # like a real death: not an error the CLI reports
        """Stands for the process dying after generation 1 (the state file is all that is left)."""

    real = search_run.run_evolution

    def interrupted(*args, **kwargs):
        def stop(generation, population):
            if generation == 1:
                raise Killed
        return real(*args, on_generation=stop, **kwargs)

    part = tmp_path / "part"
    monkeypatch.setattr(search_run, "run_evolution", interrupted)
    with pytest.raises(Killed):
        main(search_args(model_file, data_dir, part, "--budget-macs", "60%"))
    monkeypatch.setattr(search_run, "run_evolution", real)
    assert not (part / "best.yaml").exists()
    code, _, err = run_cli(search_args(model_file, data_dir, part, "--budget-macs", "60%"), capsys)
    assert code == 2 and "--resume" in err  # never silently overwrites a started search
    assert run_cli(search_args(model_file, data_dir, part, "--budget-macs", "60%", "--resume"), capsys)[0] == 0
    assert yaml.safe_load((part / "best.yaml").read_text()) == yaml.safe_load((full / "best.yaml").read_text())
    assert (part / "history.jsonl").read_text() == (full / "history.jsonl").read_text()


@pytest.fixture
def bad(tmp_path):
    space = tmp_path / "bad_space.yaml"
    space.write_text("name: x\nmethod: sparsevit\ngroups: [{name: a, genes: two}]\n")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"garbage")
    pickled = tmp_path / "timm.pth"
    pickled.write_bytes(b"\x80\x04K\x01.")  # a pickle: never unpickled
    return {"space": space, "corrupt": corrupt, "missing": tmp_path / "nope.safetensors", "pickled": pickled,
            "folder": tmp_path}


@pytest.mark.parametrize("extra,needle", [
    (["--budget-macs", "0.00001"], "budget"),
    (["--budget-macs", "cheap"], "--budget-macs must be a number"),
    (["--budget-macs", "50%", "--budget-latency", "5ms"], "exactly one budget"),
    ([], "exactly one budget"),
    (["--budget-macs", "50%", "--space", "{space}"], "bad_space.yaml"),
    (["--budget-macs", "50%", "--space", "swin_nope"], "swin_nope"),
    (["--budget-macs", "50%", "--img-size", "96"], "img_size"),
    (["--budget-macs", "50%", "--img-size", "0"], "img_size"),
    # issue 14: budgets that are not positive, finite numbers
    (["--budget-macs", "nan"], "--budget-macs 'nan' is not a number"),
    (["--budget-macs", "nan%"], "--budget-macs 'nan%' is not a number"),
    (["--budget-macs", "inf"], "--budget-macs must be a finite number"),
    (["--budget-macs", "-1"], "--budget-macs must be positive"),
    (["--budget-macs", "-50%"], "--budget-macs must be positive"),
    (["--budget-latency", "nanms"], "--budget-latency 'nanms' is not a number"),
    (["--budget-macs", "50%", "--min-macs", "inf"], "--min-macs must be a finite number"),
    # a space written for another method names both methods
    (["--budget-macs", "50%", "--space", "psvit_deit"],
     "search space 'psvit_deit' is for method psvit, but the model file holds a sparsevit model"),
    # evolution settings out of range
    (["--budget-macs", "50%", "--mutation-prob", "1.5"], "'mutation_prob' (--mutation-prob) must be a probability in [0, 1]"),
    (["--budget-macs", "50%", "--mutation-prob", "nan"], "must be a probability in [0, 1], got nan"),
    (["--budget-macs", "50%", "--parents", "7"], "'parents' (--parents) (7) exceeds 'population' (6)"),
    (["--budget-macs", "50%", "--device", "tpu"], "device must be cpu or cuda"),
    (["--budget-macs", "50%", "--pick", "luck"], "'luck' is not one of"),
])
def test_bad_input_is_one_line(tmp_path, model_file, data_dir, bad, capsys, extra, needle):
    extra = [e.format(**bad) for e in extra]
    code, _, err = run_cli(search_args(model_file, data_dir, tmp_path / "s", *extra), capsys)
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err and needle in lines[0], err


@pytest.mark.parametrize("which,needle", [("missing", "not found"), ("corrupt", "cannot be read"),
                                          ("pickled", "is not a sparsevit model file"), ("folder", "is a directory")])
def test_bad_checkpoint_is_one_line(tmp_path, data_dir, bad, capsys, which, needle):
    code, _, err = run_cli(search_args(bad[which], data_dir, tmp_path / "s", "--budget-macs", "50%"), capsys)
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err


def test_two_process_gloo_search_matches_one_process(tmp_path, model_file, data_dir, capsys):
    one = tmp_path / "one"
    assert run_cli(search_args(model_file, data_dir, one, "--budget-macs", "50%"), capsys)[0] == 0
    two = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "sparsevit_cli.cli", *search_args(model_file, data_dir, two, "--budget-macs", "50%")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert yaml.safe_load((two / "best.yaml").read_text()) == yaml.safe_load((one / "best.yaml").read_text())
    assert (two / "history.jsonl").read_text() == (one / "history.jsonl").read_text()


def test_two_process_gloo_latency_search_shares_rank0_timings(tmp_path, model_file, data_dir):
    """Measured latencies differ per rank; rank 0's are broadcast so both ranks breed the same populations
    (a divergence would desynchronise the ranks' collective evaluations)."""
    out, table = tmp_path / "lat", tmp_path / "table.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "sparsevit_cli.cli", *search_args(model_file, data_dir, out, "--budget-latency", "10000ms",
                                                  "--latency-table", str(table))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["cost_unit"] == "ms" and json.loads(table.read_text())["calibration"]


def test_out_naming_a_file_is_one_line(tmp_path, model_file, data_dir, capsys):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    code, _, err = run_cli(search_args(model_file, data_dir, out, "--budget-macs", "50%"), capsys)
    assert_one_line_error(code, err, f"--out '{out}' is a file")
    assert out.read_text() == "not a folder"
    code, _, err = run_cli(search_args(model_file, data_dir, out / "sub", "--budget-macs", "50%"), capsys)
    assert_one_line_error(code, err, "cannot create --out")


def _latency_table_garbage(tmp_path):
    d = tmp_path / "tables"
    d.mkdir()
    (d / "folder.json").mkdir()
    (d / "binary.json").write_bytes(bytes(range(256)))
    (d / "text.json").write_text("{not json")
    (d / "list.json").write_text("[1, 2]")
    (d / "other_size.json").write_text(json.dumps({"img_size": 224, "batch_size": 1}))
    (d / "other_method.json").write_text(json.dumps({"method": "psvit", "img_size": 64, "batch_size": 1}))
    (d / "no_parts.json").write_text(json.dumps({"img_size": 64, "batch_size": 1}))
    (d / "nan_parts.json").write_text(json.dumps({"img_size": 64, "batch_size": 1, "fixed_ms": float("nan"),
                                                  "pairs_ms": [[{"0": 1.0, "0.8": 1.0}], [{"0": 1.0, "0.8": 1.0}]],
                                                  "scoring_ms": [0.0, 0.0], "windows": [[16, 16], [4, 4]]}))
    return d


@pytest.mark.parametrize("name,needle", [
    ("folder.json", "is a directory"), ("binary.json", "is not UTF-8 text"),
    ("text.json", "is not a JSON latency table"), ("list.json", "a list, not a mapping"),
    ("other_size.json", "was built for img_size 224"), ("other_method.json", "was built for method psvit"),
    ("no_parts.json", "does not fit this model"), ("nan_parts.json", "predicts nan ms"),
])
def test_bad_latency_table_is_one_line(tmp_path, model_file, data_dir, capsys, name, needle):
    table = _latency_table_garbage(tmp_path) / name
    before = sorted(p.name for p in table.parent.iterdir())
    code, _, err = run_cli(search_args(model_file, data_dir, tmp_path / "s", "--budget-latency", "10000ms",
                                       "--latency-table", str(table)), capsys)
    assert_one_line_error(code, err, needle)
    assert f"latency table '{table}'" in err
    assert sorted(p.name for p in table.parent.iterdir()) == before  # the user's file is left alone


# ---- fault injection: SIGKILL `sparsevit search` at chosen points, resume, compare with an uninterrupted run
def _killed_at(point, args, tmp_path):
    """Run `sparsevit ARGS` in a subprocess until it reaches fault point `point`, then SIGKILL it."""
    marker = tmp_path / f"paused_{point.replace(':', '_')}"
    env = dict(os.environ, OMP_NUM_THREADS="1", SPARSEVIT_TEST_PAUSE=point, SPARSEVIT_TEST_PAUSE_FILE=str(marker))
    proc = subprocess.Popen([sys.executable, "-m", "sparsevit_cli.cli", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"search ended (exit {proc.returncode}) before fault point {point}: "
                        f"{proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, f"fault point {point} never reached"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _assert_nothing_truncated(out):
    """Every output that exists parses whole: atomic writes leave the old file or the new one."""
    if (out / "history.jsonl").exists():
        text = (out / "history.jsonl").read_text()
        assert text == "" or text.endswith("\n")
        keys = [tuple(json.loads(line)["genome"]) for line in text.splitlines()]
        assert len(keys) == len(set(keys))  # no duplicate lines
    if (out / "search_state.json").exists():
        assert json.loads((out / "search_state.json").read_text())["version"] == 2
    if (out / "best.yaml").exists():
        assert "sparsity" in yaml.safe_load((out / "best.yaml").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, model_file, data_dir):
    out = tmp_path_factory.mktemp("uninterrupted") / "s"
    assert run_cli(search_args(model_file, data_dir, out, "--budget-macs", "60%"))[0] == 0
    return out


@pytest.mark.parametrize("point", [
    "evaluate:8",   # mid-search: generation 1 half evaluated (the state holds generation 0)
    "history:2",    # the second history.jsonl write, its temporary file half written
    "state:2",      # the second state write: history.jsonl already a generation ahead of the state
    "best",         # best.yaml half written (the search itself finished)
])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, model_file, data_dir, uninterrupted, point):
    out = tmp_path / "s"
    args = search_args(model_file, data_dir, out, "--budget-macs", "60%")
    _killed_at(point, args, tmp_path)
    _assert_nothing_truncated(out)
    assert run_cli(args + ["--resume"])[0] == 0
    _assert_nothing_truncated(out)
    assert not list(out.glob(".*.tmp"))  # the killed run's temporary file is cleaned up
    assert yaml.safe_load((out / "best.yaml").read_text()) == yaml.safe_load((uninterrupted / "best.yaml").read_text())
    assert (out / "history.jsonl").read_text() == (uninterrupted / "history.jsonl").read_text()


def test_sigkill_while_writing_the_latency_table(tmp_path, model_file, data_dir):
    out, table = tmp_path / "s", tmp_path / "lat.json"
    args = search_args(model_file, data_dir, out, "--budget-latency", "10000ms", "--latency-table", table)
    _killed_at("latency_table", args, tmp_path)
    assert not table.exists()  # the half-written table never took the name
    assert run_cli(args + ["--resume"])[0] == 0
    assert json.loads(table.read_text())["method"] == "sparsevit"
    # the resumed search equals an uninterrupted one on the same table (timings aside, which are re-measured)
    again = tmp_path / "again"
    assert run_cli(search_args(model_file, data_dir, again, "--budget-latency", "10000ms",
                               "--latency-table", table))[0] == 0

    def comparable(path):
        best = yaml.safe_load(path.read_text())
        best.pop("latency_table_median_abs_error")
        return best
    assert comparable(out / "best.yaml") == comparable(again / "best.yaml")
    assert (out / "history.jsonl").read_text() == (again / "history.jsonl").read_text()


def test_a_second_search_on_one_out_is_refused_and_stale_temp_files_go(tmp_path, model_file, data_dir, capsys):
    from sparsevit_cli.io import FolderLock
    out = tmp_path / "s"
    with FolderLock(out):  # another run holds the folder
        code, _, err = run_cli(search_args(model_file, data_dir, out, "--budget-macs", "50%"), capsys)
        assert_one_line_error(code, err, "is in use by another run")
    assert not (out / "search_state.json").exists()
    stale = out / ".history.jsonl.999999999.deadbeef.tmp"  # a killed process's half-written file
    stale.write_text('{"genome": [0')
    assert run_cli(search_args(model_file, data_dir, out, "--budget-macs", "50%"), capsys)[0] == 0
    assert not stale.exists()


def test_unwritable_outputs_are_one_line_and_keep_the_previous_files(tmp_path, model_file, data_dir, capsys,
                                                                     monkeypatch):
    out = tmp_path / "s"
    (out / "best.yaml").mkdir(parents=True)
    code, _, err = run_cli(search_args(model_file, data_dir, out, "--budget-macs", "60%"), capsys)
    assert_one_line_error(code, err, "best.yaml' is a directory")
    (out / "best.yaml").rmdir()
    code, _, err = run_cli(search_args(model_file, data_dir, out, "--budget-latency", "10000ms", "--latency-table",
                                       model_file / "table.json"), capsys)  # under a file: found before loading
    assert_one_line_error(code, err, f"--latency-table '{model_file / 'table.json'}': '{model_file}' is a file")

    assert run_cli(search_args(model_file, data_dir, out, "--budget-macs", "60%"), capsys)[0] == 0
    before = {name: (out / name).read_bytes() for name in ("best.yaml", "history.jsonl", "search_state.json")}

    import errno
    from sparsevit_cli import io as sv_io
    real_replace = sv_io.os.replace

    def disk_full(src, dst):
        if str(dst).endswith(("history.jsonl", "search_state.json", "best.yaml")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)
    monkeypatch.setattr(sv_io.os, "replace", disk_full)
    args = search_args(model_file, data_dir, out, "--budget-macs", "60%", "--resume", "--generations", "4")
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "No space left on device")
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not list(out.glob(".*.tmp"))


def test_resume_with_another_model_file_is_refused_naming_both(tmp_path, model_file, data_dir, capsys):
    import shutil
    out = tmp_path / "s"
    assert run_cli(search_args(model_file, data_dir, out, "--budget-macs", "60%", "--generations", "1"), capsys)[0] == 0
    other = tmp_path / "other.safetensors"
    shutil.copy(model_file, other)
    code, _, err = run_cli(search_args(other, data_dir, out, "--budget-macs", "60%", "--resume"), capsys)
    assert_one_line_error(code, err, f"different run (checkpoint: '{model_file.resolve()}' there, '{other.resolve()}' now)")


def test_compile_times_the_compiled_model_per_config(tmp_path, model_file, data_dir, capsys, monkeypatch):
    """--compile: every measured config is compiled afresh (`timing.compile_model`, checked against eager)
    and the compiled model is what is timed. The "eager" backend keeps the test fast: dynamo traces the
    engine as for inductor and code generation is left out."""
    from sparsevit_cli import timing

    compiled = []

    def compile_eager(model, x, backend="inductor", fresh=False):
        compiled.append(fresh)
        return timing.compile_model(model, x, backend="eager", fresh=fresh)

    monkeypatch.setattr(search_run, "compile_model", compile_eager)
    out = tmp_path / "s"
    few = ["--population", "2", "--generations", "1", "--parents", "1", "--mutations", "1", "--crossovers", "1",
           "--eval-samples", "4", "--no-progress"]
    code, _, err = run_cli(["search", "--checkpoint", str(model_file), "--data", str(data_dir), "--out", str(out),
                            "--budget-latency", "100000ms", "--compile", *few], capsys)
    assert code == 0, err
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    # one compilation per distinct config timed (the dense and sparsest ends too), each from a clean dynamo state
    assert compiled and all(compiled) and len(compiled) <= len({json.dumps(h["config"]) for h in history}) + 2
    assert yaml.safe_load((out / "best.yaml").read_text())["cost_unit"] == "ms"


@pytest.mark.parametrize("extra,needle", [
    (["--budget-latency", "50%", "--latency-table", "t.json"], "give one or the other"),
    (["--budget-macs", "50%"], "--compile applies to a latency budget"),
])
def test_compile_with_a_table_or_a_mac_budget_is_one_line(tmp_path, model_file, data_dir, capsys, extra, needle):
    extra = [str(tmp_path / e) if e == "t.json" else e for e in extra]
    code, _, err = run_cli(search_args(model_file, data_dir, tmp_path / "s", "--compile", *extra), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "s" / "best.yaml").exists()


def test_splits_are_recorded_kept_on_resume_and_evaluate_leaves_the_fitness_images_out(
        tmp_path, model_file, data_dir, uninterrupted, capsys):
    best = yaml.safe_load((uninterrupted / "best.yaml").read_text())
    split = best["search_split"]
    assert split["images"] == 12 and len(split["fitness"]) == len(split["confirmation"]) == 6
    assert not set(split["fitness"]) & set(split["confirmation"])
    # the pick is the confirmation split's best candidate, and best.yaml's config
    conf = best["confirmation"]
    assert best["sparsity"] == conf["pick"]["config"]
    assert conf["pick"]["confirm_metric"] == max(c["confirm_metric"] for c in conf["candidates"])
    assert conf["uniform"]["uniform"] is not None and conf["uniform"]["config"] in [c["config"] for c in conf["candidates"]]
    # a resumed search (more generations) keeps the same images
    out = tmp_path / "again"
    import shutil
    shutil.copytree(uninterrupted, out)
    args = search_args(model_file, data_dir, out, "--budget-macs", "60%") + ["--generations", "4", "--resume"]
    assert run_cli(args, capsys)[0] == 0
    assert yaml.safe_load((out / "best.yaml").read_text())["search_split"] == split

    code, stdout, err = run_cli(["evaluate", "--checkpoint", str(model_file), "--data", str(data_dir), "--config",
                                 str(uninterrupted / "best.yaml"), "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["images"] == 6 and "left out the 6 val images" in result["note"]
    code, stdout, err = run_cli(["evaluate", "--checkpoint", str(model_file), "--data", str(data_dir), "--config",
                                 str(uninterrupted / "best.yaml"), "--include-fitness-images"], capsys)
    assert code == 0 and "12 val images" in " ".join(stdout.split())


def test_shared_prefix_search_equals_network_by_network(tmp_path, model_file, data_dir, capsys):
    """The default (shared prefixes) and --no-shared-prefix score every network the same, to the bit: same
    history, same pick; the counts line says how many block-pair executions the tree saved."""
    outs = {}
    for name, extra in (("tree", []), ("alone", ["--no-shared-prefix"])):
        outs[name] = tmp_path / name
        code, stdout, err = run_cli(search_args(model_file, data_dir, outs[name], "--budget-macs", "60%", *extra),
                                    capsys)
        assert code == 0, err
        if name == "tree":
            assert "fewer than the" in stdout and "block-pair executions" in stdout
            # later generations start from the first block each fitness batch ran wide in an earlier one
            assert "kept their first block" in " ".join(stdout.split())
    assert (outs["tree"] / "history.jsonl").read_text() == (outs["alone"] / "history.jsonl").read_text()
    assert yaml.safe_load((outs["tree"] / "best.yaml").read_text()) == \
        yaml.safe_load((outs["alone"] / "best.yaml").read_text())


def test_confirmation_scores_its_networks_as_one_tree(tmp_path, model_file, data_dir, capsys, monkeypatch):
    """The confirmation split's networks (the leaders, the best uniform config, dense) are scored in one pass
    over shared prefixes, each exactly as scoring it alone scores it, and best.yaml's confirmation rows are
    those scores."""
    import sparsevit_cli.commands.search as search_command
    from sparsevit_cli.evaluate import evaluate_images

    calls = []
    tree = search_command.evaluate_images_many

    def spy(model, method, configs, dataset, task, batch_size, device, indices, *args, **kwargs):
        out = tree(model, method, configs, dataset, task, batch_size, device, indices, *args, **kwargs)
        alone = [evaluate_images(model, method, c, dataset, task, batch_size, device, indices) for c in configs]
        calls.append((list(configs), [(s.metric(), s.fitness("logprob")) for s in out],
                      [(s.metric(), s.fitness("logprob")) for s in alone], kwargs.get("share")))
        return out

    monkeypatch.setattr(search_command, "evaluate_images_many", spy)
    out = tmp_path / "s"
    code, _, err = run_cli(search_args(model_file, data_dir, out, "--budget-macs", "60%"), capsys)
    assert code == 0, err
    [(configs, scored, alone, share)] = calls
    assert share is True and scored == alone and len(configs) >= 3
    assert configs[-1] == [[0.0] * len(stage) for stage in configs[0]]  # dense last
    rows = yaml.safe_load((out / "best.yaml").read_text())["confirmation"]["candidates"]
    by_config = {repr(c): m for c, (m, _) in zip(configs, scored)}
    assert all(by_config[repr(r["config"])] == r["confirm_metric"] for r in rows)


def test_racing_keeps_every_uniform_config_in_the_race(tmp_path, model_file, data_dir, capsys, monkeypatch):
    """With --race the search flags its uniform configs as never stopped (the pick is confirmed against the
    best of them), and only those."""
    import sparsevit_cli.commands.search as search_command

    seen = []
    real = search_command.race

    def spy(score, per_image, candidates, n, step, *args, keep=(), **kwargs):
        seen.append(list(keep))
        return real(score, per_image, candidates, n, step, *args, keep=keep, **kwargs)

    monkeypatch.setattr(search_command, "race", spy)
    out = tmp_path / "s"
    code, _, err = run_cli(search_args(model_file, data_dir, out, "--budget-macs", "60%", "--race"), capsys)
    assert code == 0, err
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    flags = [k for chunk in seen for k in chunk]
    assert len(flags) == len(history) and any(flags)
    for h, kept in zip(history, flags):
        values = {v for stage in h["config"] for v in stage}
        assert kept == (len(values) == 1), (h["config"], kept)
