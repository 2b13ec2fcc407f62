"""`sparsevit search` end to end on a micro Swin model file: outputs, budgets, resume, errors, torchrun."""
import json
import os
import subprocess
import sys

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
from cli_helpers import run_cli

MICRO_ARGS = {"img_size": 64, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4,
              "num_classes": 10}
SMALL_GA = ["--population", "6", "--generations", "3", "--parents", "3", "--mutations", "3",
            "--crossovers", "3", "--mutation-prob", "0.5", "--eval-samples", "12", "--no-progress"]


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
    assert max(h["metric"] for h in history) == best["metric_value"]
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "top candidates" in stdout
    # the file is what finetune and measure take
    assert read_sparsity_file(out / "best.yaml")["sparsity"] == best["sparsity"]


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

    class Killed(Exception):
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
    return {"space": space, "corrupt": corrupt, "missing": tmp_path / "nope.safetensors"}


@pytest.mark.parametrize("extra,needle", [
    (["--budget-macs", "0.00001"], "budget"),
    (["--budget-macs", "cheap"], "--budget-macs must be a number"),
    (["--budget-macs", "50%", "--budget-latency", "5ms"], "exactly one budget"),
    ([], "exactly one budget"),
    (["--budget-macs", "50%", "--space", "{space}"], "bad_space.yaml"),
    (["--budget-macs", "50%", "--space", "swin_nope"], "swin_nope"),
    (["--budget-macs", "50%", "--img-size", "96"], "img_size"),
])
def test_bad_input_is_one_line(tmp_path, model_file, data_dir, bad, capsys, extra, needle):
    extra = [e.format(**bad) for e in extra]
    code, _, err = run_cli(search_args(model_file, data_dir, tmp_path / "s", *extra), capsys)
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err and needle in lines[0], err


@pytest.mark.parametrize("which,needle", [("missing", "not found"), ("corrupt", "cannot be read")])
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
