"""Files in and out: YAML a user hands to the toolkit (one-line errors), the sparsity-config format, the
one atomic writer for every output (text, bytes, JSON, YAML, torch objects) and the output-folder lock.

A sparsity-config file (what `search` writes as best.yaml, and what `finetune`, `export` and `measure`
take) is a mapping with at least `sparsity:` (one list of gene values per group); it may also name the
`method`, `model` and `img_size` it was searched for, plus the metrics the search measured.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable, Dict, IO, List, Optional

import yaml

from .errors import UserError, first_line


def read_user_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of a file a user names; missing, a directory, unreadable or binary (not UTF-8) is
    one UserError line naming it. The one reader behind every YAML/JSON input."""
    path = check_file(path, what)
    try:
        return path.read_text(encoding="utf-8")
    except PermissionError:
        raise UserError(f"{what} '{path}' cannot be read: permission denied") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} '{path}' is not UTF-8 text (byte {e.start}): a binary file?") from None
    except OSError as e:
        raise UserError(f"{what} '{path}' cannot be read: {e.strerror or e}") from None


def load_yaml(path: str | os.PathLike, what: str = "YAML file", mapping: bool = False) -> Any:
    """The parsed content of a YAML file; every way of not being one (see `read_user_text`, bad YAML,
    and with `mapping` anything but a mapping or an empty file) is one UserError line naming the file."""
    text = read_user_text(path, what)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = str(getattr(e, "problem", None) or e).splitlines()[0]
        raise UserError(f"{what} '{path}' is not valid YAML{where}: {problem}") from None
    if mapping and data is not None and not isinstance(data, dict):
        raise UserError(f"{what} '{path}' must be a mapping of keys, got {type(data).__name__}")
    return {} if mapping and data is None else data


def read_sparsity_file(path: str | os.PathLike) -> Dict[str, Any]:
    """Read a sparsity-config file; returns its mapping with a `sparsity` list guaranteed."""
    data = load_yaml(path, "config file")
    if isinstance(data, list):  # a bare list of groups is accepted too
        data = {"sparsity": data}
    if not isinstance(data, dict) or "sparsity" not in data:
        raise UserError(f"config file '{path}' needs a 'sparsity:' key with one list of ratios per stage")
    if not isinstance(data["sparsity"], list):
        raise UserError(f"config file '{path}': 'sparsity' must be a list of lists, got {type(data['sparsity']).__name__}")
    return data


# --------------------------------------------------------------------------------------------- the console
#: columns of printed tables when the output is not a terminal (a pipe, a log file, CI): rich would assume 80
#: and cut column heads ("Spars…"); a log reader scrolls instead
PIPE_WIDTH = 160


def make_console(**options: Any):
    """The rich Console every command prints with: the terminal's width on a terminal, else `PIPE_WIDTH`
    columns (or $COLUMNS when set)."""
    from rich.console import Console

    console = Console(**options)
    if not console.is_terminal and "width" not in options and not os.environ.get("COLUMNS"):
        console = Console(width=PIPE_WIDTH, **options)
    return console


# --------------------------------------------------------------------------------------------- atomic writes
# Every output file is written by `atomic_write`: into a temporary sibling `.<name>.<pid>.<hex>.tmp`, flushed
# and fsynced, then renamed onto the target (and the folder fsynced), so a reader or a resumed run sees
# the old file or the new one, never half of one. The temporary file is removed on any failure (also
# Ctrl-C); one left by a killed process is removed by `remove_stale_temp_files` when the next run starts.
#: `.name.<pid>.<hex>.tmp`, optionally with a suffix a writer needs (an exporter's `.onnx`)
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]+\.tmp(\.[A-Za-z0-9]+)?$")


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False,
                 keep_previous: Optional[str | os.PathLike] = None) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it onto `path`. With
    `keep_previous`, an existing `path` is first renamed there (a checkpoint keeps its predecessor).
    The file gets the permissions `open()` would give (0o666 minus the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the renames in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), binary=True)


def atomic_write_json(path: str | os.PathLike, data: Any, indent: Optional[int] = 1) -> None:
    atomic_write_text(path, json.dumps(data, indent=indent))


def yaml_text(data: Any) -> str:
    """The toolkit's YAML style for files it writes (keys in order, short lists inline)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def atomic_write_yaml(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, yaml_text(data))


def atomic_torch_save(path: str | os.PathLike, obj: Any, keep_previous: Optional[str | os.PathLike] = None) -> None:
    import torch  # io stays importable without torch (the CLI's --help does not load it)
    atomic_write(path, lambda f: torch.save(obj, f), binary=True, keep_previous=keep_previous)


def remove_stale_temp_files(folder: str | os.PathLike) -> List[Path]:
    """Remove the temporary files `atomic_write` left in `folder` when its process was killed (their
    process is gone); files of live processes are someone's write in progress and stay."""
    removed: List[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if match and not _process_alive(int(match["pid"])):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or a platform that cannot tell: leave its files alone
    return True


def torch_load_weights(path: str | os.PathLike, what: str = "file") -> Any:
    """A torch file's content with `weights_only=True` (tensors and plain Python values: loading runs no
    code), on the CPU. Anything else is one UserError line: a file that carries pickled objects is
    refused and named as such (torch's own message tells the user to turn the protection off)."""
    import torch
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} '{path}' is a directory, not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage, pickled objects: torch raises several types
        message = str(e)
        if "GLOBAL" in message:  # the weights-only unpickler met a class or function to import
            raise UserError(f"{what} '{path}' holds pickled Python objects, not only tensors: refused, loading "
                            f"it could run code") from None
        detail = next((line.strip() for line in message.splitlines() if line.startswith("Unsupported")), None)
        raise UserError(f"{what} '{path}' cannot be read, it is damaged or not a torch file "
                        f"({detail or first_line(e)})") from None


# --------------------------------------------------------------------------------------------- folder lock
class FolderLock:
    """Exclusive use of an output folder by one process: an advisory lock (flock) on `folder/.lock`.
    The kernel drops the lock when its process ends, however it ends, so a killed run never blocks the
    next one; the file holds the owner's pid for the message. Use as a context manager."""

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike, what: str = "output folder"):
        self.folder, self.what = Path(folder), what
        self._fd: Optional[int] = None

    def acquire(self) -> "FolderLock":
        path = self.folder / self.NAME
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(f"cannot write to {self.what} '{self.folder}': {e.strerror or e}") from None
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; runs are not protected from each other there
            self._fd = fd
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"{self.what} '{self.folder}' is in use by another run (pid {owner}); wait for it "
                            f"to finish or choose another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race a waiter)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --------------------------------------------------------------------------------------------- user paths
def check_file(path: str | os.PathLike, what: str = "model file") -> Path:
    """`path` as a Path if it is a file; one clear line when it is missing or a directory."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} '{path}' is a directory, not a file")
    if not path.is_file():
        raise UserError(f"{what} '{path}' not found")
    return path


def check_output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """`path` as a Path if a file can be written there; one line when it is a directory or a file
    stands where a folder above it should be."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} '{path}' is a directory, not a file: give the path of the file to write")
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise UserError(f"{option} '{path}': '{folder}' is a file, not a folder")
            break
    return path


def check_output_dir(out: str | os.PathLike, option: str = "--out", holds: str = "its outputs") -> Path:
    """The output folder `out`, created; one line when it (or a folder above it) is a file, or it cannot be
    created or written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} '{out}' is a file; it must be a folder ({holds})")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {option} '{out}': {e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"{option} '{out}' is not writable")
    return out
