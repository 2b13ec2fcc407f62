"""One call of every kind of writer the toolkit has, and one file-system fault check, shared by the fault
tests (test_hostile: every writer x every fault) and the fuzzer (test_fuzz: drawn by hypothesis)."""
import errno
import os
from pathlib import Path

import torch

from sparsevit_cli.model_file import read_meta, save_model


def temp_files(folder):
    """Temporary files (`.name.pid.hex.tmp`) left in `folder`."""
    return [p.name for p in Path(folder).iterdir() if ".tmp" in p.name]


def writers(model_file):
    """name -> write(path): one call of each writer the toolkit has (one per kind of output)."""
    from sparsevit_cli.io import atomic_output, atomic_torch_save, atomic_write_json, atomic_write_yaml
    from sparsevit_cli.search.evolution import write_output
    from sparsevit_cli.train.state import write_history
    from sparsevit_cli.model_file import load

    def png(path):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from sparsevit_cli.io import atomic_write
        fig = Figure(figsize=(2, 2))
        FigureCanvasAgg(fig)
        fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
        atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True, what="picture")

    def by_name(path):  # an exporter writes by name
        with atomic_output(path, "onnx export") as tmp:
            tmp.write_bytes(b"\0" * 200_000)

    big = {"w": torch.zeros(100_000)}
    return {
        "checkpoint": lambda p: atomic_torch_save(p, big, keep_previous=p.with_name("prev.pt"), what="checkpoint"),
        "model file": lambda p: save_model(p, load(model_file), read_meta(model_file)),
        "best.yaml": lambda p: write_output(p, "x: 1\n" * 50_000, "best"),
        "history.jsonl": lambda p: write_history(p.parent, [{"epoch": i} for i in range(20_000)]),
        "report": lambda p: atomic_write_json(p, list(range(50_000))),
        "yaml": lambda p: atomic_write_yaml(p, {"k": list(range(2_000))}),
        "png": png,
        "export": by_name,
    }


WRITER_NAMES = ["checkpoint", "model file", "best.yaml", "history.jsonl", "report", "yaml", "png", "export"]
FILE_NAMES = {"history.jsonl": "metrics.jsonl", "model file": "model.safetensors"}


#: file-system faults every writer must turn into one line
FS_FAULTS = ["symlink", "fifo", "read-only", "full", "name too long", "file above", "directory"]


def check_writer_fault(write, name, fault, folder, monkeypatch):
    """Run `write(target)` in a fresh `folder` under `fault` (a link or a FIFO at the target, os.open failing
    with EROFS or os.fsync with ENOSPC as a read-only or full file system would, a name too long, a file where
    a folder should be, a directory in the way): one UserError line, the previous file or the link's target
    intact, no temporary file left."""
    from sparsevit_cli import io as sv_io
    from sparsevit_cli.errors import UserError

    folder.mkdir()
    target = folder / name
    victim = folder / "victim.txt"
    victim.write_text("keep")
    if fault == "symlink":
        target.symlink_to(victim)
    elif fault == "fifo":
        os.mkfifo(target)
    elif fault == "name too long":  # a folder name: writers with a fixed file name (metrics.jsonl) meet it too
        target = folder / ("n" * 300) / name
    elif fault == "file above":
        target = victim / name
    elif fault == "directory":
        target.mkdir()
    else:
        target.write_bytes(b"previous")
    real_open, real_fsync = os.open, os.fsync

    def failing_open(path, flags, *a, **k):
        if fault == "read-only" and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **k)

    def failing_fsync(fd):
        if fault == "full":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    with monkeypatch.context() as m:
        m.setattr(sv_io.os, "open", failing_open)
        m.setattr(sv_io.os, "fsync", failing_fsync)
        try:
            write(target)
            raised = None
        except UserError as e:
            raised = str(e)
    assert raised is not None and "\n" not in raised, f"{name} / {fault}: {raised}"
    assert victim.read_text() == "keep", f"{name} / {fault}"
    if fault in ("read-only", "full"):
        assert target.read_bytes() == b"previous", f"{name} / {fault}"
    if fault == "directory":
        assert target.is_dir() and not (folder / "prev.pt").exists(), f"{name} / {fault}"
    assert temp_files(folder) == [], f"{name} / {fault}"
