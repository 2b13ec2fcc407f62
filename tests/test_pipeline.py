"""`sparsevit pipeline` end to end on tiny user-layout data (classification from scratch with a YAML, a
detector from a timm checkpoint with the flags), its report card, SIGKILL in every stage then rerun
(same final model file, export and report), refusal of a stage whose inputs changed, and bad settings as
one line.

The runs are real processes forked from test_faults' zygote (torch imported once), so a kill is a real
SIGKILL at an exact point: just before the n-th file a stage writes into its folder."""
import json
import shutil

import pytest
import torch
import yaml

from cli_helpers import assert_one_line_error, run_cli, stopped_after
from sparsevit_cli.data.demo import write_demo_data
from test_faults import zygote  # noqa: F401  (the fixture: one zygote per module, as test_faults has it)

MICRO = {"img_size": 64, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4,
         "global_pool": "max", "drop_path_rate": 0.0}
#: every stage on, each as small as it can be and still do its job
TINY = {"budget": {"macs": "50%"}, "dense": {"run": True},
        "search": {"population": 3, "generations": 1, "parents": 2, "mutations": 1, "crossovers": 1,
                   "eval_samples": 4, "confirm_samples": 4, "report_samples": 4, "pick": "gain-shown"},
        "evaluate": {"uniform": [0.4, 0.8], "pictures": 1, "repeats": 1, "throughput_batch": 2}}


def write_yaml(path, data_dir, pipeline=TINY, model_args=MICRO, **over):
    cfg = {"model": {"name": "swin_tiny_patch4_window7_224", "args": dict(model_args)},
           "data": {"path": str(data_dir), "task": "classification"}, "optim": {"lr": 1e-3},
           "schedule": {"name": "constant"}, "epochs": 1, "batch_size": 8, "eval_batch_size": 16,
           "checkpoint_every": 1, "pipeline": pipeline, **over}
    path.write_text(yaml.safe_dump(cfg))
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe") / "data"
    write_demo_data(d, img_size=64, n_train=16, n_val=12, seed=0)
    return d


@pytest.fixture(scope="module")
def run_yaml(tmp_path_factory, data_dir):
    return write_yaml(tmp_path_factory.mktemp("cfg") / "run.yaml", data_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, zygote, run_yaml):
    """One uninterrupted pipeline run (in a zygote child, like the killed ones it is compared with)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    code, log = zygote.run(["pipeline", run_yaml, "--out", out, "--no-progress"])
    assert code == 0, log
    return out


def comparable(out):
    """What a rerun must reproduce: the final weights, the exported model, and the report card's numbers
    (all but the timings, which are measured again)."""
    timing = {"ms", "ms_low", "ms_high", "images_per_s", "cost", "in_budget", "budget_ms"}
    card = json.loads((out / "report.json").read_text())
    rows = [{k: v for k, v in r.items() if k not in timing} for r in card["rows"] + card["curve"]]
    return ((out / "finetune" / "model.safetensors").read_bytes(), (out / "export" / "model.onnx").read_bytes(),
            rows, card["pictures"], (out / "windows_1.png").read_bytes())


def test_classification_pipeline_writes_the_report_card(reference):
    card = json.loads((reference / "report.json").read_text())
    kinds = [r["kind"] for r in card["rows"]]
    assert kinds[0] == "dense" and kinds[-1] == "pick" and "searched" in kinds
    dense, pick = card["rows"][0], card["rows"][-1]
    assert pick["gmacs"] <= 0.5 * dense["gmacs"] + 1e-12 and pick["in_budget"]
    for r in card["rows"] + card["curve"]:
        assert 0 <= r["metric"] <= 100 and r["ms"] > 0
        assert 0 < r["backbone_gmacs"] <= r["gmacs"]
    assert all(r["images_per_s"] > 0 for r in card["rows"])  # throughput: the card's rows (the curve is latency)
    # the uniform curve: dense plus each uniform sparsity, cheaper as it gets sparser
    # (the configured 40% and 80%, plus the best uniform config the search confirmed its pick against)
    best = yaml.safe_load((reference / "search" / "best.yaml").read_text())
    values = sorted({0.4, 0.8, best["confirmation"]["uniform"]["uniform"]})
    assert [r["label"] for r in card["curve"]] == ["dense", "uniform 0%"] + [f"uniform {v:.0%}" for v in values]
    gmacs = [r["gmacs"] for r in card["curve"]]
    assert gmacs[0] == gmacs[1] and all(a > b for a, b in zip(gmacs[1:], gmacs[2:]))
    # scored on the val images the search never saw
    assert card["held_out_images"] == 12 - 4 - 4 and card["held_out"]
    # the search's confirmation: its pick vs the best uniform config vs dense, with intervals
    conf = card["confirmation"]
    assert conf["pick"]["config"] == pick["config"] and {c["b"] for c in conf["comparisons"]} == {"best uniform", "dense"}
    assert all(c["low"] <= c["diff"] <= c["high"] for c in conf["comparisons"])
    md = (reference / "report.md").read_text()
    assert "confirmed on 4 images" in md and conf["verdict"] in md
    assert card["export"]["max_rel_error"] < 1e-4 and (reference / "export" / "model.onnx").is_file()
    assert card["export"]["file"] == str(reference / "export" / "model.onnx")
    md = (reference / "report.md").read_text()
    assert "| dense |" in md and "| pick |" in md and "max relative error" in md
    for png in ["acc_vs_latency.png", *card["pictures"]]:
        assert (reference / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert card["pictures"] == ["windows_1.png"]
    # the final model carries the searched config
    best = yaml.safe_load((reference / "search" / "best.yaml").read_text())
    assert pick["config"] == best["sparsity"]
    assert best["confirmation"]["rule"] == "gain-shown"  # the pipeline's search.pick reaches the search


def test_the_report_card_is_consistent(reference):
    """One best uniform config in every table (the search's), dense trained as long as the pick, the plot's
    pick at the pick's coordinates, the real architecture named."""
    from sparsevit_cli.commands.pipeline import plot_data
    card = json.loads((reference / "report.json").read_text())
    md = (reference / "report.md").read_text()
    conf_uniform = card["confirmation"]["uniform"]
    uniform_rows = [r for r in card["rows"] if r["kind"] == "uniform"]
    assert len(uniform_rows) == 1 and uniform_rows[0]["config"] == conf_uniform["config"]
    assert uniform_rows[0]["label"] == f"uniform {conf_uniform['uniform']:.0%}*" and card["best_uniform_from"] == "search"
    assert f"| best uniform {conf_uniform['uniform']:.0%} |" in md and f"| {uniform_rows[0]['label']} |" in md
    # like-for-like: dense is the adapted model finetuned dense for the pick's epochs (1 + 1 + 1 here)
    dense, pick = card["rows"][0], card["rows"][-1]
    assert dense["epochs"] == pick["epochs"] == 3 and card["dense_model"] == str(reference / "finetune_dense" / "model.safetensors")
    assert card["training"].startswith("Like-for-like training") and card["training"] in md
    assert all(r["epochs"] == 2 for r in card["curve"] if r["kind"] == "uniform")  # adapted weights: no finetune
    # latency: the median inside its interquartile range; one repeat is flagged as no spread measured
    for r in card["rows"] + card["curve"]:
        assert r["ms_low"] <= r["ms"] <= r["ms_high"]
    assert len(card["warnings"]) == len(card["rows"]) - 1 and "only 1 timed repeat" in card["warnings"][0]
    assert card["warnings"][0] in md
    # the plot: each marker where its row is, the curve ordered by each panel's cost
    series = plot_data(card)
    for panel, key in (("gmacs", "gmacs"), ("latency", "ms")):
        (p,) = [s for s in series if s.panel == panel and s.kind == "pick"]
        assert (p.x, p.y) == ([pick[key]], [pick["metric"]])
        (curve,) = [s for s in series if s.panel == panel and s.kind == "curve"]
        assert curve.x == sorted(curve.x)
    assert card["architecture"] == "Swin (embed 16, depths 2-2)" and card["architecture"] in md
    assert "swin_tiny_patch4_window7_224" not in md.splitlines()[0]


def test_sigkill_in_every_stage_then_rerun_gives_the_same_result(tmp_path, zygote, run_yaml, reference):
    """One chain: each run is killed inside the next stage (just before the n-th file it writes), the last
    rerun finishes; the result is the uninterrupted run's."""
    out = tmp_path / "run"
    args = ["pipeline", run_yaml, "--out", out, "--no-progress"]
    for folder, n in [("dense", 3), ("adapt", 3), ("search", 3), ("finetune", 3), ("finetune_dense", 3), ("evaluate", 2),
                      ("export", 2), ("run", 2)]:
        code, log = zygote.run(args, fault=("into", folder, n))
        assert code == -9, f"no kill in {folder}: exit {code}\n{log}"
    code, log = zygote.run(args)
    assert code == 0, log
    assert comparable(out) == comparable(reference)
    assert not list(out.rglob(".*.tmp*")), "a temporary file was left behind"


def test_rerun_skips_and_changed_inputs_are_refused(tmp_path, reference, run_yaml, data_dir, capsys):
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("model.safetensors")}
    code, out, err = run_cli(["pipeline", run_yaml, "--out", reference, "--no-progress"], capsys)
    assert code == 0, err
    assert " ".join(out.split()).count(": done (") == 7
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("model.safetensors")} == before
    # another budget: the search is refused (dense and adapt are still the same)
    code, _, err = run_cli(["pipeline", run_yaml, "--out", reference, "--budget-macs", "40%"], capsys)
    assert_one_line_error(code, err, "the search stage")
    assert "budget.macs was 50%, now 40%" in err
    # other data (one more image): the first stage is refused
    other = tmp_path / "data"
    shutil.copytree(data_dir, other)
    first = sorted((other / "train").rglob("*.png"))[0]
    shutil.copy(first, first.with_name("extra.png"))
    code, _, err = run_cli(["pipeline", run_yaml, "--out", reference, "--data", other], capsys)
    assert_one_line_error(code, err, "the dense stage")
    assert "data." in err


@pytest.mark.parametrize("edit,flags,needle", [
    ({"pipeline": {"budgt": {"macs": "50%"}}}, [], "did you mean 'budget'"),
    ({"pipeline": {"budget": {"macs": "50%", "latency": "60%"}}}, [], "exactly one of macs"),
    ({"pipeline": {"budget": {"macs": "fast"}}}, [], "pipeline.budget.macs"),
    ({"pipeline": {"budget": {"latency": "60%", "device": "tpu"}}}, [], "pipeline.budget.device"),
    ({"pipeline": {"search": {"population": 0}}}, [], "pipeline.search.population must be >= 1"),
    ({"pipeline": {"export": {"format": "tflite"}}}, [], "pipeline.export.format"),
    ({"pipeline": {"evaluate": {"uniform": [0.9]}}}, [], "sparsities 0.1 to 0.8"),
    ({"pipeline": {"search": {"fitness": "loss"}}}, [], "pipeline.search.fitness"),
    ({"pipeline": {"search": {"pick": "luck"}}}, [], "pipeline.search.pick"),
    ({"pipeline": {"dense": {"run": False}}}, [], "give --checkpoint"),
    ({}, ["--budget-latency", "-3"], "must be positive"),
    ({}, ["--budget-latency", "50%", "--budget-macs", "50%"], "give one budget"),
    ({}, ["--budget-latency", "50%", "--budget-macs-of", "backbone"], "macs_of"),
    ({}, ["--checkpoint", "missing.pth"], "not found"),
    ({}, ["--budget-macs", "1%"], "below the cheapest config"),
    ({}, ["--budget-latency", "60"], "say 60ms or 60%"),
    ({"pipeline": {"search": {"eval_samples": 8}}}, [], "--allow-small-val"),
])
def test_bad_settings_are_one_line(tmp_path, data_dir, capsys, edit, flags, needle):
    """Refused before any stage runs: a typo costs no training."""
    cfg = yaml.safe_load(write_yaml(tmp_path / "run.yaml", data_dir).read_text())
    for key, value in edit.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli(["pipeline", tmp_path / "run.yaml", "--out", tmp_path / "out", *flags], capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "out" / "dense").exists()  # refused before any stage ran


def test_a_stage_that_failed_before_writing_anything_takes_new_inputs(tmp_path, reference, run_yaml, capsys,
                                                                       monkeypatch):
    """A search refused for its budget wrote nothing: fixing the budget is no change of inputs to refuse. (A
    budget below the cheapest config is refused before any stage now, by the pre-checks: the search stage
    here refuses one itself, as one the pre-checks passed may still be, e.g. measured again under load.)"""
    from sparsevit_cli.commands import pipeline as command
    from sparsevit_cli.errors import UserError

    def refused(*args, **kwargs):
        raise UserError("--budget-macs 40% is below the cheapest config")
    out = tmp_path / "run"
    shutil.copytree(reference / "dense", out / "dense")  # finished stages: the same inputs
    shutil.copytree(reference / "adapt", out / "adapt")
    cfg = yaml.safe_load(run_yaml.read_text())
    for later in ("finetune", "evaluate", "export"):  # only the search matters here
        cfg["pipeline"][later] = {"run": False}
    search_only = tmp_path / "search_only.yaml"
    search_only.write_text(yaml.safe_dump(cfg))
    with monkeypatch.context() as m:
        m.setattr(command, "_search", refused)
        code, _, err = run_cli(["pipeline", search_only, "--out", out, "--budget-macs", "40%", "--no-progress"],
                               capsys)
    assert_one_line_error(code, err, "below the cheapest config")
    assert sorted(p.name for p in (out / "search").iterdir() if not p.name.startswith(".")) == ["inputs.json"]
    code, _, err = run_cli(["pipeline", search_only, "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    best = [yaml.safe_load((d / "search" / "best.yaml").read_text()) for d in (out, reference)]
    assert best[0]["sparsity"] == best[1]["sparsity"] and best[0]["confirmation"] == best[1]["confirmation"]


def test_flags_without_a_yaml_need_a_checkpoint(tmp_path, data_dir, capsys):
    code, _, err = run_cli(["pipeline", "--data", data_dir, "--budget-latency", "60%", "--out", tmp_path], capsys)
    assert_one_line_error(code, err, "give --checkpoint")


# ------------------------------------------------------------------------------------------- detection
DET = {"img_size": 96, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4}
LIGHT = {"fpn_channels": 32, "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
         "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 25, "rpn_batch_size_per_image": 32,
         "box_batch_size_per_image": 32, "box_detections_per_img": 10}


def test_detection_from_a_timm_checkpoint_with_flags(tmp_path, zygote, capsys):
    """The README's common case: a timm checkpoint, COCO-layout data, a latency budget, all by flags (the
    YAML only makes the model and the stage sizes tiny); another checkpoint is then refused."""
    from sparsevit_cli.timm_models import create_timm_model
    data = tmp_path / "coco"
    write_demo_data(data, img_size=96, n_train=4, n_val=4, seed=0, detection=True)
    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save(create_timm_model("swin_tiny_patch4_window7_224", **DET).state_dict(), tmp_path / f"swin{seed}.pth")
    # without the finetune stage: the final model is the adapted weights under the searched config
    pipeline = {"finetune": {"run": False}, "search": {"population": 2, "generations": 1, "parents": 1, "mutations": 1, "crossovers": 0,
                           "eval_samples": 1, "confirm_samples": 1, "report_samples": 2},
                "evaluate": {"uniform": [0.5], "pictures": 1, "repeats": 1, "throughput_batch": 2}}
    cfg = write_yaml(tmp_path / "det.yaml", "unused", pipeline, DET, task_options=LIGHT, batch_size=2,
                     eval_batch_size=2, adapt={"report": [0.5]})
    args = ["pipeline", cfg, "--checkpoint", tmp_path / "swin0.pth", "--data", data / "det", "--task", "detection",
            "--budget-latency", "5000%", "--out", tmp_path / "out", "--no-progress"]
    code, log = zygote.run(args)
    assert code == 0, log
    card = json.loads((tmp_path / "out" / "report.json").read_text())
    assert card["task"] == "detection" and card["metric"] == "box_ap" and card["budget"]["unit"] == "ms"
    assert card["rows"][0]["label"] == "dense (adapted weights)"  # a timm checkpoint is no detector yet
    # a budget far above dense (timing a micro detector on a loaded machine is noise: 13x seen): any config fits
    assert card["budget"]["value"] > card["rows"][0]["cost"]
    assert card["rows"][-1]["backbone_gmacs"] < card["rows"][-1]["gmacs"]  # FPN and heads stay dense
    assert card["export"]["max_rel_error"] < 1e-4 and "backbone" in card["export"]["part"]
    assert not (tmp_path / "out" / "dense").exists() and not (tmp_path / "out" / "finetune").exists()
    best = yaml.safe_load((tmp_path / "out" / "search" / "best.yaml").read_text())
    assert card["rows"][-1]["config"] == best["sparsity"] and card["pictures"] == ["windows_1.png"]
    args[args.index(tmp_path / "swin0.pth")] = tmp_path / "swin1.pth"
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "the adapt stage")
    assert "checkpoint was" in err


def test_export_formats_are_the_exporters():
    import typing
    from sparsevit_cli.commands.export import FORMATS
    from sparsevit_cli.pipeline import EXPORT_FORMATS, ExportStage
    assert typing.get_args(ExportStage.model_fields["format"].annotation) == EXPORT_FORMATS == tuple(FORMATS)


def test_a_training_stage_that_stops_early_stops_the_pipeline(tmp_path, data_dir, capsys):
    """A training stage interrupted on purpose (a checkpoint, no model file): the stages after it wait for the
    rerun."""
    cfg = write_yaml(tmp_path / "run.yaml", data_dir)
    with stopped_after(1):
        code, out, err = run_cli(["pipeline", cfg, "--out", tmp_path / "out", "--no-progress"], capsys)
    assert code == 0, err
    assert "the dense stage stopped before writing" in " ".join(out.split())
    assert (tmp_path / "out" / "dense" / "last.pt").is_file() and not (tmp_path / "out" / "adapt").exists()


def test_a_detector_mac_budget_from_flags_counts_the_backbone_by_default(tmp_path, zygote):
    """The first-day detector run: a timm checkpoint, mixed-aspect COCO data, `--budget-macs 90%` and no scope:
    the budget counts the backbone (the heads are a fixed cost), one info line says so, and the card states it."""
    from sparsevit_cli.timm_models import create_timm_model
    data = tmp_path / "coco"
    write_demo_data(data, img_size=96, n_train=4, n_val=4, seed=0, detection=True)
    torch.manual_seed(0)
    torch.save(create_timm_model("swin_tiny_patch4_window7_224", **DET).state_dict(), tmp_path / "swin.pth")
    pipeline = {"finetune": {"run": False}, "search": {"population": 2, "generations": 1, "parents": 1,
                                                       "mutations": 1, "crossovers": 0, "eval_samples": 1,
                                                       "confirm_samples": 1, "report_samples": 2},
                "evaluate": {"dense_finetune": False, "uniform": [0.5], "pictures": 0, "repeats": 1,
                             "throughput_batch": 2}, "export": {"run": False}}
    cfg = write_yaml(tmp_path / "det.yaml", "unused", pipeline, DET, task_options=LIGHT, batch_size=2,
                     eval_batch_size=2, adapt={"report": [0.5]})
    code, log = zygote.run(["pipeline", cfg, "--checkpoint", tmp_path / "swin.pth", "--data", data / "det",
                            "--task", "detection", "--budget-macs", "90%", "--out", tmp_path / "out", "--no-progress"])
    assert code == 0, log
    assert "counts the backbone's MACs" in " ".join(log.split()), log
    card = json.loads((tmp_path / "out" / "report.json").read_text())
    assert card["budget"]["text"] == "90% of dense backbone MACs"
    assert card["rows"][-1]["backbone_gmacs"] <= card["budget"]["value"] * (1 + 1e-9)
