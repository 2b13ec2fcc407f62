"""`benchmarks/bench_seg.py --smoke` still runs: the pipeline on 64 px demo segmentation canvases with a micro
Swin and a tiny Semantic FPN, then the latency split. A script, never a timed test: nothing here asserts a
speed, only the rows it produces and the numbers derived from them."""
import json
import runpy
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_bench_seg_smoke(monkeypatch, tmp_path, one_thread):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python benchmarks/bench_seg.py` runs it
    main = runpy.run_path(str(BENCHMARKS / "bench_seg.py"), run_name="bench_seg")["main"]
    result = main(["--smoke", "--out", str(tmp_path)])
    rows = result["rows"]
    names = [r["model"] for r in rows if r["batch"] == 1]
    assert names[:2] == ["dense", "adapted dense"] and names[-1] == "pick (pipeline)"
    assert [r["batch"] for r in rows] == [1] * len(names) + [2] * len(names)
    for r in rows:
        dense = next(d for d in rows if d["model"] == "dense" and d["batch"] == r["batch"])
        assert r["e2e_speedup"] == pytest.approx(dense["e2e_ms"] / r["e2e_ms"])
        assert r["backbone_speedup"] == pytest.approx(dense["backbone_ms"] / r["backbone_ms"])
        # the Semantic FPN runs dense: the totals differ by the backbone's difference only
        assert r["total_gmacs"] - r["backbone_gmacs"] == pytest.approx(dense["total_gmacs"] - dense["backbone_gmacs"])
        assert 0 <= r["miou"] <= 100
    pick = next(r for r in rows if r["model"] == "pick (pipeline)")
    assert pick["backbone_macs_fraction"] <= 0.5 + 1e-9  # the budget: 50% of the backbone's MACs
    assert set(result["targets"]) == {"backbone >= 1.5x (b1)", "end to end >= 1.3x (b1)", "mIoU >= adapted dense - 1"}
    # a one-epoch micro model predicts background only: its accuracy target is not judged (None), never "met"
    adapted = next(r for r in rows if r["model"] == "adapted dense")["miou"]
    assert (result["targets"]["mIoU >= adapted dense - 1"] is None) == (adapted < 2 * 100 / 11)
    assert json.loads((tmp_path / "bench_seg.json").read_text())["rows"] == rows
    assert (tmp_path / "pipeline" / "report.md").is_file()
