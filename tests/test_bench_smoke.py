"""The benchmark scripts still run (`--smoke`: a micro Swin on CPU, one repeat). Benchmarks are scripts, never
timed tests: nothing here asserts a speed, only that each script produces its rows and that the numbers it
derives from them are consistent."""
import json
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """`main` of a benchmark script, loaded as `python benchmarks/NAME.py` would (its folder on sys.path)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    def load(name: str):
        return runpy.run_path(str(BENCHMARKS / f"{name}.py"), run_name=f"bench_{name}")
    return load


def test_bench_gpu_smoke(bench, tmp_path):
    out = tmp_path / "rows.json"
    rows = bench("bench_gpu")["main"](["--smoke", "--json", str(out)])
    assert [r["config"] for r in rows] == ["uniform 0%", "uniform 40%", "uniform 60%", "uniform 80%",
                                           "searched-style"]
    assert {(r["dtype"], r["mode"]) for r in rows} == {("fp32", "eager")}
    ideal = {r["config"]: r["ideal"] for r in rows}
    assert ideal["uniform 0%"] == pytest.approx(1.0) and 1 < ideal["uniform 40%"] < ideal["uniform 80%"]
    for r in rows:
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["sparse_ms"])
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["ideal"])
    assert json.loads(out.read_text())["rows"] == rows


def test_searched_style_config_rises_with_depth_and_is_valid(bench):
    from sparsevit_cli.methods import method_for_model
    from sparsevit_cli.timm_models import create_timm_model
    config = bench("bench_gpu")["searched_style"]([1, 1, 3, 1])
    assert config == [[0.3], [0.4], [0.5, 0.6, 0.7], [0.8]]
    swin_t = create_timm_model("swin_tiny_patch4_window7_224")
    assert method_for_model(swin_t).validate(swin_t, config) == config


def test_bench_gpu_rejects_unknown_mode(bench):
    with pytest.raises(SystemExit):
        bench("bench_gpu")["main"](["--modes", "eager,tensorrt"])


def test_bench_export_smoke(bench):
    errors = bench("bench_export")["main"](["--smoke", "--no-detector"])
    assert set(errors) == {"dense", "sparse 60%"} and max(errors.values()) < 1e-4


def test_bench_export_whole_detector_smoke(bench):
    """The whole-detector rows: dense and sparse Faster R-CNN exported, verified and timed at one size and on the
    mixed-aspect set, in onnxruntime (default threads and 1 thread) and in PyTorch (no timing asserted)."""
    import argparse
    module = bench("bench_export")
    ap = argparse.ArgumentParser()
    module["add_model_options"](ap, img_size=448, repeats=10, warmup=3)
    module["add_detector_options"](ap)
    args = module["apply_smoke"](ap.parse_args(["--smoke"]), det_img_size=64)
    rows = module["detector_rows"](args)["smoke"]
    assert set(rows["square"]) == set(rows["mixed"]) == {f"{runtime} {label}" for runtime in module["RUNTIMES"]
                                                         for label in ("dense", "sparse 50%")}
    assert set(rows["parity_px"]) == {"dense", "sparse 50%"}
    assert all(ms > 0 for ms in list(rows["square"].values()) + list(rows["mixed"].values()))


def test_bench_latency_table_smoke(bench):
    errors = bench("bench_latency_table")["main"](["--smoke"])
    assert len(errors) == 3 and all(e >= 0 for e in errors)  # dense, sparsest and one random config


def test_bench_search_smoke(bench, tmp_path):
    """The search benchmark's whole pipeline on a micro setting: every budget has every method's rows."""
    result = bench("bench_search")["main"](["--smoke", "--out", str(tmp_path / "b"), "--results", ""])
    assert [r["kind"] for r in result["rows"]] == ["MACs", "MACs", "latency"]
    # one budget at a uniform grid point (uniform 50%'s MACs), one midway between uniform 70% and 80%
    at, mid = result["rows"][0]["grid"], result["rows"][1]["grid"]
    assert at["where"] == "at" and at["uniform"] == [0.5] and at["slack"] == pytest.approx(0, abs=1e-3)
    assert mid["where"] == "between" and mid["uniform"] == [0.7, 0.8] and mid["slack"] > 0
    md = bench("bench_search")["_markdown"](result)
    assert "at uniform 50%" in md and "between uniform 70% and 80% (50% of the way up from 80%)" in md
    for row in result["rows"]:
        if row["kind"] == "latency" and "skipped" in row:  # a table timed on a busy machine may say so
            continue
        assert len(row["evolution"]) == len(row["random"]) == 2
        for run in row["evolution"] + row["random"]:
            assert 0 <= run["report_top1"] <= 100 and run["cost"] <= row["max_cost"] + 1e-9
            assert run["vs_uniform"]["low"] <= run["vs_uniform"]["diff"] <= run["vs_uniform"]["high"]
        assert row["uniform"]["cost"] <= row["max_cost"] + 1e-9 and row["downscaled_dense"]["size"] < 64
    assert (tmp_path / "b" / "results.json").is_file()


def test_bench_search_places_budgets_on_the_uniform_grid(bench):
    """Budgets at a grid point and between two, from each uniform config's cost fraction (hand-built grid)."""
    mod = bench("bench_search")
    grid = {0.5: 0.52, 0.6: 0.41, 0.7: 0.34, 0.8: 0.23}
    assert mod["budget_fraction"]("0.3", grid) == 0.3
    assert mod["budget_fraction"]("at:0.7", grid) == 0.34
    assert mod["budget_fraction"]("mid:0.7:0.8", grid) == pytest.approx(0.285)
    with pytest.raises(SystemExit):
        mod["budget_fraction"]("at:0.75", grid)  # not a uniform value of the space
    at = mod["grid_position"](0.34, grid)
    assert (at["where"], at["uniform"], at["slack"]) == ("at", [0.7], 0.0)
    between = mod["grid_position"](0.3, grid)  # uniform 80% (0.23) is the best uniform config inside it
    assert between["where"] == "between" and between["uniform"] == [0.7, 0.8]
    assert between["slack"] == pytest.approx(0.07) and "64% of the way" in between["text"]
    assert mod["grid_position"](0.2, grid)["where"] == "below"
    above = mod["grid_position"](0.6, grid)  # above every uniform config but dense: between dense and 50%
    assert above["where"] == "between" and above["uniform"] == [0.0, 0.5]


def test_bench_search_cost_smoke(bench, tmp_path, capsys):
    """Every mode runs; shared prefixes score every network exactly as alone with fewer block-pair (and, where
    counted, kept-window) executions; racing runs no more than the full scoring; the last two lines."""
    rows = bench("bench_search_cost")["main"](["--smoke", "--out", str(tmp_path / "cost"),
                                              "--results", str(tmp_path / "r.json")])
    assert [r["mode"] for r in rows] == ["one network at a time", "shared prefixes", "racing",
                                         "shared prefixes + racing"]
    alone, tree, raced, both = rows
    assert tree["pair_executions"] < alone["pair_executions"] == tree["pair_executions_alone"]
    assert raced["pair_executions"] <= alone["pair_executions"] and both["pair_executions"] < alone["pair_executions"]
    if alone["window_executions"] is not None:  # the evaluator counts kept windows
        assert tree["window_executions"] < alone["window_executions"] == tree["window_executions_alone"]
        assert tree["fewer_window_executions"] == alone["window_executions"] / tree["window_executions"]
    assert alone["raced_out"] == tree["raced_out"] == 0
    assert tree["fitness_pick"] == alone["fitness_pick"] and tree["same_pick"] and tree["same_fitness_pick"]
    for r in rows:
        assert r["same_pick"] == (r["pick"] == alone["pick"])
        assert r["report_images"] == 4  # 10 val images - 4 fitness - 2 confirmation
        d = r["report_vs_alone"]
        assert d["diff"] == pytest.approx(r["report_top1"] - alone["report_top1"])
        if r["same_pick"]:
            assert d["diff"] == d["low"] == d["high"] == 0.0
        assert r["fewer_pair_executions"] == alone["pair_executions"] / r["pair_executions"]
    doc = json.loads((tmp_path / "cost" / "results.json").read_text())
    assert doc["setting"]["evolution"]["population"] == 8 and doc["rows"] == rows
    for mode, unshared in (("shared prefixes", "one network at a time"), ("shared prefixes + racing", "racing"),
                           ("racing", "one network at a time")):
        diff = doc["fitness_diffs"][mode]  # a race's survivors score exactly as without racing
        assert diff["vs"] == unshared and diff["max_diff"] == 0.0
        assert diff["networks"] == alone["networks"] - (raced["raced_out"] if mode == "racing" else 0)
    *_, racing_line, last = capsys.readouterr().out.strip().splitlines()
    assert racing_line == (f"racing: {both['speedup_wall']:.2f}x faster in total (shared prefixes + racing), same "
                           f"pick: {'yes' if both['same_pick'] else 'no'}")
    assert last == f"shared-prefix evaluation: {tree['speedup_wall']:.2f}x faster, fitness identical (max diff 0)"
    assert (tmp_path / "r.md").read_text().splitlines()[-2:] == [racing_line, last]
    assert json.loads((tmp_path / "r.json").read_text()) == doc


def test_bench_search_cost_settings_have_one_owner(bench):
    """The demo setting is the demo preset's search made exhaustive; bench-search's is bench_search.SETTING's
    evolution at its 50% budget; --quick keeps both searches and shrinks the images; each run its own file."""
    from dataclasses import replace

    from sparsevit_cli.commands.workflow import PRESETS, evolution_settings
    mod = bench("bench_search_cost")
    demo, quick = mod["setting"]("demo", False, False), mod["setting"]("demo", True, False)
    assert demo.preset == PRESETS["default"] and demo.budget == PRESETS["default"].budget
    assert demo.evolution == replace(evolution_settings(PRESETS["default"]), population=demo.evolution.population,
                                     generations=1)
    assert demo.evolution.population > 93 and (demo.eval_samples, demo.confirm_samples) == (800, 800)
    assert quick.evolution == demo.evolution and quick.eval_samples < demo.eval_samples
    search = bench("bench_search")["SETTING"]
    other = mod["setting"]("bench-search", False, False)
    assert other.preset == search and other.evolution == evolution_settings(search) and other.budget == "50%"
    assert other.eval_samples == search.eval_samples == 1000
    names = {mod["results_path"](name, trained, q).name for name in ("demo", "bench-search")
             for trained in (False, True) for q in (False, True)}
    assert len(names) == 8 and "bench_search_cost.json" in names
    assert "bench_search_cost_bench_search_trained_quick.json" in names


def test_racing_agreement_smoke(bench, tmp_path, capsys):
    """Both searches per seed, their picks on the same report split, the per-seed and pooled differences
    consistent with the picks; a rerun reuses every finished search."""
    main = bench("racing_agreement")["main"]
    doc = main(["--smoke", "--out", str(tmp_path / "agree"), "--results", str(tmp_path / "r.json")])
    rows = doc["rows"]
    assert doc["seeds"] == len(rows) == 2 and doc["report_images"] == 4  # 16 val - 8 fitness - 4 confirmation
    for r in rows:
        assert r["same_pick"] == (r["raced_pick"] == r["full_pick"])
        assert r["full_raced_out"] == 0 and 0 <= r["raced_raced_out"] <= r["raced_networks"]
        d = r["raced_minus_full"]
        assert d["diff"] == pytest.approx(r["raced_report_top1"] - r["full_report_top1"])
        if r["same_pick"]:
            assert d["diff"] == d["low"] == d["high"] == 0.0
    assert doc["same_pick"] == sum(r["same_pick"] for r in rows)
    pooled = doc["pooled_raced_minus_full"]
    assert pooled["diff"] == pytest.approx(sum(r["raced_minus_full"]["diff"] for r in rows) / 2)
    assert pooled["low"] <= pooled["diff"] <= pooled["high"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"racing kept the pick in {doc['same_pick']}/2 seeds")
    assert f"- {last}" in (tmp_path / "r.md").read_text().splitlines()
    again = main(["--smoke", "--out", str(tmp_path / "agree")])  # every search recorded: only the report scoring
    assert [r["raced_wall_s"] for r in again["rows"]] == [r["raced_wall_s"] for r in rows]
    assert again["rows"] == rows
    record = tmp_path / "agree" / "seed0" / "full" / "run.json"  # a record of another search is not reused
    record.write_text(json.dumps({**json.loads(record.read_text()), "budget": "40%"}))
    with pytest.raises(SystemExit, match="records another search"):
        main(["--smoke", "--out", str(tmp_path / "agree")])


def test_bench_padding_smoke(bench):
    """The letterbox benchmark: its ratios are the rows' own numbers, and the dense model pays for the canvas
    (the sparse one's MAC ratio is its result, not asserted here)."""
    rows = bench("bench_padding")["main"](["--smoke"])
    assert [r["sparsity"] for r in rows] == [0.0, 0.5]
    for r in rows:
        assert r["macs_ratio"] == pytest.approx(r["gmacs"]["letterboxed"] / r["gmacs"]["alone"])
        assert r["time_ratio"] == pytest.approx(r["ms"]["letterboxed"] / r["ms"]["alone"])
    dense, sparse = rows
    assert dense["macs_ratio"] > 1.3  # the dense model computes the bands
    assert sparse["gmacs"]["letterboxed"] < dense["gmacs"]["letterboxed"]
