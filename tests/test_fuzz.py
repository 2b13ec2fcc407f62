"""A fuzzer for the promise "bad input is one line on stderr and exit code 2, never a traceback".

Hypothesis generates hostile run-config YAMLs (wrong types, missing and unknown keys, extreme and non-finite
numbers, random bytes) for `finetune` and `adapt`, and hostile argument lists for every command (values
drawn by each option's type from Typer's own command tree). Each run must end with exit 0 or 2, with at most
one stderr line on 2, and never raise. The number of examples is bounded so the suite stays fast;
`make fuzz` runs the same tests with many more (SPARSEVIT_FUZZ_EXAMPLES).
"""
import contextlib
import json
import enum
import io
import math
import os
import string
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsevit_cli.cli import app, main
from sparsevit_cli.data.demo import write_demo_data
from cli_helpers import stopped_after

EXAMPLES = int(os.environ.get("SPARSEVIT_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

MICRO_ARGS = {"img_size": 64, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4}

# commands whose valid runs are whole workflows (minutes): fuzzed with one bad value always added last
# (the last of a repeated option wins), so that no drawn argument list starts a real run
LONG_RUNNING = {"demo": ["--preset", "bogus"], "report": ["--preset", "bogus"],
                "pipeline": ["--budget-latency", "0ms"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files the fuzzer points options at: tiny data, a garbage file, a binary file, a directory."""
    root = tmp_path_factory.mktemp("fuzz")
    write_demo_data(root / "data", img_size=64, n_train=16, n_val=8, seed=0)
    (root / "garbage.yaml").write_text("sparsity: [[0.1], [0.2]\nmodel: {name: \n")
    (root / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (root / "empty.safetensors").write_bytes(b"")
    (root / "truncated.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    (root / "adir").mkdir()
    return root


@pytest.fixture(autouse=True)
def one_step_runs():
    """A fuzzed run that trains stops after one optimizer step, as an interruption would (a pipeline's later
    stages then wait): every valid draw stays short."""
    with stopped_after(1):
        yield


@pytest.fixture(autouse=True)
def _keep_cwd():
    cwd = os.getcwd()
    yield
    os.chdir(cwd)


def run(argv):
    """(exit code, stderr) of `sparsevit ARGV` in-process; any exception escaping main() fails the test."""
    err, out = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, err.getvalue()


def assert_clean(code, err, argv):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code in (0, 2), f"exit {code} for {argv}:\n{err}"
    assert "Traceback" not in err, f"traceback for {argv}:\n{err}"
    if code == 2:
        assert len(lines) == 1, f"{len(lines)} stderr lines for {argv}:\n{err}"


# ------------------------------------------------------------------------------------------- values
HOSTILE_NUMBERS = st.sampled_from([0, -1, -5, 1, 2.5, 1e30, -1e30, float("nan"), float("inf"), float("-inf"),
                                   2 ** 70, -(2 ** 70), 1e-300, 0.5, 99])
HOSTILE_SCALARS = st.one_of(
    HOSTILE_NUMBERS, st.none(), st.booleans(),
    st.sampled_from(["", "abc", "cuda", "tpu", "cpu", "50%", "nan", ".inf", "-1", "0x10", "l2", "swin_auto"]),
    st.text(alphabet=string.printable, max_size=12))
HOSTILE_VALUES = st.recursive(HOSTILE_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "lr", "name", "x"]), inner, max_size=2)),
    max_leaves=4)


def base_run_config(world, out):
    return {
        "model": {"name": "swin_tiny_patch4_window7_224", "args": dict(MICRO_ARGS)},
        "data": {"path": str(world / "data"), "task": "classification", "num_workers": 0},
        "sparsity": 0.0,
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
        "schedule": {"name": "cosine", "warmup_steps": 1},
        "epochs": 1, "batch_size": 8, "eval_batch_size": 8, "seed": 0, "max_steps": 1,
        "out": str(out), "checkpoint_every": 1,
    }


def key_paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from key_paths(v, prefix + (k,))


#: a pipeline section whose valid runs stay short: one step (max_steps; the first stage stops after it:
#: `one_step_runs`), one search evaluation, no report card, no export
TINY_PIPELINE = {"budget": {"macs": "50%"}, "dense": {"run": True, "epochs": 1}, "allow_small_val": True,
                 "search": {"population": 1, "generations": 1, "parents": 1, "mutations": 0, "crossovers": 0,
                            "eval_samples": 2},
                 "evaluate": {"run": False}, "export": {"run": False}}


@st.composite
def mutated_run_config(draw, world, out, pipeline=False):
    """A valid micro run config (with a `pipeline:` section for `sparsevit pipeline`) with 1-3 hostile edits,
    or garbage bytes instead of YAML."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=64))
    cfg = base_run_config(world, out)
    if pipeline:
        cfg["pipeline"] = json.loads(json.dumps(TINY_PIPELINE))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(key_paths(cfg))
        path = draw(st.sampled_from(paths))
        node = cfg
        for p in path[:-1]:
            node = node[p]
        if not isinstance(node, dict) or path[-1] not in node:
            continue
        op = draw(st.sampled_from(["set", "set", "set", "delete", "unknown"]))
        if op == "delete":
            del node[path[-1]]
        elif op == "unknown":
            node[draw(st.sampled_from(["lrr", "epoch", "nme", "zzz"]))] = draw(HOSTILE_SCALARS)
        else:
            node[path[-1]] = draw(HOSTILE_VALUES)
    # a fuzzed run must stay short: never more than one step, never the 224-px default model
    cfg["max_steps"] = 1
    cfg["epochs"] = cfg["epochs"] if isinstance(cfg.get("epochs"), int) and 0 < cfg["epochs"] < 3 else cfg.get("epochs")
    return yaml.safe_dump(cfg, allow_unicode=True).encode("utf-8", "surrogatepass")


def fuzz_command_lines(folder, make_argv):
    """Run the fuzzer: `make_argv(data, out_folder)` draws one (argv, description); every run must be clean.
    Runs inside `folder`, so relative paths the fuzzer draws (e.g. `demo-data 0.3,0.5`) land there."""
    counter = iter(range(10 ** 6))
    os.chdir(folder)

    @FUZZ
    @given(data=st.data())
    def check(data):
        argv, description = make_argv(data, folder / f"case{next(counter)}")
        code, err = run(argv)
        assert_clean(code, err, description)

    check()


@pytest.mark.parametrize("command", ["finetune", "adapt", "pipeline"])
def test_fuzzed_run_configs_never_crash(world, tmp_path_factory, command):
    def make_argv(data, case):
        blob = data.draw(mutated_run_config(world, case / "out", pipeline=command == "pipeline"))
        case.mkdir(parents=True)
        cfg = case / "run.yaml"
        cfg.write_bytes(blob)
        argv = ["adapt", "--config", cfg, "--no-progress"] if command == "adapt" else \
               [command, cfg, "--no-progress"]
        return argv, f"{argv} with {blob[:300]!r}"

    fuzz_command_lines(tmp_path_factory.mktemp(f"runcfg-{command}"), make_argv)


# ------------------------------------------------------------------------------------------- CLI args
def _commands():
    import typer.main
    group = typer.main.get_command(app)
    return group, sorted(group.commands)


def _annotation(param):
    """The Python type an option was declared with (Optional[...] unwrapped)."""
    ann = param.type_descriptor.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    return args[0] if typing.get_origin(ann) is typing.Union and len(args) == 1 else ann


def option_values(param, world):
    """Hostile values for one option, by the type it was declared with."""
    files = [world / "nope.yaml", world / "garbage.yaml", world / "binary.bin", world / "adir",
             world / "empty.safetensors", world / "truncated.safetensors", world / "data"]
    ann = _annotation(param)
    if ann is int:
        ints = ["0", "-1", "3", "nan", "1.5", "abc"]
        if param.name in ("img_size", "batch_size", "seed"):  # counts of work (repeats, images) would only run long
            ints.append("99999999999999999999")
        return st.sampled_from(ints)
    if ann is float:
        return st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e30", "0.5", "abc"])
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return st.sampled_from([str(m.value) for m in ann] + ["bogus", ""])
    return st.one_of(st.sampled_from([str(f) for f in files]),
                     st.sampled_from(["", "50%", "nan%", "-3", "abc", "0.3,0.5", "1,2", "20ms", "cuda", "tpu"]))


@st.composite
def argv_for(draw, command, world, out):
    group, _ = _commands()
    cmd = group.commands[command]
    argv = [command]
    for param in cmd.params:
        if param.name in ("help",):
            continue
        required = getattr(param, "required", False)
        if not required and not draw(st.booleans()):
            continue
        if param.param_type_name == "argument":
            argv.append(draw(option_values(param, world)))
            continue
        opt = max(param.opts, key=len)
        if getattr(param, "is_flag", False) or _annotation(param) is bool:
            argv.append(draw(st.sampled_from(param.opts + list(getattr(param, "secondary_opts", [])))))
        elif param.name == "out":
            argv += [opt, draw(st.sampled_from([str(out), str(world / "garbage.yaml"), str(world / "adir")]))]
        else:
            argv += [opt, draw(option_values(param, world))]
    if command in LONG_RUNNING:
        argv += LONG_RUNNING[command]
    if draw(st.integers(0, 7)) == 0:
        argv.append(draw(st.sampled_from(["--bogus-option", "extra-arg", "-x"])))
    return argv


@pytest.mark.parametrize("command", _commands()[1])
def test_fuzzed_command_lines_never_crash(world, tmp_path_factory, command):
    def make_argv(data, case):
        argv = data.draw(argv_for(command, world, case / "out"))
        if command == "measure":  # keep valid measure runs cheap (the default is Swin-T at 672 px); fuzzed
            argv[1:1] = ["--img-size", "64", "--repeats", "1", "--warmup", "0"]  # values given later win
        return argv, argv

    fuzz_command_lines(tmp_path_factory.mktemp(f"argv-{command}"), make_argv)


def test_fuzzer_sees_every_command():
    """A new command is fuzzed without editing this file; this pins that the tree is read at all."""
    _, names = _commands()
    assert {"finetune", "adapt", "search", "export", "measure", "info", "visualize", "demo-data", "evaluate",
            "pipeline"} <= set(names)


# ------------------------------------------------------------------------------------------- model files
MODEL_META_KEYS = ["format", "method", "model", "model_args", "img_size", "task", "num_classes", "class_names",
                   "sparsity", "method_options", "task_options", "space", "trained_by"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A valid micro 10-class model file (the fuzz data's classes), the seed every metadata mutation starts from."""
    import timm
    import torch
    from sparsevit_cli import sparsify
    from sparsevit_cli.model_file import save_model
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fuzz-model") / "model.safetensors"
    model = sparsify(timm.create_model("swin_tiny_patch4_window7_224", num_classes=10, **MICRO_ARGS), [[0.0], [0.5]])
    save_model(path, model, {"model": "swin_tiny_patch4_window7_224", "model_args": dict(MICRO_ARGS, num_classes=10),
                             "img_size": 64, "num_classes": 10, "sparsity": [[0.0], [0.5]]})
    return path


@st.composite
def mutated_model_file(draw, src, dst):
    """`src` rewritten with 1-3 hostile metadata edits, metadata that is not JSON or nests deeply, a wrong or
    missing digest, or a NaN in a tensor; returns a description."""
    import json
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from sparsevit_cli.model_file import DIGEST_KEY, weights_digest

    state = load_file(str(src))
    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["sparsevit"])
    how = draw(st.sampled_from(["edit", "edit", "edit", "raw", "deep", "digest", "nan"]))
    raw, digest = None, weights_digest(state)
    if how == "edit":
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from(MODEL_META_KEYS + ["zzz"]))
            if draw(st.integers(0, 4)) == 0:
                meta.pop(key, None)
            else:
                meta[key] = draw(st.one_of(HOSTILE_VALUES, st.sampled_from(
                    ["sparsevit-model/1", "sparsevit-model/2", "sparsevit-model/3", 64, 96, [[0.5], [0.5]],
                     ["a"] * 3, "detection", "psvit", {"img_size": 96}, {"num_classes": 3}])))
    elif how == "raw":
        raw = draw(st.sampled_from(["", "{", "[]", "null", '{"model": 3}', "x" * 2_000_000, '{"model": "a"}']))
    elif how == "deep":
        depth = draw(st.sampled_from([100, 5_000, 100_000]))
        raw = json.dumps(meta)[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    elif how == "digest":
        digest = draw(st.sampled_from(["", "0" * 64, digest[::-1]]))
    else:
        name = draw(st.sampled_from(sorted(k for k, v in state.items() if v.is_floating_point())))
        state[name].view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        digest = weights_digest(state)
    metadata = {"sparsevit": raw if raw is not None else json.dumps(meta, allow_nan=True)}
    if digest:
        metadata[DIGEST_KEY] = digest
    save_file(state, str(dst), metadata=metadata)
    return f"{how}: {metadata['sparsevit'][:300]!r}"


@pytest.mark.parametrize("command", ["info", "evaluate"])
def test_fuzzed_model_file_metadata_never_crashes(world, model_file, tmp_path_factory, command):
    def make_argv(data, case):
        case.mkdir(parents=True)
        path = case / "model.safetensors"
        what = data.draw(mutated_model_file(model_file, path))
        argv = ["info", path] if command == "info" else \
               ["evaluate", "--checkpoint", path, "--data", world / "data", "--max-samples", "2"]
        return argv, f"{argv} with {what}"

    fuzz_command_lines(tmp_path_factory.mktemp(f"meta-{command}"), make_argv)


# ------------------------------------------------------------------------------------------- file system faults
def test_fuzzed_filesystem_faults_on_every_writer(model_file, tmp_path_factory, monkeypatch):
    """Writers drawn against file-system faults (writer_helpers.check_writer_fault: a link, a FIFO, a read-only
    or full file system, a name too long, a file above, a directory in the way); test_hostile runs every pair."""
    from writer_helpers import FILE_NAMES, FS_FAULTS, WRITER_NAMES, check_writer_fault, writers

    table = writers(model_file)
    root = tmp_path_factory.mktemp("fs-faults")
    counter = iter(range(10 ** 6))

    @FUZZ
    @given(writer=st.sampled_from(WRITER_NAMES), fault=st.sampled_from(FS_FAULTS))
    def check(writer, fault):
        check_writer_fault(table[writer], FILE_NAMES.get(writer, "out.bin"), fault, root / f"case{next(counter)}",
                           monkeypatch)

    check()


# ------------------------------------------------------------------------------------------- COCO annotation files
COCO_FIELDS = {"images": ["id", "file_name", "width", "height"],
               "annotations": ["id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"],
               "categories": ["id", "name"]}
#: values a COCO field is likely to be mangled into (beside HOSTILE_VALUES)
COCO_VALUES = st.sampled_from([
    1, 2, 7, "1", 1.0, True, [], [1, 2, 3], [0, 0, 5, 5], [[0, 0, 5, 0, 5, 5]], [[0, 0, 5, 0, 5]],
    [[0, 0, float("nan"), 0, 5, 5]], {"size": [48, 64], "counts": [3072]}, {"size": [48, 64], "counts": [3000]},
    {"size": [48, 64], "counts": [-1, 3073]}, {"size": [48, 64], "counts": [3072, 0]}, {"size": [64, 48], "counts": [3072]}, {"size": [48, 64], "counts": "0`0"},
    {"size": [48, 64], "counts": "garbage"}, {"size": [48, 64], "counts": "P`0"}, {"size": "48x64", "counts": []},
    {"counts": [3072]}, "a.png", "00000.png", "../00000.png", "missing.png"])


@pytest.fixture(scope="module")
def coco_world(tmp_path_factory):
    """A tiny COCO val split (two images; box, polygon and RLE annotations, a crowd one), the seed of every
    mutation: `<root>/val/` and `<root>/annotations/instances_val.json`."""
    from PIL import Image
    root = tmp_path_factory.mktemp("fuzz-coco") / "det"
    (root / "val").mkdir(parents=True)
    (root / "annotations").mkdir()
    images = [{"id": 1, "file_name": "00000.png", "width": 64, "height": 48},
              {"id": 2, "file_name": "00001.png", "width": 48, "height": 64}]
    for im in images:
        Image.new("RGB", (im["width"], im["height"]), (90, 20, 200)).save(root / "val" / im["file_name"])
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 8], "area": 80, "iscrowd": 0,
         "segmentation": [[4, 4, 14, 4, 14, 12, 4, 12]]},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 10, 4, 2], "area": 8, "iscrowd": 1,
         "segmentation": {"size": [48, 64], "counts": [20 * 48 + 10, 2, 46, 2, 46, 2, 46, 2, 48 * 64 - 1116]}},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [10, 20, 12, 12], "area": 144, "iscrowd": 0,
         "segmentation": [[10, 20, 22, 20, 22, 32, 10, 32]]}]
    categories = [{"id": c, "name": str(c)} for c in (1, 2, 3)]
    (root / "annotations" / "instances_val.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    return root


@st.composite
def mutated_coco(draw, valid):
    """A valid COCO instances mapping with 1-3 edits: a field set to a hostile or a near-valid value, a field
    removed, an entry repeated or replaced."""
    import copy
    data = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(COCO_FIELDS)))
        entries = data[section]
        if not entries:
            continue
        i = draw(st.integers(0, len(entries) - 1))
        how = draw(st.sampled_from(["set", "set", "set", "drop", "repeat", "replace"]))
        if how == "repeat":
            entries.append(copy.deepcopy(entries[i]))
        elif how == "replace":
            entries[i] = draw(HOSTILE_VALUES)
        elif isinstance(entries[i], dict):
            field = draw(st.sampled_from(COCO_FIELDS[section]))
            if how == "drop":
                entries[i].pop(field, None)
            else:
                entries[i][field] = draw(st.one_of(COCO_VALUES, HOSTILE_VALUES))
    return data


def test_fuzzed_coco_files_are_refused_in_one_line_or_read_cleanly(coco_world):
    """Mutations of a valid instances file: the validator refuses one in one line, or everything downstream
    (pycocotools' index, every annotation's mask, COCOeval of boxes and masks, the data set's targets) reads it
    without an error. pycocotools' C code trusts RLE counts: a bad one that passed would crash here."""
    import copy
    from pycocotools.coco import COCO
    from sparsevit_cli.detection.coco import CocoDetection, coco_ap, validate_coco
    from sparsevit_cli.errors import UserError

    ann_file = coco_world / "annotations" / "instances_val.json"
    valid = json.loads(ann_file.read_text())

    @FUZZ
    @given(data=mutated_coco(valid), masks=st.booleans())
    def check(data, masks):
        try:
            validate_coco(data, ann_file, coco_world / "val", masks=masks)
        except UserError as e:
            assert "\n" not in str(e) and len(str(e)) < 1000, str(e)
            return
        coco = COCO()
        coco.dataset = copy.deepcopy(data)
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        for ann in coco.dataset["annotations"]:
            if ann.get("segmentation") not in (None, []):
                assert coco.annToMask(ann).shape == (coco.imgs[ann["image_id"]]["height"],
                                                     coco.imgs[ann["image_id"]]["width"])
        results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
                   for a in coco.dataset["annotations"]]
        coco_ap(coco, results, "box_ap")
        dataset = CocoDetection.__new__(CocoDetection)
        dataset.coco, dataset.masks, dataset.image_dir = coco, masks, coco_world / "val"
        dataset.image_ids, dataset.category_ids = sorted(coco.imgs), sorted(coco.cats)
        dataset.cat_to_label = {c: i + 1 for i, c in enumerate(dataset.category_ids)}
        for i in range(len(dataset.image_ids)):
            dataset.target(i)

    check()


# ------------------------------------------------------------------------------------------- outputs over inputs
def test_fuzzed_output_paths_never_replace_an_input(tmp_path_factory):
    """Every writer, pointed at a drawn path inside a command's scope: a file the command read (by its name,
    through a symlinked folder, through a hard link, relative) is refused in one line and left as it was; any
    other path is written."""
    from sparsevit_cli.errors import UserError
    from sparsevit_cli.io import (atomic_output, atomic_write_json, atomic_write_text, command_inputs, data_files,
                                  note_input)

    root = tmp_path_factory.mktemp("fuzz-outputs")
    (root / "data" / "a").mkdir(parents=True)
    for name in ("x.png", "y.jpg"):
        (root / "data" / "a" / name).write_bytes(name.encode())
    (root / "model.safetensors").write_bytes(b"weights")
    (root / "other.json").write_text("{}")
    (root / "link").symlink_to(root / "data")
    os.link(root / "data" / "a" / "x.png", root / "hard.json")
    inputs = {root / "data" / "a" / "x.png", root / "data" / "a" / "y.jpg", root / "model.safetensors"}
    candidates = sorted(str(p) for p in inputs) + [
        str(root / "link" / "a" / "y.jpg"), str(root / "hard.json"), str(root / "other.json"), str(root / "new.json"),
        str(root / "data" / "a" / "new.png"), str(root / "data" / "a" / "." / ".." / "a" / "x.png")]
    writers = {"json": lambda p: atomic_write_json(p, [1]), "text": lambda p: atomic_write_text(p, "t"),
               "by name": lambda p: atomic_output(p).__enter__()}
    counter = iter(range(10 ** 6))

    @FUZZ
    @given(target=st.sampled_from(candidates), writer=st.sampled_from(sorted(writers)))
    def check(target, writer):
        before = {p: p.read_bytes() for p in inputs}
        is_input = any(os.path.exists(target) and os.path.samefile(target, p) for p in inputs)
        with command_inputs():
            data_files(root / "data", (".png", ".jpg"))
            note_input(root / "model.safetensors", "model file")
            try:
                if writer == "by name":
                    with atomic_output(target) as tmp:
                        tmp.write_text(f"{next(counter)}")
                else:
                    writers[writer](target)
                refused = None
            except UserError as e:
                refused = str(e)
        assert (refused is not None) == is_input, (target, writer, refused)
        if refused:
            assert "is the command's" in refused and "\n" not in refused
        assert {p: p.read_bytes() for p in inputs} == before
        if not is_input:
            os.unlink(target) if Path(target).name == "new.json" or "new.png" in target else None

    check()


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    """An untrained micro detector for `coco_world`'s 3 categories."""
    import timm
    import torch
    from sparsevit_cli import sparsify
    from sparsevit_cli.model_file import save_model
    from sparsevit_cli.tasks import build_task_model
    torch.manual_seed(0)
    options = {"fpn_channels": 16, "box_representation_size": 32, "rpn_pre_nms_top_n_test": 10,
               "rpn_post_nms_top_n_test": 5, "box_detections_per_img": 5}
    sparse = sparsify(timm.create_model("swin_tiny_patch4_window7_224", **MICRO_ARGS), [[0.0], [0.5]])
    path = tmp_path_factory.mktemp("fuzz-det") / "det.safetensors"
    save_model(path, build_task_model(sparse, "detection", 3, **options),
               {"model": "swin_tiny_patch4_window7_224", "model_args": MICRO_ARGS, "img_size": 64, "task": "detection",
                "num_classes": 3, "sparsity": [[0.0], [0.5]], "task_options": options,
                "category_ids": [1, 2, 3]})
    return path


def test_fuzzed_evaluate_results_json_targets(coco_world, detector_file, tmp_path_factory):
    """`evaluate --results-json` at a drawn path (the model file, the annotations, an image, through a symlinked
    folder or a hard link, an unrelated or a new file): exit 2 in one line with every input intact when the path
    is an input, else exit 0 with the results written."""
    root = tmp_path_factory.mktemp("fuzz-results")
    data = coco_world.parent
    (root / "link").symlink_to(data)
    image = coco_world / "val" / "00000.png"
    os.link(image, root / "hard.json")
    ann = coco_world / "annotations" / "instances_val.json"
    inputs = [detector_file, ann, image]
    candidates = [detector_file, ann, image, root / "link" / "det" / "annotations" / "instances_val.json",
                  root / "hard.json", root / "new.json"]
    counter = iter(range(10 ** 6))

    @settings(FUZZ, max_examples=max(3, EXAMPLES // 5))
    @given(target=st.sampled_from(candidates))
    def check(target):
        before = [p.read_bytes() for p in inputs]
        is_input = any(os.path.samefile(target, p) for p in inputs if os.path.exists(target))
        code, err = run(["evaluate", "--checkpoint", detector_file, "--data", data, "--max-samples", "1",
                         "--results-json", target])
        assert_clean(code, err, target)
        assert (code == 2) == is_input, (target, err)
        assert [p.read_bytes() for p in inputs] == before
        if not is_input:
            assert isinstance(json.loads(Path(target).read_text()), list)
            Path(target).rename(root / f"done{next(counter)}.json")

    check()
