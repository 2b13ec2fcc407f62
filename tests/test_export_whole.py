"""`sparsevit export` of a detector writes the whole Mask R-CNN in one ONNX file: onnxruntime (and nothing from
PyTorch) turns one float RGB image in [0, 1] into torchvision's boxes, labels, scores and masks, equal to PyTorch's
on real val images of two aspect ratios (boxes within 1e-2 px), with the same AP; the file carries the model's
metadata, so `sparsevit predict` runs it. A segmenter's ONNX file (the whole Semantic FPN) predicts too."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sparsevit_cli.commands.export_whole import (BOX_TOLERANCE_PX, DETECTOR_INPUT, IO_DETECTOR, ONNX_IO_KEY,
                                                ONNX_META_KEY, WholeDetector)
from sparsevit_cli.data.demo import write_demo_data
from sparsevit_cli.detection.coco import CocoDetection, coco_ap, to_coco_results
from sparsevit_cli.model_file import load
from cli_helpers import assert_one_line_error, run_cli
from test_predict import _model_file


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A micro sparse Mask R-CNN for the demo COCO set's 10 digits, exported whole with --data (its val images:
    64x48 and 48x64)."""
    root = tmp_path_factory.mktemp("whole")
    data = root / "data"
    write_demo_data(data, img_size=64, n_train=1, n_val=2, seed=0, detection=True)
    model = _model_file(root / "det.safetensors", "instance_segmentation", 10, category_ids=list(range(1, 11)))
    out = root / "det.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = run_cli(["export", "--checkpoint", model, "--out", out, "--data", data])[0]
    return {"root": root, "data": data, "model": model, "out": out, "code": code, "stdout": printed.getvalue()}


def _session(path):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_whole_detector_matches_pytorch_on_real_images_of_two_aspects_and_gives_its_ap(exported, capsys):
    import onnx

    assert exported["code"] == 0, exported["stdout"]
    said = " ".join(exported["stdout"].split())
    assert "AP on the val images: PyTorch" in said
    # the PyTorch it matches: the detector itself, or (while the sparse backbone's graph holds one size) the
    # detector letterboxing every image on its 64x64 canvas, as the line printed says
    canvas = 64 if "letterboxed on a 64x64 canvas" in said else None
    net = load(exported["model"])
    reference = WholeDetector(net, canvas=canvas).eval()
    props = {p.key: p.value for p in onnx.load(str(exported["out"])).metadata_props}
    assert props[ONNX_IO_KEY] == IO_DETECTOR and json.loads(props[ONNX_META_KEY])["task"] == "instance_segmentation"

    session = _session(exported["out"])
    assert [i.name for i in session.get_inputs()] == [DETECTOR_INPUT]
    assert [o.name for o in session.get_outputs()] == ["boxes", "labels", "scores", "masks"]
    dataset = CocoDetection.from_root(exported["data"], "val", masks=True)
    sizes = {tuple(dataset[i][0].shape[-2:]) for i in range(len(dataset))}
    assert sizes == {(48, 64), (64, 48)}  # two aspect ratios
    ours, theirs = [], []
    for i in range(len(dataset)):
        image, target = dataset[i]
        boxes, labels, scores, masks = session.run(None, {DETECTOR_INPUT: image.numpy()})
        with torch.no_grad():
            want = reference(image)
        assert len(boxes) == len(want[0]) > 0
        assert np.abs(boxes - want[0].numpy()).max() <= BOX_TOLERANCE_PX
        assert (labels == want[1].numpy()).all() and np.abs(scores - want[2].numpy()).max() < 1e-3
        assert masks.shape == (len(boxes), 1) + tuple(image.shape[-2:])
        image_id = int(target["image_id"])
        theirs += to_coco_results([{"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                                    "scores": torch.from_numpy(scores)}], [image_id], dataset.category_ids)
        ours += to_coco_results([dict(zip(("boxes", "labels", "scores"), want[:3]))], [image_id],
                                dataset.category_ids)
    # AP against a ground truth that PyTorch's best detections make (an untrained model's AP on the digits is 0,
    # which any file would match): PyTorch scores high on it, and onnxruntime's outputs score the same
    from pycocotools.coco import COCO
    best = [r for r in ours if r["score"] >= sorted((o["score"] for o in ours if o["image_id"] == r["image_id"]),
                                                     reverse=True)[min(2, len(ours) - 1)]]
    gt = COCO()
    gt.dataset = {"images": [dict(dataset.coco.imgs[i]) for i in dataset.image_ids],
                  "categories": list(dataset.coco.cats.values()),
                  "annotations": [{"id": k + 1, "image_id": r["image_id"], "category_id": r["category_id"],
                                   "bbox": r["bbox"], "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0}
                                  for k, r in enumerate(best)]}
    gt.createIndex()
    ap_torch, ap_ort = coco_ap(gt, ours)["ap"], coco_ap(gt, theirs)["ap"]
    assert ap_torch > 30 and abs(ap_torch - ap_ort) <= 0.1


def test_predict_runs_the_exported_file(exported, tmp_path, capsys):
    """`predict` with the ONNX file: the results are onnxruntime's outputs in COCO form, with the file's categories."""
    val = exported["data"] / "det" / "val"
    ann = exported["data"] / "det" / "annotations" / "instances_val.json"
    code, _, err = run_cli(["predict", "--model", exported["out"], "--images", val, "--out", tmp_path / "p",
                            "--coco-images", ann, "--no-progress"], capsys)
    assert code == 0, err
    boxes = json.loads((tmp_path / "p" / "results.bbox.json").read_text())
    masks = json.loads((tmp_path / "p" / "results.json").read_text())
    session = _session(exported["out"])
    dataset = CocoDetection.from_root(exported["data"], "val", masks=True)
    for i in range(len(dataset)):
        image, target = dataset[i]
        got = [r for r in boxes if r["image_id"] == int(target["image_id"])]
        want, _, scores, _ = session.run(None, {DETECTOR_INPUT: image.numpy()})
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in got)])
        np.testing.assert_allclose(xyxy, want, atol=2e-3)
        assert len([r for r in masks if r["image_id"] == int(target["image_id"])]) == len(want)


def test_whole_detector_is_onnx_and_backbone_only_takes_other_formats(exported, tmp_path, capsys):
    code, _, err = run_cli(["export", "--checkpoint", exported["model"], "--out", tmp_path / "d.pt",
                            "--format", "torchscript"], capsys)
    assert_one_line_error(code, err, "add --backbone-only")


def test_predict_refuses_a_backbone_only_file_and_a_file_without_metadata(exported, tmp_path, capsys):
    """A backbone's ONNX file (`export --backbone-only` marks it so) cannot predict: its heads are not in it; an
    ONNX file from elsewhere carries no classes."""
    import onnx
    from onnx import TensorProto, helper

    from sparsevit_cli.commands.export_whole import IO_BACKBONE, attach_onnx_metadata
    from sparsevit_cli.model_file import read_model_meta

    plain = tmp_path / "plain.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["features0"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("features0", TensorProto.FLOAT, [1, 3, 64, 64])])
    onnx.save(helper.make_model(graph), str(plain))
    backbone = tmp_path / "backbone.onnx"
    backbone.write_bytes(plain.read_bytes())
    attach_onnx_metadata(backbone, read_model_meta(exported["model"]), IO_BACKBONE)
    for path, needle in ((backbone, "holds a detector's backbone only"), (plain, "carries no sparsevit metadata")):
        code, _, err = run_cli(["predict", "--model", path, "--images", exported["data"] / "det" / "val",
                                "--out", tmp_path / "p", "--no-progress"], capsys)
        assert_one_line_error(code, err, needle)


def test_segmenter_onnx_file_predicts_like_the_model_file(tmp_path, capsys):
    """The whole Semantic FPN in ONNX (64x64 graph): `predict` pads each image to it; on a square image it is the
    model file's prediction exactly."""
    model = _model_file(tmp_path / "s.safetensors", "segmentation", 4)
    out = tmp_path / "s.onnx"
    assert run_cli(["export", "--checkpoint", model, "--out", out, "--no-time"], capsys)[0] == 0
    folder = tmp_path / "img"
    folder.mkdir()
    g = np.random.default_rng(1)
    Image.fromarray(g.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "sq.png")
    for src, name in ((model, "torch"), (out, "onnx")):
        code, _, err = run_cli(["predict", "--model", src, "--images", folder, "--out", tmp_path / name,
                                "--no-progress"], capsys)
        assert code == 0, err
    a, b = (np.asarray(Image.open(tmp_path / n / "masks" / "sq.png")) for n in ("torch", "onnx"))
    assert a.shape == (64, 64) and (a == b).all()
