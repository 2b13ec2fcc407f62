"""A user's first day: a timm `.pth` and an ImageFolder, everything from flags. Every mistake the pre-checks
catch is refused in seconds, before anything trains (one line with the fix, exit 2); the new flags reach the
run's settings; the run itself goes end to end from flags only; and the conventions a newcomer brings
(`max_steps`, `--data X/train`, a short model name, `except ValueError`) hold."""
import time

import pytest
import torch
import yaml

from cli_helpers import assert_one_line_error, run_cli
from sparsevit_cli.commands.precheck import plan_splits
from sparsevit_cli.data.demo import write_demo_data

MODEL = "swin_tiny_patch4_window7_224"
MICRO = {"embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4}
IMG = 64

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 36-image val split (room for the default splits) and a timm checkpoint."""
    from sparsevit_cli.timm_models import create_timm_model
    root = tmp_path_factory.mktemp("firstday")
    write_demo_data(root / "data", img_size=IMG, n_train=16, n_val=36, seed=0, num_classes=3)
    torch.manual_seed(0)
    torch.save(create_timm_model(MODEL, img_size=IMG, **MICRO).state_dict(), root / "swin.pth")
    return root


def flags(world, out, data="data"):
    """The command a new user types: their checkpoint, its architecture and size, their data."""
    margs = [t for k, v in MICRO.items() for t in ("--model-arg", f"{k}={v}".replace(" ", ""))]
    return ["pipeline", "--checkpoint", world / "swin.pth", "--model", MODEL, *margs, "--img-size", IMG,
            "--data", world / data, "--out", out, "--no-progress"]


# --------------------------------------------------------------------------------------------- pre-checks
@pytest.mark.parametrize("extra,needle", [
    (["--budget-latency", "60"], "say 60ms or 60%"),
    (["--budget-macs", "2.5"], "say 2.5GMACs or 2.5%"),
    (["--budget-macs", "1%"], "below the cheapest config"),
    (["--budget-macs", "0.0000001GMACs"], "give at least"),
    (["--budget-latency", "0.0001ms"], "below the cheapest config"),
    (["--budget-macs", "5ms"], "must be a number of GMACs"),
    (["--eval-samples", "30"], "--eval-samples 30"),
    (["--report-samples", "20"], "has 36 images"),
    (["--data", "{data}/train"], "pass '{data}', not '{data}/train'"),
    (["--model", "swin_tiny"], "did you mean: swin_tiny_patch4_window7_224"),
    (["--model-arg", "embed_dim"], "KEY=VALUE"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
])
def test_a_mistake_is_refused_in_seconds_before_anything_trains(world, tmp_path, capsys, extra, needle):
    names = {"data": world / "data"}
    extra = [e.format(**names) if isinstance(e, str) else e for e in extra]
    t0 = time.perf_counter()
    code, _, err = run_cli(flags(world, tmp_path / "out") + extra, capsys)
    seconds = time.perf_counter() - t0
    assert_one_line_error(code, err, needle.format(**names))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "a stage ran"
    assert seconds < 60, f"the check took {seconds:.0f} s"  # seconds (a loaded 2-core CI machine: margin)


def test_the_small_val_refusal_says_the_counts_and_flags_and_can_be_overridden(world, tmp_path, capsys):
    code, _, err = run_cli(flags(world, tmp_path / "out") + ["--report-samples", "20"], capsys)
    text = " ".join(err.split())
    assert code == 2 and "need 40" in text  # 10 each at least for fitness and confirmation, 20 asked for the report
    with pytest.raises(Exception, match="need 30"):  # 12 images: 10 each at least, fitness, confirmation, report
        plan_splits(12, None, None, None, allow_small=False, where="small")
    for flag in ("--eval-samples", "--confirm-samples", "--report-samples", "--allow-small-val"):
        assert flag in text
    plan = plan_splits(12, None, None, None, allow_small=True, where="small")
    assert plan.fitness + plan.confirmation <= 12 and plan.fitness >= 1 and plan.confirmation >= 1
    plan = plan_splits(12, 4, 4, 4, allow_small=False, where="small")  # explicit sizes that fit: as given
    assert (plan.fitness, plan.confirmation, plan.report) == (4, 4, 4)
    plan = plan_splits(5000, None, None, None, allow_small=False, where="big")
    assert (plan.fitness, plan.confirmation, plan.report) == (1000, 1000, 3000)


def resolved(world, tmp_path, monkeypatch, extra):
    """The settings a command line resolves to, and what the pre-checks printed (nothing runs)."""
    from sparsevit_cli.commands import pipeline as command
    from sparsevit_cli.commands.precheck import check_pipeline
    from sparsevit_cli.io import make_console
    seen = {}
    monkeypatch.setattr(command, "run_pipeline", lambda cfg, **kw: seen.setdefault("cfg", cfg))
    code, _, err = run_cli(flags(world, tmp_path / "out") + extra)
    assert code == 0, err
    console = make_console(record=True, width=200)
    check_pipeline(seen["cfg"], console)
    return seen["cfg"], " ".join(console.export_text().split())


def test_new_flags_reach_the_settings(world, tmp_path, monkeypatch):
    cfg, said = resolved(world, tmp_path, monkeypatch, [
        "--epochs", "7", "--epochs-dense", "2", "--epochs-adapt", "3", "--epochs-finetune", "4", "--batch-size", "5",
        "--population", "6", "--generations", "2", "--eval-samples", "8", "--confirm-samples", "9",
        "--report-samples", "11", "--budget-latency", "500%"])
    assert cfg.model.name == MODEL and cfg.model.args == {**MICRO, "img_size": IMG}
    assert cfg.epochs == 7 and cfg.batch_size == 5
    p = cfg.pipeline
    assert (p.dense.run, p.dense.epochs, p.adapt.epochs, p.finetune.epochs) == (True, 2, 3, 4)
    assert (p.search.population, p.search.generations, p.search.parents) == (6, 2, 6)  # parents fit the population
    assert (p.search.eval_samples, p.search.confirm_samples, p.search.report_samples) == (8, 9, 11)
    assert p.budget.latency == "500%" and p.budget.macs is None and p.budget.macs_of is None
    # the latency budget was timed on the two ends of the space (seconds, before any stage)
    assert "--budget-latency (timed on cpu, batch 1) 500%" in said and "(cheapest) to" in said
    assert "the report card scores 19 it never saw" in said  # 36 - 8 - 9


def test_the_default_budget_and_splits_are_said(world, tmp_path, monkeypatch):
    from sparsevit_cli.layers import DEFAULT_BUDGET
    cfg, said = resolved(world, tmp_path, monkeypatch, [])
    assert f"no budget given: the default, {DEFAULT_BUDGET} of dense MACs" in said
    assert cfg.pipeline.budget.macs == DEFAULT_BUDGET and cfg.pipeline.budget.macs_of == "model"
    # 36 val images: 20% (at least 10) for the report card, the rest halved for the search's two splits
    assert (cfg.pipeline.search.eval_samples, cfg.pipeline.search.confirm_samples) == (13, 13)
    assert "the search ranks on 13, confirms on 13, the report card scores 10" in said
    code, out, _ = run_cli(["pipeline", "--help"])
    assert code == 0


@pytest.mark.parametrize("command,options", [
    ("pipeline", {"--epochs": "default: 10", "--task": "default: classification", "--budget-macs": "Default: 50%",
                  "--budget-latency": "Default: none", "--budget-macs-of": "Default: the model for",
                  "--population": "default: 50", "--generations": "default: 20", "--batch-size": "default: 32",
                  "--img-size": "default: 224", "--report-samples": "default: 20%"}),
    ("adapt", {"--epochs": "else 10", "--lr": "else 0.001", "--batch-size": "else 32"}),
])
def test_help_states_defaults_and_units(command, options, capsys):
    from sparsevit_cli.pipeline import PipelineConfig, SearchStage
    code, out, _ = run_cli([command, "--help"], capsys)
    text = " ".join(out.replace("│", " ").split())
    for option, needle in options.items():
        assert needle in text, f"{command} {option}: {needle!r} not in its help"
    # the numbers in the help are the schema's defaults (one fact, one place: a test keeps them equal)
    fields, lead = PipelineConfig.model_fields, "default:" if command == "pipeline" else "else"
    assert f"{lead} {fields['epochs'].default}." in text and f"{lead} {fields['batch_size'].default}." in text
    if command == "pipeline":
        assert f"default: {SearchStage.model_fields['population'].default}." in text
    else:
        assert f"else {fields['optim'].default_factory().lr:g}." in text


def test_a_detector_mac_budget_counts_the_backbone_by_default(tmp_path):
    """Detection: a whole-model percentage the fixed heads cannot meet is the backbone's by default, said in
    one info line; asked for the whole model, the refusal names the backbone scope as the fix."""
    from sparsevit_cli.commands.precheck import BudgetAsk, check_budget
    from sparsevit_cli.io import make_console
    from sparsevit_cli.methods import method_for_model
    from sparsevit_cli.search.space import load_space
    from sparsevit_cli.tasks import backbone_of, build_task_model, get_task
    from sparsevit_cli.timm_models import create_timm_model
    from sparsevit_cli.errors import UserError

    backbone = create_timm_model(MODEL, img_size=96, **MICRO)
    method = method_for_model(backbone)
    model = build_task_model(method.wrap(backbone), "detection", 3, fpn_channels=32)
    space = load_space(method.default_space, group_sizes=method.group_sizes(backbone_of(model)), for_method=method.name)
    kw = dict(model=model, method=method, task=get_task("detection"), space=space, img_size=96, batch_size=1,
              device=torch.device("cpu"), dataset=None)
    console = make_console(record=True, width=300)
    assert check_budget(BudgetAsk(macs="50%"), console=console, **kw) == "backbone"
    said = console.export_text()
    assert "counts the backbone's MACs" in said and "--budget-macs-of model" in said
    with pytest.raises(UserError, match="--budget-macs-of backbone"):
        check_budget(BudgetAsk(macs="50%", macs_of="model"), **kw)


# --------------------------------------------------------------------------------------------- end to end
def test_a_new_user_runs_the_pipeline_from_flags_only(world, tmp_path, capsys):
    """From a timm `.pth` and an ImageFolder to a report card, every setting a flag; small but whole."""
    out = tmp_path / "run"
    code, stdout, err = run_cli(flags(world, out) + [
        "--epochs", "1", "--batch-size", "8", "--population", "3", "--generations", "1", "--eval-samples", "8",
        "--confirm-samples", "8", "--report-samples", "10", "--budget-macs", "60%"], capsys)
    assert code == 0, err
    text = " ".join(stdout.split())
    assert "budget: --budget-macs 60%" in text and "the report card scores 20 it never saw" in text
    card = yaml.safe_load((out / "report.json").read_text())
    assert card["held_out_images"] == 20 and card["rows"][-1]["in_budget"]
    from sparsevit_cli.model_file import read_model_meta
    meta = read_model_meta(out / "finetune" / "model.safetensors")
    assert meta.image_size == IMG and meta.model_args["embed_dim"] == MICRO["embed_dim"] and meta.num_classes == 3
    best = yaml.safe_load((out / "search" / "best.yaml").read_text())
    assert len(best["search_split"]["fitness"]) == 8 and len(best["search_split"]["confirmation"]) == 8


# --------------------------------------------------------------------------------------------- conventions
def test_max_steps_is_total_optimizer_steps_and_the_run_ends_with_its_model_file(world, tmp_path):
    from sparsevit_cli.commands.train import run_finetune
    from sparsevit_cli.train.run_config import load_run_config
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": MODEL, "args": {**MICRO, "img_size": IMG}},
                                   "data": {"path": str(world / "data")}, "epochs": 5, "batch_size": 8,
                                   "eval_batch_size": 36, "max_steps": 3, "out": str(tmp_path / "out")}))
    status = run_finetune(load_run_config(cfg), progress=False)
    assert not status["interrupted"] and status["global_step"] == 3  # 2 steps an epoch: ends inside epoch 2
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_user_error_is_a_value_error():
    from sparsevit_cli.errors import UserError
    from sparsevit_cli.io import read_sparsity_file
    assert issubclass(UserError, ValueError) and "ValueError" in UserError.__doc__
    with pytest.raises(ValueError):
        read_sparsity_file("/nonexistent/best.yaml")


def test_a_sparsity_file_takes_one_number(tmp_path):
    from sparsevit_cli.io import read_sparsity_file
    (tmp_path / "a.yaml").write_text("sparsity: 0.5\n")
    (tmp_path / "b.yaml").write_text("0.3\n")
    assert read_sparsity_file(tmp_path / "a.yaml")["sparsity"] == 0.5
    assert read_sparsity_file(tmp_path / "b.yaml")["sparsity"] == 0.3


def test_a_swin_model_file_runs_at_another_size_and_a_uniform_sparsity_file(world, tmp_path, capsys):
    """`evaluate`/`export`/`visualize --img-size` on a model file built at another size (a Swin runs any
    size), with a sparsity file that says one number."""
    from sparsevit_cli.model_file import save_model
    from sparsevit_cli.timm_models import create_timm_model
    import sparsevit_cli as sv
    torch.manual_seed(0)
    model = sv.sparsify(create_timm_model(MODEL, img_size=IMG, num_classes=3, **MICRO))
    meta = {"method": "sparsevit", "model": MODEL, "model_args": {**MICRO, "img_size": IMG, "num_classes": 3},
            "img_size": IMG, "task": "classification", "num_classes": 3, "sparsity": [[0.0], [0.0]]}
    save_model(tmp_path / "m.safetensors", model, meta)
    (tmp_path / "half.yaml").write_text("sparsity: 0.5\n")
    data = world / "data"  # 64 px images, read at 96 px
    code, out, err = run_cli(["evaluate", "--checkpoint", tmp_path / "m.safetensors", "--data", data, "--img-size",
                              "96", "--config", tmp_path / "half.yaml", "--json"], capsys)
    assert code == 0, err
    import json
    result = json.loads(out)
    code, out, err = run_cli(["evaluate", "--checkpoint", tmp_path / "m.safetensors", "--data", data,
                              "--config", tmp_path / "half.yaml", "--json"], capsys)
    assert code == 0, err
    assert result["rows"][-1]["gmacs"] > json.loads(out)["rows"][-1]["gmacs"]  # 96 px costs more than 64 px
    code, _, err = run_cli(["export", "--checkpoint", tmp_path / "m.safetensors", "--img-size", "96", "--out",
                            tmp_path / "m.onnx", "--no-time", "--config", tmp_path / "half.yaml"], capsys)
    assert code == 0, err
    from PIL import Image
    Image.new("RGB", (96, 96), (120, 30, 200)).save(tmp_path / "x.png")
    code, out, err = run_cli(["visualize", "--checkpoint", tmp_path / "m.safetensors", "--image", tmp_path / "x.png",
                              "--img-size", "96", "--out", tmp_path / "w.png"], capsys)
    assert code == 0, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_the_demo_on_a_missing_device_is_refused_before_writing_its_data(tmp_path, capsys):
    code, _, err = run_cli(["demo", "--device", "cuda", "--out", tmp_path / "demo", "--no-progress"], capsys)
    assert_one_line_error(code, err, "no CUDA GPU")
    assert not (tmp_path / "demo").exists()


def test_a_default_budget_below_the_cheapest_config_moves_up_not_refused(world, tmp_path, monkeypatch):
    """No budget given, and the space cannot go as low as the default (a small image: later stages one window):
    the budget becomes midway between the cheapest config and dense, said in one info line; a budget the user
    gives is never moved (`--budget-macs 1%` is refused above)."""
    import re
    import sparsevit_cli.pipeline as settings
    monkeypatch.setattr(settings, "DEFAULT_BUDGET", "1%")
    cfg, said = resolved(world, tmp_path, monkeypatch, [])
    m = re.search(r"the default budget 1% is below this model's cheapest config \((\d+)% of dense MACs at "
                  rf"{IMG} px\): the budget is (\d+)%, midway between it and dense", said)
    assert m, said
    cheapest, budget = int(m[1]), int(m[2])
    assert cfg.pipeline.budget.macs == f"{budget}%" and abs(budget - (cheapest + 100) / 2) <= 1
    assert f"budget: --budget-macs {budget}%" in said
