"""A second hostile run (issue 29), pinned as tables: outputs that are a command's own inputs (by name, through a
symlinked folder, through a hard link), the pipeline's data fingerprint (same-size edits and swaps, hidden
folders), broken COCO annotation files, model files of one task carrying another's fields and what `info` says
about every refused file, one-line exits where an internal error was, export on a full disk and a FIFO in the
data. Every case: exit code 2 with one line (or the fault listed), the inputs intact, no temporary file."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from sparsevit_cli.errors import UserError
from sparsevit_cli.model_file import DIGEST_KEY, save_model, weights_digest
from cli_helpers import assert_one_line_error, run_cli

MODEL = "swin_tiny_patch4_window7_224"
MICRO_ARGS = {"img_size": 64, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4}
SPARSITY = [[0.0], [0.5]]
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo data (classification train/val, COCO det/), tiny."""
    from sparsevit_cli.data.demo import write_demo_data
    root = tmp_path_factory.mktemp("h2") / "data"
    write_demo_data(root, img_size=64, n_train=6, n_val=2, seed=0, detection=True)
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Micro model files: a 10-class classifier and an untrained detector for the demo's 10 COCO categories."""
    from sparsevit_cli import sparsify
    from sparsevit_cli.tasks import build_task_model
    folder = tmp_path_factory.mktemp("h2files")
    torch.manual_seed(0)
    cls = sparsify(timm.create_model(MODEL, num_classes=10, **MICRO_ARGS), SPARSITY)
    save_model(folder / "cls.safetensors", cls, {"method": "sparsevit", "model": MODEL, "img_size": 64,
                                                 "model_args": dict(MICRO_ARGS, num_classes=10), "num_classes": 10,
                                                 "sparsity": SPARSITY})
    options = {"fpn_channels": 16, "box_representation_size": 32, "rpn_pre_nms_top_n_test": 20,
               "rpn_post_nms_top_n_test": 10, "box_detections_per_img": 5}
    det = build_task_model(sparsify(timm.create_model(MODEL, **MICRO_ARGS), SPARSITY), "detection", 10, **options)
    save_model(folder / "det.safetensors", det, {"method": "sparsevit", "model": MODEL, "model_args": MICRO_ARGS,
                                                 "img_size": 64, "task": "detection", "num_classes": 10,
                                                 "sparsity": SPARSITY, "task_options": options,
                                                 "category_ids": list(range(1, 11))})
    return folder


def meta_of(path):
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["sparsevit"])


def rewrite(src, dst, **edit):
    """A copy of model file `src` whose metadata has `edit` applied (model_args merged), digest correct."""
    state, meta = load_file(str(src)), meta_of(src)
    for key, value in edit.items():
        meta[key] = dict(meta[key], **value) if key == "model_args" else value
    save_file(state, str(dst), metadata={"sparsevit": json.dumps(meta), DIGEST_KEY: weights_digest(state)})
    return dst


def temp_files(folder):
    return [p.name for p in Path(folder).rglob("*") if ".tmp" in p.name]


# --------------------------------------------------------------------------------------------- outputs that are inputs
def _target(case, demo, files, tmp_path):
    """(the --results-json path, the input file it is): by name, through a symlinked folder, by hard link."""
    ann = demo / "det" / "annotations" / "instances_val.json"
    image = demo / "det" / "val" / "00000.png"
    if case == "model file":
        return files / "det.safetensors", files / "det.safetensors"
    if case == "annotations":
        return ann, ann
    if case == "image":
        return image, image
    if case == "annotations via symlinked folder":
        (tmp_path / "linked").symlink_to(demo)
        return tmp_path / "linked" / "det" / "annotations" / "instances_val.json", ann
    if case == "image by hard link":
        os.link(image, tmp_path / "same.json")
        return tmp_path / "same.json", image
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["model file", "annotations", "image", "annotations via symlinked folder",
                                  "image by hard link"])
def test_evaluate_results_json_never_writes_over_an_input(demo, files, tmp_path, capsys, case):
    target, victim = _target(case, demo, files, tmp_path)
    before = victim.read_bytes()
    code, _, err = run_cli(["evaluate", "--checkpoint", files / "det.safetensors", "--data", demo,
                            "--max-samples", "1", "--results-json", target], capsys)
    assert_one_line_error(code, err, "is the command's")
    assert "destroy the input" in err
    assert victim.read_bytes() == before
    assert not temp_files(victim.parent)


@pytest.mark.parametrize("case", ["same name", "symlinked folder", "hard link"])
def test_every_writer_refuses_a_noted_input(tmp_path, case):
    """The mechanism under every command: within a command's scope no writer replaces a file it read."""
    from sparsevit_cli.io import atomic_write_json, atomic_write_text, command_inputs, data_files
    data = tmp_path / "data" / "a"
    data.mkdir(parents=True)
    (data / "x.png").write_bytes(b"image")
    target = {"same name": data / "x.png", "symlinked folder": tmp_path / "link" / "a" / "x.png",
              "hard link": tmp_path / "other.json"}[case]
    if case == "symlinked folder":
        (tmp_path / "link").symlink_to(tmp_path / "data")
    if case == "hard link":
        os.link(data / "x.png", target)
    with command_inputs():
        data_files(tmp_path / "data", (".png",))
        with pytest.raises(UserError, match="is the command's data file"):
            atomic_write_json(target, {"a": 1})
        atomic_write_text(tmp_path / "new.json", "{}")  # a file it did not read is written
    atomic_write_text(target, "outside a command: allowed")  # the scope ended
    assert (tmp_path / "new.json").read_text() == "{}"


# --------------------------------------------------------------------------------------------- data fingerprint
def _classes(tmp_path):
    from PIL import Image
    root = tmp_path / "data"
    for label, colour in (("3", 10), ("7", 200)):
        (root / "train" / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (colour + i, 0, 0)).save(root / "train" / label / f"{i}.png")
    return root


def _keep_times(path, edit):
    st = path.stat()
    edit()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as `cp -p` or a careless tool leaves it


@pytest.mark.parametrize("change", ["same-size in-place edit", "same-size swap", "hidden folder stays out",
                                    "image added", "non-UTF-8 name"])
def test_the_data_fingerprint_sees_what_the_loader_reads(tmp_path, change):
    from sparsevit_cli.data.datasets import ImageFolderClassification
    from sparsevit_cli.pipeline import data_digest
    root = _classes(tmp_path)
    cache = tmp_path / "cache.json"
    before = data_digest(root, cache)
    a, b = root / "train" / "3" / "0.png", root / "train" / "7" / "0.png"
    if change == "same-size in-place edit":
        data = bytearray(a.read_bytes())
        data[-20] ^= 0xFF
        _keep_times(a, lambda: a.write_bytes(bytes(data)))
        assert a.stat().st_size == len(data)
    elif change == "same-size swap":
        assert a.stat().st_size == b.stat().st_size
        tmp = root / "swap"
        os.rename(a, tmp), os.rename(b, a), os.rename(tmp, b)
    elif change == "hidden folder stays out":
        hidden = root / "train" / "3" / ".more"
        hidden.mkdir()
        shutil.copy(a, hidden / "x.png")
    elif change == "image added":
        shutil.copy(a, root / "train" / "3" / "2.png")
    else:
        shutil.copy(a, os.fsencode(root / "train" / "3") + b"/\xff.png")
    after = data_digest(root, cache)
    dataset = ImageFolderClassification(root, "train", 8, train=False)
    loaded = sorted(dataset.image_path(i) for i in range(len(dataset)))
    assert after["files"] == len(loaded)  # the fingerprint counts exactly the files the loader reads
    if change == "hidden folder stays out":
        assert after == before and not any(".more" in str(p) for p in loaded)
    else:
        assert after["listing"] != before["listing"], change


def test_an_unchanged_data_set_is_not_read_again(tmp_path, monkeypatch):
    """The content hashes are cached under each file's stat (make's and rsync's test, plus ctime and inode)."""
    from sparsevit_cli import pipeline
    root = _classes(tmp_path)
    cache = tmp_path / "cache.json"
    monkeypatch.setattr(pipeline, "RACY_NS", -1)  # files written just now count as settled
    first = pipeline.data_digest(root, cache)
    read = []
    monkeypatch.setattr(pipeline, "file_digest", lambda p: read.append(p) or "x")
    assert pipeline.data_digest(root, cache) == first and read == []


# --------------------------------------------------------------------------------------------- COCO annotations
def _coco(tmp_path):
    from PIL import Image
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (4, 3)).save(tmp_path / "img" / "a.png")
    return {"images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 3}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4,
                             "iscrowd": 0, "segmentation": [[0, 0, 2, 0, 2, 2]]},
                            {"id": 8, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "iscrowd": 0,
                             "segmentation": {"size": [3, 4], "counts": [4, 2, 6]}}],
            "categories": [{"id": 1, "name": "one"}]}


COCO_FAULTS = {  # (annotation #, field, value) or (section, #, field, value) -> what the line says
    "duplicate id": ((1, "id", 7), "annotation id 7 is used twice"),
    "RLE garbage": ((1, "segmentation", {"size": [3, 4], "counts": "garbage~~"}), "not COCO's compressed RLE"),
    "RLE negative": ((1, "segmentation", {"size": [3, 4], "counts": [4, -2, 10]}), "negative run"),
    "RLE wrong total": ((1, "segmentation", {"size": [3, 4], "counts": [4, 2]}), "cover 6 pixels"),
    "RLE wrong size": ((1, "segmentation", {"size": [30, 4], "counts": [120]}), "not the image's"),
    "RLE string counts wrong total": ((1, "segmentation", {"size": [3, 4], "counts": "12"}), "cover"),
    "segmentation a number": ((0, "segmentation", 5), "'segmentation' must be polygons or RLE"),
    "polygon odd": ((0, "segmentation", [[0, 0, 2, 0, 2]]), "has 5 coordinates"),
    "polygon NaN": ((0, "segmentation", [[0, 0, 2, float("nan"), 2, 2]]), "non-finite coordinate"),
    "iscrowd yes": ((0, "iscrowd", "yes"), "'iscrowd' must be 0 or 1"),
    "iscrowd 2": ((0, "iscrowd", 2), "'iscrowd' must be 0 or 1"),
    "area NaN": ((0, "area", float("nan")), "'area' must be a finite number"),
    "area text": ((0, "area", "big"), "'area' must be a finite number"),
    "image_id a string": ((0, "image_id", "1"), "'image_id' must be a whole number"),
    "category_id a float": ((0, "category_id", 1.0), "'category_id' must be a whole number"),
    "id a string": ((0, "id", "seven"), "'id' must be a whole number"),
    "crowd polygons": ((0, "iscrowd", 1), "crowd annotation (iscrowd 1) must be RLE"),
    "file_name a number": (("images", 0, "file_name", 5), "'file_name' must be a file name"),
    "image id a string": (("images", 0, "id", "1"), "'id' must be a whole number"),
    "width 0": (("images", 0, "width", 0), "'width' must be a positive whole number"),
    "category id null": (("categories", 0, "id", None), "'id' must be a whole number"),
    "annotation not a mapping": (("annotations", 1, None, 3), "is a int, not a mapping"),
}


@pytest.mark.parametrize("case", list(COCO_FAULTS))
def test_the_coco_validator_names_the_annotation_and_field(tmp_path, case):
    from sparsevit_cli.detection.coco import validate_coco
    edit, needle = COCO_FAULTS[case]
    data = _coco(tmp_path)
    section, index, field, value = ("annotations", *edit) if len(edit) == 3 else edit
    if field is None:
        data[section][index] = value
    else:
        data[section][index][field] = value
    with pytest.raises(UserError) as e:
        validate_coco(data, tmp_path / "ann.json", tmp_path / "img", masks=True)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    if section == "annotations" and field not in (None, "id"):
        assert "annotation id" in str(e.value)  # named by its id


def test_a_valid_file_passes_and_pycocotools_reads_it(tmp_path):
    from sparsevit_cli.detection.coco import validate_coco
    from pycocotools.coco import COCO
    data = _coco(tmp_path)
    validate_coco(data, tmp_path / "ann.json", tmp_path / "img", masks=True)
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    masks = [coco.annToMask(a) for a in data["annotations"]]
    assert [m.shape for m in masks] == [(3, 4)] * 2 and int(masks[1].sum()) == 2  # the RLE's one run of 2


@pytest.mark.parametrize("case", ["file_name a number", "image_id a string", "duplicate id", "iscrowd yes"])
def test_evaluate_refuses_a_broken_coco_file_in_one_line(demo, files, tmp_path, capsys, case):
    data = tmp_path / "data"
    shutil.copytree(demo / "det", data / "det")
    ann_file = data / "det" / "annotations" / "instances_val.json"
    ann = json.loads(ann_file.read_text())
    if case == "file_name a number":
        ann["images"][0]["file_name"] = 5
    elif case == "image_id a string":
        ann["annotations"][0]["image_id"] = str(ann["annotations"][0]["image_id"])
    elif case == "duplicate id":
        ann["annotations"][1]["id"] = ann["annotations"][0]["id"]
    else:
        ann["annotations"][0]["iscrowd"] = "yes"
    ann_file.write_text(json.dumps(ann))
    code, _, err = run_cli(["evaluate", "--checkpoint", files / "det.safetensors", "--data", data], capsys)
    assert_one_line_error(code, err, f"annotation file '{ann_file}'")


# --------------------------------------------------------------------------------------------- model files and info
MODEL_FAULTS = {  # (source, metadata edit) -> what the refusal says
    "unknown method": ("cls", {"method": "nope"}, "unknown method 'nope'"),
    "unknown model": ("cls", {"model": "nope_net"}, "unknown timm model 'nope_net'"),
    "sparsity 5": ("cls", {"sparsity": [[0.0], [5]]}, "sparsity ratio 5.0 is not one of"),
    "sparsity NaN": ("cls", {"sparsity": [[0.0], [float("nan")]]}, "sparsity ratio nan"),
    "sparsity negative": ("cls", {"sparsity": [[0.0], [-0.5]]}, "sparsity ratio -0.5"),
    "sparsity shape": ("cls", {"sparsity": [[0.0]]}, "needs one list per stage"),
    "window size 0": ("cls", {"model_args": {"window_size": 0}}, "Window sizes must be positive"),
    "heads 0": ("cls", {"model_args": {"num_heads": [0, 2]}}, "cannot build"),
    "detection category ids": ("cls", {"category_ids": list(range(1, 11))}, "category_ids belong to a detector"),
    "detection task options": ("cls", {"task_options": {"fpn_channels": 16}}, "takes no task options"),
    "1 MB value": ("cls", {"trained_by": "x" * 1_100_000}, "characters of sparsevit metadata"),
    "negative detector size": ("det", {"task_options": {"fpn_channels": -16}}, "task_options.fpn_channels must be >= 1"),
    "negative detections": ("det", {"task_options": {"fpn_channels": 16, "box_detections_per_img": -1}},
                            "box_detections_per_img must be >= 1"),
}


@pytest.mark.parametrize("case", list(MODEL_FAULTS))
def test_info_shows_a_refused_file_and_says_why(files, tmp_path, capsys, case):
    src, edit, needle = MODEL_FAULTS[case]
    path = rewrite(files / f"{src}.safetensors", tmp_path / "m.safetensors", **edit)
    code, out, err = run_cli(["info", path], capsys)
    assert_one_line_error(code, err, "would be refused by every command: ")
    assert needle in err
    refused = [line for line in out.splitlines() if line.startswith("refused: ")]
    assert len(refused) == 1 and needle in refused[0], out
    assert "model_args" in out and len(out) < 20_000  # the rows are shown, long values cut
    # and the commands that load it refuse it with that line
    code, _, err = run_cli(["measure", "--checkpoint", path, "--repeats", "1", "--warmup", "0", "--batch-size", "1"],
                           capsys)
    assert_one_line_error(code, err, needle)


def test_info_of_a_valid_file_lists_no_fault(files, capsys):
    code, out, err = run_cli(["info", files / "det.safetensors"], capsys)
    assert code == 0 and "refused" not in out and "SHA-256 verified" in out, err


def test_a_classifier_with_detection_category_ids_is_not_evaluated(files, demo, tmp_path, capsys):
    path = rewrite(files / "cls.safetensors", tmp_path / "m.safetensors", category_ids=list(range(1, 11)))
    code, _, err = run_cli(["evaluate", "--checkpoint", path, "--data", demo, "--max-samples", "2"], capsys)
    assert_one_line_error(code, err, "category_ids belong to a detector")


# --------------------------------------------------------------------------------------------- one line, not exit 3
def test_report_out_that_is_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    code, _, err = run_cli(["report", "--out", target, "--preset", "quick"], capsys)
    assert_one_line_error(code, err, "is a file; it must be a folder")
    assert target.read_text() == "mine"


@pytest.mark.parametrize("argv", [["--help"], ["info", "--help"]])
def test_stdout_on_a_full_device_is_one_line(argv):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "sparsevit_cli.cli", *argv], stdout=full, stderr=subprocess.PIPE,
                              text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("size", [(10000, 10), (10, 10000)])
def test_visualize_of_an_image_a_detector_resizes_to_nothing_is_one_line(files, tmp_path, capsys, size):
    from PIL import Image
    image = tmp_path / "thin.png"
    Image.new("RGB", size).save(image)
    code, _, err = run_cli(["visualize", "--checkpoint", files / "det.safetensors", "--image", image,
                            "--out", tmp_path / "v.png"], capsys)
    assert_one_line_error(code, err, "shorter side under 1 px")
    assert not (tmp_path / "v.png").exists()


# --------------------------------------------------------------------------------------------- full disk, FIFO
@pytest.fixture
def full_fs(tmp_path):
    """A 64 KiB tmpfs (root only; skipped elsewhere), to be filled."""
    folder = tmp_path / "fs"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a tmpfs")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


FULL_DISK_EXPORTS = """
import json, os, sys
import torch
from sparsevit_cli.commands.export import FORMATS
from sparsevit_cli.errors import UserError
from sparsevit_cli.io import atomic_output
fs, out = sys.argv[1], {}
fd = os.open(fs + "/filler", os.O_WRONLY | os.O_CREAT)
try:  # every block taken
    while True:
        os.write(fd, bytes(4096))
except OSError:
    os.close(fd)
model, x = torch.nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 8, 8)
for fmt, spec in FORMATS.items():
    try:
        with atomic_output(fs + "/m" + spec.suffix, fmt + " export", suffix=spec.suffix) as tmp:
            spec.write(model, x, tmp)
        out[fmt] = "written"
    except UserError as e:
        out[fmt] = str(e)
print(json.dumps(out))
"""


def test_every_export_format_on_a_full_disk_is_one_line_and_leaves_nothing(full_fs):
    """Each format's writer (as `export` calls it, through the writers' one protocol) on a full disk, in a child
    process: torch's C++ writers used to abort the process (exit 134, a native stack trace) and leave the
    temporary file."""
    done = subprocess.run([sys.executable, "-c", FULL_DISK_EXPORTS, str(full_fs)], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) == {"onnx", "torchscript", "pt2"}
    assert all("No space left on device" in line and "\n" not in line for line in result.values()), result
    assert [p.name for p in full_fs.iterdir()] == ["filler"]


def test_export_writers_turn_enospc_into_one_line_without_root(files, tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: the export's Python write fails with ENOSPC."""
    import builtins
    import errno
    from sparsevit_cli.commands import export
    from sparsevit_cli.model_file import load
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(builtins, "open", lambda p, mode="r", *a, **k: Full(real_open(p, mode, *a, **k))
                        if mode == "wb" and ".tmp" in str(p) else real_open(p, mode, *a, **k))
    model = load(files / "cls.safetensors")
    with pytest.raises(UserError, match="No space left on device"):
        export.export_model(model, "torchscript", tmp_path / "m.pt", [torch.randn(1, 3, 64, 64)], time_it=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["classification", "coco"])
def test_a_fifo_image_in_the_data_is_refused_not_waited_on(files, demo, tmp_path, capsys, where):
    data = tmp_path / "data"
    if where == "classification":
        shutil.copytree(demo / "val", data / "val")
        shutil.copytree(demo / "train", data / "train")
        os.mkfifo(data / "val" / "3" / "x.png")
        argv = ["evaluate", "--checkpoint", files / "cls.safetensors", "--data", data]
    else:
        shutil.copytree(demo / "det", data / "det")
        image = data / "det" / "val" / "00000.png"
        image.unlink()
        os.mkfifo(image)
        argv = ["evaluate", "--checkpoint", files / "det.safetensors", "--data", data]
    signal.alarm(120)  # a hang fails the test instead of the suite
    try:
        code, _, err = run_cli(argv, capsys)
    finally:
        signal.alarm(0)
    assert_one_line_error(code, err, "not a regular file")


def test_a_file_name_that_is_not_utf8_is_read_fingerprinted_and_printed(files, demo, tmp_path, capsys):
    """A data file named with bytes that are not UTF-8 (a Latin-1 file system, a copied archive): evaluated,
    fingerprinted, and its name printed escaped instead of an encoding error."""
    from sparsevit_cli.pipeline import data_digest
    data = tmp_path / "data"
    shutil.copytree(demo / "val", data / "val")
    shutil.copytree(demo / "train", data / "train")
    image = next((data / "val").rglob("*.png"))
    odd = os.fsencode(image.parent) + b"/caf\xe9.png"
    shutil.copy(image, odd)
    assert data_digest(data)["files"] == len(list((data / "train").rglob("*.png"))) + \
        len(list((data / "val").rglob("*.png")))
    code, out, err = run_cli(["evaluate", "--checkpoint", files / "cls.safetensors", "--data", data], capsys)
    assert code == 0, err
    os.mkfifo(odd.replace(b".png", b"2.png"))
    code, _, err = run_cli(["evaluate", "--checkpoint", files / "cls.safetensors", "--data", data], capsys)
    assert_one_line_error(code, err, "caf\\xe92.png' in data folder")


def test_a_pipeline_output_folder_inside_the_data_is_not_data(tmp_path):
    from sparsevit_cli.pipeline import DATA_HASHES, data_digest
    root = _classes(tmp_path)
    out = root / "runs"
    out.mkdir()
    first = data_digest(root, out / DATA_HASHES)
    (out / "model.png").write_bytes(b"an output")
    assert data_digest(root, out / DATA_HASHES) == first


def test_the_shared_listing_keeps_torchvisions_order(tmp_path):
    """Sample indices (and so search splits) stay those of torchvision's ImageFolder for visible files."""
    from torchvision.datasets.folder import make_dataset
    from sparsevit_cli.io import data_files
    for name in ("z.png", "a.png", "B.PNG", "sub/b.png", "sub-x/q.png", "a/k.png", "notes.txt"):
        (tmp_path / "c" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "c" / name).write_bytes(b"x")
    theirs = [p for p, _ in make_dataset(str(tmp_path), {"c": 0}, extensions=(".png",))]
    assert [str(p) for p in data_files(tmp_path / "c", (".png",))] == theirs
