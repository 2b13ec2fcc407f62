"""`benchmarks/bench_det.py --smoke` still runs (micro Swin, 64 px demo COCO canvases, one repeat). A script,
never a timed test: nothing here asserts a speed, only the rows it produces and the numbers derived from them."""
import json
import runpy
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench_det(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python benchmarks/bench_det.py` runs it
    return runpy.run_path(str(BENCHMARKS / "bench_det.py"), run_name="bench_det")["main"]


def check_rows(result, names):
    rows = result["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == [(n, b) for b in (1, 2) for n in names]
    for r in rows:
        dense = next(d for d in rows if d["model"] == "dense" and d["batch"] == r["batch"])
        assert r["e2e_speedup"] == pytest.approx(dense["e2e_ms"] / r["e2e_ms"])
        assert r["backbone_speedup"] == pytest.approx(dense["backbone_ms"] / r["backbone_ms"])
        # neck and heads run dense: the totals differ by the backbone's difference only
        assert r["total_gmacs"] - r["backbone_gmacs"] == pytest.approx(dense["total_gmacs"] - dense["backbone_gmacs"])
        assert r["total_gmacs"] > r["backbone_gmacs"] > 0


@pytest.mark.parametrize("task", ["detection", "instance_segmentation"])
def test_latency_and_macs_of_dense_vs_uniform_at_half_the_backbone_macs(bench_det, tmp_path, task):
    result = bench_det(["--smoke", "--latency-only", "--task", task, "--out", str(tmp_path)])
    assert result["training"]["status"] == "skipped" and result["task"] == task
    parts = {"backbone", "neck", "rpn", "box_head"} | ({"mask_head"} if task == "instance_segmentation" else set())
    assert all(set(r["gmacs_by_part"]) == parts for r in result["rows"])
    uniform = f"uniform {result['uniform_sparsity']:.0%}"
    check_rows(result, ["dense", uniform])
    fraction = next(r for r in result["rows"] if r["model"] == uniform)["backbone_macs_fraction"]
    assert 0.35 < fraction < 0.65  # the engine's ratio closest to 50% of the backbone's MACs
    assert json.loads((tmp_path / "bench_det.json").read_text())["rows"] == result["rows"]


def test_trained_rows_through_the_cli(bench_det, tmp_path):
    # Mask R-CNN: the Faster R-CNN path plus the mask head and mask AP (one trained smoke run keeps the suite short;
    # the detection task's rows are checked untrained above, its training by tests/test_detection_pipeline.py)
    result = bench_det(["--smoke", "--task", "instance_segmentation", "--out", str(tmp_path)])
    training = result["training"]
    assert training["status"] == "ok", training
    check_rows(result, ["dense", "adapted dense", "searched", "uniform"])
    assert all(0.0 <= r[m] <= 100.0 for r in result["rows"] for m in ("box_ap", "mask_ap"))
    # AP differences to the adapted dense model, with paired bootstrap intervals over the canvases
    vs = training["vs_adapted_dense"]
    assert set(vs) == {"searched", "uniform"} and all(set(per) == {"box_ap", "mask_ap"} for per in vs.values())
    for name, per in vs.items():
        for m, c in per.items():
            assert c["diff"] == pytest.approx(training[m][name] - training[m]["adapted dense"])
            assert c["low"] <= c["diff"] <= c["high"] and c["b"] == "adapted dense"
    assert set(result["targets"]) >= {"box_ap >= adapted dense - 1", "mask_ap >= adapted dense - 1"}
    from sparsevit_cli.model_file import read_meta

    meta = read_meta(training["files"]["searched"])  # the heads sized to the backbone travel in the model files
    assert meta.task == "instance_segmentation" and meta.task_options["mask_head_channels"] == 64
