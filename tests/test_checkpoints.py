"""Checkpoints as users have them (issue 27): timm, the official Swin repo (V1, V2), Hugging Face transformers
(Swin, Swinv2, SwinBackbone, ViT; a file or a save_pretrained folder), mmdetection / mmsegmentation (a backbone
or a whole detector). Each is built here from a random-init model (no downloads), loaded through sparsevit,
and its outputs compared with the source implementation's at sparsity 0; the architecture is read from the
file; bad files are one line."""
import json
import re

import pytest
import timm
import torch

import sparsevit_cli as sv
from sparsevit_cli.checkpoints import model_for, official_swin_to_timm, read_checkpoint
from sparsevit_cli.errors import UserError
from sparsevit_cli.timm_models import create_timm_model, load_timm_checkpoint
from cli_helpers import assert_one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

transformers = pytest.importorskip("transformers")
#: a tiny Swin: 2 stages, patch 2, window 4 (stage maps 16x16 and 8x8 at 32 px)
SWIN = dict(patch_size=2, embed_dim=16, depths=[1, 2], num_heads=[1, 2], window_size=4)
TIMM_SWIN = dict(SWIN, img_size=32)


def close(a, b, tol=1e-5):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) <= tol


def sparse_model(path, img_size=None):
    """The checkpoint's architecture built by timm at `img_size`, loaded, wrapped by its method, run at sparsity 0."""
    from sparsevit_cli.methods import method_for_model
    ckpt = read_checkpoint(path)
    name, args = model_for(ckpt, None, {"img_size": img_size} if img_size else {})
    model = create_timm_model(name, **args)
    load_timm_checkpoint(model, path, checkpoint=ckpt)
    method = method_for_model(model)
    model = method.wrap(model)
    method.apply(model, method.uniform_config(model, 0.0))
    return model.eval()


def images(size, seed=0):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------- Hugging Face
@pytest.fixture(scope="module")
def hf_swin(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.SwinConfig(image_size=32, num_labels=5, **SWIN)
    model = transformers.SwinForImageClassification(config).eval()
    folder = tmp_path_factory.mktemp("hf") / "swin"
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("size", [32, 64])
def test_hf_swin_folder_equals_transformers_at_two_sizes(hf_swin, size):
    hf, folder = hf_swin
    x = images(size)
    with torch.no_grad():
        assert close(sparse_model(folder, size)(x), hf(x).logits)


def test_hf_swin_through_load_and_a_state_dict_file(hf_swin, tmp_path):
    hf, folder = hf_swin
    x = images(32, seed=1)
    with torch.no_grad():
        want = hf(x).logits
        model = sv.load(folder)  # the folder: config.json + model.safetensors, legacy key names
        assert model.sparsevit_meta.num_classes == 5 and model.sparsevit_meta.image_size == 32
        assert close(model(x), want)
        torch.save(hf.state_dict(), tmp_path / "swin.bin")  # in-memory names of this transformers version
        assert close(sv.load(tmp_path / "swin.bin", 0.0)(x), want)


def test_hf_swin_model_and_backbone(tmp_path):
    torch.manual_seed(1)
    config = transformers.SwinConfig(image_size=32, **SWIN)
    hf = transformers.SwinModel(config).eval()
    hf.save_pretrained(tmp_path / "model")
    x = images(32, seed=2)
    with torch.no_grad():
        assert close(sparse_model(tmp_path / "model")(x), hf(x).pooler_output)  # a headless model: pooled features

    backbone = transformers.SwinBackbone(transformers.SwinConfig(image_size=32, out_features=["stage1", "stage2"],
                                                                 **SWIN)).eval()
    backbone.save_pretrained(tmp_path / "backbone")
    ckpt = read_checkpoint(tmp_path / "backbone")
    assert "SwinBackbone's per-output norms: stage2 (the last stage's) kept as the final norm, stage1 dropped" \
        in ckpt.dropped_line
    model = sparse_model(tmp_path / "backbone")
    with torch.no_grad():
        theirs = backbone(x).feature_maps
        mine = model.forward_intermediates(x, intermediates_only=True)  # NCHW stage outputs, before any norm
        for i, (a, b) in enumerate(zip(mine, theirs)):
            norm = getattr(backbone.hidden_states_norms, f"stage{i + 1}")  # the norms SwinBackbone applies
            assert close(norm(a.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), b)


@pytest.mark.parametrize("size", [32, 64])
def test_hf_swinv2_equals_transformers(tmp_path_factory, size):
    torch.manual_seed(2)
    hf = transformers.Swinv2ForImageClassification(transformers.Swinv2Config(image_size=32, num_labels=3,
                                                                             **SWIN)).eval()
    folder = tmp_path_factory.mktemp("v2") / "swinv2"
    hf.save_pretrained(folder)
    ckpt = read_checkpoint(folder)
    assert ckpt.architecture.family == "swinv2" and ckpt.architecture.window_size == 4
    x = images(size, seed=3)
    with torch.no_grad():
        assert close(sparse_model(folder, size)(x), hf(x).logits)


#: initializer_range 0.5: activations of a trained model's scale, where transformers' LayerNorm eps (1e-12) and
#: timm's (1e-6) agree to 1e-7; at the 0.02 init's tiny activations the eps alone differs by 1e-3
VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
           intermediate_size=64, initializer_range=0.5)


def test_hf_vit_equals_transformers_and_its_pooler_is_named(tmp_path):
    torch.manual_seed(3)
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=4, **VIT)).eval()
    hf.save_pretrained(tmp_path / "vit")
    x = images(32, seed=4)
    with torch.no_grad():
        model = sv.load(tmp_path / "vit")
        assert model.sparsevit_meta.method == "psvit"
        assert close(model(x), hf(x).logits)
    # another size: a ViT's position embeddings fix it (transformers' interpolate_pos_encoding resamples them
    # otherwise than timm), so the second size is a second model, its img_size read from them (no config.json)
    hf48 = transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=4, **dict(VIT, image_size=48)))
    torch.save(hf48.eval().state_dict(), tmp_path / "vit48.bin")
    ckpt = read_checkpoint(tmp_path / "vit48.bin")
    assert ckpt.architecture.img_size == 48 and ckpt.architecture.num_heads is None  # heads: not in the shapes
    with pytest.raises(UserError, match="number of heads is not in the file"):
        model_for(ckpt, None, {})
    name, args = model_for(ckpt, None, {"num_heads": 2})
    model = create_timm_model(name, **args)
    load_timm_checkpoint(model, tmp_path / "vit48.bin", checkpoint=ckpt)
    with torch.no_grad():
        x48 = images(48, seed=5)
        assert close(sv.psvit(model).eval()(x48), hf48(x48).logits)
    bare = transformers.ViTModel(transformers.ViTConfig(**VIT)).eval()
    torch.save(bare.state_dict(), tmp_path / "vitmodel.pth")
    ckpt = read_checkpoint(tmp_path / "vitmodel.pth")
    assert "pooler" in ckpt.dropped_line
    bare.save_pretrained(tmp_path / "vitmodel")
    with torch.no_grad():
        assert close(sparse_model(tmp_path / "vitmodel").forward_features(x), bare(x).last_hidden_state)


def test_a_distilled_deit_is_one_line_saying_why(tmp_path, capsys):
    deit = transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**VIT))
    torch.save(deit.state_dict(), tmp_path / "deit.pth")
    code, _, err = run_cli(["info", tmp_path / "deit.pth"], capsys)
    assert_one_line_error(code, err, "distilled DeiT")


# --------------------------------------------------------------------------------------------- official, mmdet
def timm_to_official(state):
    """timm's Swin layout -> the official repo's (PatchMerging at the end of the stage before, `head`)."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample.", k)
        out[k.replace("head.fc.", "head.")] = v
    return out


def official_to_mmdet(state):
    """mmdet's `swin_converter`, re-implemented here from its documented rules (head dropped, attn ->
    attn.w_msa, mlp.fc1/fc2 -> ffn.layers.0.0/ffn.layers.1, layers -> stages, patch_embed.proj ->
    patch_embed.projection, PatchMerging weights reordered for nn.Unfold, `backbone.` prefix)."""
    def reduction(x):
        o, i = x.shape
        return x.reshape(o, 4, i // 4)[:, [0, 2, 1, 3], :].transpose(1, 2).reshape(o, i)

    def norm(x):
        return x.reshape(4, x.shape[0] // 4)[[0, 2, 1, 3], :].transpose(0, 1).reshape(x.shape[0])
    out = {}
    for k, v in state.items():
        if k.startswith("head"):
            continue
        if k.startswith("layers"):
            if "attn." in k:
                k = k.replace("attn.", "attn.w_msa.")
            elif "mlp.fc1." in k:
                k = k.replace("mlp.fc1.", "ffn.layers.0.0.")
            elif "mlp.fc2." in k:
                k = k.replace("mlp.fc2.", "ffn.layers.1.")
            elif "downsample.reduction." in k:
                v = reduction(v)
            elif "downsample.norm." in k:
                v = norm(v)
            k = k.replace("layers", "stages", 1)
        elif k.startswith("patch_embed.proj"):
            k = k.replace("proj", "projection")
        out["backbone." + k] = v
    return out


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A tiny 3-stage Swin (two PatchMergings) in the official layout, and the timm model it came from."""
    torch.manual_seed(4)
    args = dict(TIMM_SWIN, depths=[1, 1, 2], num_heads=[1, 2, 4], num_classes=7)
    model = timm.create_model("swin_tiny_patch4_window7_224", **args).eval()
    state = timm_to_official(model.state_dict())
    for name, module in model.named_modules():  # the official file carries its index buffers
        if name.endswith(".attn"):  # blocks are named alike in both layouts
            state[f"{name}.relative_position_index"] = module.relative_position_index
    path = tmp_path_factory.mktemp("official") / "swin_official.pth"
    torch.save({"model": state}, path)
    return model, path


def test_official_swin_loads_with_its_architecture(official):
    model, path = official
    ckpt = read_checkpoint(path)
    assert ckpt.layout.startswith("official Swin")
    assert ckpt.architecture.depths == (1, 1, 2) and ckpt.architecture.num_heads == (1, 2, 4)
    assert ckpt.architecture.window_size == 4 and ckpt.architecture.num_classes == 7
    with torch.no_grad():
        x = images(32, seed=6)
        assert close(sparse_model(path, 32)(x), model(x))


@pytest.mark.parametrize("pretrained", [None, [3, 2]])
def test_official_swinv2_loads(tmp_path, pretrained):
    """Its relative_coords_table buffers say the window size and the window each stage was pre-trained at
    (a V2 fine-tuned to a larger window keeps the pre-training's coordinate scale)."""
    torch.manual_seed(5)
    extra = {"pretrained_window_sizes": pretrained} if pretrained else {}
    model = timm.create_model("swinv2_tiny_window8_256", **dict(TIMM_SWIN, num_classes=3, **extra)).eval()
    state = timm_to_official(model.state_dict())
    for name, module in model.named_modules():
        if name.endswith(".attn"):
            state[f"{name}.relative_coords_table"] = module.relative_coords_table
    torch.save({"model": state}, tmp_path / "v2.pth")
    ckpt = read_checkpoint(tmp_path / "v2.pth")
    assert ckpt.architecture.family == "swinv2" and ckpt.architecture.window_size == 4
    assert ckpt.architecture.extra_args.get("pretrained_window_sizes") == pretrained
    with torch.no_grad():
        x = images(32, seed=7)
        assert close(sparse_model(tmp_path / "v2.pth", 32)(x), model(x))
    # timm's own V2 files keep no buffer: the window size is not in them, and a run without --model says so
    torch.save(model.state_dict(), tmp_path / "timm_v2.pth")
    with pytest.raises(UserError, match="Swin V2 without its window size"):
        model_for(read_checkpoint(tmp_path / "timm_v2.pth"), None, {})


def test_mmdet_backbone_equals_timm_from_the_official_file(official, tmp_path):
    model, path = official
    mmdet = official_to_mmdet(torch.load(path)["model"])
    backbone = {k[len("backbone."):]: v for k, v in mmdet.items()}
    torch.save({"state_dict": backbone}, tmp_path / "mmdet_backbone.pth")
    ckpt = read_checkpoint(tmp_path / "mmdet_backbone.pth")
    assert ckpt.layout.startswith("mmdetection") and ckpt.architecture.num_classes == 0
    timm_state = read_checkpoint(path).state
    for k, v in ckpt.state.items():  # every tensor exactly the official file's (the Unfold order undone)
        assert torch.equal(v, timm_state[k]), k
    mine = sparse_model(tmp_path / "mmdet_backbone.pth", 32)
    x = images(32, seed=8)
    with torch.no_grad():
        ours = mine.forward_intermediates(x, intermediates_only=True)
        theirs = model.forward_intermediates(x, intermediates_only=True)
        assert all(close(a, b) for a, b in zip(ours, theirs))
        assert close(mine.forward_features(x), model.forward_features(x))


def test_a_whole_mmdet_detector_keeps_the_backbone_and_names_what_it_drops(official, tmp_path, capsys):
    model, path = official
    state = official_to_mmdet(torch.load(path)["model"])
    state.pop("backbone.norm.weight"), state.pop("backbone.norm.bias")  # a trained detector: per-output norms
    for i in range(3):
        state[f"backbone.norm{i}.weight"] = torch.rand(16 * 2 ** i)
        state[f"backbone.norm{i}.bias"] = torch.rand(16 * 2 ** i)
    state.update({"neck.lateral_convs.0.conv.weight": torch.rand(8, 16, 1, 1),
                  "rpn_head.rpn_conv.weight": torch.rand(8, 8, 3, 3), "roi_head.bbox_head.fc_cls.weight": torch.rand(3, 8)})
    torch.save({"meta": {"mmdet_version": "3.3.0", "CLASSES": ["a", "b"], "epoch": 12}, "state_dict": state},
               tmp_path / "detector.pth")
    ckpt = read_checkpoint(tmp_path / "detector.pth")
    assert ckpt.dropped_line == (f"checkpoint '{tmp_path / 'detector.pth'}', not carried over: neck.* (1 tensors), "
                                 f"rpn_head.* (1 tensors), roi_head.* (1 tensors); mmdet's per-output norms: norm2 "
                                 f"(the last stage's) kept as the final norm, norm0, norm1 dropped (timm has no "
                                 f"per-stage norms)")
    assert torch.equal(ckpt.state["norm.weight"], state["backbone.norm2.weight"])
    code, out, err = run_cli(["info", tmp_path / "detector.pth"], capsys)
    assert code == 0, err
    assert "mmdetection" in out and "rpn_head" in out and "depths 1-1-2" in out


# --------------------------------------------------------------------------------------------- the architecture
def test_a_named_model_of_another_architecture_says_what_the_file_holds(tmp_path):
    from sparsevit_cli.checkpoints import Checkpoint, architecture_of
    with torch.device("meta"):  # a Swin-B's shapes without its 88M weights
        base = timm.create_model("swin_base_patch4_window7_224", num_classes=0)
    arch = architecture_of(official_swin_to_timm(timm_to_official(base.state_dict())))
    assert (arch.embed_dim, arch.depths, arch.num_heads, arch.window_size) == (128, (2, 2, 18, 2), (4, 8, 16, 32), 7)
    ckpt = Checkpoint(tmp_path / "swin_b.pth", "official Swin", arch, {}, [])
    assert model_for(ckpt, None, {})[0] == "swin_base_patch4_window7_224"
    tiny = create_timm_model("swin_tiny_patch4_window7_224", img_size=32, window_size=4)
    with pytest.raises(UserError, match=r"the checkpoint holds a Swin with embed_dim 128, depths 2-2-18-2 \(Swin-B\); "
                                        r"--model is Swin-T"):
        load_timm_checkpoint(tiny, tmp_path / "swin_b.pth", checkpoint=ckpt, asked="swin_tiny_patch4_window7_224")


def test_adapt_without_model_builds_the_checkpoints_architecture(hf_swin, tmp_path, capsys):
    from sparsevit_cli.data.demo import write_demo_data
    from sparsevit_cli.model_file import read_meta
    _, folder = hf_swin
    data = tmp_path / "data"
    write_demo_data(data, img_size=32, n_train=8, n_val=4, seed=0)
    code, out, err = run_cli(["adapt", "--checkpoint", folder, "--data", data, "--out", tmp_path / "out",
                              "--epochs", "1", "--batch-size", "8", "--no-progress"], capsys)
    assert code == 0, err
    assert [line for line in out.splitlines() if "layout" in line] == [
        f"info: checkpoint '{folder}': Hugging Face transformers Swin layout (SwinForImageClassification), a Swin "
        f"with embed_dim 16, depths 1-2"]
    meta = read_meta(tmp_path / "out" / "model.safetensors")
    assert meta.model_args["embed_dim"] == 16 and meta.model_args["depths"] == [1, 2] and meta.image_size == 32


# --------------------------------------------------------------------------------------------- bad files
def test_bad_checkpoints_are_one_line(official, tmp_path, capsys):
    _, path = official
    blob = path.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(blob[: len(blob) // 2])
    state = torch.load(path)["model"]
    mixed = dict(state, **{"swin." + k: v for k, v in read_checkpoint(path).state.items() if "blocks" in k})
    mixed.update(official_to_mmdet({k: v for k, v in state.items() if k.startswith("layers.0.")}))
    torch.save(mixed, tmp_path / "mixed.pth")
    torch.save(timm.create_model("resnet10t", num_classes=2).state_dict(), tmp_path / "resnet.pth")
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "empty_folder" / "config.json").write_text(json.dumps({"model_type": "swin"}))
    cases = {"truncated.pth": "cannot be read", "mixed.pth": "mixes layouts",
             "resnet.pth": "in no layout this toolkit reads", "empty_folder": "is a directory without weights"}
    for name, needle in cases.items():
        bad = tmp_path / name
        for argv in (["info", bad], ["measure", "--checkpoint", bad],
                     ["adapt", "--checkpoint", bad, "--data", tmp_path, "--out", tmp_path / "a"],
                     ["pipeline", "--checkpoint", bad, "--data", tmp_path, "--budget-macs", "50%", "--out", tmp_path / "p"],
                     ["evaluate", "--checkpoint", bad, "--data", tmp_path]):
            code, _, err = run_cli(argv, capsys)
            assert_one_line_error(code, err, needle)
        with pytest.raises(UserError, match=needle):
            sv.load(tmp_path / name)


def test_every_layout_is_accepted_by_load_and_info(hf_swin, official, tmp_path, capsys):
    """The issue's measure: timm, official, HF file, HF folder, mmdet backbone, mmdet detector, HF ViT."""
    model, path = official
    _, folder = hf_swin
    torch.save(model.state_dict(), tmp_path / "timm.pth")
    torch.save(transformers.SwinForImageClassification(transformers.SwinConfig(**SWIN)).state_dict(),
               tmp_path / "hf.bin")
    mmdet = official_to_mmdet(torch.load(path)["model"])
    torch.save({k[len("backbone."):]: v for k, v in mmdet.items()}, tmp_path / "mmdet_backbone.pth")
    torch.save({"meta": {}, "state_dict": dict(mmdet, **{"neck.conv.weight": torch.rand(2)})}, tmp_path / "det.pth")
    transformers.ViTModel(transformers.ViTConfig(**VIT)).save_pretrained(tmp_path / "vit")
    files = [tmp_path / "timm.pth", path, tmp_path / "hf.bin", folder, tmp_path / "mmdet_backbone.pth",
             tmp_path / "det.pth", tmp_path / "vit"]
    from safetensors.torch import save_file
    save_file({f"module.{k}": v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "ddp.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "ddp.pth")
    files += [tmp_path / "ddp.safetensors", tmp_path / "ddp.pth"]  # timm, saved from DDP
    segmentor = dict(mmdet, **{"decode_head.conv_seg.weight": torch.rand(3, 4, 1, 1),
                               "auxiliary_head.conv_seg.weight": torch.rand(3, 4, 1, 1)})
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": segmentor}, tmp_path / "mmseg.pth")
    files.append(tmp_path / "mmseg.pth")
    assert "decode_head.* (1 tensors), auxiliary_head.* (1 tensors)" in read_checkpoint(tmp_path / "mmseg.pth").dropped_line
    for f in files:
        assert sv.load(f) is not None
        code, out, err = run_cli(["info", f], capsys)
        assert code == 0 and "layout" in out, (f, err)
    loaded = sv.load(tmp_path / "ddp.safetensors").state_dict()  # built at 224 px: a timm Swin file has no size
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items() if "relative_position_index" not in k
               and "attn_mask" not in k)


def test_evaluate_takes_a_hf_folder_and_checks_its_classes(hf_swin, tmp_path, capsys):
    from sparsevit_cli.data.demo import write_demo_data
    data = tmp_path / "data"
    write_demo_data(data, img_size=32, n_train=4, n_val=4, seed=0)
    _, five = hf_swin
    code, _, err = run_cli(["evaluate", "--checkpoint", five, "--data", data], capsys)
    assert_one_line_error(code, err, "classification model for 5 classes, '" + str(data) + "' has 10")
    torch.manual_seed(6)
    transformers.SwinForImageClassification(transformers.SwinConfig(image_size=32, num_labels=10, **SWIN)).save_pretrained(
        tmp_path / "ten")
    code, out, err = run_cli(["evaluate", "--checkpoint", tmp_path / "ten", "--data", data, "--json"], capsys)
    assert code == 0, err
    assert "top1" in out
    transformers.SwinModel(transformers.SwinConfig(image_size=32, **SWIN)).save_pretrained(tmp_path / "headless")
    capsys.readouterr()  # transformers' progress bar
    code, _, err = run_cli(["evaluate", "--checkpoint", tmp_path / "headless", "--data", data], capsys)
    assert_one_line_error(code, err, "holds a backbone without a classifier")
