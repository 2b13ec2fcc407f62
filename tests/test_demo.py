"""`sparsevit demo --quick` end to end (the README's main command, tiny settings), and its resumability."""
import json

import pytest
import yaml

from sparsevit_cli.cli import main
from sparsevit_cli.demo import PRESETS


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert run_cli(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def run_cli(args):
    try:
        main(args)
    except SystemExit as e:
        return e.code
    return 0


def test_quick_demo_table_is_sane(demo_run):
    summary = json.loads((demo_run / "summary.json").read_text())
    dense, sparse = summary["rows"]
    assert dense["model"] == "dense" and sparse["model"] == "SparseViT"
    for row in (dense, sparse):
        assert 0.0 <= row["top1"] <= 100.0 and row["ms"] > 0 and row["gmacs"] > 0
    # the searched config respects the 50% MAC budget, and its MACs are what best.yaml says
    assert sparse["gmacs"] <= 0.5 * dense["gmacs"] + 1e-9
    best = yaml.safe_load((demo_run / "search" / "best.yaml").read_text())
    assert best["gmacs"] == pytest.approx(sparse["gmacs"]) and best["sparsity"] == summary["sparsity"]
    assert dense["speedup"] == 1.0 and sparse["speedup"] == pytest.approx(dense["ms"] / sparse["ms"])
    assert summary["export_rel_error"] < 1e-4
    for stage in ("dense", "adapt", "finetune"):
        assert (demo_run / stage / "model.safetensors").is_file()
    assert (demo_run / "export" / "sparsevit.onnx").is_file()
    assert (demo_run / "search" / "pareto.png").is_file()


def test_rerun_skips_finished_stages(demo_run, capsys):
    before = {p: p.stat().st_mtime_ns for p in demo_run.rglob("model.safetensors")}
    assert run_cli(["demo", "--quick", "--out", str(demo_run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert " ".join(out.split()).count(": done (") == 6  # rich wraps long lines
    assert {p: p.stat().st_mtime_ns for p in demo_run.rglob("model.safetensors")} == before


def test_other_preset_in_same_folder_is_refused(demo_run, capsys):
    code = run_cli(["demo", "--preset", "default", "--out", str(demo_run), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "preset 'quick'" in err and len(err.strip().splitlines()) == 1


def test_presets_fit_their_models():
    for name, p in PRESETS.items():
        assert p.img_size % (4 * p.model_args["window_size"] * 2 ** (len(p.model_args["depths"]) - 1)) == 0, name
