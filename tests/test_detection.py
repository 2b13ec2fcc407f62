"""Detection and instance segmentation: torchvision Faster / Mask R-CNN on the sparse Swin through an FPN
(exact at sparsity 0, trainable), COCO data read and validated with pycocotools, COCO AP equal to
pycocotools' own, MACs of the detector as executed, and the demo COCO set."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from task_helpers import train_losses
from PIL import Image

from sparsevit_cli.data.demo import write_demo_data
from sparsevit_cli.detection.coco import CocoDetection, split_paths
from sparsevit_cli.detection.cost import detector_macs
from sparsevit_cli.detection.models import build_detector
from sparsevit_cli.errors import UserError
from sparsevit_cli.methods import get_method
from sparsevit_cli.swin.cost import swin_macs
from sparsevit_cli import sparsify
from sparsevit_cli.tasks import get_task

MICRO_ARGS = {"embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4}
#: a narrow FPN and torchvision's sampling / proposal counts scaled down to a 1-2 image test
LIGHT = dict(fpn_channels=64, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
             rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=64, box_batch_size_per_image=64,
             box_detections_per_img=20)


def micro_swin(img_size: int, seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model("swin_tiny_patch4_window7_224", img_size=img_size, **MICRO_ARGS)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    info = write_demo_data(root, img_size=128, n_train=2, n_val=2, seed=0, detection=True)
    assert info["det"] == str(root / "det")
    return root


# --------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("masks", [False, True])
def test_detector_at_sparsity_zero_equals_the_dense_timm_detector(masks):
    dense = build_detector(micro_swin(64), 3, masks=masks, box_score_thresh=0.0, **LIGHT).eval()
    sparse = copy.deepcopy(dense)
    sparsify(sparse.backbone.body)  # same weights everywhere, only the backbone's execution changes
    # a portrait and a landscape image: resized with their aspect ratios kept and padded to one batch, which
    # the plain timm body (made dynamic-size by the detector) and the sparse one run alike
    x = [torch.rand(3, *hw, generator=torch.Generator().manual_seed(i)) for i, hw in enumerate([(64, 40), (30, 64)])]
    with torch.no_grad():
        batch = dense.transform(x)[0].tensors
        assert batch.shape[-2:] == (64, 64) and dense.transform.size_divisible == 8
        for (name, a), b in zip(dense.backbone(batch).items(), sparse.backbone(batch).values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
        out_dense, out_sparse = dense(x), sparse(x)
        for a, b in zip(out_dense, out_sparse):
            assert len(a["boxes"]) > 0 and a.keys() == b.keys()
            for k in a:
                torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4, msg=k)
        sparse.backbone.body.set_sparsity(0.5)  # and the sparse path is really the one that ran
        assert not torch.allclose(dense.backbone(batch)["0"], sparse.backbone(batch)["0"])


@pytest.mark.parametrize("task_name", ["detection", "instance_segmentation"])
def test_a_few_training_steps_lower_the_loss_on_the_demo_coco_set(demo_root, task_name):
    task = get_task(task_name)
    dataset = task.dataset(demo_root, "train", 128, train=True)  # the demo root: its det/ layout is found
    model = task.build(sparsify(micro_swin(128), sparsity=0.3), dataset.num_classes, **LIGHT)
    images, targets = task.to_device(*task.collate([dataset[0], dataset[1]]), torch.device("cpu"))
    assert ("masks" in targets[0]) == task.masks
    torch.manual_seed(0)
    losses = train_losses(task, model, images, targets, steps=10, lr=3e-4)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    model.eval()
    with torch.no_grad():
        out = task.predict(model, images)
    metric = task.metric(dataset)
    metric.update(out, targets)
    assert set(metric.compute_all()) == set(task.reported)
    assert 0.0 <= metric.compute() <= 100.0


# --------------------------------------------------------------------------------------------- AP
def _write_coco(root: Path, annotations, categories=None, images=None, size=64) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = images if images is not None else [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]
    for im in images:
        im.setdefault("width", size)
        im.setdefault("height", size)
        if im["file_name"] != "absent.png":
            Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(root / "images" / im["file_name"])
    data = {"images": images, "annotations": annotations,
            "categories": categories or [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
    ann = root / "instances.json"
    ann.write_text(json.dumps(data))
    return ann


def _box_ann(i, image_id, cat, box):
    x, y, w, h = box
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": box, "area": w * h, "iscrowd": 0,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


GT = [_box_ann(1, 1, 3, [10, 10, 20, 20]), _box_ann(2, 1, 7, [40, 30, 15, 20]), _box_ann(3, 2, 3, [5, 5, 30, 30])]
#: per image: (label 1..K, xyxy box, score); a hit, a loose hit, a false positive, a shifted hit
PREDICTIONS = {1: [(1, [10, 11, 30, 30], 0.9), (2, [43, 30, 57, 52], 0.8), (1, [0, 0, 12, 9], 0.95)],
               2: [(1, [7, 6, 36, 38], 0.7)]}


def _prediction(image_id):
    rows = PREDICTIONS[image_id]
    masks = torch.zeros(len(rows), 1, 64, 64)
    for j, (_, (x0, y0, x1, y1), _) in enumerate(rows):
        masks[j, 0, y0:y1, x0:x1] = 0.8  # the box, as a mask probability above the 0.5 threshold
    return {"boxes": torch.tensor([r[1] for r in rows], dtype=torch.float32),
            "labels": torch.tensor([r[0] for r in rows]), "scores": torch.tensor([r[2] for r in rows]),
            "masks": masks}


def _pycocotools_ap(ann_file: Path, iou_type: str) -> float:
    """AP straight from pycocotools, results written by hand in COCO's own format."""
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(ann_file))
    results = []
    for image_id, rows in PREDICTIONS.items():
        for label, (x0, y0, x1, y1), score in rows:
            r = {"image_id": image_id, "category_id": {1: 3, 2: 7}[label], "score": score}
            if iou_type == "bbox":
                r["bbox"] = [x0, y0, x1 - x0, y1 - y0]
            else:
                m = np.zeros((64, 64), np.uint8)
                m[y0:y1, x0:x1] = 1
                r["segmentation"] = mask_util.encode(np.asfortranarray(m))
            results.append(r)
    ev = COCOeval(gt, gt.loadRes(results), iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0]) * 100.0


def test_coco_ap_equals_pycocotools_own_numbers(tmp_path):
    ann = _write_coco(tmp_path, GT)
    dataset = CocoDetection(tmp_path / "images", ann)
    assert dataset.category_ids == [3, 7] and dataset.cat_to_label == {3: 1, 7: 2}
    metric = get_task("instance_segmentation").metric(dataset)
    for i in range(len(dataset)):
        target = dataset.target(i)
        metric.update([_prediction(int(target["image_id"]))], [target])
    ours = metric.compute_all()
    box, mask = _pycocotools_ap(ann, "bbox"), _pycocotools_ap(ann, "segm")
    assert ours["box_ap"] == pytest.approx(box, abs=1e-9) and ours["mask_ap"] == pytest.approx(mask, abs=1e-9)
    assert 10.0 < box < 90.0 and 10.0 < mask < 90.0  # a case with hits and misses, not a trivial 0 or 100


def test_coco_summary_and_per_class_ap_are_pycocotools_own(tmp_path):
    """The whole summary is COCOeval.stats; a category's AP equals COCOeval run on that category alone."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ann = _write_coco(tmp_path, GT)
    dataset = CocoDetection(tmp_path / "images", ann)
    metric = get_task("instance_segmentation").metric(dataset)
    for i in range(len(dataset)):
        target = dataset.target(i)
        metric.update([_prediction(int(target["image_id"]))], [target])
    summary = metric.summary(per_class=True)
    results = metric.coco_results()
    assert {r["category_id"] for r in results} == {3, 7}  # the file's ids, not labels 1..K
    gt = COCO(str(ann))
    for name, iou_type in (("box_ap", "bbox"), ("mask_ap", "segm")):
        drop = "bbox" if iou_type == "segm" else "segmentation"
        dt = gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in results])
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate(), ev.accumulate(), ev.summarize()
        stats = summary[name]
        assert [stats[k] for k in ("ap", "ap50", "ap75", "ar1", "ar10", "ar100")] == pytest.approx(
            [ev.stats[i] * 100 for i in (0, 1, 2, 6, 7, 8)])
        assert stats["ap_small"] is None or stats["ap_small"] == pytest.approx(ev.stats[3] * 100)
        for cat_id, cat_name in ((3, "cat"), (7, "dog")):
            one = COCOeval(gt, dt, iou_type)
            one.params.catIds = [cat_id]
            one.evaluate(), one.accumulate(), one.summarize()
            assert stats["per_class"][cat_name] == pytest.approx(one.stats[0] * 100)
        assert len(set(stats["per_class"].values())) == 2  # the two categories score differently


def test_perfect_and_empty_predictions(tmp_path):
    # a hand-written box-only file without the optional fields: detection needs none of them
    gt = [{k: v for k, v in ann.items() if k in ("image_id", "category_id", "bbox")} for ann in GT]
    dataset = CocoDetection(tmp_path / "images", _write_coco(tmp_path, gt), masks=False)
    perfect, empty = (get_task("detection").metric(dataset) for _ in range(2))
    for i in range(len(dataset)):
        t = dataset.target(i)
        perfect.update([{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}], [t])
        empty.update([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                       "scores": torch.zeros(0)}], [t])
    assert perfect.compute() == pytest.approx(100.0) and empty.compute() == 0.0


# --------------------------------------------------------------------------------------------- bad input
BAD = {
    "missing": (None, "not found"),
    "corrupt": ("{not json", "not valid JSON"),
    "empty": ([], "empty annotation list"),
    # an annotation is named by its COCO id (what a user searches the file for) and its list position
    "unknown category": ([_box_ann(17, 1, 99, [1, 1, 5, 5])], r"annotation id 17 \(#0 in the list\) has unknown "
                                                              r"category id 99"),
    "unknown image": ([_box_ann(1, 1, 3, [1, 1, 5, 5]), _box_ann(42, 5, 3, [1, 1, 5, 5])],
                      r"annotation id 42 \(#1 in the list\) refers to unknown image id 5"),
    "outside": ([_box_ann(1, 1, 3, [50, 50, 30, 30])], "lies outside image 'a.png'"),
    "no id": ([{k: v for k, v in _box_ann(1, 1, 3, [1, 1, 5, 5]).items() if k not in ("id", "bbox")}],
              r"annotation #0 in the list \(no id\) needs category_id, image_id and a 4-number bbox"),
    "absent image": ("absent", "image 'absent.png' listed in .* is missing from"),
    "no mask": ([{k: v for k, v in _box_ann(1, 1, 3, [1, 1, 5, 5]).items() if k != "segmentation"}],
                r"annotation id 1 \(#0 in the list\) has no valid segmentation"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_coco_input_is_one_line(tmp_path, case):
    content, message = BAD[case]
    if content == "absent":
        ann = _write_coco(tmp_path, GT[:1], images=[{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "absent.png"}])
    elif isinstance(content, list):
        ann = _write_coco(tmp_path, content)
    else:
        ann = tmp_path / "instances.json"
        if content is not None:
            ann.write_text(content)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(UserError, match=message) as e:
        CocoDetection(tmp_path / "images", ann, masks=True)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_split_paths_follow_coco_naming(tmp_path):
    assert split_paths(tmp_path, "val") == (tmp_path / "val", tmp_path / "annotations" / "instances_val.json")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    assert split_paths(tmp_path, "val") == (tmp_path / "val2017", tmp_path / "annotations" / "instances_val2017.json")


# --------------------------------------------------------------------------------------------- MACs
def test_detector_macs_count_backbone_neck_and_heads_as_executed():
    K, size, C, M = 3, 64, LIGHT["fpn_channels"], 256  # M: torchvision's mask head width
    model = build_detector(sparsify(micro_swin(size)), K, masks=True, **LIGHT)
    method = get_method("sparsevit")
    dense_cfg, half_cfg = [[0.0], [0.0]], [[0.5], [0.5]]
    parts = detector_macs(model, method, dense_cfg, size, breakdown=True).parts
    assert parts["backbone"] == swin_macs(model.backbone.body, dense_cfg, size)
    assert model.backbone.body.head.fc.__class__.__name__ == "Identity"  # no classifier under a detector

    levels = [(16, 16, 16), (8, 8, 32)]  # (H, W, C) of the two stages at 64 px
    assert parts["neck"] == sum(h * w * c * C + h * w * C * C * 9 for h, w, c in levels)
    rpn_levels = [(16, 16), (8, 8), (4, 4)]  # + the max-pooled level
    A = 3
    assert parts["rpn"] == sum(h * w * (C * C * 9 + C * A + C * 4 * A) for h, w in rpn_levels)
    n, d = LIGHT["rpn_post_nms_top_n_test"], LIGHT["box_detections_per_img"]
    assert parts["box_head"] == n * (C * 49 * 1024 + 1024 * 1024 + 1024 * (K + 1) * 5)
    assert parts["mask_head"] == d * (14 * 14 * 9 * (C * M + 3 * M * M) + 14 * 14 * M * M * 4 + 28 * 28 * M * (K + 1))

    half = detector_macs(model, method, half_cfg, size, breakdown=True).parts
    assert half["backbone"] < parts["backbone"]
    assert {k: v for k, v in half.items() if k != "backbone"} == {k: v for k, v in parts.items() if k != "backbone"}
    assert detector_macs(model, method, half_cfg, size, batch_size=2) == 2 * sum(half.values())


#: heads sized to a small backbone: every size option away from torchvision's default
SIZED = dict(box_representation_size=48, mask_head_convs=2, mask_head_channels=24, anchor_sizes=[12, [24, 40], 64],
             anchor_aspect_ratios=[1.0, 2.0], box_batch_size_per_image=16, box_positive_fraction=0.5,
             rpn_batch_size_per_image=32, rpn_positive_fraction=0.25)


def _fvcore(module, *inputs) -> int:
    """fvcore's count of `module(*inputs)`'s matrix products and convolutions (its norms and pooling left out)."""
    from fvcore.nn import FlopCountAnalysis

    f = FlopCountAnalysis(module, inputs)
    f.unsupported_ops_warnings(False)
    f.uncalled_modules_warnings(False)
    return sum(v for op, v in f.by_operator().items() if op in ("conv", "linear", "addmm", "matmul"))


class _Seq(torch.nn.Module):
    """head then predictor, as the RoI heads run them (fvcore traces one module)."""

    def __init__(self, *mods):
        super().__init__()
        self.mods = torch.nn.ModuleList(mods)

    def forward(self, x):
        for m in self.mods:
            x = m(x)
        return x


class _FPN(torch.nn.Module):
    """The FPN on stage maps given as tensors (fvcore traces tensor inputs)."""

    def __init__(self, fpn):
        super().__init__()
        self.fpn = fpn

    def forward(self, *stages):
        return tuple(self.fpn({str(i): s for i, s in enumerate(stages)}).values())


def test_head_options_size_the_heads_and_their_macs_agree_with_fvcore():
    K, size, C = 3, 64, LIGHT["fpn_channels"]
    default = build_detector(sparsify(micro_swin(size)), K, masks=True, **LIGHT)
    sized = build_detector(sparsify(micro_swin(size)), K, masks=True, **{**LIGHT, **SIZED})
    roi, rpn = sized.roi_heads, sized.rpn
    assert roi.box_head.fc7.out_features == 48 and roi.box_predictor.cls_score.in_features == 48
    assert len(roi.mask_head) == 2 and roi.mask_head[-1][0].out_channels == 24
    assert roi.mask_predictor.conv5_mask.in_channels == 24 and roi.mask_predictor.mask_fcn_logits.out_channels == K + 1
    assert rpn.anchor_generator.sizes == ((12,), (24, 40), (64,))
    assert rpn.anchor_generator.num_anchors_per_location() == [2, 4, 2]
    assert (roi.fg_bg_sampler.batch_size_per_image, roi.fg_bg_sampler.positive_fraction) == (16, 0.5)
    assert (rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction) == (32, 0.25)
    # defaults stay torchvision's: same modules and names, so a default file's keys never change
    assert default.roi_heads.box_head.fc7.out_features == 1024 and len(default.roi_heads.mask_head) == 4
    assert set(sized.state_dict()) <= set(default.state_dict())

    method = get_method("sparsevit")
    parts = detector_macs(sized, method, [[0.0], [0.0]], size, breakdown=True).parts
    n, d = LIGHT["rpn_post_nms_top_n_test"], LIGHT["box_detections_per_img"]
    with torch.no_grad():
        assert parts["box_head"] == _fvcore(_Seq(roi.box_head, roi.box_predictor), torch.zeros(n, C, 7, 7))
        assert parts["mask_head"] == _fvcore(_Seq(roi.mask_head, roi.mask_predictor), torch.zeros(d, C, 14, 14))
        stages = sized.backbone.body.forward_intermediates(torch.zeros(1, 3, size, size), intermediates_only=True)
        feats = list(sized.backbone.fpn({str(i): s for i, s in enumerate(stages)}).values())
        assert parts["rpn"] == _fvcore(rpn.head, feats)  # 2 or 4 anchors per location by level
        assert parts["neck"] == _fvcore(_FPN(sized.backbone.fpn), *stages)
    # the resized heads are a small part of the default ones (what makes the backbone's share grow)
    base = detector_macs(default, method, [[0.0], [0.0]], size, breakdown=True).parts
    assert parts["mask_head"] < base["mask_head"] / 20 and parts["box_head"] < base["box_head"] / 10


@pytest.mark.parametrize("options,needle", [
    ({"anchor_sizes": [8, 16]}, "anchor_sizes needs 3 entries"),
    ({"anchor_sizes": ["big", 1, 2]}, "anchor_sizes needs 3 entries"),
    ({"anchor_aspect_ratios": [0.0]}, "anchor_aspect_ratios must be positive"),
    ({"mask_head_convs": 0}, "mask_head_convs must be >= 1"),
])
def test_bad_head_sizes_are_one_line(options, needle):
    with pytest.raises(UserError, match=needle):
        build_detector(sparsify(micro_swin(64)), 3, masks=True, **options)


# --------------------------------------------------------------------------------------------- demo data
def _hashes(root: Path):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_detection_set_is_deterministic_and_leaves_the_other_layouts_alone(tmp_path):
    kw = dict(img_size=96, n_train=3, n_val=2, seed=1)
    write_demo_data(tmp_path / "plain", **kw)
    for name in ("a", "b"):
        write_demo_data(tmp_path / name, detection=True, **kw)
    plain, a, b = (_hashes(tmp_path / n) for n in ("plain", "a", "b"))
    assert a == b
    assert {k: v for k, v in a.items() if not k.startswith("det/") and k != "demo_data.yaml"} == \
           {k: v for k, v in plain.items() if k != "demo_data.yaml"}
    assert sum(k.startswith("det/") for k in a) == 2 + 3 + 2


@pytest.mark.parametrize("hflip", [0.0, 1.0])
def test_demo_detection_instances_match_their_pixels(demo_root, hflip):
    for split in ("train", "val"):
        dataset = CocoDetection.from_root(demo_root / "det", split, hflip=hflip)  # flipped: all still holds
        for i in range(len(dataset)):
            image, t = dataset[i]
            assert 2 <= len(t["labels"]) <= 4 and t["labels"].min() >= 1
            bright = image.max(0).values
            union = t["masks"].any(0)
            for mask, (x0, y0, x1, y1) in zip(t["masks"].bool(), t["boxes"].long().tolist()):
                ys, xs = torch.nonzero(mask, as_tuple=True)
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)  # tight box
                assert bright[mask].mean() > bright[~union].mean() + 0.2  # the ink stands out
            assert (t["masks"].sum(0) <= 1).all()  # instances never overlap


def test_draw_detections_outlines_confident_boxes_only():
    from sparsevit_cli.detection.draw import draw_detections

    rgb = np.zeros((64, 64, 3), np.uint8)
    pred = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 40.0], [40.0, 40.0, 60.0, 60.0]]),
            "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.2]),
            "masks": torch.zeros(2, 1, 64, 64)}
    pred["masks"][0, 0, 20:30, 15:25] = 1.0
    out = draw_detections(rgb, pred, ["cat", "dog"], score_threshold=0.5)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert out[10, 20].any() and out[25, 20].any()  # the box's top edge, the mask inside it
    assert not out[50, 40:61].any() and not out[3, 50].any()  # the 0.2 box is not drawn
