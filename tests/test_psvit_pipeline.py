"""PSViT through the same pipeline as SparseViT: finetune (dense) -> adapt -> search -> finetune -> export,
all through the CLI, on a tiny DeiT and the demo data."""
import json

import pytest
import yaml

from sparsevit_cli.model_file import load, read_meta
from sparsevit_cli.data.demo import write_demo_data
from sparsevit_cli.methods import get_method
from sparsevit_cli.tasks import backbone_of
from cli_helpers import exit_code

# depth 6 -> pooling candidates before blocks 2 and 4, 3 sharing pairs: groups [2, 3]
TINY_DEIT = {"img_size": 64, "patch_size": 8, "embed_dim": 48, "depth": 6, "num_heads": 3}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("psvit")
    write_demo_data(d / "data", img_size=64, n_train=24, n_val=12, seed=0)
    return d


def run_yaml(workdir, name, **over):
    cfg = {"model": {"name": "deit_tiny_patch16_224", "args": TINY_DEIT},
           "data": {"path": str(workdir / "data")}, "epochs": 1, "batch_size": 8, "eval_batch_size": 12,
           "out": str(workdir / name), "seed": 0, **over}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def pipeline(workdir):
    """finetune (dense) -> adapt -> search -> finetune -> export through the CLI, once per module; every
    test that needs its files gets them, also when run alone."""
    runs = {}
    runs["dense_code"] = exit_code(["finetune", str(run_yaml(workdir, "dense")), "--no-progress"])
    runs["dense"] = workdir / "dense" / "model.safetensors"
    # adapt infers the method from the model and uses PSViT's default space
    adapt_cfg = run_yaml(workdir, "adapt", checkpoint=str(runs["dense"]), adapt={"sandwich": True})
    runs["adapt_code"] = exit_code(["adapt", "--config", str(adapt_cfg), "--no-progress"])
    runs["adapted"] = workdir / "adapt" / "model.safetensors"
    runs["search"] = workdir / "search"
    runs["search_code"] = exit_code(
        ["search", "--checkpoint", str(runs["adapted"]), "--data", str(workdir / "data"), "--out", str(runs["search"]),
         "--budget-macs", "60%", "--population", "6", "--generations", "2", "--parents", "3",
         "--mutations", "3", "--crossovers", "3", "--eval-samples", "12", "--no-progress"])
    ft_cfg = run_yaml(workdir, "final", checkpoint=str(runs["adapted"]), sparsity=str(runs["search"] / "best.yaml"))
    runs["final_code"] = exit_code(["finetune", str(ft_cfg), "--no-progress"])
    runs["final"] = workdir / "final" / "model.safetensors"
    runs["onnx"] = workdir / "final.onnx"
    runs["export_code"] = exit_code(["export", "--checkpoint", str(runs["final"]), "--format", "onnx",
                                     "--out", str(runs["onnx"]), "--no-time"])
    return runs


def test_psvit_adapt_search_finetune_export_end_to_end(pipeline, capsys):
    assert pipeline["dense_code"] == 0
    assert read_meta(pipeline["dense"])["method"] == "psvit"
    assert pipeline["adapt_code"] == 0
    assert read_meta(pipeline["adapted"])["space"] == "psvit_deit"
    assert pipeline["search_code"] == 0
    best = yaml.safe_load((pipeline["search"] / "best.yaml").read_text())
    assert best["method"] == "psvit" and best["gmacs"] <= 0.6 * best["dense_gmacs"] + 1e-12
    model = load(pipeline["adapted"])
    method = get_method("psvit")
    assert method.macs(backbone_of(model), best["sparsity"], 64) / 1e9 == pytest.approx(best["gmacs"])
    assert pipeline["final_code"] == 0
    assert read_meta(pipeline["final"])["sparsity"] == best["sparsity"]
    assert pipeline["export_code"] == 0 and pipeline["onnx"].is_file()
    capsys.readouterr()


def test_psvit_config_for_a_swin_model_file_is_refused(pipeline, tmp_path, capsys):
    assert pipeline["final_code"] == 0
    final = pipeline["final"]
    capsys.readouterr()
    cfg = tmp_path / "swin.yaml"
    cfg.write_text(json.dumps({"method": "sparsevit", "sparsity": [[0.0], [0.5]]}))
    code = exit_code(["export", "--checkpoint", str(final), "--config", str(cfg), "--format", "onnx",
                    "--out", str(tmp_path / "x.onnx"), "--no-time"])
    err = capsys.readouterr().err
    assert code == 2 and "method 'sparsevit'" in err and len(err.strip().splitlines()) == 1
