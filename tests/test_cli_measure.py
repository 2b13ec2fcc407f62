"""`sparsevit measure` and the one-line errors every command gives for bad input."""
import json

import pytest
import timm
import torch

from cli_helpers import assert_one_line_error, run_cli
from sparsevit_cli.errors import UserError


def test_measure_json(capsys):
    code, out, err = run_cli(["measure", "--img-size", "224", "--sparsity", "0.5", "--batch-size", "2",
                              "--repeats", "1", "--warmup", "0", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert (r["model"], r["img_size"], r["batch_size"]) == ("swin_tiny_patch4_window7_224", 224, 2)
    assert r["sparse_gmacs"] < r["dense_gmacs"]
    assert r["ideal_speedup"] == pytest.approx(r["dense_gmacs"] / r["sparse_gmacs"])
    assert r["speedup"] == pytest.approx(r["dense_ms"] / r["sparse_ms"])
    assert r["efficiency"] == pytest.approx(r["speedup"] / r["ideal_speedup"])
    assert r["throughput_speedup"] == pytest.approx(r["sparse_images_per_s"] / r["dense_images_per_s"])
    assert r["throughput_efficiency"] == pytest.approx(r["throughput_speedup"] / r["ideal_speedup"])
    assert r["dense_images_per_s"] > 0 and r["compiled"] is False


def test_measure_with_config_file_and_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "swin.pth"
    torch.save({"model": timm.create_model("swin_tiny_patch4_window7_224").state_dict()}, ckpt)
    cfg = tmp_path / "best.yaml"
    cfg.write_text("method: sparsevit\nsparsity: [[0.0], [0.2], [0.4, 0.5, 0.6], [0.8]]\n")
    code, out, err = run_cli(["measure", "--img-size", "448", "--checkpoint", str(ckpt), "--config", str(cfg),
                              "--batch-size", "1", "--repeats", "1", "--warmup", "0", "--json"], capsys)
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
    # without --model a checkpoint builds its own architecture (issue 27); with one, a mismatch says both
    (["--model", "swin_tiny_patch4_window7_224", "--checkpoint", "{small}"],
     "the checkpoint holds a Swin with embed_dim 96, depths 2-2-18-2 (Swin-S); --model is Swin-T"),
    (["--checkpoint", "{corrupt}"], "cannot be read"),
    (["--img-size", "230"], "not a multiple of the patch size"),
    (["--img-size", "0"], "image size"),
    (["--device", "tpu"], "device must be"),
    (["--dtype", "fp8"], "'fp8' is not one of 'fp32', 'fp16', 'bf16'"),
    (["--sparsity", "0.5", "--config", "{count}"], "not both"),
])
def test_bad_input_is_one_line(args, needle, bad_files, capsys):
    args = [a.format(**bad_files) for a in args]
    base = ["measure", "--img-size", "224", "--batch-size", "1", "--repeats", "1", "--warmup", "0"]
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


# ------------------------------------------------------------------------------ toolkit model files
# A micro version of the demo's Swin (two stages, 4x4 windows at 64 px): the model `measure` failed to build.
MICRO = dict(embed_dim=16, depths=[2, 4], num_heads=[1, 2], window_size=4, img_size=64, num_classes=10)
FAST = ["--batch-size", "2", "--repeats", "1", "--warmup", "0", "--json"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A toolkit model file as adapt writes it (stored config and a non-default window score), and the
    search's best.yaml for it."""
    from sparsevit_cli.model_file import build_from_meta, save_model
    folder = tmp_path_factory.mktemp("modelfile")
    meta = {"method": "sparsevit", "model": "swin_tiny_patch4_window7_224", "model_args": MICRO, "img_size": 64,
            "task": "classification", "num_classes": 10, "sparsity": [[0.5], [0.5, 0.5]],
            "method_options": {"window_score": "l2"}}
    torch.manual_seed(0)
    model, _ = build_from_meta(meta)
    save_model(folder / "model.safetensors", model, meta)
    best = folder / "best.yaml"
    best.write_text("method: sparsevit\nmodel: swin_tiny_patch4_window7_224\nsparsity: [[0.7], [0.4, 0.4]]\n")
    return folder / "model.safetensors", best


def test_measure_builds_the_model_a_model_file_describes(model_file, capsys):
    path, best = model_file
    code, out, err = run_cli(["measure", "--checkpoint", path, "--config", best] + FAST, capsys)
    assert code == 0, err
    r = json.loads(out)
    assert (r["model"], r["img_size"], r["sparsity"]) == ("swin_tiny_patch4_window7_224", 64, [[0.7], [0.4, 0.4]])
    assert r["sparse_gmacs"] < r["dense_gmacs"] < 1  # the micro model, not Swin-T (4.5 GMACs at 224)
    code, out, err = run_cli(["measure", "--checkpoint", path] + FAST, capsys)
    assert code == 0, err
    assert json.loads(out)["sparsity"] == [[0.5], [0.5, 0.5]]  # the file's stored config by default


def test_measure_model_file_flags_override(model_file, capsys):
    path, _ = model_file
    code, out, err = run_cli(["measure", "--checkpoint", path, "--img-size", "128", "--sparsity", "0.3",
                              "--model", "swin_tiny_patch4_window7_224"] + FAST, capsys)
    assert code == 0, err
    r = json.loads(out)
    assert (r["img_size"], r["sparsity"]) == (128, [[0.3], [0.3, 0.3]])
    assert r["dense_gmacs"] == pytest.approx(4 * json.loads(run_cli(
        ["measure", "--checkpoint", path] + FAST, capsys)[1])["dense_gmacs"], rel=0.05)  # 4x the pixels


def test_measure_model_file_dense_is_timm_with_the_same_weights(model_file):
    from timm.models.swin_transformer import SwinTransformer
    from sparsevit_cli.commands.measure import measured_models
    path, _ = model_file
    m = measured_models(None, path, None, 0.0, None)
    assert type(m.dense) is SwinTransformer and m.sparse.window_score == "l2"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m.sparse.eval()(x), m.dense.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args,needle", [
    (["--model", "swin_small_patch4_window7_224"], "conflicts with"),
    (["--config", "{other}"], "config is for model"),
    (["--img-size", "66"], "multiple of"),
])
def test_measure_model_file_conflicts_are_one_line(model_file, args, needle, tmp_path, capsys):
    path, _ = model_file
    other = tmp_path / "other.yaml"
    other.write_text("model: swin_small_patch4_window7_224\nsparsity: [[0.5], [0.5, 0.5]]\n")
    code, out, err = run_cli(["measure", "--checkpoint", path] + [a.format(other=other) for a in args] + FAST,
                             capsys)
    assert_one_line_error(code, err, needle)


# ------------------------------------------------------------------------------------ torch.compile
def _fast_compile(monkeypatch):
    """Inductor's C++ build takes minutes on 2 cores; aot_eager runs the same dynamo capture and AOT graph."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, **{**kw, "backend": "aot_eager"}))


def test_compile_is_checked_against_eager():
    from sparsevit_cli.timing import compile_model, relative_error
    model = timm.create_model("swin_tiny_patch4_window7_224", **MICRO).eval()
    x = torch.randn(2, 3, 64, 64)
    compiled = compile_model(model, x, backend="aot_eager")
    with torch.inference_mode():
        assert relative_error(model(x), compiled(x)) < 1e-5


def test_compile_that_changes_results_is_refused(monkeypatch):
    from sparsevit_cli.errors import UserError
    from sparsevit_cli.timing import compile_model
    model = timm.create_model("swin_tiny_patch4_window7_224", **MICRO).eval()
    monkeypatch.setattr(torch, "compile", lambda m, **kw: (lambda x: m(x) * (1 + 1e-3)))
    with pytest.raises(UserError, match="differs from eager"):
        compile_model(model, torch.randn(1, 3, 64, 64))


def test_measure_compile_checks_and_times_compiled_models(model_file, monkeypatch, capsys):
    _fast_compile(monkeypatch)
    path, _ = model_file
    code, out, err = run_cli(["measure", "--checkpoint", path, "--compile", "--batch-size", "1", "--repeats", "1",
                              "--warmup", "0", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["compiled"] is True


def test_sparse_engine_compiles_exactly(monkeypatch):
    from sparsevit_cli import sparsify
    from sparsevit_cli.timing import compile_model, relative_error
    model = sparsify(timm.create_model("swin_tiny_patch4_window7_224", **MICRO).eval(), [[0.5], [0.4, 0.4]])
    x = torch.randn(2, 3, 64, 64)
    compiled = compile_model(model, x, backend="aot_eager")
    with torch.inference_mode():
        assert relative_error(model(x), compiled(x)) < 1e-5


def test_compiler_unavailable_is_one_line(model_file, monkeypatch, capsys):
    def no_compiler(model, **kw):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\n(pages of detail)")
    monkeypatch.setattr(torch, "compile", no_compiler)
    path, _ = model_file
    code, out, err = run_cli(["measure", "--checkpoint", path, "--compile"] + FAST, capsys)
    assert_one_line_error(code, err, "torch.compile failed")
    assert "No working C++ compiler" in err


# ------------------------------------------------------------------------------------ quiet output
@pytest.mark.parametrize("verbose", [False, True])
def test_library_warnings_only_with_verbose(verbose, monkeypatch, capsys):
    import warnings
    import sparsevit_cli.commands.measure as measure_cmd

    def noisy(*args, **kwargs):
        warnings.warn("timm: interpolating position embedding", UserWarning)
        raise measure_cmd.UserError("stopped after the warning")
    monkeypatch.setattr(measure_cmd, "measured_models", noisy)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code, out, err = run_cli((["--verbose"] if verbose else []) + ["measure"], capsys)
    assert_one_line_error(code, err, "stopped after the warning")
    assert any("interpolating" in str(w.message) for w in seen) == verbose
