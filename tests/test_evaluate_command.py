"""`sparsevit evaluate`: a model file scored on the user's data through the command equals what training logged
for the same weights and config; --dense, --sparsity and --config pick the configs; bad input is one line."""
from __future__ import annotations

import json

import pytest
import yaml

from cli_helpers import assert_one_line_error, run_cli
from test_detection_pipeline import demo, detector, regrouped_copy  # noqa: F401 (fixtures)
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
