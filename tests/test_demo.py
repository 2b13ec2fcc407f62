"""`sparsevit demo --quick` end to end (the README's main command, tiny settings), and its resumability."""
import json

import pytest
import yaml

from sparsevit_cli.commands.demo import PRESETS
from cli_helpers import exit_code


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert exit_code(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_quick_demo_table_is_sane(demo_run):
    summary = json.loads((demo_run / "summary.json").read_text())
    dense, sparse = summary["rows"]
    assert dense["model"] == "dense" and sparse["model"] == "SparseViT"
    for row in (dense, sparse):
        assert 0.0 <= row["top1"] <= 100.0 and row["ms"] > 0 and row["gmacs"] > 0 and row["images_per_s"] > 0
    # the searched config respects the 50% MAC budget, and its MACs are what best.yaml says
    assert sparse["gmacs"] <= 0.5 * dense["gmacs"] + 1e-9
    best = yaml.safe_load((demo_run / "search" / "best.yaml").read_text())
    assert best["gmacs"] == pytest.approx(sparse["gmacs"]) and best["sparsity"] == summary["sparsity"]
    assert dense["speedup"] == 1.0 and sparse["speedup"] == pytest.approx(dense["ms"] / sparse["ms"])
    # throughput at the realistic batch, beside the MAC-ideal speedup
    assert summary["throughput_batch"] == 64 and summary["compiled"] is False
    assert sparse["throughput_speedup"] == pytest.approx(sparse["images_per_s"] / dense["images_per_s"])
    assert sparse["ideal_speedup"] == pytest.approx(dense["gmacs"] / sparse["gmacs"]) and sparse["ideal_speedup"] >= 2
    assert summary["export_rel_error"] < 1e-4
    for stage in ("dense", "adapt", "finetune", "finetune_dense"):
        assert (demo_run / stage / "model.safetensors").is_file()
    # the headline compares like with like: dense gets the final model's extra epochs (1 + 1 + 1)
    assert summary["training"].startswith("Like-for-like") and "3 epochs" in summary["training"]
    assert (demo_run / "export" / "model.onnx").is_file()
    # the demo is the pipeline: its report card is there too
    card = json.loads((demo_run / "report.json").read_text())
    assert [r["kind"] for r in card["rows"]][0] == "dense" and card["rows"][-1]["kind"] == "pick"
    assert card["rows"][-1]["metric"] == sparse["top1"] and card["rows"][0]["metric"] == dense["top1"]
    assert (demo_run / "report.md").is_file() and (demo_run / "windows_1.png").is_file()
    assert (demo_run / "search" / "pareto.png").is_file()


def test_rerun_skips_finished_stages(demo_run, capsys):
    before = {p: p.stat().st_mtime_ns for p in demo_run.rglob("model.safetensors")}
    assert exit_code(["demo", "--quick", "--out", str(demo_run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert " ".join(out.split()).count(": done (") == 8  # rich wraps long lines (data + the pipeline's 7 stages)
    assert {p: p.stat().st_mtime_ns for p in demo_run.rglob("model.safetensors")} == before


def test_other_preset_in_same_folder_is_refused(demo_run, capsys):
    code = exit_code(["demo", "--preset", "default", "--out", str(demo_run), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "preset 'quick'" in err and len(err.strip().splitlines()) == 1


def test_presets_build_and_the_budget_leaves_choices():
    """Every preset's model builds, and its search budget lies above its sparsest config (else the
    search could not start) and below dense."""
    from sparsevit_cli.methods import method_for_model
    from sparsevit_cli.timm_models import create_timm_model
    from sparsevit_cli.search.space import load_space

    for name, p in PRESETS.items():
        model = create_timm_model(p.model, img_size=p.img_size, **p.model_args)
        method = method_for_model(model)
        wrapped = method.wrap(model)
        space = load_space(method.default_space, group_sizes=method.group_sizes(wrapped))
        dense = method.macs(wrapped, space.decode(space.extreme("dense")), p.img_size)
        sparsest = method.macs(wrapped, space.decode(space.extreme("sparsest")), p.img_size)
        assert sparsest < float(p.budget.rstrip("%")) / 100 * dense < dense, name


def test_report_on_the_quick_demo(demo_run):
    """`sparsevit report` (make repro) on the quick run: every family of points, the claims, the files."""
    assert exit_code(["report", "--preset", "quick", "--out", str(demo_run), "--budgets", "0.5",
                      "--scales", "0.5", "--no-progress"]) == 0
    out = demo_run / "report"
    report = json.loads((out / "report.json").read_text())
    points = report["points"]
    families = {pt["family"] for pt in points}
    from sparsevit_cli.swin.patch import DEFAULT_WINDOW_SCORE, WINDOW_SCORES
    others = [name for name in WINDOW_SCORES if name != DEFAULT_WINDOW_SCORE]
    assert others and {"dense", "un-adapted", "downscaled", "uniform", "searched", "random", "searched+finetuned"} \
        | {f"score {name}" for name in others} == families
    # each ablation runs the same weights and configs as the uniform points, ranked by another window score
    uniform = {pt["label"]: pt for pt in points if pt["family"] == "uniform"}
    for name in others:
        ablation = {pt["label"].split(",")[0]: pt for pt in points if pt["family"] == f"score {name}"}
        assert set(ablation) == {"uniform 30%", "uniform 50%", "uniform 70%"}
        assert all(ablation[k]["gmacs"] == uniform[k]["gmacs"] and ablation[k]["config"] == uniform[k]["config"]
                   for k in ablation)
    dense = next(pt for pt in points if pt["family"] == "dense")
    for pt in points:
        assert 0.0 <= pt["top1"] <= 100.0 and pt["ms"] > 0 and pt["gmacs"] > 0 and pt["images_per_s"] > 0
    searched = next(pt for pt in points if pt["family"] == "searched")
    assert searched["gmacs"] <= 0.5 * dense["gmacs"] + 1e-9
    # the random baseline evaluates as many distinct networks as the evolution did, inside the same budget
    best = yaml.safe_load((out / "search_50" / "best.yaml").read_text())
    rnd = next(pt for pt in points if pt["family"] == "random")
    assert rnd["label"] == f"best of {best['search']['evaluations']} random 50%"
    assert rnd["gmacs"] <= 0.5 * dense["gmacs"] + 1e-9
    final = next(pt for pt in points if pt["family"] == "searched+finetuned")
    assert dense["epochs"] == final["epochs"] == 3 and searched["epochs"] == 2  # like-for-like dense
    assert report["architecture"] == "Swin (embed 16, depths 2-2)" and report["architecture"] in (out / "report.md").read_text()
    assert all(pt["ms_low"] <= pt["ms"] <= pt["ms_high"] for pt in points)
    down = next(pt for pt in points if pt["family"] == "downscaled")
    assert down["label"] == "dense @ 32 px" and down["gmacs"] < dense["gmacs"]
    assert [c["claim"] for c in report["claims"]][-1].startswith("at 50% of dense MACs")
    md = (out / "report.md").read_text()
    assert "| dense | dense |" in md and "images/s (batch 64)" in md
    for png in ("acc_vs_gmacs.png", "acc_vs_latency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert exit_code(["report", "--out", str(demo_run), "--budgets", "1.5"]) == 2
