"""Files in and out: YAML a user hands to the toolkit (one-line errors), the sparsity-config format, the
one atomic writer for every output (text, bytes, JSON, YAML, torch objects) and the output-folder lock; the
files a command reads (`note_input`), which no writer may replace, and the listing of a data folder that every
loader and the pipeline's data fingerprint share (`data_files`).

A sparsity-config file (what `search` writes as best.yaml, and what `finetune`, `export` and `measure`
take) is a mapping with at least `sparsity:` (one list of gene values per group); it may also name the
`method`, `model` and `img_size` it was searched for, plus the metrics the search measured.
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import math
import re
import secrets
import stat
from pathlib import Path
from typing import Any, Callable, Dict, IO, Iterator, List, Optional, Sequence, Tuple

import yaml

from .errors import UserError, first_line, shorten


#: largest YAML/JSON input read (a run config, a search space, best.yaml are kilobytes; a device such as
#: /dev/zero would never end)
MAX_TEXT_BYTES = 16 * 1024 * 1024


def read_user_text(path: str | os.PathLike, what: str = "file", limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a file a user names; missing, a directory, a FIFO or device, larger than `limit`,
    unreadable or binary (not UTF-8) is one UserError line naming it. The one reader behind every YAML/JSON
    input."""
    path = check_file(path, what)
    note_input(path, what)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except PermissionError:
        raise UserError(f"{what} '{path}' cannot be read: permission denied") from None
    except OSError as e:
        raise UserError(f"{what} '{path}' cannot be read: {e.strerror or e}") from None
    if len(data) > limit:
        raise UserError(f"{what} '{path}' is larger than {limit // 2**20} MiB; not a {what}?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} '{path}' is not UTF-8 text (byte {e.start}): a binary file?") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error naming the key and
    both lines (PyYAML keeps the last silently: a setting the user wrote would be ignored). Keys merged in
    with `<<:` may be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: Dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                try:
                    key = self.construct_object(key_node, deep=True)
                    hash(key)
                except Exception:  # an unhashable key: the base constructor reports it
                    continue
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{shorten(key)}' (lines {seen[key]} and {line}); give each "
                                    f"key once", key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """`text` parsed as YAML by the toolkit's one loader (safe, duplicate keys refused): every YAML file the
    toolkit reads goes through here. Raises yaml.YAMLError."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def load_yaml(path: str | os.PathLike, what: str = "YAML file", mapping: bool = False) -> Any:
    """The parsed content of a YAML file; every way of not being one (see `read_user_text`, bad YAML, a
    duplicate key, and with `mapping` anything but a mapping or an empty file) is one UserError line naming
    the file."""
    text = read_user_text(path, what)
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = str(getattr(e, "problem", None) or e).splitlines()[0]
        raise UserError(f"{what} '{path}' is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise UserError(f"{what} '{path}' is nested too deeply to be a {what}") from None
    if mapping and data is not None and not isinstance(data, dict):
        raise UserError(f"{what} '{path}' must be a mapping of keys, got {type(data).__name__}")
    return {} if mapping and data is None else data


def read_sparsity_file(path: str | os.PathLike) -> Dict[str, Any]:
    """Read a sparsity-config file; returns its mapping with a `sparsity` guaranteed: a list of groups (one
    list of ratios per stage), or one number for uniform sparsity (`sparsity: 0.5`, as the Python API's
    `load(path, 0.5)` takes it), as a float."""
    data = load_yaml(path, "config file")
    if isinstance(data, (list, int, float)) and not isinstance(data, bool):  # a bare list or number too
        data = {"sparsity": data}
    if not isinstance(data, dict) or "sparsity" not in data:
        raise UserError(f"config file '{path}' needs a 'sparsity:' key: one number (uniform) or one list of "
                        f"ratios per stage")
    value = data["sparsity"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise UserError(f"config file '{path}': 'sparsity' must be a finite number, got {value}")
        return dict(data, sparsity=float(value))
    if not isinstance(value, list):
        raise UserError(f"config file '{path}': 'sparsity' must be a list of lists or one number, got "
                        f"{type(value).__name__}")
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
# Every output file is written by `atomic_write` / `atomic_output`: into a temporary sibling
# `.<name>.<pid>.<hex>.tmp` (created exclusively, so never through a link someone put there), flushed and
# fsynced, then renamed onto the target (and the folder fsynced), so a reader or a resumed run sees the old
# file or the new one, never half of one. The temporary file is removed on any failure (also Ctrl-C and
# SIGTERM, which the CLI turns into an exception); one left by a killed process is removed by
# `remove_stale_temp_files` when the next run starts. A failed write (disk full, read-only file system,
# name too long, ...) is one UserError line that says the previous file is kept.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]+\.tmp(\.[A-Za-z0-9]+)?$")
#: characters of the target's name kept in its temporary file's name (a name near the file system's limit
#: must not fail only because its temporary sibling is longer)
_TEMP_NAME_CHARS = 64

#: what a failed write says, by errno (the strerror of others)
_WRITE_ERRORS = {errno.ENOSPC: "No space left on device", errno.EROFS: "read-only file system",
                 errno.ENAMETOOLONG: "file name too long for the file system",
                 errno.EINVAL: "invalid file name or operation for this file system",
                 errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted", errno.EISDIR: "a directory is in the way",
                 errno.ENOTDIR: "a file stands where a folder should be"}


def write_error(e: OSError, path: str | os.PathLike, what: str = "file", kept: bool = True) -> UserError:
    """The one line for an OSError while writing `what` at `path`."""
    reason = _WRITE_ERRORS.get(e.errno) or e.strerror or first_line(e)
    tail = f"; the previous {what} is kept" if kept and os.path.lexists(path) else "; nothing was written"
    return UserError(f"cannot write {what} '{shorten(str(path), 200)}': {reason}{tail}")


def refuse_link(path: str | os.PathLike, what: str = "file") -> None:
    """One line when `path` is a symbolic link, or a FIFO, socket or device: the toolkit never writes
    through one, nor replaces it (someone set it up for a reason)."""
    if os.path.islink(path):
        raise UserError(f"{what} '{path}' is a symbolic link; sparsevit does not write through or over links: "
                        f"remove it or choose another path")
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a directory is refused by the rename, in its words
        raise UserError(f"{what} '{path}' is not a regular file (a FIFO, socket or device); remove it or choose "
                        f"another path")


def _new_temp(path: Path, suffix: str = "") -> tuple:
    """(fd, path) of a new, empty temporary sibling of `path`, created exclusively (O_EXCL: never an
    existing file or link), with the permissions `open()` would give (0o666 minus the umask); `suffix` for
    writers that go by the name's suffix."""
    tmp = path.with_name(f".{path.name[:_TEMP_NAME_CHARS]}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    return os.open(tmp, flags, 0o666), tmp


class _RecordingFile:
    """A file whose first OSError on write is kept: torch.save reports a full disk as a RuntimeError
    ('unexpected pos ...'); the write then fails with the OSError that caused it."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


@contextlib.contextmanager
def _replacing(path: Path, what: str, keep_previous: Optional[str | os.PathLike], suffix: str = "",
               sync: bool = False) -> Iterator[tuple]:
    """The one protocol behind every write: yields (fd, temporary path) of a new sibling of `path`; when the
    block ends without error the file is fsynced (`sync`: by reopening it, for writers that closed it) and
    renamed onto `path`. On any error (Ctrl-C and SIGTERM included) the temporary file is removed and
    `path` left as it was; an OSError becomes one UserError line. A `path` that is one of the running
    command's inputs (`note_input`) is refused before anything is written."""
    refuse_link(path, what)
    refuse_input(path, what)
    tmp: Optional[Path] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _new_temp(path, suffix)
        yield fd, tmp
        if sync:
            _fsync_file(tmp)
        _publish(tmp, path, keep_previous)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(e, path, what) from None
        raise
    _fsync_folder(path.parent)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, what: str = "file",
                  keep_previous: Optional[str | os.PathLike] = None, suffix: str = "") -> Iterator[Path]:
    """Yield the path of a new, empty temporary file beside `path` for a writer that writes by name (an
    exporter, a plotting library); when the block ends without error the file replaces `path` (with
    `keep_previous`, an existing `path` is first renamed there). On any error the temporary file is removed
    and `path` is left as it was; an OSError becomes one UserError line."""
    with _replacing(Path(path), what, keep_previous, suffix, sync=True) as (fd, tmp):
        os.close(fd)
        yield tmp


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False,
                 keep_previous: Optional[str | os.PathLike] = None, what: str = "file") -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it onto `path`. With
    `keep_previous`, an existing `path` is first renamed there (a checkpoint keeps its predecessor).
    A failed write is one UserError line (see `atomic_output`); `path` is then as it was."""
    with _replacing(Path(path), what, keep_previous) as (fd, tmp):
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            recorder = _RecordingFile(f)
            try:
                write(recorder)
            except Exception:
                if recorder.error is not None:  # the library's error hides the OSError that caused it
                    raise recorder.error from None
                raise
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible


def _publish(tmp: Path, path: Path, keep_previous: Optional[str | os.PathLike]) -> None:
    """Rename `tmp` onto `path`; with `keep_previous`, the file `path` held moves there. The old file is
    first hard-linked to a temporary name, so a failed rename leaves `path` (and `keep_previous`) as they
    were; where hard links do not exist it is moved first, as before."""
    if os.path.isdir(path) and not os.path.islink(path):  # never moved aside as a "previous file"
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    if keep_previous is None or not path.exists():
        os.replace(tmp, path)
        return
    refuse_link(keep_previous)
    old = path.with_name(f".{path.name[:_TEMP_NAME_CHARS]}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        os.link(path, old)
    except OSError:  # no hard links here (FAT, some network file systems)
        os.replace(path, keep_previous)
        os.replace(tmp, path)
        return
    try:
        os.replace(tmp, path)
        os.replace(old, keep_previous)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(old)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "file") -> None:
    atomic_write(path, lambda f: f.write(text), what=what)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, what: str = "file") -> None:
    atomic_write(path, lambda f: f.write(data), binary=True, what=what)


def atomic_write_json(path: str | os.PathLike, data: Any, indent: Optional[int] = 1, what: str = "file") -> None:
    atomic_write_text(path, json.dumps(data, indent=indent), what)


def yaml_text(data: Any) -> str:
    """The toolkit's YAML style for files it writes (keys in order, short lists inline)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def atomic_write_yaml(path: str | os.PathLike, data: Any, what: str = "file") -> None:
    atomic_write_text(path, yaml_text(data), what)


def atomic_torch_save(path: str | os.PathLike, obj: Any, keep_previous: Optional[str | os.PathLike] = None,
                      what: str = "file") -> None:
    import torch  # io stays importable without torch (the CLI's --help does not load it)
    atomic_write(path, lambda f: torch.save(obj, f), binary=True, keep_previous=keep_previous, what=what)


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
    next one; the file holds the owner's pid for the message. The lock file is opened without following
    links and must be a regular file (a link or a FIFO there is one line, never written through).

    With `kind` (finetune, adapt, search), the folder records which kind of run it holds (`.sparsevit-run`):
    a run of another kind is refused there, so two runs' files never mix. Use as a context manager."""

    NAME = ".lock"
    KIND_FILE = ".sparsevit-run"

    def __init__(self, folder: str | os.PathLike, what: str = "output folder", kind: Optional[str] = None):
        self.folder, self.what, self.kind = Path(folder), what, kind
        self._fd: Optional[int] = None

    def acquire(self) -> "FolderLock":
        path = self.folder / self.NAME
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
            | getattr(os, "O_CLOEXEC", 0)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if os.path.islink(path):
                raise OSError(errno.ELOOP, "is a symbolic link")
            fd = os.open(path, flags, 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UserError(f"lock file '{path}' is a symbolic link; sparsevit never writes through links: "
                                f"remove it") from None
            raise UserError(f"cannot write to {self.what} '{self.folder}': {e.strerror or e}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UserError(f"lock file '{path}' is not a regular file (a FIFO, socket or device); remove it")
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; runs are not protected from each other there
            self._fd = fd
            return self._claim_kind()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"{self.what} '{self.folder}' is in use by another run (pid {shorten(owner, 12)}); "
                            f"wait for it to finish or choose another folder") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            os.close(fd)
            raise UserError(f"cannot write to {self.what} '{self.folder}': {e.strerror or e}") from None
        self._fd = fd
        return self._claim_kind()

    def _claim_kind(self) -> "FolderLock":
        """Record this run's kind in the folder, or refuse a folder that holds another kind of run."""
        if self.kind is None:
            return self
        try:
            held = run_kind(self.folder)
            if held == "training" and self.kind in ("finetune", "adapt"):
                held = self.kind  # an older training folder: its checkpoint's mode is checked on resume
            own = {self.NAME, self.KIND_FILE}
            holds_files = any(e.name not in own and not _TEMP_NAME.match(e.name) for e in self.folder.iterdir())
            if held is not None and held != self.kind and holds_files:
                raise UserError(f"'{self.folder}' holds {_a(held)} run, not {_a(self.kind)} run; choose another "
                                f"--out (their files would mix)")
            if held != self.kind or not os.path.lexists(self.folder / self.KIND_FILE):
                atomic_write_text(self.folder / self.KIND_FILE, self.kind + "\n", "run-kind file")
        except BaseException:
            self.release()
            raise
        return self


    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race a waiter)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


#: files by which a folder written before run kinds were recorded shows what it holds
_KIND_SIGNS = {"search": ("search_state.json", "history.jsonl", "best.yaml"),
               "training": ("last.pt", "prev.pt", "metrics.jsonl", "model.safetensors")}


def run_kind(folder: str | os.PathLike) -> Optional[str]:
    """The kind of run a folder holds (finetune, adapt, search), None when it holds none. A folder from
    before kinds were recorded is told by its files: 'search' or 'training' (finetune or adapt; their
    checkpoints say which)."""
    folder = Path(folder)
    marker = folder / FolderLock.KIND_FILE
    if os.path.lexists(marker):
        if os.path.islink(marker) or not marker.is_file():
            raise UserError(f"'{marker}' is not a regular file; remove it")
        return marker.read_text(encoding="utf-8", errors="replace")[:64].strip() or None
    for kind, names in _KIND_SIGNS.items():
        if any(os.path.lexists(folder / name) for name in names):
            return kind
    return None


# --------------------------------------------------------------------------------------------- user paths
def check_file(path: str | os.PathLike, what: str = "model file") -> Path:
    """`path` as a Path if it is a regular file (a link to one is fine); one clear line when it is missing,
    a directory, or a FIFO, device or socket (reading those could block or never end)."""
    path = Path(path)
    if os.path.isdir(path):
        raise UserError(f"{what} '{path}' is a directory, not a file")
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise UserError(f"{what} '{shorten(str(path), 200)}': file name too long") from None
        if os.path.islink(path):
            raise UserError(f"{what} '{path}' is a broken symbolic link") from None
        raise UserError(f"{what} '{path}' not found") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{what} '{path}' is not a regular file (a FIFO, device or socket)")
    return path


def check_name_length(path: Path, option: str) -> None:
    """One line when a name in `path` is longer than file systems allow (255 bytes a name, 4095 a path)."""
    too_long = next((part for part in path.parts if len(os.fsencode(part)) > 255), None)
    if too_long is not None or len(os.fsencode(str(path.absolute()))) > 4095:
        raise UserError(f"{option} '{shorten(str(path), 200)}': file name too long")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (links and relative paths resolved); False when either is missing."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------------------------- command inputs
# Every file a command reads is noted here (`note_input`: the model file, a checkpoint, every YAML/JSON input,
# the annotation file, every image and mask the data loaders list), and every writer refuses a target that is
# one of them (`refuse_input`, called by `check_output_file` and by the writers' one protocol): an output
# named like an input, or reached through a symlinked folder or a hard link, never destroys the input. Files
# are known by (st_dev, st_ino), so links of any kind are the file they point to. The notes live in a scope
# (`command_inputs`) that the CLI opens around each command; outside one, noting is a no-op.
_INPUT_SCOPES: contextvars.ContextVar[Tuple["InputFiles", ...]] = contextvars.ContextVar("sparsevit_inputs",
                                                                                        default=())


class InputFiles:
    """The files one command reads: the few it names, (st_dev, st_ino) -> (what, path as named), and the many
    files of a data set as bare (st_dev, st_ino) pairs packed in one int each (a million images cost tens of
    MB, not hundreds)."""

    DATA = "data file"

    def __init__(self) -> None:
        self.files: Dict[Tuple[int, int], Tuple[str, str]] = {}
        self.data: set = set()

    def add(self, key: Tuple[int, int], what: str, path: str | os.PathLike) -> None:
        if what == self.DATA:
            self.data.add(key[0] << 64 | key[1])
        else:
            self.files.setdefault(key, (what, str(path)))

    def get(self, key: Tuple[int, int]) -> Optional[Tuple[str, str]]:
        if key in self.files:
            return self.files[key]
        return (self.DATA, "") if key[0] << 64 | key[1] in self.data else None


@contextlib.contextmanager
def command_inputs() -> Iterator[InputFiles]:
    """A scope in which the files read are noted and no writer may replace one of them (nested scopes add
    to the outer ones: a pipeline stage's inputs are protected as long as the stage runs)."""
    files = InputFiles()
    token = _INPUT_SCOPES.set(_INPUT_SCOPES.get() + (files,))
    try:
        yield files
    finally:
        _INPUT_SCOPES.reset(token)


def _file_key(path: str | os.PathLike) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def _folder_key(path: str | os.PathLike) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def note_input(path: str | os.PathLike, what: str = "input", key: Optional[Tuple[int, int]] = None) -> None:
    """Note that the running command reads the file `path` (`key`: its (st_dev, st_ino) when the caller has
    it); a no-op outside `command_inputs`, and for anything but a regular file."""
    scopes = _INPUT_SCOPES.get()
    if not scopes:
        return
    key = key or _file_key(path)
    if key is not None:
        scopes[-1].add(key, what, path)


def refuse_input(path: str | os.PathLike, option: str = "--out",
                 extra: Optional[Dict[str, Any]] = None) -> None:
    """One line when `path` is a file the running command reads (noted, or one of `extra`: {what: path}):
    writing it would destroy that input."""
    key = _file_key(path)
    if key is None:
        return
    hit = next((found for found in (scope.get(key) for scope in _INPUT_SCOPES.get()) if found), None)
    for what, other in (extra or {}).items():
        if hit is None and other is not None and _file_key(other) == key:
            hit = (what, str(other))
    if hit is not None:
        what, named = hit
        same = "" if not named or os.path.abspath(named) == os.path.abspath(path) else f" ('{shorten(named, 120)}')"
        raise UserError(f"{option} '{shorten(str(path), 200)}' is the command's {what}{same} too; writing it "
                        f"would destroy the input: choose another path")


def data_files(folder: str | os.PathLike, suffixes: Optional[Sequence[str]] = None, recursive: bool = True,
               what: str = "data folder", skip: Sequence[str | os.PathLike] = ()) -> List[Path]:
    """The files of a data folder a loader reads, sorted: every file whose name ends in one of `suffixes`
    (any case; every file when None), in subfolders too with `recursive` (links to folders followed once),
    hidden names (starting with '.': .git, .ipynb_checkpoints, .more/) skipped, as every loader and the
    pipeline's data fingerprint skip them (this is the one listing they share). A FIFO, socket or device, or a
    broken link, with such a name is one UserError line (reading it could block forever). Every file listed
    is noted as an input of the running command. Folders in `skip` (e.g. an output folder inside the data) are
    left out."""
    root = Path(folder)
    ends = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    groups: List[Tuple[str, List[Path]]] = []  # (folder, its files): sorted as torchvision's sorted(os.walk)
    seen = {key for key in (_folder_key(d) for d in skip) if key is not None}

    def walk(d: Path) -> None:
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in seen:  # a link back up the tree
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise UserError(f"cannot read {what} '{shorten(str(d), 200)}': {e.strerror or e}") from None
        out: List[Path] = []
        groups.append((str(d), out))
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    if recursive:
                        walk(d / e.name)
                    continue
                wanted = ends is None or e.name.lower().endswith(ends)
                if not wanted:
                    continue
                if not e.is_file():
                    kind = "a broken symbolic link" if e.is_symlink() and not os.path.exists(e.path) else \
                        "not a regular file (a FIFO, socket or device)"
                    raise UserError(f"'{shorten(e.path, 200)}' in {what} '{shorten(str(root), 120)}' is {kind}; "
                                    f"remove it or move it out of the data")
                key = (st.st_dev, e.inode()) if not e.is_symlink() else None
                out.append(d / e.name)
                note_input(e.path, InputFiles.DATA, key)
            except OSError as err:
                raise UserError(f"cannot read '{shorten(e.path, 200)}': {err.strerror or err}") from None

    walk(root)
    return [p for _, files in sorted(groups, key=lambda g: g[0]) for p in files]


def check_output_file(path: str | os.PathLike, option: str = "--out",
                      inputs: Optional[Dict[str, Any]] = None) -> Path:
    """`path` as a Path if a file can be written there; one line when it is a directory, a symbolic link,
    not a regular file, when a file stands where a folder above it should be, when its name is too long,
    or when it is one of the command's inputs (`inputs` ({option: path}), or a file noted by `note_input`):
    writing there would destroy that input. `inputs` are noted as inputs of the running command too."""
    path = Path(path)
    check_name_length(path, option)
    if os.path.isdir(path):
        raise UserError(f"{option} '{path}' is a directory, not a file: give the path of the file to write")
    refuse_link(path, option)
    if os.path.lexists(path) and not os.path.isfile(path):
        raise UserError(f"{option} '{path}' is not a regular file (a FIFO, device or socket)")
    for name, other in (inputs or {}).items():
        if other is not None:
            note_input(other, name)
    refuse_input(path, option, extra={name: other for name, other in (inputs or {}).items()})
    for folder in path.parents:
        if os.path.exists(folder):
            if not os.path.isdir(folder):
                raise UserError(f"{option} '{path}': '{folder}' is a file, not a folder")
            break
    return path


def check_output_dir(out: str | os.PathLike, option: str = "--out", holds: str = "its outputs") -> Path:
    """The output folder `out`, created; one line when it (or a folder above it) is a file, or it cannot be
    created or written."""
    out = Path(out)
    check_name_length(out, option)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"{option} '{out}' is a file; it must be a folder ({holds})")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {option} '{out}': {e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"{option} '{out}' is not writable")
    return out


# --------------------------------------------------------------------------------------------- progress
#: seconds between two plain progress lines of one stage when the output is not a terminal (a log file, a
#: pipe, CI): what tqdm's `mininterval` and the Hugging Face Trainer's logging steps give a log reader
PLAIN_INTERVAL_S = 30.0


def _duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class ProgressReport:
    """Progress of one stage (a search, an evaluation, a training run) over one or more counters (networks,
    images, steps), each with a total: rich bars with an ETA on a terminal; otherwise one plain line at
    most every `interval_s` seconds (and one when the stage ends), e.g.
    ``search: 12/64 networks (19%), 3000/6000 images, best 0.81 | 1m02s elapsed, ETA 4m24s``.
    The ETA extrapolates the first counter's rate. `clock` and `interval_s` are injectable (tests)."""

    def __init__(self, title: str, console=None, enabled: bool = True, interval_s: Optional[float] = None,
                 clock: Optional[Callable[[], float]] = None, terminal: Optional[bool] = None):
        import time
        self.title, self.enabled = title, enabled
        self.console = console if console is not None else make_console()
        self.clock = clock or time.monotonic
        self.interval_s = PLAIN_INTERVAL_S if interval_s is None else interval_s
        self.terminal = self.console.is_terminal if terminal is None else terminal
        self.counters: List[Dict[str, Any]] = []
        self.note = ""
        self.start = self.clock()
        self.last_line: Optional[float] = None
        self.bars = None
        if enabled and self.terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, transient=False)
            self.bars.start()

    def add(self, unit: str, total: Optional[float], completed: float = 0) -> int:
        """A counter (e.g. 'networks' out of 64); returns its handle for `update`."""
        counter = {"unit": unit, "total": total, "completed": completed, "start_completed": completed}
        if self.bars is not None:
            counter["task"] = self.bars.add_task(self.title if not self.counters else "", total=total,
                                                 completed=completed, unit=unit)
        self.counters.append(counter)
        return len(self.counters) - 1

    def counter(self, unit: str, total: Optional[float]) -> int:
        """The counter of `unit`, restarted at 0 of `total` (added the first time): a stage that repeats a
        sub-step (an evaluation per epoch, the images of each chunk of networks) reuses one counter."""
        for i, c in enumerate(self.counters):
            if c["unit"] == unit:
                c["start_completed"] = 0
                self.update(i, completed=0, total=total)
                return i
        return self.add(unit, total)

    def update(self, counter: int = 0, advance: float = 0, completed: Optional[float] = None,
               total: Optional[float] = None, note: Optional[str] = None) -> None:
        c = self.counters[counter]
        c["completed"] = c["completed"] + advance if completed is None else completed
        if total is not None:
            c["total"] = total
        if note is not None:
            self.note = note
        if not self.enabled:
            return
        if self.bars is not None:
            description = self.title + (f" {self.note}" if self.note and counter == 0 else "")
            self.bars.update(c["task"], completed=c["completed"], total=c["total"],
                             **({"description": description} if counter == 0 else {}))
            if note is not None and counter != 0 and self.counters:
                self.bars.update(self.counters[0]["task"], description=f"{self.title} {self.note}")
            return
        now = self.clock()
        if self.last_line is None or now - self.last_line >= self.interval_s:
            self._line(now)

    def line(self) -> str:
        """The plain progress line as of now."""
        return self._text(self.clock())

    def _text(self, now: float) -> str:
        parts = []
        for i, c in enumerate(self.counters):
            part = f"{c['completed']:g}/{c['total']:g} {c['unit']}" if c["total"] else f"{c['completed']:g} {c['unit']}"
            if i == 0 and c["total"]:
                part += f" ({c['completed'] / c['total']:.0%})"
            parts.append(part)
        text = f"{self.title}: " + ", ".join(parts) + (f", {self.note}" if self.note else "")
        elapsed = now - self.start
        text += f" | {_duration(elapsed)} elapsed"
        if self.counters and self.counters[0]["total"]:
            c = self.counters[0]
            done = c["completed"] - c["start_completed"]
            if done > 0 and c["completed"] < c["total"]:
                text += f", ETA {_duration(elapsed / done * (c['total'] - c['completed']))}"
        return text

    def _line(self, now: float) -> None:
        self.last_line = now
        self.console.print(self._text(now), highlight=False, soft_wrap=True)

    def close(self) -> None:
        """Stop the bars, or print the stage's last plain line (when anything moved since the last one)."""
        if self.bars is not None:
            self.bars.stop()
            self.bars = None
        elif self.enabled and self.counters:
            self._line(self.clock())
        self.enabled = False

    def __enter__(self) -> "ProgressReport":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- journals
def append_durable(path: str | os.PathLike, text: str) -> None:
    """Append `text` (whole lines) to a journal file and fsync it: the one append-only writer, for records
    that must survive a kill the moment they are made (a search's scored networks). A kill mid-append can
    leave a torn last line; `read_journal` skips it. A failed write is one UserError line."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise UserError(f"cannot append to '{path}': {e.strerror or e}") from None


def read_journal(path: str | os.PathLike) -> List[Any]:
    """The JSON records of a journal written by `append_durable`, one per line; a torn (unparsable) last
    line, left by a kill mid-append, is skipped. A missing file has none."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read '{path}': {e}") from None
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break  # torn by a kill mid-append
            raise UserError(f"'{path}' line {i + 1} is not JSON; use another output folder") from None
    return out
