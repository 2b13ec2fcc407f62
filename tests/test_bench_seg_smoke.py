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
        # the per-canvas recomputation (for the intervals) reproduces the report card's mIoU on the same canvases
        card_label = {"dense": "dense", "pick (pipeline)": "pick"}.get(r["model"])
        if card_label:
            assert r["miou"] == pytest.approx(result["report_card_miou"][card_label], abs=1e-6)
        if r["model"] == "adapted dense":
            assert r["miou_vs_adapted_dense"] == 0 and "miou_vs_adapted_dense_ci95" not in r
        else:
            low, high = r["miou_vs_adapted_dense_ci95"]
            assert low <= r["miou_vs_adapted_dense"] <= high
    pick = next(r for r in rows if r["model"] == "pick (pipeline)")
    assert pick["backbone_macs_fraction"] <= 0.5 + 1e-9  # the budget: 50% of the backbone's MACs
    assert set(result["targets"]) == {"backbone >= 1.5x (b1)", "end to end >= 1.3x (b1)", "mIoU >= adapted dense - 1"}
    # a model that did not get a quarter of the way from predicting background everywhere to 100 mIoU: its
    # accuracy target is not judged (None), never "met"
    adapted = next(r for r in rows if r["model"] == "adapted dense")["miou"]
    floor = result["background_only_miou"]
    assert result["seg_labels"] == "foreground" and 0 < floor < 100
    assert (result["targets"]["mIoU >= adapted dense - 1"] is None) == (adapted < floor + (100 - floor) / 4)
    assert json.loads((tmp_path / "bench_seg.json").read_text())["rows"] == rows
    assert (tmp_path / "pipeline" / "report.md").is_file()


def test_background_only_miou_is_the_background_share_over_the_classes(monkeypatch):
    """Predicting background everywhere: background IoU = its share of the scored pixels, every other class 0."""
    import torch
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    fn = runpy.run_path(str(BENCHMARKS / "bench_seg.py"), run_name="bench_seg")["background_only_miou"]

    class Masks:
        num_classes = 2
        masks = [torch.tensor([[0, 0, 1], [255, 0, 0]]), torch.tensor([[0, 1, 1], [0, 0, 255]])]

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return None, self.masks[i]

    # 7 background, 3 digit, 2 ignored pixels: background IoU 7/10, digit 0 -> mIoU 35
    assert fn(Masks()) == pytest.approx(35.0)
