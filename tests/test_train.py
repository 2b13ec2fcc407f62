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

from sparsevit_cli.model_file import load, read_meta
from sparsevit_cli.data.demo import write_demo_data
from sparsevit_cli.commands.train import run_adapt, run_finetune
from sparsevit_cli.swin.patch import WINDOW_SCORES
from sparsevit_cli.train.run_config import load_run_config
from cli_helpers import run_cli

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
        "model": {"name": "swin_tiny_patch4_window7_224", "args": MICRO_ARGS},
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

    part = load_run_config(write_cfg(tmp_path, data_dir, "b.yaml", out=str(tmp_path / "b"), max_steps=3))
    status = run_finetune(part, progress=False)
    assert status["interrupted"] and status["global_step"] == 3  # stopped mid-epoch (3 steps per epoch)
    assert not (tmp_path / "b" / "model.safetensors").exists()
    part.max_steps = None
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
