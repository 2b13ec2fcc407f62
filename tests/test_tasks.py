"""The task registry: every task builds its model around a sparse backbone, trains through one `loss`,
scores through one `metric`, and a plain ViT is refused for dense prediction with one line."""
from __future__ import annotations

import timm
import torch
from task_helpers import train_losses
import pytest

from sparsevit_cli.errors import UserError
from sparsevit_cli import sparsify
from sparsevit_cli.tasks import TASKS, MeanIoU, SemanticFPN, backbone_of, build_task_model, get_task

MICRO_ARGS = {"img_size": 64, "embed_dim": 16, "depths": [2, 2, 2], "num_heads": [1, 2, 2], "window_size": 4}


def micro_swin(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return sparsify(timm.create_model("swin_tiny_patch4_window7_224", **{**MICRO_ARGS, **kw}))


def test_registry_names_and_unknown_task():
    assert set(TASKS) == {"classification", "segmentation", "detection", "instance_segmentation"}
    assert {t.metric_name for t in TASKS.values()} == {"top1", "miou", "box_ap", "mask_ap"}
    with pytest.raises(UserError, match="unknown task 'depth'.*classification"):
        get_task("depth")


def test_backbone_of_finds_the_sparse_swin_in_every_task_model():
    for name in TASKS:
        backbone = micro_swin()
        model = build_task_model(backbone, name, 3)
        assert backbone_of(model) is backbone, name


def test_classification_resets_the_head_and_scores_top1():
    task = get_task("classification")
    model = task.build(micro_swin(), 5)
    assert model.head.fc.out_features == 5
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 4])
    loss = task.loss(model, x, y)
    assert loss.ndim == 0 and loss.requires_grad
    metric = task.metric(None)
    metric.update(torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0]]), torch.tensor([1, 1, 1]))
    assert metric.compute() == pytest.approx(200 / 3)


def test_mean_iou_by_hand():
    metric = MeanIoU(3)
    pred = torch.tensor([[0, 0, 1, 2]])
    target = torch.tensor([[0, 1, 1, 255]])  # the ignored pixel (predicted 2) counts nowhere
    metric.update(torch.nn.functional.one_hot(pred, 3).permute(0, 2, 1).float().unsqueeze(-1), target.unsqueeze(-1))
    # class 0: inter 1, union 2; class 1: inter 1, union 2; class 2: absent everywhere (not averaged)
    assert metric.compute() == pytest.approx(50.0)


def test_semantic_fpn_head_shapes_trains_and_is_recognisable():
    task = get_task("segmentation")
    model = task.build(micro_swin(), 4)
    assert isinstance(model, SemanticFPN)
    # Kirillov's semantic branch: stride-4 level 1 conv, stride 8 one conv + up, stride 16 two conv + up
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in head.modules()) for head in model.scale_heads]
    assert convs == [1, 1, 2]
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, 4, (2, 64, 64))
    y[:, :4] = 255
    assert model(x).shape == (2, 4, 64, 64)
    losses = train_losses(task, model, x, y, steps=8, lr=3e-3)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("task", ["segmentation", "detection", "instance_segmentation"])
def test_plain_vit_is_refused_for_dense_prediction_with_one_line(task):
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1)
    with pytest.raises(UserError) as e:
        build_task_model(vit, task, 3)
    assert "plain ViT" in str(e.value) and "\n" not in str(e.value)



def test_task_macs_count_what_each_task_model_executes():
    from sparsevit_cli.detection.cost import detector_macs
    from sparsevit_cli.methods import get_method
    from sparsevit_cli.swin.cost import swin_macs

    method, config, K = get_method("sparsevit"), [[0.3], [0.5], [0.5]], 4
    cls = build_task_model(micro_swin(), "classification", K)
    assert get_task("classification").macs(cls, method, config, 64) == swin_macs(cls, config, 64)

    seg = build_task_model(micro_swin(), "segmentation", K)
    backbone = swin_macs(seg.backbone, config, 64)  # the classifier is gone from a dense-prediction backbone
    assert backbone == swin_macs(micro_swin(), config, 64) - 64 * 1000
    levels = [(16, 16), (8, 8), (4, 4)]
    neck = sum(h * w * c * 256 + h * w * 256 * 256 * 9 for (h, w), c in zip(levels, (16, 32, 64)))
    heads = 9 * 128 * (16 * 16 * 256 + 8 * 8 * 256 + 4 * 4 * 256 + 8 * 8 * 128) + 16 * 16 * 128 * K
    assert get_task("segmentation").macs(seg, method, config, 64, batch_size=2) == 2 * (backbone + neck + heads)

    det = build_task_model(micro_swin(), "detection", K)
    assert get_task("detection").macs(det, method, config, 64) == detector_macs(det, method, config, 64)


def test_semantic_fpn_reset_head_renews_only_the_classifier():
    task = get_task("segmentation")
    model = task.build(micro_swin(), 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert task.reset_head(model, 3) == "classifier: 4 -> 3 classes, re-initialised"
    after = model.state_dict()
    assert model.num_classes == 3 and after["classifier.weight"].shape == (3, 128, 1, 1)
    assert all(torch.equal(after[k], v) for k, v in before.items() if not k.startswith("classifier."))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_classification_reset_head_names_timm_classifier():
    task = get_task("classification")
    model = task.build(micro_swin(), 5)
    assert task.reset_head(model, 2) == "head.fc: 5 -> 2 classes, re-initialised"
    assert model.head.fc.out_features == 2


def test_segmentation_keeps_the_aspect_ratio_and_pads_batches_with_ignore(tmp_path):
    """Non-square segmentation data: the longer side goes to img_size, a batch of mixed shapes is padded
    (images 0, masks ignored), and the sparse Semantic FPN trains on it with dense and pruned stages."""
    import numpy as np
    from PIL import Image

    from sparsevit_cli.data.datasets import IGNORE_INDEX

    for split in ("train",):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
        for name, (w, h) in {"a": (200, 100), "b": (90, 160), "c": (64, 64)}.items():
            rgb = np.random.default_rng(len(name) + w).integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(tmp_path / split / "images" / f"{name}.png")
            Image.fromarray(np.ones((h, w), dtype=np.uint8)).save(tmp_path / split / "masks" / f"{name}.png")
    task = get_task("segmentation")
    ds = task.dataset(tmp_path, "train", 64, train=False, num_classes=2)
    assert [tuple(ds[i][0].shape[-2:]) for i in range(3)] == [(32, 64), (64, 32), (64, 64)]
    assert all(ds[i][1].shape == ds[i][0].shape[-2:] for i in range(3))
    images, masks = task.collate([ds[0], ds[1]])
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 64, 64)
    assert (masks[0, 32:] == IGNORE_INDEX).all() and (masks[1, :, 32:] == IGNORE_INDEX).all()
    assert (images[0, :, 32:] == 0).all() and (masks[0, :32] == 1).all()
    model = build_task_model(micro_swin().set_sparsity([[0.5], [0.0], [0.0]]), "segmentation", 2,
                             fpn_channels=16, head_channels=16)
    loss = task.loss(model.train(), images, masks)
    loss.backward()
    assert torch.isfinite(loss)
    with torch.no_grad():
        assert model.eval()(ds[1][0][None]).shape == (1, 2, 64, 32)  # a portrait image alone
