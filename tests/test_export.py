"""`sparsevit export` / `sparsevit_cli.load`: exported sparse models compute what PyTorch computes, pick
their windows per input, and every bad input is one line on stderr.

All on a micro Swin (64 px, 2 stages, window 4) so the whole file runs in seconds: stage 1 has 16 windows,
stage 2 has 4, and both stages hold a shifted (SW-MSA) block, so every config below prunes shifted blocks.
"""
import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import sparsevit_cli as sv
import sparsevit_cli.swin.patch as engine
from sparsevit_cli.model_file import save_model
from sparsevit_cli.commands.export import FORMATS, Format, export_model
from sparsevit_cli.methods import get_method
from test_sparse_swin import randomize_, rel_err
from cli_helpers import assert_one_line_error, run_cli

MODEL = "swin_tiny_patch4_window7_224"
ARGS = dict(img_size=64, embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4, num_classes=10)
SPARSITY = [[0.0], [0.5]]
TOL = 1e-4


def micro_swin(sparsity=SPARSITY, img_size=64):
    """Seeded micro Swin with trained-like norms (so window scores do not tie), window-sparse."""
    torch.manual_seed(0)
    model = randomize_(timm.create_model(MODEL, **dict(ARGS, img_size=img_size))).eval()
    return sv.sparsify(model, sparsity)


def images(seed, size=64, batch=2):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def meta(**over):
    return dict({"method": "sparsevit", "model": MODEL, "model_args": ARGS, "img_size": 64,
                 "task": "classification", "num_classes": 10, "sparsity": SPARSITY}, **over)


def torch_out(model, x):
    with torch.no_grad():
        return model(x)


def runtime_out(fmt, path, x):
    """Run an exported file in its own runtime, independently of export.py's loaders."""
    if fmt == "onnx":
        import onnxruntime as ort
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    module = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()
    return torch_out(module, x)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(path, micro_swin(), meta())
    return path


# ---- parity ---------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt,sparsity,img_size", [
    ("onnx", [[0.5], [0.5]], 64),
    ("onnx", [[0.3], [0.7]], 64),
    ("onnx", [[0.5], [0.8]], 72),  # 18x18 and 9x9 token maps: padded windows in both stages
    ("torchscript", [[0.3], [0.7]], 64),
    ("pt2", [[0.3], [0.7]], 64),
])
def test_exported_model_matches_pytorch(fmt, sparsity, img_size, tmp_path):
    model = micro_swin(sparsity, img_size)
    path = tmp_path / f"m{FORMATS[fmt].suffix}"
    report = export_model(model, fmt, path, [images(0, img_size)], tolerance=TOL, time_it=False)
    assert path.is_file() and report["max_rel_error"] < TOL
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left beside it
    x = images(1, img_size)  # not the input the graph was traced with
    assert rel_err(torch_out(model, x), runtime_out(fmt, path, x)) < TOL


# ---- per-input window selection -------------------------------------------------------------------------
def bright_corners(corners):
    """Dim noise with one bright 32x32 quadrant per image ((row, col) in {0, 1}^2)."""
    x = images(2, batch=len(corners)) * 0.01
    for i, (r, c) in enumerate(corners):
        x[i, :, 32 * r: 32 * (r + 1), 32 * c: 32 * (c + 1)] += 5.0 * images(3 + i, 32, 1)[0]
    return x


def quadrant_windows(r, c):
    """Stage-1 plain-grid window ids (4x4 grid of 4x4-token windows) covering one 32x32 px quadrant."""
    return {(2 * r + i) * 4 + 2 * c + j for i in range(2) for j in range(2)}


def run_recording_orders(model, x, monkeypatch, replay=None):
    """Output of `model` on x, and the window orders the engine ranked (one per stage and grid);
    with `replay`, the engine uses those orders instead of ranking x's own windows."""
    recorded, queue = [], list(replay or [])

    def rank(scores):
        order = queue.pop(0) if replay is not None else engine_rank(scores)
        recorded.append(order)
        return order

    engine_rank = engine.rank_windows
    with monkeypatch.context() as patch:
        patch.setattr(engine, "rank_windows", rank)
        return torch_out(model, x), recorded


def test_exported_model_picks_windows_per_input(tmp_path, monkeypatch):
    model = micro_swin([[0.5], [0.5]])
    model.patch_embed.norm = torch.nn.Identity()  # token energy then follows the input's brightness
    a, b = bright_corners([(0, 0), (0, 1)]), bright_corners([(1, 1), (1, 0)])
    _, orders_a = run_recording_orders(model, a, monkeypatch)
    ref_b, orders_b = run_recording_orders(model, b, monkeypatch)
    keep = engine.kept_windows(16, 0.5)
    for orders, corners in ((orders_a, [(0, 0), (0, 1)]), (orders_b, [(1, 1), (1, 0)])):
        for img, corner in enumerate(corners):  # the bright quadrant's windows rank first
            assert set(orders[0][img, :4].tolist()) == quadrant_windows(*corner)
    assert any(set(oa[:keep].tolist()) != set(ob[:keep].tolist())
               for oa, ob in zip(orders_a[0], orders_b[0]))

    path = tmp_path / "m.onnx"
    export_model(model, "onnx", path, [a], tolerance=TOL, time_it=False)  # traced with a's windows only
    out_b = runtime_out("onnx", path, b)
    assert rel_err(ref_b, out_b) < TOL
    # b run on a's windows is a different result, so the exported graph did not keep a's choice
    b_on_a_windows, _ = run_recording_orders(model, b, monkeypatch, replay=orders_a)
    assert rel_err(b_on_a_windows, out_b) > 1e-2


# ---- model file ------------------------------------------------------------------------------------------
def test_model_file_round_trip(model_file):
    model = sv.load(model_file)
    assert not model.training and model.sparsity == SPARSITY
    assert model.sparsevit_meta["model_args"] == ARGS
    x = images(0)
    assert torch.equal(torch_out(model, x), torch_out(micro_swin(), x))
    assert sv.load(model_file, config=[[0.3], [0.7]]).sparsity == [[0.3], [0.7]]


# ---- command line ----------------------------------------------------------------------------------------
def test_cli_export_and_info(model_file, tmp_path, capsys):
    out = tmp_path / "x.onnx"
    code, stdout, err = run_cli(["export", "--checkpoint", str(model_file), "--format", "onnx", "--out", str(out),
                                 "--no-time"], capsys)
    assert code in (0, None), err
    assert out.is_file() and "relative error" in stdout
    x = images(5, batch=1)  # the file runs the stored sparse config (regression: it once held the dense one)
    assert rel_err(torch_out(micro_swin(), x), runtime_out("onnx", out, x)) < TOL

    code, stdout, err = run_cli(["info", str(model_file)], capsys)
    assert code in (0, None), err
    for text in ("sparsevit", MODEL, "classification", "[[0.0], [0.5]]", "toolkit_version"):
        assert text in stdout


def test_export_times_dense_against_sparse(model_file, tmp_path):
    model = sv.load(model_file)
    method = get_method("sparsevit")
    dense_config = method.dense_config(model)  # as the CLI does; this query resets the model to dense
    path = tmp_path / "m.onnx"
    report = export_model(model, "onnx", path, [images(0)], method=method, config=SPARSITY,
                          dense_config=dense_config)
    assert report["dense_ms"] > 0 and report["sparse_ms"] > 0
    assert report["speedup"] == pytest.approx(report["dense_ms"] / report["sparse_ms"])
    assert model.sparsity == SPARSITY  # the dense export did not leave the model dense
    assert rel_err(torch_out(micro_swin(), images(1)), runtime_out("onnx", path, images(1))) < TOL


@pytest.fixture(scope="module")
def bad_files(model_file, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    files = {"corrupt": d / "corrupt.safetensors", "truncated": d / "truncated.safetensors",
             "mismatch": d / "mismatch.safetensors", "nometa": d / "timm.safetensors",
             "badmeta": d / "badmeta.safetensors", "other_model": d / "other.yaml", "shape": d / "shape.yaml",
             "missing": d / "nope.safetensors", "null": d / "null.yaml", "pickle": d / "timm.pth",
             "format99": d / "future.safetensors", "directory": d / "dir.safetensors"}
    files["corrupt"].write_bytes(b"not a model file at all")
    files["truncated"].write_bytes(model_file.read_bytes()[:-4096])
    save_model(files["mismatch"], micro_swin(), meta(model_args=dict(ARGS, embed_dim=24)))
    weights = load_file(str(model_file))
    save_file(weights, str(files["nometa"]))  # plain weights, no sparsevit metadata
    save_file(weights, str(files["badmeta"]), metadata={"sparsevit": '{"model": "swin'})
    files["other_model"].write_text("method: sparsevit\nmodel: swin_small_patch4_window7_224\n"
                                    "sparsity: [[0.5], [0.5]]\n")
    files["shape"].write_text("sparsity: [[0.0], [0.5], [0.5]]\n")
    files["null"].write_text("method: sparsevit\nsparsity: null\n")
    torch.save({k: v for k, v in weights.items()}, files["pickle"])  # a timm-style pickle checkpoint
    save_file(weights, str(files["format99"]), metadata={"sparsevit": json.dumps(dict(meta(), format=99))})
    files["directory"].mkdir()
    return {k: str(v) for k, v in files.items()}


@pytest.mark.parametrize("args,needle", [
    (["--checkpoint", "{corrupt}"], "cannot be read"),
    (["--checkpoint", "{truncated}"], "cannot be read"),
    (["--checkpoint", "{mismatch}"], "size mismatch"),
    (["--checkpoint", "{nometa}"], "not a sparsevit model file"),
    (["--checkpoint", "{badmeta}"], "corrupt sparsevit metadata"),
    (["--checkpoint", "{missing}"], "not found"),
    (["--checkpoint", "{pickle}"], "not a sparsevit model file"),
    (["--checkpoint", "{format99}"], "format 99"),
    (["--checkpoint", "{directory}"], "is a directory"),
    (["--format", "tflite"], "'tflite' is not one of"),
    (["--config", "{null}"], "'sparsity' must be a list"),
    (["--out", "{directory}"], "is a directory"),
    (["--out", "{other_model}/x.onnx"], "is a file, not a folder"),
    (["--tolerance", "-1"], "--tolerance must be a finite relative error >= 0, got -1"),
    (["--tolerance", "nan"], "got nan"),
    (["--batch-size", "two"], "Invalid value for '--batch-size'"),
    (["--bogus", "1"], "No such option: --bogus"),
    (["--config", "{other_model}"], "config is for model 'swin_small_patch4_window7_224'"),
    (["--config", "{shape}"], "one list per stage"),
    (["--img-size", "0"], "Invalid value for '--img-size'"),
    (["--dtype", "fp16"], "fp32"),
])
def test_bad_export_input_is_one_line(args, needle, model_file, bad_files, tmp_path, capsys):
    base = {"--checkpoint": str(model_file), "--format": "onnx", "--out": str(tmp_path / "x.onnx")}
    opts = dict(zip(args[::2], [a.format(**bad_files) for a in args[1::2]]))
    argv = ["export", "--no-time"] + [t for kv in dict(base, **opts).items() for t in kv]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, needle)
    assert not list(tmp_path.iterdir())


def test_missing_option_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["export", "--checkpoint", str(tmp_path / "m.safetensors")], capsys)
    assert_one_line_error(code, err, "Missing option '--out'")


def test_timm_checkpoint_error_says_what_to_do(bad_files, tmp_path, capsys):
    code, _, err = run_cli(["export", "--checkpoint", bad_files["pickle"], "--out", str(tmp_path / "x.onnx")], capsys)
    assert_one_line_error(code, err, "sparsevit adapt --checkpoint FILE --model NAME")
    assert "never loaded" in err  # the pickle was refused, not unpickled


# (plain timm weights, .safetensors or pickle, are checkpoints `info` describes since issue 27: test_checkpoints)
@pytest.mark.parametrize("name,needle", [("corrupt", "cannot be read"),
                                         ("badmeta", "corrupt sparsevit metadata"), ("missing", "not found"),
                                         ("format99", "format 99"), ("directory", "is a directory")])
def test_bad_info_input_is_one_line(name, needle, bad_files, capsys):
    code, _, err = run_cli(["info", bad_files[name]], capsys)
    assert_one_line_error(code, err, needle)


def test_failed_verification_writes_nothing(model_file, tmp_path, monkeypatch, capsys):
    """An exporter that computes something else (here: outputs off by 1%) fails; no file is left."""
    onnx = FORMATS["onnx"]

    def load_wrong(path):
        run = onnx.load(path)
        return lambda a: run(a) * np.float32(1.01)

    monkeypatch.setitem(FORMATS, "onnx", Format(onnx.suffix, onnx.write, load_wrong))
    code, _, err = run_cli(["export", "--checkpoint", str(model_file), "--out", str(tmp_path / "x.onnx"),
                            "--no-time"], capsys)
    assert_one_line_error(code, err, "differs from PyTorch")
    assert not list(tmp_path.iterdir())


# ---- detectors: backbone only -----------------------------------------------------------------------------
DET_ARGS = dict(img_size=64, embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4)
DET_OPTIONS = {"fpn_channels": 32, "rpn_post_nms_top_n_test": 20, "box_detections_per_img": 5}


def test_export_help_says_detectors_export_the_whole_model_or_the_backbone_only(capsys):
    code, out, _ = run_cli(["export", "--help"], capsys)
    said = " ".join(out.split())
    assert code == 0 and "whole torchvision Faster / Mask R-CNN in one ONNX file" in said and "--backbone-only" in said


@pytest.mark.parametrize("task", ["detection", "instance_segmentation"])
def test_detector_exports_its_sparse_backbone_stage_maps(task, tmp_path, capsys):
    from sparsevit_cli.data.demo import write_demo_data
    from sparsevit_cli.tasks import backbone_of, build_task_model

    torch.manual_seed(0)
    body = sv.sparsify(randomize_(timm.create_model(MODEL, **DET_ARGS)), [[0.3], [0.7]])
    model = build_task_model(body, task, 3, **DET_OPTIONS).eval()
    path = tmp_path / "det.safetensors"
    save_model(path, model, meta(model_args=DET_ARGS, task=task, num_classes=3, sparsity=[[0.3], [0.7]],
                                 task_options=DET_OPTIONS))
    data = tmp_path / "data"
    write_demo_data(data, img_size=64, n_train=1, n_val=1, seed=0, detection=True)
    out = tmp_path / "det.onnx"
    code, stdout, err = run_cli(["export", "--checkpoint", path, "--out", out, "--data", data, "--no-time",
                                 "--backbone-only"], capsys)
    assert code == 0, err
    said = " ".join(stdout.split())
    assert f"{task} model: exported the sparse backbone only (2 multi-scale stage maps" in said
    assert "real images" in said  # the demo COCO set's validation image, through the detector's transform
    # a detector's backbone is exported with dynamic height and width (the engine builds its tables in the graph),
    # verified at the traced size, another one and the real image at the size the detector's transform gives it
    assert "onnx: dynamic height and width, verified at 48x64, 64x64" in said

    import onnxruntime as ort
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["features0", "features1"]
    x = images(5, batch=1)  # the graph's static batch (--batch-size 1)
    got = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        want = backbone_of(model).forward_intermediates(x, intermediates_only=True)
    assert [tuple(g.shape) for g in got] == [(1, 16, 16, 16), (1, 32, 8, 8)]
    for g, w in zip(got, want):
        assert rel_err(w, torch.from_numpy(g)) < TOL


# ---- dynamic height and width --------------------------------------------------------------------------------
class _Maps(torch.nn.Module):
    """Two stride-2 / stride-4 convolution maps: a backbone whose exporters all handle any input size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1)

    def forward(self, x):
        a = self.a(x)
        return a, self.b(a).relu()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_dynamic_export_is_verified_at_two_sizes_and_runs_at_a_third(fmt, tmp_path):
    model, out = _Maps().eval(), tmp_path / f"maps{FORMATS[fmt].suffix}"
    report = export_model(model, fmt, out, [images(0, 64, batch=1)], time_it=False,
                          dynamic_inputs=[torch.randn(1, 3, 48, 64)])
    assert report["dynamic"] is True and "dynamic_note" not in report
    assert [c["size"] for c in report["checks"]] == ["64x64", "48x64"]
    x = torch.randn(1, 3, 40, 88)  # a size neither check used
    got = runtime_out(fmt, out, x)
    got = got[0] if isinstance(got, (tuple, list)) else got  # the first output: the stride-2 map
    assert got.shape == (1, 4, 20, 44) and rel_err(torch_out(model, x)[0], got) < TOL


def _letterboxed(seed):
    """A batch padded to a common size as a detector's transform pads it: a square image and a landscape one
    on a 64x96 zero canvas (zero rows and columns: padding the engine never keeps)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(2, 3, 64, 96)
    x[0, :, :, :64] = torch.randn(3, 64, 64, generator=g)
    x[1, :, 8:40] = torch.randn(3, 32, 96, generator=g)
    return x


# portrait, landscape, square (other than the traced 64x64), and a padded batch; stage 2 of 80x32 is one window
# wide (a size the traced one does not have)
DYNAMIC_SIZES = [(48, 64), (80, 32), (96, 96)]


def _micro_swin_v2(sparsity, features_only):
    torch.manual_seed(0)
    kw = dict(img_size=64, embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4)
    kw.update(features_only=True) if features_only else kw.update(num_classes=10)
    return sv.sparsify(randomize_(timm.create_model("swinv2_tiny_window8_256", **kw)).eval(), sparsity)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt,family,features_only,sparsity", [
    ("onnx", "v1", False, [[0.3], [0.7]]),
    ("onnx", "v2", True, [[0.0], [0.5]]),  # stage 1 is timm's own stage, in the graph at any size
    ("pt2", "v1", True, [[0.0], [0.5]]),
    ("pt2", "v2", False, [[0.3], [0.7]]),
    ("torchscript", "v1", False, [[0.5], [0.5]]),
])
def test_sparse_swin_exports_with_dynamic_height_and_width(fmt, family, features_only, sparsity, tmp_path):
    """Window tables, shifted-window masks, padding and kept counts are built in the graph from the input's
    size: the file computes what PyTorch computes at sizes it was not traced at, and on a padded batch."""
    if family == "v1":
        torch.manual_seed(0)
        kw = dict(ARGS, features_only=True) if features_only else ARGS
        if features_only:
            kw = {k: v for k, v in kw.items() if k != "num_classes"}
        model = sv.sparsify(randomize_(timm.create_model(MODEL, **kw)).eval(), sparsity)
    else:
        model = _micro_swin_v2(sparsity, features_only)
    out = tmp_path / f"m{FORMATS[fmt].suffix}"
    others = [torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h + w)) for h, w in DYNAMIC_SIZES]
    report = export_model(model, fmt, out, [images(0, 64)], tolerance=TOL, time_it=False,
                          dynamic_inputs=others + [_letterboxed(1)])
    assert report["dynamic"] is True and "dynamic_note" not in report, report.get("dynamic_note")
    assert [c["size"] for c in report["checks"]] == ["64x64", "48x64", "80x32", "96x96", "64x96"]
    assert report["max_rel_error"] < TOL
    x = _letterboxed(7)[:, :, :, :88]  # a size no check used
    want, got = _output_list(torch_out(model, x)), _output_list(runtime_out_all(fmt, out, x))
    assert [tuple(w.shape) for w in want] == [tuple(g.shape) for g in got]
    assert all(rel_err(w, g) < TOL for w, g in zip(want, got))


def _output_list(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


def runtime_out_all(fmt, path, x):
    """Every output of an exported file in its own runtime."""
    if fmt == "onnx":
        import onnxruntime as ort
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [torch.from_numpy(o) for o in session.run(None, {session.get_inputs()[0].name: x.numpy()})]
    module = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()
    return torch_out(module, x)


def test_onnx_checks_write_nothing_to_stderr(tmp_path, capfd):
    """onnxruntime's own log lines (a failed run's [E:...] line) never reach stderr: export says one line."""
    from sparsevit_cli.commands.export import _load_onnx

    model, out = micro_swin([[0.0], [0.5]]), tmp_path / "m.onnx"
    export_model(model, "onnx", out, [images(0, 64, batch=1)], tolerance=TOL, time_it=False)
    run = _load_onnx(out)
    with pytest.raises(Exception):
        run(np.zeros((1, 3, 64), dtype=np.float32))  # a wrong rank: onnxruntime logs an error and raises
    captured = capfd.readouterr()
    assert captured.err == "", captured.err


@pytest.mark.parametrize("hp,wp", [(16, 16), (8, 24), (28, 12)])
def test_region_mask_is_timms_shifted_window_mask(hp, wp):
    """The mask an exported graph builds from the (symbolic) size equals timm's own builder's, V1 and V2."""
    for model in (micro_swin(), _micro_swin_v2([[0.5], [0.5]], False)):
        block = model.layers[0].blocks[1]
        assert any(block.shift_size)
        assert torch.equal(engine.region_mask(block, hp, wp, "cpu"), engine.shift_mask(block, hp, wp, "cpu"))
