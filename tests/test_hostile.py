"""A hostile user's run (issue 20): every case that once lost data, gave a silently wrong result or an
internal error is pinned here as one line and exit code 2 (or 130 / 143 for an interruption), with the
input left intact and no temporary file behind.

Tables, by area: writers and paths (symlinks, FIFOs, outputs that are inputs, full / read-only file
systems, long names, SIGTERM mid-write), model files (non-finite weights, digest, metadata that
contradicts itself or nests 100,000 deep), run configs (ranges, duplicate YAML keys, FIFOs), other kinds
of run folders, COCO annotations and checkpoints of another architecture."""
import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file, save_file

from sparsevit_cli.errors import UserError
from sparsevit_cli.model_file import DIGEST_KEY, read_meta, save_model, weights_digest
from cli_helpers import assert_one_line_error, run_cli
from writer_helpers import FILE_NAMES, FS_FAULTS, WRITER_NAMES, check_writer_fault, temp_files, writers as _writers

MODEL = "swin_tiny_patch4_window7_224"
MICRO_ARGS = {"img_size": 64, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4}


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from sparsevit_cli.data.demo import write_demo_data
    d = tmp_path_factory.mktemp("hostile") / "data"
    write_demo_data(d, img_size=64, n_train=16, n_val=8, seed=0)
    return d


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A micro 10-class SparseViT model file (the demo data's classes)."""
    from sparsevit_cli import sparsify
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mf") / "model.safetensors"
    model = sparsify(timm.create_model(MODEL, num_classes=10, **MICRO_ARGS), [[0.0], [0.5]])
    save_model(path, model, {"method": "sparsevit", "model": MODEL, "model_args": dict(MICRO_ARGS, num_classes=10),
                             "img_size": 64, "num_classes": 10, "sparsity": [[0.0], [0.5]]})
    return path


def meta_of(path):
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["sparsevit"])


def rewrite(src, dst, state=None, meta=None, raw_meta=None, digest=True):
    """A copy of model file `src` with other tensors / metadata (a correct digest unless told otherwise)."""
    state = load_file(str(src)) if state is None else state
    metadata = {"sparsevit": raw_meta if raw_meta is not None else json.dumps(meta if meta is not None else meta_of(src))}
    if digest:
        metadata[DIGEST_KEY] = weights_digest(state)
    save_file(state, str(dst), metadata=metadata)
    return dst


def command_lines(path, data_dir, tmp_path):
    """Every command that loads a model file, pointed at `path`."""
    image = next((data_dir / "val").rglob("*.png"))
    return {
        "info": ["info", path],
        "evaluate": ["evaluate", "--checkpoint", path, "--data", data_dir, "--max-samples", "2"],
        "search": ["search", "--checkpoint", path, "--data", data_dir, "--out", tmp_path / "s", "--budget-macs", "50%",
                   "--population", "2", "--generations", "1", "--parents", "1", "--mutations", "1",
                   "--crossovers", "1", "--eval-samples", "2", "--no-progress"],
        "measure": ["measure", "--checkpoint", path, "--repeats", "1", "--warmup", "0", "--batch-size", "1"],
        "export": ["export", "--checkpoint", path, "--out", tmp_path / "m.onnx", "--no-time"],
        "visualize": ["visualize", "--checkpoint", path, "--image", image, "--out", tmp_path / "v.png"],
    }


COMMANDS = ["info", "evaluate", "search", "measure", "export", "visualize"]


# --------------------------------------------------------------------------------------------- model files
@pytest.mark.parametrize("command", COMMANDS)
def test_non_finite_weights_are_refused_by_every_command_naming_the_tensor(model_file, data_dir, tmp_path,
                                                                           capsys, command):
    state = load_file(str(model_file))
    name = sorted(k for k in state if k.endswith("qkv.weight"))[0]
    state[name][0, 0] = float("nan")
    bad = rewrite(model_file, tmp_path / "nan.safetensors", state)
    code, _, err = run_cli(command_lines(bad, data_dir, tmp_path)[command], capsys)
    assert_one_line_error(code, err, f"non-finite weights (NaN or inf) in {name}")
    assert not (tmp_path / "s" / "best.yaml").exists()


@pytest.mark.parametrize("command", ["info", "evaluate", "export"])
def test_a_flipped_byte_in_the_weights_is_one_line(model_file, data_dir, tmp_path, capsys, command):
    blob = bytearray(model_file.read_bytes())
    blob[-3] ^= 0x01  # in the last tensor's bytes, past the header
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(blob))
    code, _, err = run_cli(command_lines(bad, data_dir, tmp_path)[command], capsys)
    assert_one_line_error(code, err, "do not match the SHA-256 stored in it")


def test_the_digest_is_required_from_format_2_and_not_asked_of_format_1(model_file, tmp_path, capsys):
    meta = meta_of(model_file)
    assert meta["format"] == "sparsevit-model/2" and read_meta(model_file).format_version == 2
    no_digest = rewrite(model_file, tmp_path / "nodigest.safetensors", digest=False)
    code, _, err = run_cli(["info", no_digest], capsys)
    assert_one_line_error(code, err, "carries no weights digest")
    old = rewrite(model_file, tmp_path / "v1.safetensors", meta=dict(meta, format="sparsevit-model/1"), digest=False)
    code, out, err = run_cli(["info", old], capsys)
    assert code == 0, err
    assert "format 1: no digest" in out


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m.pop("format"), "without a 'format'"),
    (lambda m: m.update(img_size=96), "img_size is 96 but model_args.img_size is 64"),
    (lambda m: m.update(class_names=["zero", "one"]), "class_names lists 2 names for 10 classes"),
    (lambda m: m.update(num_classes=3), "num_classes is 3 but model_args.num_classes is 10"),
    (lambda m: m.update(model="x" * 5000), "unknown timm model"),
])
@pytest.mark.parametrize("command", ["info", "evaluate", "export"])
def test_metadata_that_contradicts_itself_is_one_line(model_file, data_dir, tmp_path, capsys, edit, needle, command):
    meta = meta_of(model_file)
    edit(meta)
    bad = rewrite(model_file, tmp_path / "bad.safetensors", meta=meta)
    code, _, err = run_cli(command_lines(bad, data_dir, tmp_path)[command], capsys)
    # info too (issue 29): it shows the file, and says in its error line why every other command refuses it
    assert_one_line_error(code, err, needle)
    assert len(err) < 600  # a 5000-character name is cut, not echoed whole


@pytest.mark.parametrize("command", ["info", "evaluate"])
def test_metadata_nested_100000_deep_is_one_line(model_file, data_dir, tmp_path, capsys, command):
    meta = json.dumps(meta_of(model_file))[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    bad = rewrite(model_file, tmp_path / "deep.safetensors", raw_meta=meta)
    code, _, err = run_cli(command_lines(bad, data_dir, tmp_path)[command], capsys)
    assert_one_line_error(code, err, "nested too deeply")


def test_a_checkpoint_of_another_depth_says_the_architecture_differs(tmp_path):
    from sparsevit_cli.timm_models import load_timm_checkpoint
    small = dict(img_size=64, window_size=4, embed_dim=8, num_heads=[1, 1, 1, 1])
    small_s = timm.create_model("swin_small_patch4_window7_224", **small)
    torch.save(small_s.state_dict(), tmp_path / "swin_s.pth")
    tiny = timm.create_model(MODEL, **small)
    with pytest.raises(UserError, match=r"another architecture \(blocks per stage \[2, 2, 18, 2\], the model has "
                                        r"\[2, 2, 6, 2\]\)") as e:
        load_timm_checkpoint(tiny, tmp_path / "swin_s.pth")
    assert "Sequential" not in str(e.value)


def test_a_nan_starting_checkpoint_is_named_not_blamed_on_the_learning_rate(tmp_path):
    from sparsevit_cli.timm_models import read_state_dict
    state = timm.create_model(MODEL, **MICRO_ARGS).state_dict()
    state["head.fc.weight"][0, 0] = float("inf")
    torch.save(state, tmp_path / "inf.pth")
    with pytest.raises(UserError, match="non-finite weights .* in head.fc.weight") as e:
        read_state_dict(tmp_path / "inf.pth")
    assert "optim.lr" not in str(e.value)


def test_save_model_refuses_to_write_nan_weights(tmp_path):
    model = timm.create_model(MODEL, **MICRO_ARGS)
    with torch.no_grad():
        model.head.fc.bias.fill_(float("nan"))
    with pytest.raises(UserError, match="head.fc.bias is not finite"):
        save_model(tmp_path / "m.safetensors", model, {"model": MODEL, "model_args": MICRO_ARGS})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- outputs
def test_a_lock_that_is_a_symlink_or_a_fifo_is_refused_and_never_written(tmp_path):
    from sparsevit_cli.io import FolderLock
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".lock").symlink_to(notes)
    with pytest.raises(UserError, match="is a symbolic link"):
        FolderLock(tmp_path / "a").acquire()
    assert notes.read_text() == "my notes\n"
    (tmp_path / "b").mkdir()
    os.mkfifo(tmp_path / "b" / ".lock")
    with pytest.raises(UserError, match="not a regular file"):
        FolderLock(tmp_path / "b").acquire()


def test_finetune_with_a_symlinked_lock_leaves_the_linked_file_alone(data_dir, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(notes)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": MODEL, "args": MICRO_ARGS}, "data": {"path": str(data_dir)},
                                   "epochs": 1, "batch_size": 8, "out": str(out)}))
    code, _, err = run_cli(["finetune", cfg, "--no-progress"], capsys)
    assert_one_line_error(code, err, "is a symbolic link")
    assert notes.read_text() == "my notes\n"


@pytest.mark.parametrize("case,needle", [
    ("out=checkpoint", "is the command's --checkpoint too"),
    ("suffix", "does not end in .onnx, the suffix of --format onnx"),
    ("torchscript suffix", "does not end in .pt, the suffix of --format torchscript"),
    ("symlink", "is a symbolic link"),
    ("long name", "file name too long"),
])
def test_export_never_writes_over_an_input_a_link_or_with_the_wrong_suffix(model_file, tmp_path, capsys, case, needle):
    before = model_file.read_bytes()
    target = {"out=checkpoint": [model_file, "onnx"], "suffix": [tmp_path / "m.safetensors", "onnx"],
              "torchscript suffix": [tmp_path / "m.onnx", "torchscript"], "symlink": [tmp_path / "link.onnx", "onnx"],
              "long name": [tmp_path / ("x" * 300 + ".onnx"), "onnx"]}[case]
    if case == "symlink":
        (tmp_path / "link.onnx").symlink_to(tmp_path / "victim.txt")
        (tmp_path / "victim.txt").write_text("keep")
    code, _, err = run_cli(["export", "--checkpoint", model_file, "--out", target[0], "--format", target[1]], capsys)
    assert_one_line_error(code, err, needle)
    assert model_file.read_bytes() == before
    if case == "symlink":
        assert (tmp_path / "victim.txt").read_text() == "keep"


def test_visualize_never_writes_over_its_image(model_file, tmp_path, capsys, data_dir):
    image = tmp_path / "photo.png"
    image.write_bytes(next((data_dir / "val").rglob("*.png")).read_bytes())
    before = image.read_bytes()
    code, _, err = run_cli(["visualize", "--checkpoint", model_file, "--image", image, "--out", image], capsys)
    assert_one_line_error(code, err, "is the command's --image too")
    assert image.read_bytes() == before


def test_a_run_that_would_replace_its_own_starting_model_file_is_refused(model_file, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    start = out / "model.safetensors"
    start.write_bytes(model_file.read_bytes())
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"checkpoint": str(start), "data": {"path": str(data_dir)}, "epochs": 1,
                                   "batch_size": 8, "out": str(out)}))
    code, _, err = run_cli(["finetune", cfg, "--resume", "--no-progress"], capsys)
    assert_one_line_error(code, err, "is the model file this run writes")
    assert start.read_bytes() == model_file.read_bytes()


# ---- every writer against full / read-only file systems, long and invalid names


def _mount(folder, options):
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs (root only; skipped elsewhere), unmounted after the test."""
    folder = tmp_path / "fs"
    folder.mkdir()
    if os.geteuid() != 0 or not _mount(folder, "size=1m"):
        pytest.skip("needs root to mount a tmpfs")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("fault", ["full", "read-only"])
@pytest.mark.parametrize("writer", WRITER_NAMES)
def test_every_writer_turns_a_full_or_read_only_disk_into_one_line(tiny_fs, model_file, writer, fault):
    write = _writers(model_file)[writer]
    target = tiny_fs / FILE_NAMES.get(writer, "out.bin")
    target.write_bytes(b"previous")
    if fault == "full":
        fd = os.open(tiny_fs / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # every block taken
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    with pytest.raises(UserError) as e:
        write(target)
    message = str(e.value)
    assert "\n" not in message and ("No space left on device" if fault == "full" else "read-only file system") in message
    assert "is kept" in message
    assert target.read_bytes() == b"previous"
    assert temp_files(tiny_fs) == []


@pytest.mark.parametrize("error", [errno.ENAMETOOLONG, errno.EINVAL, errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize("writer", WRITER_NAMES)
def test_every_writer_turns_each_os_error_into_one_line(tmp_path, monkeypatch, model_file, writer, error):
    from sparsevit_cli import io as sv_io
    write = _writers(model_file)[writer]
    target = tmp_path / FILE_NAMES.get(writer, "out.bin")
    target.write_bytes(b"previous")
    real_replace = sv_io.os.replace

    def failing(src, dst):
        if Path(dst) == target:
            raise OSError(error, os.strerror(error))
        return real_replace(src, dst)
    monkeypatch.setattr(sv_io.os, "replace", failing)
    with pytest.raises(UserError, match=f"cannot write .*{target.name}.*is kept"):
        write(target)
    assert target.read_bytes() == b"previous" and temp_files(tmp_path) == []


@pytest.mark.parametrize("fault", FS_FAULTS)
@pytest.mark.parametrize("writer", WRITER_NAMES)
def test_every_writer_against_every_file_system_fault(model_file, tmp_path, monkeypatch, writer, fault):
    check_writer_fault(_writers(model_file)[writer], FILE_NAMES.get(writer, "out.bin"), fault, tmp_path / "case",
                       monkeypatch)


@pytest.mark.parametrize("command", ["finetune", "search", "export", "visualize", "demo-data"])
def test_a_300_character_out_is_one_line(model_file, data_dir, tmp_path, capsys, command):
    long_out = tmp_path / ("o" * 300)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": MODEL, "args": MICRO_ARGS}, "data": {"path": str(data_dir)},
                                   "epochs": 1, "batch_size": 8}))
    argv = {"finetune": ["finetune", cfg, "--out", long_out, "--no-progress"],
            "search": command_lines(model_file, data_dir, tmp_path)["search"][:5] + ["--out", long_out,
                                                                                      "--budget-macs", "50%"],
            "export": ["export", "--checkpoint", model_file, "--out", str(long_out) + ".onnx"],
            "visualize": command_lines(model_file, data_dir, tmp_path)["visualize"][:5] + ["--out", str(long_out) + ".png"],
            "demo-data": ["demo-data", long_out]}[command]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "too long")


def test_a_name_too_long_for_the_file_system_is_one_line(tmp_path):
    from sparsevit_cli.io import atomic_write_text
    with pytest.raises(UserError, match="file name too long"):
        atomic_write_text(tmp_path / ("n" * 300), "x")
    assert temp_files(tmp_path) == []
    atomic_write_text(tmp_path / ("n" * 250), "x")  # near the limit: the temporary name is shortened
    assert (tmp_path / ("n" * 250)).read_text() == "x"


@pytest.mark.parametrize("signame,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_mid_write_leaves_no_temp_file_and_says_one_line(model_file, tmp_path, capsys, monkeypatch,
                                                                   signame, code):
    """`info` whose weights check writes a file and gets a real signal halfway through it (main installs the
    handlers in this very process)."""
    import signal
    import sparsevit_cli.model_file as mf
    from sparsevit_cli.io import atomic_write
    target = tmp_path / "out.txt"
    target.write_text("previous")

    def write(f):
        f.write("half")
        f.flush()
        os.kill(os.getpid(), getattr(signal, signame))
        raise AssertionError("the signal did not interrupt the write")
    monkeypatch.setattr(mf, "read_weights", lambda path, meta=None: atomic_write(target, write))
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    got, _, err = run_cli(["info", model_file], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, err
    assert len(lines) == 1 and f"interrupted ({signame})" in lines[0], err
    assert target.read_text() == "previous" and temp_files(tmp_path) == []
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers restored


def test_resumable_commands_say_how_to_continue():
    import signal
    from sparsevit_cli.cli import _interrupted_line
    assert "--resume" in _interrupted_line(["finetune", "run.yaml"], signal.SIGTERM)
    assert "--resume" in _interrupted_line(["search", "--checkpoint", "m"], signal.SIGINT)
    assert "--resume" not in _interrupted_line(["export", "--out", "x"], signal.SIGINT)


# --------------------------------------------------------------------------------------------- run folders
def test_search_into_a_finetune_folder_and_back_is_refused(model_file, data_dir, tmp_path, capsys):
    from sparsevit_cli.io import FolderLock
    train_out = tmp_path / "ft"
    FolderLock(train_out, kind="finetune").acquire().release()
    (train_out / "last.pt").write_bytes(b"x")
    code, _, err = run_cli(command_lines(model_file, data_dir, tmp_path)["search"][:5] +
                           ["--out", train_out, "--budget-macs", "50%", "--resume"], capsys)
    assert_one_line_error(code, err, "holds a finetune run, not a search run")
    assert sorted(p.name for p in train_out.iterdir()) == [".lock", ".sparsevit-run", "last.pt"]

    search_out = tmp_path / "se"  # a search folder from before kinds were recorded: told by its files
    search_out.mkdir()
    (search_out / "search_state.json").write_text("{}")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": MODEL, "args": MICRO_ARGS}, "data": {"path": str(data_dir)},
                                   "epochs": 1, "batch_size": 8, "out": str(search_out)}))
    code, _, err = run_cli(["finetune", cfg, "--resume", "--no-progress"], capsys)
    assert_one_line_error(code, err, "holds a search run, not a finetune run")
    assert sorted(p.name for p in search_out.iterdir()) == [".lock", "search_state.json"]


# --------------------------------------------------------------------------------------------- run configs
@pytest.mark.parametrize("edit,needle", [
    ({"seed": 10 ** 23}, "seed must be <= 4294967295"),
    ({"seed": 1e23}, "seed must be an integer"),
    ({"epochs": 10 ** 29}, "epochs must be <= 100000"),
    ({"data": {"num_workers": 100000}}, "data.num_workers must be <="),
    ({"model": {"args": {"drop_path_rate": 5.0}}}, "model.args.drop_path_rate must be a probability in [0, 1)"),
    ({"model": {"args": {"attn_drop_rate": -0.1}}}, "model.args.attn_drop_rate must be a probability"),
    ({"model": {"args": {"in_chans": 1}}}, "model.args.in_chans must be 3"),
    ({"model": {"args": {"depths": [2, 0]}}}, "model.args.depths must be a positive integer"),
    ({"optim": {"momentum": 1.5}}, "optim.momentum must be < 1"),
    ({"task_options": {"box_score_thresh": 2.0}}, "task_options.box_score_thresh must be <= 1"),
    ({"optim": {"lr": "x" * 1_000_000}}, "(1000002 characters)"),
])
def test_run_config_numbers_have_sane_ranges(tmp_path, edit, needle):
    from sparsevit_cli.train.run_config import load_run_config
    cfg = {"model": {"name": MODEL, "args": dict(MICRO_ARGS)}, "data": {"path": "data"}}
    for key, value in edit.items():
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, dict):
                    cfg[key].setdefault(k, {}).update(v)
                else:
                    cfg.setdefault(key, {})[k] = v
        else:
            cfg[key] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError) as e:
        load_run_config(path)
    assert needle in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 300


def test_num_classes_that_contradict_the_data_are_refused(data_dir, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": MODEL, "args": dict(MICRO_ARGS, num_classes=3)},
                                   "data": {"path": str(data_dir)}, "epochs": 1, "batch_size": 8,
                                   "out": str(tmp_path / "out")}))
    code, _, err = run_cli(["finetune", cfg, "--no-progress"], capsys)
    assert_one_line_error(code, err, "model.args.num_classes: 3, but")
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("kind", ["run config", "best.yaml", "search space", "data metadata"])
def test_a_duplicate_yaml_key_names_the_key_and_both_lines(tmp_path, kind):
    from sparsevit_cli.io import load_yaml, read_sparsity_file
    from sparsevit_cli.search.space import load_space
    from sparsevit_cli.train.run_config import load_run_config
    text = {"run config": "data: {path: d}\nepochs: 3\nout: runs/a\nepochs: 5\n",
            "best.yaml": "sparsity: [[0.1], [0.2]]\nmodel: a\nsparsity: [[0.3], [0.4]]\n",
            "search space": "method: sparsevit\ngenes:\n  g: {values: [0.1]}\nmethod: x\n",
            "data metadata": "num_classes: 3\nflip_invariant: true\nnum_classes: 4\n"}[kind]
    path = tmp_path / "f.yaml"
    path.write_text(text)
    read = {"run config": load_run_config, "best.yaml": read_sparsity_file, "search space": load_space,
            "data metadata": lambda p: load_yaml(p, "data metadata")}[kind]
    with pytest.raises(UserError, match=r"duplicate key '\w+' \(lines \d and \d\)") as e:
        read(path)
    assert "\n" not in str(e.value)


def test_yaml_merge_keys_may_still_be_overridden():
    from sparsevit_cli.io import parse_yaml
    assert parse_yaml("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n")["d"] == {"x": 3, "y": 2}


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_a_fifo_or_device_as_run_config_is_one_line(tmp_path, capsys, special):
    path = tmp_path / "run.yaml"
    if special == "fifo":
        os.mkfifo(path)
    else:
        path = Path(special)
    code, _, err = run_cli(["finetune", path, "--no-progress"], capsys)
    assert_one_line_error(code, err, "is not a regular file (a FIFO, device or socket)")


def test_an_oversized_config_is_refused_without_reading_it_all(tmp_path):
    from sparsevit_cli.io import read_user_text
    path = tmp_path / "big.yaml"
    path.write_text("a" * 2048)
    with pytest.raises(UserError, match="larger than"):
        read_user_text(path, "run config", limit=1024)


# --------------------------------------------------------------------------------------------- data
def _coco(tmp_path, **edit):
    from PIL import Image
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "img" / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}],
            "categories": [{"id": 1, "name": "one"}]}
    for key, value in edit.items():
        data[key] = value
    return data


@pytest.mark.parametrize("edit,needle", [
    ({"annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, float("nan"), 10, 10]}]},
     "annotation 0 (id 7) has a non-finite bbox"),
    ({"annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, float("inf"), 10]}]},
     "non-finite bbox"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}] * 2},
     "image id 1 is used twice (image entries 0 and 1)"),
])
def test_coco_annotations_are_validated(tmp_path, edit, needle):
    from sparsevit_cli.detection.coco import validate_coco
    data = _coco(tmp_path, **edit)
    with pytest.raises(UserError) as e:
        validate_coco(data, tmp_path / "ann.json", tmp_path / "img")
    assert needle in str(e.value)


def test_evaluate_on_a_bad_image_does_not_point_at_a_run_config(model_file, data_dir, tmp_path, capsys):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    broken = sorted((data / "val").iterdir())[0] / "aaa_broken.png"
    broken.write_bytes(b"not a png")
    code, _, err = run_cli(["evaluate", "--checkpoint", model_file, "--data", data], capsys)
    assert_one_line_error(code, err, "cannot read image")
    assert "run config" not in err


def test_demo_data_on_a_full_disk_is_one_line_and_leaves_nothing(tiny_fs, capsys):
    code, _, err = run_cli(["demo-data", tiny_fs / "d", "--img-size", "64", "--train", "60", "--val", "30"], capsys)
    assert_one_line_error(code, err, "No space left on device")
    assert [p.name for p in tiny_fs.iterdir()] in ([], ["d"])
    assert not any((tiny_fs / "d").iterdir()) if (tiny_fs / "d").exists() else True


@pytest.mark.parametrize("command", ["measure", "info", "evaluate"])
def test_a_300_character_checkpoint_name_is_one_line(tmp_path, capsys, command):
    path = tmp_path / ("c" * 300 + ".safetensors")
    argv = {"measure": ["measure", "--checkpoint", path], "info": ["info", path],
            "evaluate": ["evaluate", "--checkpoint", path, "--data", tmp_path]}[command]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "file name too long")


@pytest.mark.parametrize("option", ["--seed", "--split-seed"])
@pytest.mark.parametrize("value", ["-1", str(10 ** 30), "1e23"])
def test_search_seeds_out_of_range_are_one_line(model_file, data_dir, tmp_path, capsys, option, value):
    """A search seed is 0..2^32-1 like a run config's (10**30 used to reach the RNG)."""
    code, _, err = run_cli(["search", "--checkpoint", model_file, "--data", data_dir, "--out", tmp_path / "s",
                            "--budget-macs", "50%", option, value], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert len([l for l in err.strip().splitlines() if l.strip()]) == 1, err
    assert option in err, err
    assert not (tmp_path / "s").exists()
