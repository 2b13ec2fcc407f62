"""`sparsevit predict`: a model file on a folder of images of any sizes and modes (RGB, greyscale, RGBA, one broken
file) writes COCO results with the data set's category ids (detectors), PNG masks at each image's own size
(segmentation) or class and score per image (classification), equal to what the model computes on each image;
an unreadable image is one line, skipped or stopping the run as asked. Micro Swin models, 64 px."""
import csv
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import sparsevit_cli as sv
from sparsevit_cli.model_file import load, save_model
from cli_helpers import assert_one_line_error, run_cli
from test_sparse_swin import randomize_

MODEL = "swin_tiny_patch4_window7_224"
ARGS = dict(img_size=64, embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4)
DET_OPTIONS = {"fpn_channels": 32, "rpn_post_nms_top_n_test": 20, "box_detections_per_img": 5, "box_score_thresh": 0.0}
SPARSITY = [[0.0], [0.5]]


def _model_file(path, task, num_classes, **meta):
    from sparsevit_cli.tasks import build_task_model

    torch.manual_seed(0)
    body = randomize_(timm.create_model(MODEL, **dict(ARGS, num_classes=10 if task == "classification" else 0)))
    body = sv.sparsify(body, SPARSITY)
    options = DET_OPTIONS if task in ("detection", "instance_segmentation") else None
    model = body if task == "classification" else build_task_model(body, task, num_classes, **(options or {}))
    args = dict(ARGS, num_classes=10) if task == "classification" else ARGS
    save_model(path, model, dict({"method": "sparsevit", "model": MODEL, "model_args": args, "img_size": 64,
                                  "task": task, "num_classes": num_classes, "sparsity": SPARSITY},
                                 **({"task_options": options} if options else {}), **meta))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Four files of three sizes: RGB 80x48 (landscape), greyscale 40x72 (portrait), RGBA 64x64, and a broken one."""
    root = tmp_path_factory.mktemp("images")
    g = np.random.default_rng(0)
    Image.fromarray(g.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(root / "a_rgb.png")
    Image.fromarray(g.integers(0, 255, (72, 40), dtype=np.uint8), "L").save(root / "b_grey.png")
    Image.fromarray(g.integers(0, 255, (64, 64, 4), dtype=np.uint8), "RGBA").save(root / "c_rgba.png")
    (root / "d_broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


GOOD = {"a_rgb.png": (48, 80), "b_grey.png": (72, 40), "c_rgba.png": (64, 64)}


def _rgb(path):
    from sparsevit_cli.data.datasets import read_image
    return np.asarray(read_image(path), dtype=np.uint8)


def test_detector_writes_coco_results_with_the_data_category_ids(folder, tmp_path, capsys):
    from pycocotools import mask as mask_util

    model = _model_file(tmp_path / "m.safetensors", "instance_segmentation", 3, category_ids=[3, 7, 11],
                        class_names=["a", "b", "c"])
    out = tmp_path / "out"
    code, stdout, err = run_cli(["predict", "--model", model, "--images", folder, "--out", out, "--batch-size", 2,
                                 "--pictures", "--no-progress"], capsys)
    assert code == 0, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "d_broken.jpg" in lines[0] and lines[0].startswith("skipped")
    assert "predicted 3 of 4 images (1 skipped)" in stdout
    listed = json.loads((out / "images.json").read_text())
    assert [(im["file_name"], (im["height"], im["width"])) for im in listed["images"]] == list(GOOD.items())
    assert listed["categories"] == [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}, {"id": 11, "name": "c"}]
    masks = json.loads((out / "results.json").read_text())
    boxes = json.loads((out / "results.bbox.json").read_text())
    assert len(masks) == len(boxes) > 0
    assert all("bbox" not in r and "segmentation" in r for r in masks)
    assert {r["category_id"] for r in boxes} <= {3, 7, 11}
    # each image's detections are the model's own on that image, in its own pixels
    net = load(model)
    ids = {im["file_name"]: im["id"] for im in listed["images"]}
    for name, (H, W) in GOOD.items():
        with torch.no_grad():
            want = net([torch.from_numpy(_rgb(folder / name).copy()).permute(2, 0, 1).float() / 255])[0]
        got = [r for r in boxes if r["image_id"] == ids[name]]
        assert len(got) == len(want["boxes"])
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in got)]).reshape(-1, 4)
        np.testing.assert_allclose(xyxy, want["boxes"].numpy(), atol=2e-3)
        assert [r["score"] for r in got] == pytest.approx(want["scores"].tolist(), abs=1e-5)
        for r in (r for r in masks if r["image_id"] == ids[name]):
            assert tuple(r["segmentation"]["size"]) == (H, W)
            assert mask_util.decode({**r["segmentation"], "counts": r["segmentation"]["counts"].encode()}).shape == (H, W)
        assert Image.open(out / "pictures" / f"{name.rsplit('.', 1)[0]}.png").size == (W, H)


def test_on_error_stop_ends_at_the_broken_image_with_one_line(folder, tmp_path, capsys):
    model = _model_file(tmp_path / "m.safetensors", "detection", 2)
    code, _, err = run_cli(["predict", "--model", model, "--images", folder, "--out", tmp_path / "out",
                            "--on-error", "stop", "--no-progress"], capsys)
    assert_one_line_error(code, err, "d_broken.jpg")
    assert not (tmp_path / "out" / "results.json").exists()


def test_segmenter_writes_a_mask_per_image_at_its_own_size(folder, tmp_path, capsys):
    from sparsevit_cli.commands.predict import _classes_at, _segmentation_input

    model = _model_file(tmp_path / "s.safetensors", "segmentation", 4)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["predict", "--model", model, "--images", folder, "--out", out, "--pictures",
                                 "--no-progress", "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["predicted"] == 3 and [s["file"].endswith("d_broken.jpg") for s in result["skipped"]] == [True]
    net = load(model)
    for name, (H, W) in GOOD.items():
        mask = np.asarray(Image.open(out / "masks" / f"{name.rsplit('.', 1)[0]}.png"))
        assert mask.shape == (H, W) and mask.max() < 4
        x = _segmentation_input(_rgb(folder / name), 64)
        with torch.no_grad():  # alone (no batch padding): the batched run gives the same classes
            want = _classes_at(net(x[None])[0], tuple(x.shape[-2:]), (H, W))
        assert (mask == want).mean() > 0.99
        assert Image.open(out / "pictures" / f"{name.rsplit('.', 1)[0]}.png").size == (W, H)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_classifier_writes_class_and_score_per_image(folder, tmp_path, capsys, fmt):
    model = _model_file(tmp_path / "c.safetensors", "classification", 10, class_names=[f"k{i}" for i in range(10)])
    out = tmp_path / "out"
    code, _, err = run_cli(["predict", "--model", model, "--images", folder, "--out", out, "--table-format", fmt,
                            "--batch-size", 3, "--no-progress"], capsys)
    assert code == 0, err
    text = (out / f"predictions.{fmt}").read_text()
    rows = json.loads(text) if fmt == "json" else list(csv.DictReader(text.splitlines()))
    assert [r["file"] for r in rows] == list(GOOD)
    from sparsevit_cli.commands.predict import _classification_input
    net = load(model)
    for r in rows:
        with torch.no_grad():
            p = net(_classification_input(_rgb(folder / r["file"]), 64)[None]).softmax(-1)[0]
        assert int(r["class_index"]) == int(p.argmax()) and r["class"] == f"k{int(p.argmax())}"
        assert float(r["score"]) == pytest.approx(float(p.max()), abs=1e-5)


@pytest.mark.parametrize("args, needle", [
    (["--on-error", "later"], "--on-error"),
    (["--images", "/nonexistent/folder"], "neither a folder nor a file"),
    (["--score-threshold", "2"], "--score-threshold must be a score in [0, 1]"),
])
def test_bad_predict_input_is_one_line(folder, tmp_path, capsys, args, needle):
    model = _model_file(tmp_path / "c.safetensors", "classification", 10)
    base = {"--model": str(model), "--images": str(folder), "--out": str(tmp_path / "out")}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    code, _, err = run_cli(["predict", *[x for kv in base.items() for x in kv], "--no-progress"], capsys)
    assert_one_line_error(code, err, needle)


def test_cli_choices_are_the_command_module_constants():
    from sparsevit_cli.cli import OnError, TableFormat
    from sparsevit_cli.commands.predict import ON_ERROR, TABLE_FORMATS

    assert tuple(e.value for e in OnError) == ON_ERROR and tuple(e.value for e in TableFormat) == TABLE_FORMATS


def test_pictures_over_the_input_images_are_refused_and_the_images_kept(folder, tmp_path, capsys):
    """`--images preds/pictures --out preds --pictures` would write a picture over each input image: refused in one
    line (the one input registry every writer checks), every image byte-identical."""
    import shutil

    out = tmp_path / "preds"
    shutil.copytree(folder, out / "pictures")
    before = {p.name: p.read_bytes() for p in (out / "pictures").iterdir()}
    model = _model_file(tmp_path / "c.safetensors", "classification", 10)
    code, _, err = run_cli(["predict", "--model", model, "--images", out / "pictures", "--out", out, "--pictures",
                            "--no-progress"], capsys)
    assert_one_line_error(code, err, "is the command's")
    assert {p.name: p.read_bytes() for p in (out / "pictures").iterdir()} == before


def test_a_fifo_named_like_an_image_is_refused_not_read(tmp_path, capsys):
    import os

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(images / "a.png")
    os.mkfifo(images / "x.png")
    model = _model_file(tmp_path / "c.safetensors", "classification", 10)
    code, _, err = run_cli(["predict", "--model", model, "--images", images, "--out", tmp_path / "out",
                            "--no-progress"], capsys)
    assert_one_line_error(code, err, "not a regular file")
