"""The files a training run keeps in its output folder, and how a run resumes from them.

- `last.pt`: the whole training state in ONE file, written atomically: model, optimizer, scheduler,
  step counters, the metrics history so far and every rank's RNG states (gathered by rank 0). The
  checkpoint before it is kept as `prev.pt`. A resumed run loads `last.pt`, or `prev.pt` when `last.pt`
  is damaged (truncated, garbage, a directory) or missing, so a kill at any moment costs at most the
  steps since the checkpoint before, which the resumed run repeats exactly.
- `metrics.jsonl`: the history, rewritten from the loaded state on resume, so a line logged after the
  last checkpoint is not kept twice.
- `.lock` (io.FolderLock): one run per folder at a time; `.sparsevit-run`: the kind of run the folder
  holds (finetune, adapt; search folders say search), so no other kind of run mixes its files in.

Checkpoints are loaded with `torch.load(weights_only=True)`: tensors and plain Python values only, so a
file that carries pickled code is refused, never run.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .. import dist
from ..errors import UserError, first_line
from ..io import FolderLock, atomic_torch_save, check_name_length, atomic_write_text, remove_stale_temp_files, torch_load_weights

CHECKPOINT = "last.pt"
PREVIOUS = "prev.pt"
HISTORY = "metrics.jsonl"
#: files that show a folder holds a run (a fresh run there would overwrite it)
RUN_FILES = (CHECKPOINT, PREVIOUS, HISTORY, "model.safetensors")
#: run-config keys that do not change what a run computes, so a resumed run may change them
FREE_ON_RESUME = ("out", "checkpoint_every", "data.num_workers", "pipeline")
#: what every checkpoint holds; one without these is not one of this version's
KEYS = ("model", "optimizer", "scheduler", "scaler", "train_state", "mode", "config", "rng", "history", "loss")


class DamagedCheckpoint(Exception):
    """A checkpoint file that cannot be used: truncated, garbage, a directory, pickled code, another format."""


@contextmanager
def run_folder(out: Path, resume: bool, kind: Optional[str] = None) -> Iterator[None]:
    """Hold the output folder for one run (rank 0 holds the lock): a second run at the same folder is
    refused while this one runs, a fresh run over a folder that holds one is refused unless it resumes, a
    folder of another `kind` of run (finetune, adapt, search) is refused, and temporary files of writers
    that were killed are removed."""
    lock = dist.main_only(lambda: _claim(Path(out), resume, kind))
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _claim(out: Path, resume: bool, kind: Optional[str]) -> FolderLock:
    check_name_length(out, "--out")  # Path.exists raises on a name too long
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file, not a folder")
    lock = FolderLock(out, "--out folder", kind=kind).acquire()
    try:
        held = [name for name in RUN_FILES if (out / name).exists()]
        if held and not resume:
            raise UserError(f"'{out}' already holds a run ({held[0]}); pass --resume to continue it, or choose "
                            f"another --out")
        remove_stale_temp_files(out)
    except BaseException:
        lock.release()
        raise
    return lock


def save_checkpoint(out: Path, state: Dict[str, Any]) -> None:
    """Write `state` as out/last.pt in one atomic step, keeping the one before as out/prev.pt. A failed
    write (disk full, no permission) is one line and leaves the previous checkpoint as it was."""
    missing = [k for k in KEYS if k not in state]
    assert not missing, f"checkpoint without {missing}"
    atomic_torch_save(out / CHECKPOINT, state, keep_previous=out / PREVIOUS, what="checkpoint")


def read_checkpoint(path: Path) -> Dict[str, Any]:
    """A checkpoint's state on the CPU (RNG states must stay there); DamagedCheckpoint if unusable."""
    try:
        state = torch_load_weights(path, "checkpoint")
    except UserError as e:
        raise DamagedCheckpoint(str(e).replace(f"checkpoint '{path}' ", "", 1)) from None
    if not isinstance(state, dict) or any(k not in state for k in KEYS):
        raise DamagedCheckpoint("not a checkpoint of this version (written by an older sparsevit?)")
    return state


def load_checkpoint(out: Path, check: Callable[[Dict[str, Any], Path], None],
                    info: Callable[[str], None]) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The newest usable checkpoint in `out` as (path, state): last.pt, else prev.pt (with one `info`
    line saying why); None when the folder has neither. `check(state, path)` raises UserError when the
    checkpoint belongs to another run: that is refused, not skipped. No usable one: one UserError line."""
    problems: List[str] = []
    for name in (CHECKPOINT, PREVIOUS):
        path = out / name
        if not path.exists():
            continue
        try:
            state = read_checkpoint(path)
        except DamagedCheckpoint as e:
            problems.append(f"{name}: {e}")
            continue
        check(state, path)
        if problems or name != CHECKPOINT:
            why = "; ".join(problems) or f"{CHECKPOINT}: missing"
            info(f"{why}; resuming from {path} (step {state['train_state']['global_step']})")
            _set_aside(out / CHECKPOINT)
        return path, state
    if problems:
        raise UserError(f"no usable checkpoint in '{out}' ({'; '.join(problems)}); remove it or choose "
                        f"another --out")
    return None


def _set_aside(damaged: Path) -> None:
    """Move a damaged last.pt out of the way (kept for a look, as last.pt.unusable), so the next
    checkpoint does not rotate it over the good prev.pt."""
    if not damaged.exists():
        return
    aside = damaged.with_name(damaged.name + ".unusable")
    try:
        if aside.is_dir():
            shutil.rmtree(aside)
        os.replace(damaged, aside)
    except OSError as e:
        raise UserError(f"cannot move the damaged '{damaged}' aside ({e.strerror or first_line(e)}); remove "
                        f"it and resume again") from None


def check_same_run(saved: Dict[str, Any], current: Dict[str, Any], path: Path) -> None:
    """Refuse to resume the run saved in `path` with other settings (one line naming the key and both
    values): the result would be neither run."""
    old, new = flatten(saved), flatten(current)
    if old.get("model.name") != new.get("model.name"):
        raise UserError(f"'{path.parent}' holds a run of model {old.get('model.name')}, this run trains "
                        f"{new.get('model.name')}; choose another --out")
    for key in sorted(old.keys() | new.keys()):
        if any(key == free or key.startswith(free + ".") for free in FREE_ON_RESUME):
            continue
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            raise UserError(f"--resume: {key} is {new.get(key, '<unset>')!r} in this run but "
                            f"{old.get(key, '<unset>')!r} in the run saved in '{path}'; resume with the same "
                            f"settings, or choose another --out")


def flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def write_history(out: Path, records: List[Dict[str, Any]]) -> None:
    """out/metrics.jsonl holding exactly `records` (rewritten whole and atomically: a kill never leaves
    half a line, and a resumed run drops lines its checkpoint has not seen)."""
    path = out / HISTORY
    if not records and not path.exists():
        return
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records), "metrics history")
