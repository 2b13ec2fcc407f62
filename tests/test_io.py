"""The one atomic writer (io.atomic_write and its text/bytes/JSON/YAML/torch forms) and the folder lock."""
import errno
import json
import os
import signal
import stat
import subprocess
import sys

import pytest
import torch
import yaml

from sparsevit_cli.errors import UserError
from sparsevit_cli.io import (FolderLock, atomic_torch_save, atomic_write, atomic_write_bytes, atomic_write_json,
                              atomic_write_text, atomic_write_yaml, remove_stale_temp_files,
                              torch_load_weights)


def temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_every_form_round_trips(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "héllo\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\xff")
    atomic_write_json(tmp_path / "c.json", {"x": [1, 2.5]})
    atomic_write_yaml(tmp_path / "d.yaml", {"sparsity": [[0.1], [0.2]]})
    atomic_torch_save(tmp_path / "e.pt", {"w": torch.arange(3)})
    atomic_write_text(tmp_path / "new" / "deeper" / "f.txt", "x")  # missing folders are made
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2.5]}
    assert yaml.safe_load((tmp_path / "d.yaml").read_text()) == {"sparsity": [[0.1], [0.2]]}
    assert torch.equal(torch.load(tmp_path / "e.pt", weights_only=True)["w"], torch.arange(3))
    assert (tmp_path / "new" / "deeper" / "f.txt").read_text() == "x"
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_permissions_open_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "atomic.txt", "x")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("error", [ValueError("bad value"), KeyboardInterrupt(),
                                   OSError(errno.ENOSPC, "No space left on device")])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, error):
    target = tmp_path / "model.bin"
    atomic_write_bytes(target, b"good")

    def write(f):
        f.write(b"half of the new")
        raise error

    # an OSError is the user's (full disk, read-only, ...): one line that says the old file is kept
    with pytest.raises(UserError if isinstance(error, OSError) else type(error),
                       match="No space left on device; the previous file is kept" if isinstance(error, OSError) else None):
        atomic_write(target, write, binary=True)
    assert target.read_bytes() == b"good"
    assert temp_files(tmp_path) == []


def test_the_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    atomic_write_text(tmp_path / "x.txt", "data")
    assert events[:2] == ["fsync", "replace"]


def test_keep_previous_rotates_the_old_file(tmp_path):
    atomic_write_text(tmp_path / "last", "one")
    atomic_write(tmp_path / "last", lambda f: f.write("two"), keep_previous=tmp_path / "prev")
    atomic_write(tmp_path / "last", lambda f: f.write("three"), keep_previous=tmp_path / "prev")
    assert (tmp_path / "last").read_text() == "three" and (tmp_path / "prev").read_text() == "two"

    def fail(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError):  # a failed write rotates nothing
        atomic_write(tmp_path / "last", fail, keep_previous=tmp_path / "prev")
    assert (tmp_path / "last").read_text() == "three" and (tmp_path / "prev").read_text() == "two"


def test_a_directory_in_the_way_raises_and_leaves_no_temp_file(tmp_path):
    (tmp_path / "out.json").mkdir()
    with pytest.raises(UserError, match="a directory is in the way"):
        atomic_write_json(tmp_path / "out.json", {})
    assert temp_files(tmp_path) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale = tmp_path / f".last.pt.{dead}.0a1b2c3d.tmp"
    mine = tmp_path / f".last.pt.{alive}.0a1b2c3d.tmp"
    other = tmp_path / ".hidden.tmp"  # not the writer's pattern
    for p in (stale, mine, other):
        p.write_bytes(b"partial")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert not stale.exists() and mine.exists() and other.exists()
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_folder_lock_refuses_a_second_holder_with_one_line(tmp_path):
    with FolderLock(tmp_path / "run"):
        with pytest.raises(UserError) as e:
            FolderLock(tmp_path / "run").acquire()
        message = str(e.value)
        assert f"in use by another run (pid {os.getpid()})" in message and "\n" not in message
    with FolderLock(tmp_path / "run"):  # released on exit
        pass


def test_folder_lock_of_a_killed_process_is_taken_over(tmp_path):
    code = ("import sys, time; from sparsevit_cli.io import FolderLock; FolderLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"pid {proc.pid}"):
            FolderLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with FolderLock(tmp_path) as lock:
        assert (tmp_path / FolderLock.NAME).read_text().strip() == str(os.getpid())
        assert lock is not None


def test_folder_lock_on_an_unwritable_place_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write to output folder"):
        FolderLock(tmp_path / "file" / "run").acquire()



class _Payload:
    """Unpickling this runs `touch pwned`: a checkpoint carrying it must be refused, not run."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("content,needle", [
    (None, "holds pickled Python objects, not only tensors: refused"),
    (b"\x80\x02garbage" * 10, "cannot be read"),
    (b"", "cannot be read"),
])
def test_torch_files_load_without_running_code(tmp_path, monkeypatch, content, needle):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "model.pth"
    if content is None:
        torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _Payload()}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(UserError) as e:
        torch_load_weights(path, "checkpoint")
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "pwned").exists()
    atomic_torch_save(path, {"w": torch.ones(2)})
    assert torch.equal(torch_load_weights(path)["w"], torch.ones(2))
