"""`sparsevit measure` and the one-line errors every command gives for bad input."""
import json

import pytest
import timm
import torch

from cli_helpers import assert_one_line_error, run_cli


def test_measure_json(capsys):
    code, out, err = run_cli(["measure", "--img-size", "224", "--sparsity", "0.5", "--repeats", "1",
                              "--warmup", "0", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    for key in ("dense_gmacs", "sparse_gmacs", "ideal_speedup", "dense_ms", "sparse_ms", "speedup", "efficiency"):
        assert key in r
    assert r["sparse_gmacs"] < r["dense_gmacs"]
    assert r["ideal_speedup"] == pytest.approx(r["dense_gmacs"] / r["sparse_gmacs"])
    assert r["efficiency"] == pytest.approx(r["speedup"] / r["ideal_speedup"])


def test_measure_with_config_file_and_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "swin.pth"
    torch.save({"model": timm.create_model("swin_tiny_patch4_window7_224").state_dict()}, ckpt)
    cfg = tmp_path / "best.yaml"
    cfg.write_text("method: sparsevit\nsparsity: [[0.0], [0.2], [0.4, 0.5, 0.6], [0.8]]\n")
    code, out, err = run_cli(["measure", "--img-size", "448", "--checkpoint", str(ckpt), "--config", str(cfg),
                              "--repeats", "1", "--warmup", "0", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["sparsity"] == [[0.0], [0.2], [0.4, 0.5, 0.6], [0.8]]


@pytest.fixture
def bad_files(tmp_path):
    small = tmp_path / "small.pth"
    torch.save(timm.create_model("swin_small_patch4_window7_224").state_dict(), small)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    decreasing = tmp_path / "dec.yaml"
    decreasing.write_text("sparsity: [[0.0], [0.2], [0.6, 0.5, 0.6], [0.8]]\n")
    count = tmp_path / "count.yaml"
    count.write_text("sparsity: [[0.0], [0.2], [0.4, 0.5], [0.8]]\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("sparsity: [[0.0], [0.2\n")
    return dict(small=small, corrupt=corrupt, decreasing=decreasing, count=count, broken=broken,
                missing=tmp_path / "nope.pth")


@pytest.mark.parametrize("args,needle", [
    (["--model", "swin_tinyy"], "unknown timm model"),
    (["--model", "resnet18"], "cannot build 'resnet18'"),
    (["--sparsity", "0.85"], "not one of"),
    (["--sparsity", "-0.1"], "not one of"),
    (["--config", "{decreasing}"], "non-decreasing"),
    (["--config", "{count}"], "needs 3 ratio"),
    (["--config", "{broken}"], "not valid YAML"),
    (["--checkpoint", "{missing}"], "not found"),
    (["--checkpoint", "{small}"], "does not match"),
    (["--checkpoint", "{corrupt}"], "cannot be read"),
    (["--img-size", "230"], "not a multiple of the patch size"),
    (["--img-size", "0"], "image size"),
    (["--device", "tpu"], "device must be"),
    (["--dtype", "fp8"], "dtype must be"),
])
def test_bad_input_is_one_line(args, needle, bad_files, capsys):
    args = [a.format(**bad_files) for a in args]
    base = ["measure", "--img-size", "224", "--repeats", "1", "--warmup", "0"]
    code, out, err = run_cli(base + args, capsys)
    assert_one_line_error(code, err, needle)


def test_method_queries_neither_patch_nor_reset_models():
    """measure times timm's own dense model: asking the method about a model must not make it sparse, and
    asking about a sparse model must not reset its config (export and search rely on both)."""
    from timm.models.swin_transformer import SwinTransformer
    from sparsevit_cli import sparsify
    from sparsevit_cli.methods import method_for_model

    dense = timm.create_model("swin_tiny_patch4_window7_224")
    method = method_for_model(dense)
    cfg = method.uniform_config(dense, 0.5)
    method.validate(dense, cfg), method.group_sizes(dense), method.dense_config(dense)
    assert type(dense) is SwinTransformer
    sparse = sparsify(timm.create_model("swin_tiny_patch4_window7_224"), cfg)
    method.validate(sparse, cfg), method.group_sizes(sparse), method.dense_config(sparse), method.wrap(sparse)
    assert sparse.sparsity == cfg
