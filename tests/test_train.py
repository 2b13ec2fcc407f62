"""finetune / adapt: YAML errors, bit-exact resume, torchrun (gloo) runs, model files."""
import json
import os
from collections import Counter
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sparsevit_cli.errors import UserError
from sparsevit_cli.model_file import load, read_meta
from sparsevit_cli.data.demo import write_demo_data
from sparsevit_cli.commands.train import run_adapt, run_finetune
from sparsevit_cli.swin.patch import WINDOW_SCORES
from sparsevit_cli.train.run_config import load_run_config
from cli_helpers import run_cli, stopped_after

# a micro Swin: 64 px, 16x16 tokens, 4x4 windows -> 16 windows in stage 1, 4 in stage 2
MICRO_ARGS = {"img_size": 64, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4,
              "drop_path_rate": 0.1}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo") / "data"
    write_demo_data(d, img_size=64, n_train=24, n_val=12, seed=0)
    return d


def write_cfg(tmp_path, data_dir, name="run.yaml", **over):
    cfg = {
        "model": {"name": "swin_tiny_patch4_window7_224", "args": dict(MICRO_ARGS)},  # a copy: tests edit it
        "data": {"path": str(data_dir), "task": "classification"},
        "sparsity": 0.0,
        "optim": {"name": "adamw", "lr": 1e-3},
        "schedule": {"name": "cosine", "warmup_steps": 2},
        "epochs": 2, "batch_size": 8, "eval_batch_size": 12, "seed": 3,
        "out": str(tmp_path / "out"), "checkpoint_every": 2,
    }
    for k, v in over.items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("key,value,needle", [
    ("epochz", 3, "unknown key 'epochz' (did you mean 'epochs'?)"),
    ("optim.lrr", 0.1, "unknown key 'optim.lrr'"),
    ("optim.lr", "fast", "optim.lr must be a number, got 'fast'"),
    ("batch_size", 2.5, "batch_size must be an integer"),
    ("data.task", "depth", "data.task must be classification, segmentation"),
    ("sparsity", [[0.0], [0.45]], "not one of"),
    ("checkpoint", "/nope/ckpt.pth", "not found"),
])
def test_bad_yaml_is_one_line_naming_the_key(tmp_path, data_dir, capsys, key, value, needle):
    cfg = write_cfg(tmp_path, data_dir)
    data = yaml.safe_load(cfg.read_text())
    node = data
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    cfg.write_text(yaml.safe_dump(data))
    code, _, err = run_cli(["finetune", str(cfg), "--no-progress"], capsys)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err


def test_missing_data_dir(tmp_path, capsys):
    cfg = write_cfg(tmp_path, tmp_path / "nothing")
    code, _, err = run_cli(["finetune", str(cfg), "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def state_of(path):
    return load(path).state_dict()


def test_resume_is_bit_exact(tmp_path, data_dir):
    full = load_run_config(write_cfg(tmp_path, data_dir, "a.yaml", out=str(tmp_path / "a")))
    run_finetune(full, progress=False)

    part = load_run_config(write_cfg(tmp_path, data_dir, "b.yaml", out=str(tmp_path / "b")))
    with stopped_after(3):
        status = run_finetune(part, progress=False)
    assert status["interrupted"] and status["global_step"] == 3  # stopped mid-epoch (3 steps per epoch)
    assert not (tmp_path / "b" / "model.safetensors").exists()
    run_finetune(part, resume=True, progress=False)

    a, b = state_of(tmp_path / "a" / "model.safetensors"), state_of(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and training did change the weights (the untrained model of the same seed differs)
    from sparsevit_cli.train.trainer import Trainer
    initial = Trainer(load_run_config(write_cfg(tmp_path, data_dir, "c.yaml", out=str(tmp_path / "c"))),
                      progress=False).model.state_dict()
    assert not torch.equal(initial["layers.0.blocks.0.attn.qkv.weight"], a["layers.0.blocks.0.attn.qkv.weight"])


def test_finetune_writes_self_describing_model(tmp_path, data_dir):
    cfg = load_run_config(write_cfg(tmp_path, data_dir, sparsity=[[0.0], [0.5]], epochs=1))
    result = run_finetune(cfg, progress=False)
    meta = read_meta(result["model_file"])
    assert meta["method"] == "sparsevit" and meta["model_args"]["embed_dim"] == 16
    assert meta["sparsity"] == [[0.0], [0.5]] and meta["num_classes"] == 10
    model = load(result["model_file"])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 10)


def test_window_score_option_travels_with_the_model_file(tmp_path, data_dir):
    # default: the centred score, written into the model file
    first = run_finetune(load_run_config(write_cfg(tmp_path, data_dir, "a.yaml", sparsity=0.5, epochs=1,
                                                   out=str(tmp_path / "a"))), progress=False)
    assert read_meta(first["model_file"])["method_options"] == {"window_score": "l2-centered"}
    # a run chooses the paper's raw L2 score; the next run started from its file keeps it
    second = run_finetune(load_run_config(write_cfg(
        tmp_path, data_dir, "b.yaml", sparsity=0.5, epochs=1, out=str(tmp_path / "b"), checkpoint=first["model_file"],
        method_options={"window_score": "l2"})), progress=False)
    third = run_finetune(load_run_config(write_cfg(
        tmp_path, data_dir, "c.yaml", sparsity=0.5, epochs=1, out=str(tmp_path / "c"),
        checkpoint=second["model_file"])), progress=False)
    for result in (second, third):
        assert read_meta(result["model_file"])["method_options"] == {"window_score": "l2"}
        assert load(result["model_file"]).window_score == "l2"


@pytest.mark.parametrize("options,needle", [
    ({"window_scor": "l2"}, "method 'sparsevit' has no option 'window_scor' (its options: window_score)"),
    ({"window_score": "l1"}, f"unknown window score 'l1' (choose from: {', '.join(WINDOW_SCORES)})"),
])
def test_bad_method_option_is_one_line(tmp_path, data_dir, capsys, options, needle):
    cfg = write_cfg(tmp_path, data_dir, method_options=options)
    code, _, err = run_cli(["finetune", str(cfg), "--no-progress"], capsys)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err


def test_adapt_window_score_flag(tmp_path, data_dir, capsys):
    cfg = write_cfg(tmp_path, data_dir, epochs=1, **{"adapt.report": [0.5]})
    code, _, err = run_cli(["adapt", "--config", str(cfg), "--window-score", "l2", "--no-progress"], capsys)
    assert code == 0, err
    assert read_meta(tmp_path / "out" / "model.safetensors")["method_options"] == {"window_score": "l2"}
    code, _, err = run_cli(["adapt", "--config", str(cfg), "--window-score", "max", "--no-progress",
                            "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and err.strip() == f"error: unknown window score 'max' (choose from: {', '.join(WINDOW_SCORES)})"


def test_finetune_accepts_search_output_file(tmp_path, data_dir):
    best = tmp_path / "best.yaml"
    best.write_text("method: sparsevit\nsparsity: [[0.2], [0.3]]\ntop1: 50.0\n")
    cfg = load_run_config(write_cfg(tmp_path, data_dir, sparsity=str(best), epochs=1))
    assert cfg.sparsity == [[0.2], [0.3]]


def test_segmentation_finetune(tmp_path, data_dir):
    cfg = load_run_config(write_cfg(tmp_path, data_dir, **{"data.task": "segmentation", "sparsity": 0.3,
                                                           "epochs": 1}))
    result = run_finetune(cfg, progress=False)
    assert 0.0 <= result["miou"] <= 100.0
    model = load(result["model_file"])
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 11, 64, 64)


def test_adapt_samples_configs_and_reports(tmp_path, data_dir):
    cfg = load_run_config(write_cfg(tmp_path, data_dir, epochs=1, **{"adapt.sandwich": True}))
    seen = []
    from sparsevit_cli.train import trainer as loop
    orig = loop.Trainer._step_configs

    def spy(self):
        configs = orig(self)
        seen.append(configs)
        return configs

    loop.Trainer._step_configs = spy
    try:
        result = run_adapt(cfg, progress=False)
    finally:
        loop.Trainer._step_configs = orig
    assert len(seen) == 3
    assert all(len(c) == 3 for c in seen)  # sampled + dense + sparsest (sandwich rule)
    assert seen[0][1] == [[0.0], [0.0]] and seen[0][2] == [[0.8], [0.8]]
    assert len({json.dumps(c[0]) for c in seen}) > 1  # a different random config per step
    assert [r["sparsity"] for r in result["report"]] == [0.0, 0.3, 0.5, 0.7]
    assert (tmp_path / "out" / "adapt_report.json").exists()


def _torchrun(args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "sparsevit_cli.cli"] + args
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("command", ["finetune", "adapt"])
def test_two_process_gloo_run_keeps_replicas_identical(tmp_path, data_dir, command):
    cfg = write_cfg(tmp_path, data_dir, epochs=1, batch_size=4)
    args = [command, str(cfg), "--no-progress"] if command == "finetune" else \
        [command, "--config", str(cfg), "--no-progress"]
    _torchrun(args, tmp_path)
    rep = json.loads((tmp_path / "out" / "replicas.json").read_text())
    assert rep["world_size"] == 2
    assert rep["checksums"][0] == rep["checksums"][1]
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_search_subset_is_class_balanced_and_disjoint_from_the_held_out_rest(data_dir):
    from sparsevit_cli.data.datasets import build_dataset
    from sparsevit_cli.evaluate import held_out_indices, search_indices

    val = build_dataset(str(data_dir), "classification", "val", 64, train=False)
    n = len(val)
    search, rest = search_indices(n, n // 2), held_out_indices(n, n // 2)
    assert len(search) == n // 2 and not set(search) & set(rest) and sorted(search + rest) == list(range(n))
    counts = Counter(val[i][1] for i in search)
    prefix_classes = {val[i][1] for i in range(n // 2)}
    assert len(counts) > len(prefix_classes)  # a prefix of the class-sorted folder covers fewer classes
    assert max(counts.values()) <= len(search) // val.num_classes + 1  # and no class dominates the subset
    assert search_indices(n, None) == held_out_indices(n, n) == list(range(n))


# --------------------------------------------------------------------------------------------- run-config ranges
@pytest.mark.parametrize("key,value,message", [
    ("optim.lr", -0.001, "optim.lr must be > 0, got -0.001"),
    ("optim.lr", float("nan"), "optim.lr must be a finite number, got nan"),
    ("optim.lr", float("inf"), "optim.lr must be a finite number, got inf"),
    ("optim.lrr", 0.1, "unknown key 'optim.lrr' (did you mean 'lr'?)"),
    ("optim.weight_decay", -1, "optim.weight_decay must be >= 0, got -1"),
    ("optim.momentum", 1.0, "optim.momentum must be < 1, got 1.0"),
    ("optim.grad_clip", 0, "optim.grad_clip must be > 0, got 0"),
    ("optim.name", "adam", "optim.name must be 'adamw' or 'sgd', got 'adam'"),
    ("schedule.name", "step", "schedule.name must be 'cosine' or 'constant', got 'step'"),
    ("schedule.warmup_steps", -5, "schedule.warmup_steps must be >= 0, got -5"),
    ("schedule.min_lr", -1e-6, "schedule.min_lr must be >= 0, got -1e-06"),
    ("eval_batch_size", 0, "eval_batch_size must be >= 1, got 0"),
    ("batch_size", 0, "batch_size must be >= 1, got 0"),
    ("epochs", 0, "epochs must be >= 1, got 0"),
    ("checkpoint_every", 0, "checkpoint_every must be >= 1, got 0"),
    ("data.num_workers", -1, "data.num_workers must be >= 0, got -1"),
    ("seed", -1, "seed must be >= 0, got -1"),
    ("device", "tpu", "device must be cpu, cuda or cuda:N, got 'tpu'"),
    ("sparsity", [["a"], ["b"]], "sparsity must be a number, a list of lists of numbers"),
    ("adapt.report", [0.5, 1.5], "adapt.report must be sparsities in [0, 1), got 1.5"),
    ("optim", 5, "optim must be a mapping, got 5"),
    ("data.skip_bad_images", "yes", "data.skip_bad_images must be true/false, got 'yes'"),
    ("model.args.img_size", [], "model.args.img_size must be a positive integer (square images, in pixels), got []"),
])
def test_every_key_has_its_range(tmp_path, data_dir, key, value, message):
    cfg = write_cfg(tmp_path, data_dir, **{key: value})
    with pytest.raises(UserError) as e:
        load_run_config(cfg)
    assert str(e.value).startswith(f"{cfg}: {message}"), str(e.value)


def test_yaml_reads_1e_minus_3_as_a_number_and_flags_override_the_file(tmp_path, data_dir):
    cfg = write_cfg(tmp_path, data_dir)
    cfg.write_text(cfg.read_text().replace("lr: 0.001", "lr: 1e-3"))  # YAML 1.1 makes this a string
    assert load_run_config(cfg).optim.lr == 1e-3
    over = load_run_config(cfg, {"optim.lr": 0.5, "epochs": None, "method_options.window_score": "l2"})
    assert over.optim.lr == 0.5 and over.epochs == 2 and over.method_options.given() == {"window_score": "l2"}
    flags = load_run_config(None, {"data.path": str(data_dir), "optim.lr": 0.5})  # no file: defaults + flags
    assert flags.optim.lr == 0.5 and flags.data.path == str(data_dir)
    with pytest.raises(UserError, match=r"^command line: optim.lr must be > 0, got -1.0$"):
        load_run_config(None, {"data.path": str(data_dir), "optim.lr": -1.0})


@pytest.mark.parametrize("kind", ["binary", "latin1", "directory", "list", "unreadable"])
def test_unreadable_run_config_is_one_line(tmp_path, capsys, kind):
    path = tmp_path / "run.yaml"
    if kind == "binary":
        path.write_bytes(bytes(range(256)))
    elif kind == "latin1":
        path.write_bytes("lr: caf\xe9\n".encode("latin-1"))
    elif kind == "directory":
        path.mkdir()
    elif kind == "list":
        path.write_text("- 1\n- 2\n")
    else:
        path.write_text("epochs: 1\n")
        path.chmod(0)
        if os.access(path, os.R_OK):
            pytest.skip("running as a user that reads everything (root)")
    code, _, err = run_cli(["finetune", str(path), "--no-progress"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(path) in err
    expected = {"binary": "not UTF-8", "latin1": "not UTF-8", "directory": "is a directory",
                "list": "must be a mapping", "unreadable": "permission denied"}[kind]
    assert expected in err


def test_constant_schedule_sgd_and_workers_resume_bit_exact(tmp_path, data_dir):
    """timm's optimizer and schedule, and a DataLoader with two workers: an interrupted run resumed from
    last.pt ends with the very weights of an uninterrupted one."""
    over = {"optim.name": "sgd", "optim.lr": 0.05, "schedule.name": "constant", "data.num_workers": 2}
    full = load_run_config(write_cfg(tmp_path, data_dir, "a.yaml", out=str(tmp_path / "a"), **over))
    run_finetune(full, progress=False)
    part = load_run_config(write_cfg(tmp_path, data_dir, "b.yaml", out=str(tmp_path / "b"), **over))
    with stopped_after(4):
        assert run_finetune(part, progress=False)["interrupted"]
    run_finetune(part, resume=True, progress=False)
    a, b = state_of(tmp_path / "a" / "model.safetensors"), state_of(tmp_path / "b" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_timm_optimizer_groups_and_schedule(tmp_path, data_dir):
    from sparsevit_cli.train.trainer import Trainer
    cfg = load_run_config(write_cfg(tmp_path, data_dir, **{"optim.lr": 0.01, "schedule.warmup_steps": 2,
                                                           "schedule.min_lr": 0.001}))
    trainer = Trainer(cfg, progress=False)
    decayed = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert decayed and all(trainer.model.get_parameter(names[i]).ndim > 1 for i in decayed)  # no bias/norm decay
    lrs = []
    for step in range(trainer.total_steps):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.scheduler.step_update(num_updates=step + 1)
    assert lrs[0] == pytest.approx(0.005) and lrs[2] == pytest.approx(0.01)  # warm-up, then the peak
    assert lrs[2] > lrs[3] > lrs[-1] >= 0.001  # cosine down towards min_lr
    assert set(trainer.scheduler.state_dict()) >= {"t_initial", "warmup_t", "lr_min"}


# --------------------------------------------------------------------------------------------- pretrained starts
def _timm_checkpoint(tmp_path, num_classes=1000, **changes):
    """A micro Swin checkpoint as timm's own training script writes it (CheckpointSaver: a dict holding
    `state_dict`, `optimizer`, `epoch`, `arch`...)."""
    import timm
    from timm.utils import CheckpointSaver

    args = dict({k: v for k, v in MICRO_ARGS.items() if k != "drop_path_rate"}, **changes)
    model = timm.create_model("swin_tiny_patch4_window7_224", num_classes=num_classes, **args)
    folder = tmp_path / "timm_ckpt"
    folder.mkdir()
    saver = CheckpointSaver(model, torch.optim.SGD(model.parameters(), lr=0.1), checkpoint_dir=str(folder),
                            recovery_dir=str(folder), max_history=1)
    saver.save_checkpoint(epoch=0)
    return folder / "last.pth.tar", model


def test_adapt_from_a_1000_class_timm_checkpoint(tmp_path, data_dir, capsys):
    ckpt, source = _timm_checkpoint(tmp_path)
    cfg = write_cfg(tmp_path, data_dir, epochs=1, **{"adapt.report": [0.5]})
    code, out, err = run_cli(["adapt", "--config", cfg, "--checkpoint", ckpt, "--model",
                              "swin_tiny_patch4_window7_224", "--data", data_dir, "--no-progress"], capsys)
    assert code == 0, err
    assert [line for line in out.splitlines() if "re-initialised" in line] == [
        "info: head.fc: 1000 -> 10 classes, re-initialised"]
    assert read_meta(tmp_path / "out" / "model.safetensors")["num_classes"] == 10

    # the backbone is loaded strictly (every weight equal), the head is a new 10-class one
    from sparsevit_cli.train.trainer import Trainer
    trainer = Trainer(load_run_config(cfg, {"checkpoint": str(ckpt)}), "adapt", progress=False)
    mine, theirs = trainer.model.state_dict(), source.state_dict()
    for k, v in theirs.items():
        if not k.startswith("head."):
            assert torch.equal(mine[k], v), k
    assert mine["head.fc.weight"].shape == (10, theirs["head.fc.weight"].shape[1])


def test_other_mismatches_of_a_timm_checkpoint_are_refused(tmp_path, data_dir, capsys):
    ckpt, _ = _timm_checkpoint(tmp_path, embed_dim=24, num_heads=[1, 2])
    cfg = write_cfg(tmp_path, data_dir, epochs=1, checkpoint=str(ckpt))
    code, _, err = run_cli(["finetune", cfg, "--no-progress"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # the file's architecture against the named model's (issue 27), not a tensor's size
    assert "the checkpoint holds a Swin with embed_dim 24, depths 2-2; --model is" in err and "head" not in err


def _toolkit_file(tmp_path, num_classes, img_size=64):
    from sparsevit_cli.model_file import save_model
    from sparsevit_cli.swin.method import SparseViT  # noqa: F401  (registers the method)
    from sparsevit_cli.methods import get_method
    from sparsevit_cli.timm_models import create_timm_model

    args = dict(MICRO_ARGS, img_size=img_size, num_classes=num_classes)
    method = get_method("sparsevit")
    model = method.wrap(create_timm_model("swin_tiny_patch4_window7_224", **args))
    path = tmp_path / f"model{num_classes}_{img_size}.safetensors"
    save_model(path, model, {"method": "sparsevit", "model": "swin_tiny_patch4_window7_224", "model_args": args,
                             "img_size": img_size, "task": "classification", "num_classes": num_classes,
                             "sparsity": [[0.0], [0.0]]})
    return path, model


def test_finetune_from_a_toolkit_file_with_another_class_count(tmp_path, data_dir, capsys):
    path, source = _toolkit_file(tmp_path, num_classes=5)
    cfg = write_cfg(tmp_path, data_dir, epochs=1, checkpoint=str(path))
    code, out, err = run_cli(["finetune", cfg, "--no-progress"], capsys)
    assert code == 0, err
    assert "info: head.fc: 5 -> 10 classes, re-initialised" in out.splitlines()
    meta = read_meta(tmp_path / "out" / "model.safetensors")
    assert meta["num_classes"] == 10 and meta["model_args"]["num_classes"] == 10


def test_finetune_from_a_96px_model_file_with_a_64px_run_config(tmp_path, data_dir, capsys):
    path, _ = _toolkit_file(tmp_path, num_classes=10, img_size=96)
    cfg = write_cfg(tmp_path, data_dir, epochs=1, checkpoint=str(path))  # model.args.img_size: 64
    code, _, err = run_cli(["finetune", cfg, "--no-progress"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"model file '{path}' was built for 96 px images, the run config asks for 64 px" in err


# --------------------------------------------------------------------------------------------- data faults
def test_corrupt_training_image_names_the_file_or_is_skipped(tmp_path, data_dir, capsys):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    bad = data / "train" / "3" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))  # a PNG signature, then nothing readable
    cfg = write_cfg(tmp_path, data, epochs=1)
    code, _, err = run_cli(["finetune", cfg, "--no-progress"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"cannot read image '{bad}'" in err

    cfg = write_cfg(tmp_path, data, epochs=1, out=str(tmp_path / "skipped"),
                    **{"data.skip_bad_images": True, "data.num_workers": 1})
    code, out, err = run_cli(["finetune", cfg, "--no-progress"], capsys)
    assert code == 0, err
    assert f"info: skipped 1 unreadable image(s) in '{data}', e.g. '{bad}'" in out.splitlines()


@pytest.mark.parametrize("change,needle", [
    ({"model.args.embed_dim": 24}, "was built with embed_dim=16, the run config says model.args.embed_dim=24"),
    ({"model.name": "swin_small_patch4_window7_224"}, "holds swin_tiny_patch4_window7_224, the run config names "
                                                      "model.name swin_small_patch4_window7_224"),
    ({"data.task": "segmentation"}, "holds a model for the task classification, the run config says data.task: segmentation"),
])
def test_run_config_naming_another_model_than_its_model_file_is_refused(tmp_path, data_dir, capsys, change, needle):
    path, _ = _toolkit_file(tmp_path, num_classes=10)
    cfg = write_cfg(tmp_path, data_dir, epochs=1, checkpoint=str(path), **change)
    code, _, err = run_cli(["finetune", cfg, "--no-progress"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"model file '{path}' {needle}" in err


def test_training_logged_to_a_file_shows_progress_lines(tmp_path, data_dir, monkeypatch):
    """Output not a terminal: plain 'finetune: n/N steps' lines (throttled by io.PLAIN_INTERVAL_S, 0 here)."""
    import io as std_io

    from rich.console import Console

    from sparsevit_cli import io as sv_io
    monkeypatch.setattr(sv_io, "PLAIN_INTERVAL_S", 0.0)
    out = std_io.StringIO()
    cfg = load_run_config(write_cfg(tmp_path, data_dir, epochs=1))
    run_finetune(cfg, progress=True, console=Console(file=out, width=200))
    lines = [line for line in out.getvalue().splitlines() if line.startswith("finetune: ")]
    assert lines[0].startswith("finetune: 1/3 steps (33%), epoch 1/1, loss ")
    assert "img/s | " in lines[0] and "elapsed, ETA" in lines[0]
    assert lines[-1].startswith("finetune: 3/3 steps (100%), 12/12 val images, epoch 1/1")
