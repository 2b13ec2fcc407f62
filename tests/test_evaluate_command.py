"""`sparsevit evaluate`: a model file scored on the user's data through the command equals what training logged
for the same weights and config; --dense, --sparsity and --config pick the configs; bad input is one line."""
from __future__ import annotations

import json

import pytest
import yaml

from cli_helpers import assert_one_line_error, run_cli
from test_detection_pipeline import LIGHT, demo, detector, regrouped_copy, write_cfg as write_det_cfg  # noqa: F401
from test_train import _torchrun, data_dir, write_cfg  # noqa: F401 (fixture)


def last_logged(out_dir):
    return json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, data_dir):  # noqa: F811
    tmp = tmp_path_factory.mktemp("cls")
    cfg = write_cfg(tmp, data_dir, epochs=1, sparsity=0.3)
    assert run_cli(["finetune", str(cfg), "--no-progress"])[0] == 0
    return tmp / "out"


def test_classifier_scores_equal_the_last_logged_epoch_and_dense_is_a_second_row(classifier, data_dir, capsys):  # noqa: F811
    code, out, err = run_cli(["evaluate", "--checkpoint", str(classifier / "model.safetensors"), "--data",
                              str(data_dir), "--dense", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["task"] == "classification" and r["metrics"] == ["top1"] and r["images"] == 12
    dense, sparse = r["rows"]
    assert dense["config"] == [[0.0], [0.0]] and sparse["config"] == [[0.3], [0.3]]
    assert sparse["top1"] == pytest.approx(last_logged(classifier)["top1"])
    assert sparse["gmacs"] < dense["gmacs"] and sparse["gmacs"] == pytest.approx(sparse["backbone_gmacs"])


def test_sparsity_and_config_pick_the_config(classifier, data_dir, tmp_path, capsys):  # noqa: F811
    model = str(classifier / "model.safetensors")
    code, out, err = run_cli(["evaluate", "--checkpoint", model, "--data", str(data_dir), "--sparsity", "0.5",
                              "--max-samples", "5", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["rows"][0]["config"] == [[0.5], [0.5]] and r["images"] == 5
    best = tmp_path / "best.yaml"
    best.write_text(yaml.safe_dump({"sparsity": [[0.2], [0.4]]}))
    code, out, err = run_cli(["evaluate", "--checkpoint", model, "--data", str(data_dir), "--config", str(best)],
                             capsys)
    assert code == 0, err
    assert "0.2|0.4" in out and "top1" in out  # the table


@pytest.mark.parametrize("extra,needle", [
    (["--sparsity", "0.5", "--config", "best.yaml"], "either --sparsity or --config"),
    (["--sparsity", "0.55"], "0.55"),
    (["--split", "test"], "test"),
    (["--per-class"], "are for COCO tasks"),
    (["--results-json", "."], "--results-json '.' is a directory"),
])
def test_bad_input_is_one_line(classifier, data_dir, capsys, extra, needle):  # noqa: F811
    code, _, err = run_cli(["evaluate", "--checkpoint", str(classifier / "model.safetensors"), "--data",
                            str(data_dir), *extra], capsys)
    assert_one_line_error(code, err, needle)


def test_detector_box_ap_equals_the_logged_epoch_and_other_classes_are_refused(tmp_path, demo, detector,  # noqa: F811
                                                                              capsys):
    model = str(detector / "model.safetensors")
    code, out, err = run_cli(["evaluate", "--checkpoint", model, "--data", str(demo), "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["metrics"] == ["box_ap"] and r["rows"][0]["box_ap"] == pytest.approx(last_logged(detector)["box_ap"])
    assert r["rows"][0]["gmacs"] > r["rows"][0]["backbone_gmacs"]  # neck and heads counted
    three = regrouped_copy(demo, tmp_path / "three")
    code, _, err = run_cli(["evaluate", "--checkpoint", model, "--data", str(three)], capsys)
    assert code == 2 and "for 10 classes" in err and len(err.strip().splitlines()) == 1, err


def test_two_process_gloo_evaluation_equals_one_process_and_rank0_reports(classifier, data_dir, tmp_path, capsys):  # noqa: F811
    args = ["evaluate", "--checkpoint", str(classifier / "model.safetensors"), "--data", str(data_dir), "--dense",
            "--batch-size", "5", "--json"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    one = json.loads(out)
    lines = [line for line in _torchrun(args, tmp_path).stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 alone prints
    two = json.loads(lines[0])
    assert [r["top1"] for r in two["rows"]] == pytest.approx([r["top1"] for r in one["rows"]])


def test_coco_results_file_keeps_non_contiguous_category_ids_and_reads_back_to_the_printed_ap(tmp_path, demo,  # noqa: F811
                                                                                              capsys):
    """A Mask R-CNN trained on categories 3/7/11: the model file keeps the ids, `--results-json` writes them (RLE
    masks, xywh boxes), and pycocotools' own loadRes + COCOeval of that file gives the AP evaluate printed."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from sparsevit_cli.model_file import read_meta

    data = regrouped_copy(demo, tmp_path / "ids", ids=[3, 7, 11])
    # every detection kept (a one-epoch detector scores low): the results file has masks and boxes to check
    cfg = write_det_cfg(tmp_path, data, "instance_segmentation", epochs=1, sparsity=0.0,
                        task_options=dict(LIGHT, box_score_thresh=0.0))
    assert run_cli(["finetune", str(cfg), "--no-progress"], capsys)[0] == 0
    model = str(tmp_path / "out" / "model.safetensors")
    assert read_meta(model).category_ids == [3, 7, 11] and read_meta(model).class_names == ["a", "b", "c"]

    results = tmp_path / "results.json"
    code, out, err = run_cli(["evaluate", "--checkpoint", model, "--data", str(data), "--results-json", str(results),
                              "--per-class", "--json"], capsys)
    assert code == 0, err
    row = json.loads(out)["rows"][-1]
    # the masks in the file asked for (no box: loadRes takes each area from its mask), the boxes beside it
    files = {"segm": results, "bbox": tmp_path / "results.bbox.json"}
    masks, boxes = (json.loads(files[k].read_text()) for k in ("segm", "bbox"))
    assert masks and len(masks) == len(boxes) and {d["category_id"] for d in masks + boxes} <= {3, 7, 11}
    assert all(isinstance(d["segmentation"]["counts"], str) and "bbox" not in d for d in masks)
    assert all(len(d["bbox"]) == 4 and "segmentation" not in d for d in boxes)
    gt = COCO(str(data / "annotations" / "instances_val.json"))
    for metric, iou_type in (("box_ap", "bbox"), ("mask_ap", "segm")):
        # plain pycocotools on each file as written: every number of the summary (APs/APm/APl too) is evaluate's
        ev = COCOeval(gt, gt.loadRes(str(files[iou_type])), iou_type)
        ev.evaluate(), ev.accumulate(), ev.summarize()
        assert row[metric] == pytest.approx(max(ev.stats[0], 0) * 100, abs=1e-9)
        from sparsevit_cli.detection.coco import SUMMARY_NAMES
        assert [row["coco"][metric][k] for k in SUMMARY_NAMES] == pytest.approx(
            [None if s < 0 else s * 100 for s in ev.stats], abs=1e-9)
        assert list(row["coco"][metric]["per_class"]) == ["a", "b", "c"]

    code, out, err = run_cli(["evaluate", "--checkpoint", model, "--data", str(data), "--per-class"], capsys)
    assert code == 0, err
    assert "AP50" in out and "AR100" in out and "AP per category" in out  # the tables
    # the same images with categories 1/2/3: the file's labels would name other categories
    other = regrouped_copy(demo, tmp_path / "other")
    code, _, err = run_cli(["evaluate", "--checkpoint", model, "--data", str(other)], capsys)
    assert_one_line_error(code, err, "predicts category ids [3, 7, 11]")
