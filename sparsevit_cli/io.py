"""YAML files a user hands to the toolkit: loading with one-line errors, and the sparsity-config format.

A sparsity-config file (what `search` writes as best.yaml, and what `finetune`, `export` and `measure`
take) is a mapping with at least `sparsity:` (one list of gene values per group); it may also name the
`method`, `model` and `img_size` it was searched for, plus the metrics the search measured.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, IO

import yaml

from .errors import UserError


def load_yaml(path: str | os.PathLike, what: str = "YAML file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} '{path}' not found")
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{what} '{path}' is not valid YAML{where}: {getattr(e, 'problem', None) or e}")


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


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False) -> None:
    """Call `write(file)` on a temporary file in the same folder, then os.replace it onto `path`: readers
    never see half a file, and an interrupted write leaves the previous file (or none) behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_yaml_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write YAML so a reader never sees a half-written file."""
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=None))
