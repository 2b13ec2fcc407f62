"""Detection and instance segmentation through the whole pipeline: `finetune` and `adapt` from the CLI
(run config `task: detection` / `instance_segmentation`) lower the task loss, log box (and mask) AP and
write a model file that loads; resume is bit-exact; `search` on a detector scores box AP under a MAC
budget counted over backbone, neck and heads."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from cli_helpers import run_cli, stopped_after
from sparsevit_cli.data.demo import write_demo_data
from sparsevit_cli.model_file import load, read_meta
from sparsevit_cli.methods import get_method
from sparsevit_cli.tasks import get_task
from sparsevit_cli.train.run_config import load_run_config
from sparsevit_cli.train.trainer import Trainer

SIZE = 96
MICRO_ARGS = {"img_size": SIZE, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4}
#: a narrow FPN and torchvision's sampling / proposal counts scaled down to a few-image test
LIGHT = {"fpn_channels": 32, "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
         "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 25, "rpn_batch_size_per_image": 32,
         "box_batch_size_per_image": 32, "box_detections_per_img": 10}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("detdemo") / "data"
    write_demo_data(root, img_size=SIZE, n_train=4, n_val=2, seed=0, detection=True)
    return root


@pytest.fixture(scope="module")
def detector(tmp_path_factory, demo):
    """The output folder of a 1-epoch `finetune` of the micro detector (LIGHT heads) on the demo set; its
    model.safetensors is read, never written, by the tests that share it."""
    tmp = tmp_path_factory.mktemp("detector")
    code, _, err = run_cli(["finetune", str(write_cfg(tmp, demo, "detection", epochs=1)), "--no-progress"])
    assert code == 0, err
    return tmp / "out"


def write_cfg(tmp_path, data, task, name="run.yaml", model_args=MICRO_ARGS, task_options=LIGHT, **over):
    cfg = {"model": {"name": "swin_tiny_patch4_window7_224", "args": dict(model_args)},
           "data": {"path": str(data), "task": task}, "task_options": dict(task_options), "sparsity": 0.3,
           "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0}, "schedule": {"name": "constant"},
           "epochs": 3, "batch_size": 2, "eval_batch_size": 2, "seed": 1, "out": str(tmp_path / "out"),
           "checkpoint_every": 1}
    cfg.update(over)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def task_loss(model, task, dataset) -> float:
    """The task's training loss of `model` on the first two training images, with the detector's own
    sampling (RPN and RoI fg/bg draws) seeded: the same number for the same weights."""
    images, targets = task.collate([dataset[0], dataset[1]])
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        return float(task.loss(model, images, targets))


@pytest.mark.parametrize("task_name,command", [("detection", "finetune"), ("instance_segmentation", "adapt")])
def test_cli_training_lowers_the_loss_logs_ap_and_writes_a_loadable_detector(tmp_path, demo, capsys, task_name,
                                                                             command):
    task = get_task(task_name)
    cfg_path = write_cfg(tmp_path, demo, task_name)
    args = [command, str(cfg_path), "--no-progress"] if command == "finetune" else \
        [command, "--config", str(cfg_path), "--no-progress"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    history = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 3 and set(task.reported) <= set(history[-1])
    assert all(0.0 <= r[name] <= 100.0 for r in history for name in task.reported)
    assert "box_ap" in out

    model_file = tmp_path / "out" / "model.safetensors"
    meta = read_meta(model_file)
    assert meta.task == task_name and meta.num_classes == 10 and meta.class_names == [str(i) for i in range(10)]
    assert meta.task_options["fpn_channels"] == 32
    trained = load(model_file)
    initial = Trainer(load_run_config(cfg_path), mode=command, progress=False)
    dataset = initial.train_set
    before, after = task_loss(initial.model, task, dataset), task_loss(trained, task, dataset)
    assert after < 0.9 * before, (before, after)
    trained.eval()
    with torch.no_grad():
        pred = trained([dataset[0][0]])[0]
    assert {"boxes", "labels", "scores"} <= set(pred) and ("masks" in pred) == task.masks


def test_detection_resume_is_bit_exact(tmp_path, demo):
    from sparsevit_cli.commands.train import run_finetune

    full = load_run_config(write_cfg(tmp_path, demo, "detection", "a.yaml", epochs=2, out=str(tmp_path / "a")))
    run_finetune(full, progress=False)
    part = load_run_config(write_cfg(tmp_path, demo, "detection", "b.yaml", epochs=2, out=str(tmp_path / "b")))
    with stopped_after(3):
        assert run_finetune(part, progress=False)["interrupted"]  # mid-epoch 2 (2 steps per epoch)
    run_finetune(part, resume=True, progress=False)
    a = load(tmp_path / "a" / "model.safetensors").state_dict()
    b = load(tmp_path / "b" / "model.safetensors").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines_a = (tmp_path / "a" / "metrics.jsonl").read_text()
    assert lines_a == (tmp_path / "b" / "metrics.jsonl").read_text()


def test_search_on_a_detector_scores_box_ap_within_a_mac_budget(tmp_path, demo, capsys):
    # a backbone that dominates the detector's MACs (as a real Swin does at high resolution), so that half
    # of the whole detector's MACs is within reach of the backbone's sparsity
    wide = dict(MICRO_ARGS, embed_dim=64, num_heads=[2, 4])
    small_heads = dict(LIGHT, fpn_channels=16, rpn_post_nms_top_n_test=4, box_detections_per_img=4)
    cfg = write_cfg(tmp_path, demo, "detection", model_args=wide, task_options=small_heads, epochs=1)
    code, _, err = run_cli(["finetune", str(cfg), "--no-progress"], capsys)
    assert code == 0, err
    model_file = tmp_path / "out" / "model.safetensors"
    code, out, err = run_cli(["search", "--checkpoint", str(model_file), "--data", str(demo), "--out",
                              str(tmp_path / "s"), "--budget-macs", "50%", "--population", "4", "--generations",
                              "2", "--parents", "2", "--mutations", "2", "--crossovers", "2", "--eval-samples",
                              "2", "--no-progress"], capsys)
    assert code == 0, err
    best = yaml.safe_load((tmp_path / "s" / "best.yaml").read_text())
    assert best["metric"] == "box_ap" and best["task"] == "detection" and 0.0 <= best["metric_value"] <= 100.0
    # the budget counts the whole detector: neck and heads on top of the backbone, all within 50% of dense
    assert best["gmacs"] <= 0.5 * best["dense_gmacs"] + 1e-9
    assert best["gmacs"] > best["backbone_gmacs"]
    model = load(model_file)
    method = get_method("sparsevit")
    assert best["dense_gmacs"] == pytest.approx(
        get_task("detection").macs(model, method, [[0.0], [0.0]], SIZE) / 1e9)


def test_adapt_from_a_detector_model_file_by_flags_takes_the_files_task(tmp_path, demo, capsys):
    src_cfg = write_cfg(tmp_path, demo, "instance_segmentation", "src.yaml", epochs=1, out=str(tmp_path / "src"))
    code, _, err = run_cli(["finetune", str(src_cfg), "--no-progress"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["adapt", "--checkpoint", str(tmp_path / "src" / "model.safetensors"), "--data",
                              str(demo), "--epochs", "1", "--batch-size", "2", "--out", str(tmp_path / "a"),
                              "--no-progress"], capsys)
    assert code == 0, err
    meta = read_meta(tmp_path / "a" / "model.safetensors")
    assert meta.task == "instance_segmentation" and meta.task_options == read_meta(
        tmp_path / "src" / "model.safetensors").task_options
    assert "mask_ap" in (tmp_path / "a" / "metrics.jsonl").read_text()


def test_measure_times_a_detector_model_file_with_its_own_heads(detector, capsys):
    # task_options (a 32-channel FPN) travel in the file: measure rebuilds the detector with them, and its MACs
    # (the ideal speedup) count the whole detector it times, not the backbone alone
    model_file = detector / "model.safetensors"
    code, out, err = run_cli(["measure", "--checkpoint", str(model_file), "--repeats", "1", "--warmup", "0",
                              "--batch-size", "2", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    model, method, task = load(model_file), get_method("sparsevit"), get_task("detection")
    assert r["sparse_gmacs"] == pytest.approx(task.macs(model, method, [[0.3], [0.3]], SIZE) / 1e9)
    assert r["dense_gmacs"] == pytest.approx(task.macs(model, method, [[0.0], [0.0]], SIZE) / 1e9)
    assert r["dense_gmacs"] > task.backbone_macs(model, method, [[0.0], [0.0]], SIZE) / 1e9
    assert r["dense_ms"] > 0 and r["sparse_ms"] > 0
    # beside it the backbone alone, timed on the batch it reads in the detector, its MACs the backbone's
    bb = r["backbone"]
    assert bb["dense_gmacs"] == pytest.approx(task.backbone_macs(model, method, [[0.0], [0.0]], SIZE) / 1e9)
    assert bb["sparse_gmacs"] == pytest.approx(task.backbone_macs(model, method, [[0.3], [0.3]], SIZE) / 1e9)
    assert bb["ideal_speedup"] > r["ideal_speedup"] > 1.0  # the dense heads dilute the whole detector's
    assert 0 < bb["sparse_ms"] < r["sparse_ms"] and bb["speedup"] == pytest.approx(bb["dense_ms"] / bb["sparse_ms"])
    code, out, err = run_cli(["measure", "--checkpoint", str(model_file), "--repeats", "1", "--warmup", "0",
                              "--batch-size", "2"], capsys)
    assert code == 0, err
    text = " ".join(out.split())
    # the backbone's table follows the whole detector's
    assert 0 <= text.index("detection model, end to end") < text.index("its backbone alone")


def test_a_backbone_mac_budget_counts_the_backbone_alone(tmp_path, demo, detector, capsys):
    # heads that outweigh the micro backbone: half of the whole detector is out of reach, half of the
    # backbone (the paper's budgets) is what a detection engineer asks for
    model_file = str(detector / "model.safetensors")
    search = ["search", "--checkpoint", model_file, "--data", str(demo), "--budget-macs", "50%", "--population",
              "3", "--generations", "1", "--parents", "2", "--mutations", "1", "--crossovers", "1", "--eval-samples",
              "2", "--no-progress"]
    code, _, err = run_cli(search + ["--out", str(tmp_path / "whole"), "--budget-macs-of", "model"], capsys)
    assert code == 2 and "below the cheapest config" in err and len(err.strip().splitlines()) == 1, err
    assert "--budget-macs-of backbone" in err  # the refusal names the fix
    # unsaid, a detector's MAC budget counts its backbone (the heads are a fixed cost): that one runs
    code, out, err = run_cli(search + ["--out", str(tmp_path / "default")], capsys)
    assert code == 0 and "counts the backbone's MACs" in " ".join(out.split()), err

    code, _, err = run_cli(search + ["--out", str(tmp_path / "bb"), "--budget-macs-of", "backbone"], capsys)
    assert code == 0, err
    best = yaml.safe_load((tmp_path / "bb" / "best.yaml").read_text())
    assert best["budget_macs_of"] == "backbone" and best["cost"] == pytest.approx(best["backbone_gmacs"])
    assert best["backbone_gmacs"] <= 0.5 * best["dense_backbone_gmacs"] + 1e-9
    assert best["gmacs"] > 0.5 * best["dense_gmacs"]  # the dense neck and heads on top
    history = [json.loads(line) for line in (tmp_path / "bb" / "history.jsonl").read_text().splitlines()]
    assert history and all(h["cost"] <= best["budget"] + 1e-9 for h in history if "cost" in h)

    # a search resumed with the other scope would mix costs: refused
    code, _, err = run_cli(search + ["--out", str(tmp_path / "bb"), "--resume", "--budget-macs-of", "model"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("extra,needle", [
    (["--budget-latency", "10ms", "--budget-macs-of", "backbone"], "--budget-macs-of says what a --budget-macs"),
    (["--budget-macs", "50%", "--budget-macs-of", "neck"], "'neck' is not one of"),
])
def test_bad_mac_scope_is_one_line(tmp_path, extra, needle, capsys):
    code, _, err = run_cli(["search", "--checkpoint", str(tmp_path / "m.safetensors"), "--data", str(tmp_path),
                            "--out", str(tmp_path / "s"), *extra], capsys)
    assert code == 2 and needle in err and "Traceback" not in err, err


def test_latency_search_on_a_detector_times_it_end_to_end_on_val_images(tmp_path, demo, capsys, monkeypatch):
    from sparsevit_cli.commands import search as search_command

    code, _, err = run_cli(["finetune", str(write_cfg(tmp_path, demo, "detection", epochs=1)), "--no-progress"],
                           capsys)
    assert code == 0, err
    batches, timed = [], []
    real_batch, real_time_fn = search_command.latency_batch, search_command.time_fn
    monkeypatch.setattr(search_command, "latency_batch", lambda *a: batches.append(real_batch(*a)) or batches[-1])
    monkeypatch.setattr(search_command, "time_fn", lambda fn, device, **kw: timed.append(1) or real_time_fn(
        fn, device, **kw))
    args = ["search", "--checkpoint", str(tmp_path / "out" / "model.safetensors"), "--data", str(demo),
            "--budget-latency", "100000ms", "--population", "3", "--generations", "1", "--parents", "2",
            "--mutations", "1", "--crossovers", "1", "--eval-samples", "2", "--batch-size", "2", "--no-progress"]
    code, _, err = run_cli(args + ["--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    best = yaml.safe_load((tmp_path / "s" / "best.yaml").read_text())
    assert best["cost_unit"] == "ms" and best["metric"] == "box_ap"
    # the detector itself ran on real val images (a list of two, as its transform takes them)
    val = get_task("detection").dataset(demo, "val", SIZE, train=False)
    # one batch for the budget pre-check (cheapest and densest config), one for the search
    assert timed and len(batches) == 2 and all(isinstance(b, list) and len(b) == 2 for b in batches)
    assert torch.equal(batches[0][0], val[0][0]) and torch.equal(batches[0][1], val[1][0])
    for extra, needle in ((["--latency-table", str(tmp_path / "t.json")], "--latency-table"),
                          (["--compile"], "--compile")):
        code, _, err = run_cli(args + ["--out", str(tmp_path / "r"), *extra], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err and "end to end" in err, err
        assert not (tmp_path / "t.json").exists()


def test_two_process_gloo_detection_adapt_keeps_replicas_identical(tmp_path, demo):
    import os
    import subprocess
    import sys

    cfg = write_cfg(tmp_path, demo, "instance_segmentation", epochs=1, batch_size=1)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "sparsevit_cli.cli", "adapt", "--config", str(cfg), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((tmp_path / "out" / "replicas.json").read_text())
    assert rep["world_size"] == 2 and rep["checksums"][0] == rep["checksums"][1]
    assert {"box_ap", "mask_ap"} <= set(json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[-1]))


def test_a_detector_evaluates_dense_and_trains_multi_scale_on_mixed_aspect_images(tmp_path, demo, detector, capsys):
    # the demo COCO set is shaped like COCO: landscape, portrait, wide and square images
    for split, shapes in (("train", {(96, 72), (72, 96), (96, 54), (96, 96)}), ("val", {(96, 72), (72, 96)})):
        coco = json.loads((demo / "det" / "annotations" / f"instances_{split}.json").read_text())
        assert {(im["width"], im["height"]) for im in coco["images"]} == shapes
    # the shared detector prunes every stage at 0.3; dense, and at sparsity 0, timm's own blocks run every
    # stage on the oblong batches (they kept the square model's attention mask and crashed)
    model_file = str(detector / "model.safetensors")
    code, out, err = run_cli(["evaluate", "--checkpoint", model_file, "--data", str(demo), "--dense", "--json"], capsys)
    assert code == 0, err
    code, out0, err = run_cli(["evaluate", "--checkpoint", model_file, "--data", str(demo), "--sparsity", "0",
                               "--json"], capsys)
    assert code == 0, err
    # multi-scale training sizes, the longest side and the padding multiple travel in the model file
    options = dict(LIGHT, min_size=[64, 80, 96], max_size=96, size_divisible=16)
    code, _, err = run_cli(["finetune", str(write_cfg(tmp_path, demo, "detection", task_options=options, epochs=1,
                                                      sparsity=0.0)), "--no-progress"], capsys)
    assert code == 0, err
    transform = load(tmp_path / "out" / "model.safetensors").transform
    assert (transform.min_size, transform.max_size, transform.size_divisible) == ((64, 80, 96), 96, 16)
    assert load(model_file).transform.size_divisible == 8  # default: the backbone's largest stride (2 stages)


def test_demo_data_detection_flag_writes_the_coco_layout(tmp_path, capsys):
    code, _, err = run_cli(["demo-data", str(tmp_path / "d"), "--img-size", "64", "--train", "2", "--val", "1",
                            "--detection"], capsys)
    assert code == 0, err
    for split, n in (("train", 2), ("val", 1)):
        coco = json.loads((tmp_path / "d" / "det" / "annotations" / f"instances_{split}.json").read_text())
        assert len(coco["images"]) == n and coco["annotations"]
        assert len(get_task("instance_segmentation").dataset(tmp_path / "d", split, 64, train=False)) == n
    code, _, err = run_cli(["demo-data", str(tmp_path / "e"), "--img-size", "64", "--train", "2", "--val", "1"],
                           capsys)
    assert code == 0 and not (tmp_path / "e" / "det").exists()


def test_adapt_with_a_space_of_another_method_is_one_line(tmp_path, demo, capsys):
    cfg = write_cfg(tmp_path, demo, "detection")
    code, _, err = run_cli(["adapt", "--config", str(cfg), "--space", "psvit_deit", "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "psvit" in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "last.pt").exists()


def test_detector_starts_from_a_1000_class_timm_checkpoint(tmp_path, demo, capsys):
    from test_train import _timm_checkpoint

    ckpt, source = _timm_checkpoint(tmp_path, img_size=SIZE)
    cfg = write_cfg(tmp_path, demo, "detection", epochs=1)
    code, out, err = run_cli(["adapt", "--config", str(cfg), "--checkpoint", str(ckpt), "--no-progress"], capsys)
    assert code == 0, err
    assert "info: head.fc: not used by the detection head, dropped (backbone weights loaded)" in out
    # every backbone weight of the checkpoint, loaded strictly, and no classifier left in the detector
    trainer = Trainer(load_run_config(cfg, {"checkpoint": str(ckpt), "out": str(tmp_path / "again")}), "adapt",
                      progress=False)
    mine, theirs = trainer.model.state_dict(), source.state_dict()
    for k, v in theirs.items():
        if not k.startswith("head."):
            assert torch.equal(mine[f"backbone.body.{k}"], v), k
    assert not any(k.startswith("backbone.body.head.fc") for k in mine)


@pytest.mark.parametrize("task_name,options,needle", [
    ("detection", {"fpn_channels": 0}, "task_options.fpn_channels must be >= 1, got 0"),
    ("detection", {"box_score_thresh": "high"}, "task_options.box_score_thresh must be a number"),
    ("detection", {"min_size": [64, 0]}, "task_options.min_size must be a positive number of pixels or a list"),
    ("segmentation", {"fpn_chanels": 8}, "unexpected keyword argument 'fpn_chanels'"),
])
def test_bad_task_options_are_one_line(tmp_path, demo, capsys, task_name, options, needle):
    cfg = write_cfg(tmp_path, demo, task_name, task_options=options)
    code, _, err = run_cli(["finetune", str(cfg), "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def regrouped_copy(demo, dest, groups: int = 3, ids=None):
    """The demo COCO set with its 10 digit categories folded into `groups` new ones (digit % groups) with
    category ids `ids` (1..groups by default): the same images and boxes, data with other classes than a model
    trained on the demo."""
    import shutil

    ids = list(ids or range(1, groups + 1))
    shutil.copytree(demo / "det", dest)
    for ann_file in (dest / "annotations").glob("instances_*.json"):
        data = json.loads(ann_file.read_text())
        digit = {c["id"]: int(c["name"]) for c in data["categories"]}
        data["categories"] = [{"id": ids[g], "name": "abc"[g], "supercategory": "group"} for g in range(groups)]
        for ann in data["annotations"]:
            ann["category_id"] = ids[digit[ann["category_id"]] % groups]
        ann_file.write_text(json.dumps(data))
    return dest


@pytest.mark.parametrize("task_name,layers", [
    ("detection", "roi_heads.box_predictor"),
    ("instance_segmentation", "roi_heads.box_predictor and roi_heads.mask_predictor")])
def test_a_detector_model_file_fine_tunes_on_data_with_other_classes(tmp_path, demo, capsys, task_name, layers):
    src_cfg = write_cfg(tmp_path, demo, task_name, "src.yaml", epochs=1, out=str(tmp_path / "src"))
    code, _, err = run_cli(["finetune", str(src_cfg), "--no-progress"], capsys)
    assert code == 0, err
    source = tmp_path / "src" / "model.safetensors"
    three = regrouped_copy(demo, tmp_path / "three")
    cfg = write_cfg(tmp_path, three, task_name, "three.yaml", epochs=1, checkpoint=str(source))
    code, out, err = run_cli(["finetune", str(cfg), "--no-progress"], capsys)
    assert code == 0, err
    assert [line for line in out.splitlines() if "re-initialised" in line] == [
        f"info: {layers}: 10 -> 3 classes, re-initialised"]
    meta = read_meta(tmp_path / "out" / "model.safetensors")
    assert meta.num_classes == 3 and meta.class_names == ["a", "b", "c"]

    # only the class-dependent predictors are new: every other weight starts as the source file's
    trainer = Trainer(load_run_config(cfg, {"out": str(tmp_path / "again")}), "finetune", progress=False)
    mine, theirs = trainer.model.state_dict(), load(source).state_dict()
    new = [k for k in theirs if "box_predictor" in k or "mask_predictor" in k]
    assert new and mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs if k not in new)
    assert mine["roi_heads.box_predictor.cls_score.weight"].shape[0] == 4  # 3 categories + background
    assert mine["roi_heads.box_predictor.bbox_pred.weight"].shape[0] == 16
    if task_name == "instance_segmentation":
        assert mine["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape[0] == 4
    trained = load(tmp_path / "out" / "model.safetensors")
    with torch.no_grad():
        pred = trained([trainer.val_set[0][0]])[0]
    assert set(pred["labels"].tolist()) <= {1, 2, 3}

    # the 10-class source searched on the 3-class data: one line, before any scoring
    code, _, err = run_cli(["search", "--checkpoint", str(source), "--data", str(three), "--out", str(tmp_path / "s"),
                            "--budget-macs", "90%", "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "for 10 classes" in err and "has 3" in err, err


def test_per_image_box_ap_recomputes_the_metric_and_resamples_copy_images(detector, demo):
    """The search's per-image detections give evaluate()'s box AP back, and a bootstrap resample that draws
    every image once is the same set of images (each copy of a drawn image counts as its own image)."""
    import numpy as np

    from sparsevit_cli.evaluate import evaluate, evaluate_images
    from sparsevit_cli.model_file import load_model_file

    model, method, meta = load_model_file(detector / "model.safetensors")
    task = get_task(meta.task)
    val = task.dataset(str(demo), "val", meta.image_size, train=False)
    idx = list(range(len(val)))
    scores = evaluate_images(model, method, None, val, task, 4, torch.device("cpu"), idx)
    assert scores.metric() == pytest.approx(evaluate(model, method, None, val, task, 4, torch.device("cpu"),
                                                     indices=idx))
    assert scores.metric(np.ones(len(idx), dtype=int)) == pytest.approx(scores.metric())
    twice = np.full(len(idx), 2)  # every image twice: the same precision and recall, so the same AP
    assert scores.metric(twice) == pytest.approx(scores.metric(), abs=1e-6)
