"""`ModelMeta` and model files: one typed holder of a model's facts, round trips through save/read/load,
refusal of unknown formats and of pickle files (never unpickled), and the `info` command."""
import json
import os
import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

from sparsevit_cli.errors import UserError
from sparsevit_cli.model_file import FORMAT, ModelMeta, load, load_model_file, read_meta, save_model
from cli_helpers import assert_one_line_error, run_cli

MODEL = "swin_tiny_patch4_window7_224"
ARGS = {"img_size": 64, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4, "num_classes": 10}
SPARSITY = [[0.0], [0.5]]


def meta_dict(**over):
    return dict({"method": "sparsevit", "model": MODEL, "model_args": ARGS, "img_size": 64, "task": "classification",
                 "num_classes": 10, "sparsity": SPARSITY, "method_options": {"window_score": "l2"},
                 "trained_by": "finetune", "top1": 87.5}, **over)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from sparsevit_cli import sparsify
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mf") / "model.safetensors"
    save_model(path, sparsify(timm.create_model(MODEL, **ARGS), SPARSITY), meta_dict())
    return path


def test_meta_is_typed_and_reads_like_the_old_dict():
    meta = ModelMeta.of(meta_dict(sparsity=[[0, 1 / 2]]))
    assert meta.sparsity == [[0.0, 0.5]] and isinstance(meta.sparsity[0][0], float)
    assert meta.method_options == {"window_score": "l2"}
    assert meta["model_args"] == ARGS and meta.get("top1") == 87.5  # extras (metrics) are kept
    assert meta.get("space", "swin_t") == "swin_t" and "space" not in meta  # unset reads as absent
    with pytest.raises(KeyError):
        meta["space"]
    assert dict(meta.items())["trained_by"] == "finetune"


@pytest.mark.parametrize("bad,needle", [({"img_size": "big"}, "img_size"), ({"sparsity": [["a"]]}, "sparsity"),
                                        ({"model_args": [1]}, "model_args")])
def test_invalid_meta_is_one_line(bad, needle):
    with pytest.raises(UserError, match=needle) as e:
        ModelMeta.of(meta_dict(**bad))
    assert "\n" not in str(e.value)


def test_image_size_is_resolved_in_one_place():
    meta = ModelMeta.of(meta_dict())
    assert meta.resolve_img_size(None) == 64 and meta.resolve_img_size(64) == 64
    assert meta.resolve_img_size(96) == 96  # a Swin (SparseViT) runs any size
    with pytest.raises(UserError, match="built for img_size 64, not 96"):  # a search stays at its own
        meta.resolve_img_size(96, own_size_only=True)
    vit = ModelMeta.of(meta_dict(method="psvit"))
    with pytest.raises(UserError, match="runs only at its own size"):
        vit.resolve_img_size(96)
    assert ModelMeta.of(meta_dict(img_size=None)).image_size == 64  # from the constructor args
    assert ModelMeta.of(meta_dict(img_size=None, model_args={})).image_size == 224  # timm's default


def test_save_read_load_round_trip(model_file):
    meta = read_meta(model_file)
    assert isinstance(meta, ModelMeta) and meta.format == FORMAT and meta.toolkit_version
    assert meta.to_dict() == dict(meta_dict(), format=FORMAT, toolkit_version=meta.toolkit_version)
    model = load(model_file)
    assert model.sparsevit_meta.sparsity == SPARSITY and model.sparsity == SPARSITY
    assert model.window_score == "l2"


def test_config_override_is_what_the_meta_says_the_model_runs(model_file):
    model, method, meta = load_model_file(model_file, {"method": "sparsevit", "sparsity": [[0.3], [0.7]]})
    assert method.name == "sparsevit" and meta.sparsity == [[0.3], [0.7]] == model.sparsity
    assert read_meta(model_file).sparsity == SPARSITY  # the file itself is unchanged
    with pytest.raises(UserError, match="config is for model 'other'"):
        load(model_file, {"model": "other", "sparsity": SPARSITY})
    with pytest.raises(UserError, match="one list per stage"):
        load(model_file, [[0.5]])


def test_save_accepts_a_model_meta(model_file, tmp_path):
    model = load(model_file)
    save_model(tmp_path / "again.safetensors", model, model.sparsevit_meta)
    assert read_meta(tmp_path / "again.safetensors").to_dict() == read_meta(model_file).to_dict()
    assert [p.name for p in tmp_path.iterdir()] == ["again.safetensors"]  # no temp file left


@pytest.mark.parametrize("fmt", [99, "sparsevit-model/99", "something-else"])
def test_unknown_format_is_refused_by_info_and_load(fmt, model_file, tmp_path, capsys):
    from safetensors.torch import load_file
    path = tmp_path / "future.safetensors"
    save_file(load_file(str(model_file)), str(path), metadata={"sparsevit": json.dumps(dict(meta_dict(), format=fmt))})
    with pytest.raises(UserError, match="model-file format"):
        load(path)
    code, _, err = run_cli(["info", path], capsys)
    assert_one_line_error(code, err, "this sparsevit reads formats 1, 2")


class _Payload:
    """Unpickling this runs code (creates a marker file): what a hostile .pth can do."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pickle_file_is_refused_without_being_unpickled(tmp_path, capsys):
    marker = tmp_path / "pwned"
    for name in ("evil.pth", "evil.safetensors"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(_Payload(str(marker))))
        with pytest.raises(UserError, match="sparsevit model file|cannot be read"):
            load(path)
        code, _, err = run_cli(["info", path], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_info_shows_the_file(model_file, capsys):
    code, stdout, err = run_cli(["info", model_file], capsys)
    assert code == 0, err
    for text in (MODEL, "[[0.0], [0.5]]", "87.5", "finetune", "window_score"):
        assert text in stdout


def test_info_on_a_directory_or_timm_file(tmp_path, capsys):
    code, _, err = run_cli(["info", tmp_path], capsys)
    assert_one_line_error(code, err, "is a directory")
    (tmp_path / "w.pth").write_bytes(b"\x80\x04N.")
    code, _, err = run_cli(["info", tmp_path / "w.pth"], capsys)  # info describes checkpoints too (issue 27)
    assert_one_line_error(code, err, "cannot be read")


# --------------------------------------------------------------------------------------------- detectors
DET_ARGS = {"img_size": 64, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4}
#: lighter heads than torchvision's defaults; every one must come back from the file
DET_OPTIONS = {"fpn_channels": 32, "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20,
               "box_detections_per_img": 10, "box_score_thresh": 0.0}
DET_SPARSITY = [[0.0], [0.5]]


def test_detector_model_file_round_trip(tmp_path, capsys):
    from sparsevit_cli import sparsify
    from sparsevit_cli.tasks import backbone_of, build_task_model

    torch.manual_seed(0)
    model = build_task_model(sparsify(timm.create_model(MODEL, **DET_ARGS), DET_SPARSITY), "detection", 3,
                             **DET_OPTIONS).eval()
    path = tmp_path / "det.safetensors"
    save_model(path, model, {"method": "sparsevit", "model": MODEL, "model_args": DET_ARGS, "img_size": 64,
                             "task": "detection", "num_classes": 3, "sparsity": DET_SPARSITY,
                             "task_options": DET_OPTIONS, "class_names": ["zero", "one", "two"]})
    meta = read_meta(path)
    assert meta.task_options == DET_OPTIONS and meta.class_names == ["zero", "one", "two"]
    code, out, err = run_cli(["info", path], capsys)  # info shows the head's options and the class names
    shown = "".join(out.split())
    assert code == 0, err
    assert '"fpn_channels":32' in shown and '["zero","one","two"]' in shown and "detection" in shown

    loaded = load(path)
    assert backbone_of(loaded).sparsity == DET_SPARSITY == loaded.sparsevit_meta.sparsity
    assert not loaded.training
    # the stored head options built the head, not torchvision's defaults (256 channels, 1000 / 100)
    assert loaded.backbone.out_channels == 32 and loaded.rpn._post_nms_top_n["testing"] == 20
    assert loaded.roi_heads.detections_per_img == 10
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad():
        want, got = model(images), loaded(images)
    for a, b in zip(want, got):
        assert len(a["boxes"]) > 0 and a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], msg=k)
    # the stored config is the one that runs: a dense config changes the outputs
    backbone_of(loaded).set_sparsity(0.0)
    with torch.no_grad():
        dense = loaded(images)
    assert any(a["boxes"].shape != b["boxes"].shape or not torch.allclose(a["boxes"], b["boxes"])
               for a, b in zip(got, dense))


def test_model_file_bytes_do_not_depend_on_the_process(tmp_path):
    """safetensors orders its metadata by a per-process random hash: save_model sorts it, so the same model
    saved in two processes is the same bytes (resumed runs compare model files byte for byte)."""
    import subprocess
    import sys
    code = ("import sys, timm, torch; from sparsevit_cli import sparsify; from sparsevit_cli.model_file import save_model;"
            "torch.manual_seed(0);"
            "m = sparsify(timm.create_model('swin_tiny_patch4_window7_224', img_size=32, embed_dim=8, depths=[1, 1],"
            " num_heads=[1, 1], window_size=2, num_classes=3));"
            "save_model(sys.argv[1], m, {'model': 'swin_tiny_patch4_window7_224', 'img_size': 32, 'num_classes': 3,"
            " 'model_args': {'embed_dim': 8, 'depths': [1, 1], 'num_heads': [1, 1], 'window_size': 2, 'num_classes': 3,"
            " 'img_size': 32}, 'sparsity': [[0.0], [0.0]]})")
    files = [tmp_path / f"m{i}.safetensors" for i in range(5)]
    for f in files:
        subprocess.run([sys.executable, "-c", code, str(f)], check=True)
    assert len({f.read_bytes() for f in files}) == 1
    from sparsevit_cli.model_file import load
    load(files[0])  # still a valid model file, digest included
