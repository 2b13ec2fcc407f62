"""`SparseSwinTransformer.kept_window_masks` and `sparsevit visualize` (micro Swin model files: fast)."""
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from sparsevit_cli import sparsify
from sparsevit_cli.commands.visualize import visualize_windows
from sparsevit_cli.model_file import save_model
from sparsevit_cli.swin.patch import kept_windows
from cli_helpers import assert_one_line_error, run_cli

MODEL = "swin_tiny_patch4_window7_224"
ARGS = {"img_size": 64, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4, "num_classes": 10}
SPARSITY = [[0.5], [0.5]]
MEAN_RGB = (124, 116, 104)  # ImageNet mean colour as uint8: normalizes to ~0


def micro_swin(seed=0, sparsity=SPARSITY):
    torch.manual_seed(seed)
    return sparsify(timm.create_model(MODEL, **ARGS), sparsity).eval()


def save(path, model, method="sparsevit", model_name=MODEL, args=ARGS, img_size=64, sparsity=SPARSITY):
    save_model(path, model, {"method": method, "model": model_name, "model_args": args, "img_size": img_size,
                             "task": "classification", "num_classes": 10, "sparsity": sparsity})
    return path


@pytest.fixture
def model_file(tmp_path):
    return save(tmp_path / "micro.safetensors", micro_swin())


def object_image(path, box=(20, 36, 8), size=64, background=MEAN_RGB):
    """A flat background with one bright white square (top, left, side in pixels)."""
    a = np.empty((size, size, 3), np.uint8)
    a[:] = background
    top, left, side = box
    a[top:top + side, left:left + side] = 255
    Image.fromarray(a).save(path)
    return path


# --------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("sparsity", [SPARSITY, [[0.3], [0.8]], [[0.0], [0.5]]])
def test_masks_keep_the_configured_number_of_windows(sparsity):
    model = micro_swin(sparsity=sparsity)
    masks = model.kept_window_masks(torch.randn(2, 3, 64, 64))
    assert len(masks) == 2
    for s, (stage, stage_masks) in enumerate(zip(model.layers, masks)):
        assert len(stage_masks) == len(stage.blocks)
        hs = 16 // 2 ** s
        n_windows = (hs // 4) ** 2
        k = kept_windows(n_windows, sparsity[s][0])
        for b, m in enumerate(stage_masks):
            assert m.dtype == torch.bool and m.shape == (2, hs, hs)
            assert (m.sum(dim=(1, 2)) == k * 16).all()  # no padding here: k windows of 4x4 tokens
            if b % 2 == 0:  # W-MSA: whole windows of the plain grid
                per_window = m.view(2, hs // 4, 4, hs // 4, 4).sum(dim=(2, 4))
                assert ((per_window == 0) | (per_window == 16)).all()
                assert ((per_window == 16).sum(dim=(1, 2)) == k).all()


@pytest.mark.parametrize("score", ["l2", "l2-centered"])
def test_masks_are_the_top_windows_by_token_energy(score):
    """Stage 1 ranks windows by the summed token energy of the patch embedding: recompute it independently."""
    model = micro_swin().set_window_score(score)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    mask = model.kept_window_masks(x)[0][0][0]
    with torch.no_grad():
        tokens = model.patch_embed(x)[0]  # 16 x 16 x C
    if score == "l2-centered":
        tokens = tokens - tokens.mean(dim=(0, 1))
    scores = (tokens ** 2).sum(-1).view(4, 4, 4, 4).sum(dim=(1, 3)).flatten()
    top = set(torch.sort(scores, descending=True, stable=True).indices[:kept_windows(16, 0.5)].tolist())
    kept = mask.view(4, 4, 4, 4).any(dim=3).any(dim=1).flatten()
    assert set(torch.nonzero(kept).flatten().tolist()) == top


def test_recording_changes_nothing():
    model = micro_swin()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    model.kept_window_masks(x)
    assert all(s._kept_recorder is None for s in model.sparse_stages())
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_bright_object_window_is_kept(tmp_path):
    """With random weights the ranking is only meaningful where token energies differ: patch embedding ends
    in a LayerNorm, so every token has energy ~C except where the embedding barely varies across channels.
    Constructed case: background at the normalization mean and a bias-free patch embedding make background
    tokens ~0 before the norm (energy well below C), so the object's window must rank first in stage 1.
    (A white square on black also ranks first with the weights as built, but only by ~1e-4 of a window
    score of ~256, a few float32 ulps: too thin a margin to test.)"""
    from sparsevit_cli.commands.visualize import load_image, stage_windows

    model = micro_swin(sparsity=[[0.8], [0.5]])  # stage 1 keeps 3 of 16 windows
    with torch.no_grad():
        model.patch_embed.proj.bias.zero_()
    x, rgb = load_image(object_image(tmp_path / "obj.png"), 64)
    assert rgb.shape == (64, 64, 3) and abs(rgb[24, 40, 0] - 1.0) < 1e-3  # the image as the model sees it
    stages = stage_windows(model, model.kept_window_masks(x[None]))
    # object pixels 20..27 x 36..43 -> tokens 5..6 x 9..10 -> window (1, 2) of the 4x4 grid of 4x4-token windows
    assert stages[0]["kept_grid"][1, 2]
    assert stages[0]["kept"] == kept_windows(16, 0.8) and stages[0]["windows"] == 16


# --------------------------------------------------------------------------------------------- command
def test_cli_writes_a_png(tmp_path, model_file, capsys):
    image = object_image(tmp_path / "obj.png")
    out = tmp_path / "viz" / "windows.png"
    code, stdout, err = run_cli(["visualize", "--checkpoint", model_file, "--image", image, "--out", out], capsys)
    assert code == 0, err
    assert "stage 1" in stdout and "8/16 windows kept" in stdout and "2/4 windows kept" in stdout.replace("\n", " ")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 0 and im.size[1] > 0
        im.load()
    assert [p.name for p in out.parent.iterdir()] == ["windows.png"]  # no temp file left


def test_cli_config_file_overrides_stored_sparsity(tmp_path, model_file, capsys):
    cfg = tmp_path / "best.yaml"
    cfg.write_text("method: sparsevit\nsparsity: [[0.8], [0.0]]\n")
    image = object_image(tmp_path / "obj.jpg")
    code, stdout, err = run_cli(["visualize", "--checkpoint", model_file, "--image", image, "--config", cfg,
                                 "--img-size", "64", "--out", tmp_path / "v.png"], capsys)
    assert code == 0, err
    assert "3/16 windows kept" in stdout and "4/4 windows kept" in stdout


def test_cli_bad_inputs_give_one_line(tmp_path, model_file, capsys):
    image = object_image(tmp_path / "obj.png")
    out = tmp_path / "v.png"
    code, _, err = run_cli(["visualize", "--checkpoint", model_file, "--image", tmp_path / "nope.png",
                            "--out", out], capsys)
    assert_one_line_error(code, err, "nope.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    code, _, err = run_cli(["visualize", "--checkpoint", model_file, "--image", broken, "--out", out], capsys)
    assert_one_line_error(code, err, "broken.png")
    code, _, err = run_cli(["visualize", "--checkpoint", tmp_path / "missing.safetensors", "--image", image,
                            "--out", out], capsys)
    assert_one_line_error(code, err, "missing.safetensors")
    # (another size is no error: a Swin runs any size, tests/test_first_day.py draws one at 96 px)
    code, _, err = run_cli(["visualize", "--checkpoint", model_file, "--image", image, "--img-size", "0",
                            "--out", out], capsys)
    assert_one_line_error(code, err, "--img-size")
    assert not out.exists()


def test_cli_rejects_psvit_model_file(tmp_path, capsys):
    from sparsevit_cli.methods import get_method

    args = dict(depth=4, embed_dim=48, num_heads=3, img_size=64, patch_size=16, num_classes=10)
    method = get_method("psvit")
    vit = method.wrap(timm.create_model("vit_small_patch16_224", **args))
    path = save(tmp_path / "psvit.safetensors", vit, method="psvit", model_name="vit_small_patch16_224",
                args=args, sparsity=method.dense_config(vit))
    code, _, err = run_cli(["visualize", "--checkpoint", path, "--image", object_image(tmp_path / "o.png"),
                            "--out", tmp_path / "v.png"], capsys)
    assert_one_line_error(code, err, "psvit")


def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    """PIL clips 16-bit grey to 255 on convert("RGB"): a mid-grey 16-bit PNG must stay mid-grey."""
    from sparsevit_cli.commands.visualize import load_image

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((64, 64), 32768, dtype=np.uint16)).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really a 16-bit image
    _, rgb = load_image(path, 64)
    assert abs(float(rgb.mean()) - 32768 / 65535) < 0.01


def test_cli_wrong_kinds_of_checkpoint_say_what_to_do(tmp_path, model_file, capsys):
    image = object_image(tmp_path / "obj.png")
    timm_file = tmp_path / "timm.pth"
    torch.save(micro_swin().state_dict(), timm_file)
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    for checkpoint, needle in ((timm_file, "sparsevit adapt --checkpoint FILE --model NAME"),
                               (folder, "is a directory"), (tmp_path, "is a directory")):
        code, _, err = run_cli(["visualize", "--checkpoint", checkpoint, "--image", image,
                                "--out", tmp_path / "v.png"], capsys)
        assert_one_line_error(code, err, needle)
        assert "--model" not in err.replace("--model NAME", "")  # no option visualize does not have
    code, _, err = run_cli(["visualize", "--checkpoint", model_file, "--image", tmp_path,
                            "--out", tmp_path / "v.png"], capsys)
    assert_one_line_error(code, err, "is a directory")
    assert not (tmp_path / "v.png").exists()


def test_cli_out_that_cannot_be_a_file_is_one_line(tmp_path, model_file, capsys):
    image = object_image(tmp_path / "obj.png")
    (tmp_path / "taken.png").mkdir()
    for out, needle in ((tmp_path / "taken.png", "is a directory"), (image / "v.png", "is a file, not a folder")):
        code, _, err = run_cli(["visualize", "--checkpoint", model_file, "--image", image, "--out", out], capsys)
        assert_one_line_error(code, err, needle)


def test_cli_draws_swin_v2_windows(tmp_path, capsys):
    """Swin V2 models prune windows the same way (their method is a SparseViT)."""
    from sparsevit_cli.methods import get_method

    args = dict(ARGS, window_size=4)
    method = get_method("sparsevit-v2")
    torch.manual_seed(0)
    v2 = method.wrap(timm.create_model("swinv2_tiny_window8_256", **args))
    path = save(tmp_path / "v2.safetensors", v2, method="sparsevit-v2", model_name="swinv2_tiny_window8_256",
                args=args)
    code, stdout, err = run_cli(["visualize", "--checkpoint", path, "--image", object_image(tmp_path / "o.png"),
                                 "--out", tmp_path / "v.png"], capsys)
    assert code == 0, err
    assert "8/16 windows kept" in stdout and (tmp_path / "v.png").is_file()


# --------------------------------------------------------------------------------------------- detectors
DET_ARGS = {"img_size": 128, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4}
DET_OPTIONS = {"fpn_channels": 32, "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20,
               "box_detections_per_img": 5, "box_score_thresh": 0.0}


@pytest.fixture(scope="module")
def detection_image(tmp_path_factory):
    from sparsevit_cli.data.demo import write_demo_data

    root = tmp_path_factory.mktemp("det") / "data"
    write_demo_data(root, img_size=128, n_train=1, n_val=1, seed=0, detection=True)
    return sorted((root / "det" / "val").glob("*.png"))[0]


@pytest.mark.parametrize("task", ["detection", "instance_segmentation"])
def test_visualize_a_detector_draws_kept_windows_and_predictions(tmp_path, capsys, detection_image, task):
    from sparsevit_cli.tasks import build_task_model

    torch.manual_seed(0)
    model = build_task_model(sparsify(timm.create_model(MODEL, **DET_ARGS), SPARSITY), task, 3, **DET_OPTIONS)
    path = tmp_path / "det.safetensors"
    save_model(path, model, {"method": "sparsevit", "model": MODEL, "model_args": DET_ARGS, "img_size": 128,
                             "task": task, "num_classes": 3, "sparsity": SPARSITY, "task_options": DET_OPTIONS,
                             "class_names": ["zero", "one", "two"]})
    pictures = {}
    for threshold in ("0", "1"):  # an untrained head: every prediction drawn, then none
        out = tmp_path / f"t{threshold}.png"
        code, stdout, err = run_cli(["visualize", "--checkpoint", path, "--image", detection_image, "--out", out,
                                     "--score-threshold", threshold], capsys)
        assert code == 0, err
        lines = stdout.splitlines()
        # a 4:3 canvas, 128 x 96 px, kept at its aspect ratio; patch 4, window 4: 8x6 windows in stage 1, 4x3 in
        # stage 2; half of each kept
        assert [l for l in lines if l.startswith("stage")] == [
            "stage 1: 50% pruned, 24/48 windows kept (24x32 tokens, window 4x4)",
            "stage 2: 50% pruned, 6/12 windows kept (12x16 tokens, window 4x4)"]
        detections = [l for l in lines if l.startswith("detections:")]
        assert len(detections) == 1
        n = int(detections[0].split()[1])
        if threshold == "0":  # box_detections_per_img of them, named by the file's class names
            assert n == 5 and any(f"{name} 0." in detections[0] for name in ("zero", "one", "two"))
            assert not [l for l in lines if l.startswith("note:")]
        else:  # nothing passes: one line says so, with the top score
            assert n == 0
            notes = [l for l in lines if l.startswith("note:")]
            assert len(notes) == 1 and "no prediction scored >= 1.00 (top score 0." in notes[0]
        with Image.open(out) as im:
            assert im.format == "PNG"
            pictures[threshold] = np.asarray(im.convert("RGB"))
    assert pictures["0"].shape == pictures["1"].shape
    assert (pictures["0"] != pictures["1"]).any()  # the boxes (and masks) are drawn


def test_visualize_refuses_a_score_threshold_outside_0_1(tmp_path, capsys, model_file):
    image = object_image(tmp_path / "im.png")
    code, _, err = run_cli(["visualize", "--checkpoint", model_file, "--image", image, "--out", tmp_path / "o.png",
                            "--score-threshold", "1.5"], capsys)
    assert_one_line_error(code, err, "--score-threshold must be a score in [0, 1]")
    assert not (tmp_path / "o.png").exists()


def test_default_threshold_draws_a_young_models_best_predictions_and_says_so(tmp_path, capsys, detection_image):
    """An untrained detector scores about 1 / (classes + 1) everywhere: the default threshold (0.5) passes
    nothing, so the best few are drawn, and one line says what the top score was."""
    from sparsevit_cli.detection.draw import DEFAULT_SCORE_THRESHOLD, FALLBACK_TOP_K
    from sparsevit_cli.tasks import build_task_model

    torch.manual_seed(0)
    options = dict(DET_OPTIONS, box_detections_per_img=8)
    model = build_task_model(sparsify(timm.create_model(MODEL, **DET_ARGS), SPARSITY), "detection", 3, **options)
    path = tmp_path / "det.safetensors"
    save_model(path, model, {"method": "sparsevit", "model": MODEL, "model_args": DET_ARGS, "img_size": 128,
                             "task": "detection", "num_classes": 3, "sparsity": SPARSITY, "task_options": options,
                             "class_names": ["zero", "one", "two"], "category_ids": [3, 7, 11]})
    out = tmp_path / "v.png"
    result = visualize_windows(path, detection_image, out)
    scores = [d["score"] for d in result["detections"]]
    assert len(scores) == FALLBACK_TOP_K and max(scores) < DEFAULT_SCORE_THRESHOLD
    assert scores == sorted(scores, reverse=True)  # the best ones, best first
    assert {d["category_id"] for d in result["detections"]} <= {3, 7, 11}  # the data's ids beside the labels
    assert result["note"].startswith(f"no prediction scored >= 0.50 (top score {max(scores):.3f}): drew the 5 best")


def test_labels_are_coloured_by_class_and_kept_apart():
    """Two overlapping boxes of two classes: each outlined in its class colour, their labels do not overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    from sparsevit_cli.commands.visualize import _draw_detections
    from sparsevit_cli.detection.draw import class_colour

    assert class_colour(1) != class_colour(2) and class_colour(1) == class_colour(21)
    fig = Figure(figsize=(3, 3), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.imshow(np.zeros((64, 64, 3)), extent=(0, 64, 64, 0))
    ax.set_xlim(0, 64), ax.set_ylim(64, 0)
    dets = [{"class": "seven", "score": 0.9, "box": [10.0, 20.0, 40.0, 50.0], "colour": class_colour(1)},
            {"class": "three", "score": 0.8, "box": [11.0, 21.0, 41.0, 51.0], "colour": class_colour(2)}]
    _draw_detections(ax, fig, dets)
    texts = [t for t in ax.get_children() if isinstance(t, Text) and t.get_text() in ("seven 0.90", "three 0.80")]
    assert len(texts) == 2
    renderer = fig.canvas.get_renderer()
    a, b = (t.get_window_extent(renderer) for t in texts)
    assert not a.overlaps(b)
    edges = sorted(tuple(round(c * 255) for c in p.get_edgecolor()[:3]) for p in ax.patches if not p.get_fill())
    assert edges == sorted([class_colour(1), class_colour(2)])
    # each label on a background of its class colour
    fills = sorted(tuple(round(c * 255) for c in p.get_facecolor()[:3]) for p in ax.patches if p.get_fill())
    assert fills == sorted([class_colour(1), class_colour(2)])


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_label_layout_never_overlaps():
    """Many boxes piled in one place (a young model's detections), and boxes at every border: the label rectangles
    are pairwise disjoint and inside the canvas; when the canvas is full, labels are left out, never stacked."""
    from sparsevit_cli.detection.draw import layout_labels

    g = np.random.default_rng(0)
    for trial in range(20):
        n = int(g.integers(1, 40))
        W, H = int(g.integers(40, 300)), int(g.integers(40, 300))
        x0, y0 = g.uniform(-5, W, n), g.uniform(-5, H, n)
        boxes = np.stack([x0, y0, x0 + g.uniform(1, 60, n), y0 + g.uniform(1, 60, n)], 1)
        if trial % 2:  # piled up: every box nearly the same
            boxes = np.tile([W / 3, H / 3, W / 2, H / 2], (n, 1)) + g.uniform(0, 2, (n, 4))
        sizes = np.stack([g.uniform(10, 60, n), g.uniform(6, 14, n)], 1)
        rects = layout_labels(boxes.tolist(), sizes.tolist(), (W, H))
        placed = [r for r in rects if r is not None]
        for i, a in enumerate(placed):
            assert 0 <= a[0] and a[2] <= W + 1e-9 and 0 <= a[1] and a[3] <= H + 1e-9
            assert all(not _overlap(a, b) for b in placed[i + 1:])
        for r, (w, h) in zip(rects, sizes):
            if r is not None:
                assert (r[2] - r[0], r[3] - r[1]) == pytest.approx((w, h))
    # room for all: every label placed, the first right above its box
    rects = layout_labels([[10, 20, 40, 50], [11, 21, 41, 51]], [(20, 8), (20, 8)], (64, 64))
    assert rects[0] == (10, 12, 30, 20) and rects[1] is not None and not _overlap(*rects)
    # no room: the second label is left out
    assert layout_labels([[0, 0, 10, 10], [0, 0, 10, 10]], [(64, 64), (10, 10)], (64, 64))[1] is None


def test_masks_are_translucent_in_the_class_colour():
    """A masked pixel is the image's pixel mixed with the class colour (the object stays visible)."""
    from sparsevit_cli.detection.draw import MASK_ALPHA, class_colour, tint_masks

    rgb = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    pred = {"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([2]), "scores": torch.tensor([0.9]),
            "masks": torch.zeros(1, 1, 16, 16)}
    pred["masks"][0, 0, :8, :8] = 1.0
    out = tint_masks(rgb, pred, torch.tensor([True])).astype(float)
    want = rgb[:8, :8] * (1 - MASK_ALPHA) + np.array(class_colour(2)) * MASK_ALPHA
    assert np.abs(out[:8, :8] - want).max() <= 1.0
    assert (out[8:] == rgb[8:]).all()
