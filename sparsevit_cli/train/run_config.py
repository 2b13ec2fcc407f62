"""The run-config YAML that `finetune` and `adapt` take, as typed dataclasses.

Every key is checked: an unknown key (with a did-you-mean), a wrong type or a missing required key
raises UserError naming the key path, e.g. `train.yaml: optim.lr must be a number, got 'fast'`.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..io import load_yaml, read_sparsity_file
from ..errors import UserError


@dataclass
class ModelCfg:
    name: str = "swin_tiny_patch4_window7_224"
    #: timm constructor args, e.g. {img_size: 224, embed_dim: 32, depths: [2, 2, 2, 2], num_heads: [...]}
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DataCfg:
    path: str = ""
    task: str = "classification"  # classification | segmentation
    num_workers: int = 0


@dataclass
class OptimCfg:
    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    grad_clip: Optional[float] = 5.0


@dataclass
class ScheduleCfg:
    name: str = "cosine"  # cosine | constant
    warmup_steps: int = 0
    min_lr: float = 1e-5


@dataclass
class AdaptCfg:
    #: search space (packaged name or YAML path) the per-step configs are sampled from
    space: Optional[str] = None  # default: the method's own (swin_auto for Swin, psvit_deit for ViT)
    #: sandwich rule: also train the dense and the sparsest config every step
    sandwich: bool = False
    #: configs reported at the end (uniform sparsities)
    report: List[float] = field(default_factory=lambda: [0.0, 0.3, 0.5, 0.7])


@dataclass
class RunConfig:
    model: ModelCfg = field(default_factory=ModelCfg)
    checkpoint: Optional[str] = None  # timm-format or sparsevit model file to start from
    reset_head: bool = False  # drop the checkpoint's classifier (new classes)
    data: DataCfg = field(default_factory=DataCfg)
    #: sparsity config: a number (uniform), a list per stage, or a path to a config file (e.g. best.yaml)
    sparsity: Union[float, List[Any], str] = 0.0
    #: the method's settings, e.g. SparseViT {window_score: l2-centered | l2}; a toolkit checkpoint's own
    #: settings are kept unless overridden here
    method_options: Dict[str, Any] = field(default_factory=dict)
    adapt: AdaptCfg = field(default_factory=AdaptCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    schedule: ScheduleCfg = field(default_factory=ScheduleCfg)
    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int = 64
    amp: bool = False
    device: str = "cpu"
    seed: int = 0
    out: str = "runs/finetune"
    checkpoint_every: int = 50  # steps; also at every epoch end
    #: stop after this many optimizer steps in this invocation (a deliberate interruption, for tests)
    max_steps: Optional[int] = None


def _type_name(tp) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
             dict: "a mapping"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp, where: str, src: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, src)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where, src)
            except UserError as e:
                errors.append(e)
        kinds = " or ".join(_type_name(typing.get_origin(a) or a) for a in args if a is not type(None))
        raise UserError(f"{src}: {where} must be {kinds}, got {value!r}")
    if origin in (list, List):
        if not isinstance(value, list):
            raise UserError(f"{src}: {where} must be a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{where}[{i}]", src) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise UserError(f"{src}: {where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    raise UserError(f"{src}: {where} must be {_type_name(tp)}, got {value!r}")


def _build(cls, data: Any, where: str, src: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{src}: {where or 'the file'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise UserError(f"{src}: unknown key '{path}'{hint}")
        kwargs[key] = _coerce(value, hints[key], path, src)
    return cls(**kwargs)


def parse_run_config(data: Dict[str, Any], src: str = "config") -> RunConfig:
    cfg = _build(RunConfig, data, "", src)
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise UserError(f"{src}: epochs and batch_size must be >= 1")
    if cfg.data.task not in ("classification", "segmentation"):
        raise UserError(f"{src}: data.task must be classification or segmentation, got '{cfg.data.task}'")
    if not cfg.data.path:
        raise UserError(f"{src}: data.path is required (an ImageFolder-style directory)")
    return cfg


def load_run_config(path: str | Path, overrides: Optional[Dict[str, Any]] = None) -> RunConfig:
    data = load_yaml(path, "run config")
    if overrides:
        data = dict(data or {})
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
    cfg = parse_run_config(data, str(path))
    base = Path(path).parent
    # relative paths in the file are relative to the file
    for holder, attr in ((cfg.data, "path"), (cfg, "checkpoint")):
        val = getattr(holder, attr)
        if val and not Path(val).is_absolute() and (base / val).exists():
            setattr(holder, attr, str(base / val))
    if isinstance(cfg.sparsity, str):
        sp = Path(cfg.sparsity)
        if not sp.is_absolute() and (base / sp).exists():
            sp = base / sp
        cfg.sparsity = read_sparsity_file(sp)["sparsity"]
    return cfg


def to_dict(cfg: RunConfig) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)
