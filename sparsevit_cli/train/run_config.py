"""The run-config YAML that `finetune` and `adapt` take, as a typed pydantic schema.

Every key has a type and a range; the first violation raises UserError as one line naming the file,
the key path, the value and what is allowed, e.g. `run.yaml: optim.lr must be > 0, got -0.001` or
`run.yaml: unknown key 'optim.lrr' (did you mean 'lr'?)`. Command-line options are dotted overrides
(`optim.lr`) applied by the one function `apply_overrides`, for a YAML file and for flags alike.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Type, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import UserError, raise_own_user_error, shorten
from ..io import load_yaml, read_sparsity_file
from ..layers import MAX_SEED

#: `device:` values: cpu, cuda (this process's GPU under torchrun) or cuda:N
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")


class Section(BaseModel):
    """A run-config section: every key typed, no unknown key, no coercion."""
    # strict: YAML's `lr: "fast"` or `batch_size: 2.5` is a mistake to report, not to coerce
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_defaults(cls, data: Any) -> Any:
        return {} if data is None else data  # `optim:` with nothing under it


class ModelCfg(Section):
    name: str = Field("swin_tiny_patch4_window7_224", description="timm model name")
    args: Dict[str, Any] = Field(default_factory=dict, description=(
        "timm constructor args, e.g. {img_size: 224, embed_dim: 32, depths: [2, 2, 2, 2], num_heads: [...]}"))

    @field_validator("args")
    @classmethod
    def _known_args(cls, args: Dict[str, Any]) -> Dict[str, Any]:
        """The constructor args whose meaning the toolkit knows get their ranges here (timm would accept
        `drop_path_rate: 5.0` or `in_chans: 1` and fail, or train nonsense, later); others go to timm as given."""
        size = args.get("img_size")
        if size is not None and not (_is_int(size) and 1 <= size <= MAX_IMG_SIZE):
            raise ValueError(f".img_size must be a positive integer (square images, in pixels), got "
                             f"{shorten(repr(size))} (at most {MAX_IMG_SIZE})")
        for key in RATE_ARGS:
            if key in args:
                value = args[key] = _yaml_float(args[key])
                if not (_is_number(value) and 0.0 <= value < 1.0):
                    raise ValueError(f".{key} must be a probability in [0, 1), got {shorten(repr(value))}")
        if "in_chans" in args and args["in_chans"] != 3:
            raise ValueError(f".in_chans must be 3: images are read as RGB, got {shorten(repr(args['in_chans']))}")
        for key in POSITIVE_INT_ARGS:
            values = args.get(key)
            if values is None:
                continue
            ok = all(_is_int(v) and 1 <= v <= MAX_WIDTH for v in (values if isinstance(values, list) else [values]))
            if not ok or (isinstance(values, list) and not values):
                raise ValueError(f".{key} must be a positive integer (or a list of them), got {shorten(repr(values))}")
        if "num_classes" in args and not (_is_int(args["num_classes"]) and 0 <= args["num_classes"] <= MAX_WIDTH):
            raise ValueError(f".num_classes must be an integer >= 0, got {shorten(repr(args['num_classes']))}")
        return args


#: largest image side (pixels) and layer width / class count a run config may ask for
MAX_IMG_SIZE = 16384
MAX_WIDTH = 1_000_000
#: timm constructor args that are probabilities (of dropping a path, an activation, an attention weight)
RATE_ARGS = ("drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate")
#: timm constructor args that are positive integers (or per-stage lists of them)
POSITIVE_INT_ARGS = ("embed_dim", "depths", "num_heads", "window_size", "patch_size")
#: DataLoader workers per CPU core at most (more only thrash; 100000 would hang the machine)
WORKERS_PER_CORE = 4
#: bounds of counts that a typo can make absurd (epochs: 1e29 never ends; a seed must fit the RNGs)
MAX_EPOCHS = 100_000
MAX_STEPS = 10 ** 9
MAX_BATCH = 1_000_000


def max_workers() -> int:
    return WORKERS_PER_CORE * (os.cpu_count() or 1)


class DataCfg(Section):
    path: str = Field("", description="data folder: ImageFolder-style train/ and val/ (or a segmentation layout)")
    task: str = Field("classification", description="a task of sparsevit_cli.tasks.TASKS")
    num_workers: int = Field(0, ge=0, description=(
        f"DataLoader worker processes (0: load in the main process), at most {WORKERS_PER_CORE} per CPU core"))
    skip_bad_images: bool = Field(False, description=(
        "drop unreadable images (corrupt, empty, truncated) after one scan, with one info line giving the "
        "count; without it the first one stops the run with a line naming the file"))

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, n: int) -> int:
        if n > max_workers():
            raise ValueError(f"must be <= {max_workers()} ({WORKERS_PER_CORE} per CPU core of this machine), got {n}")
        return n

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        from ..tasks import TASKS  # the registry of task heads is the one list of tasks

        if task not in TASKS:
            raise ValueError(f"must be {_choices(list(TASKS))}, got {shorten(repr(task))}")
        return task


_FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _yaml_float(value: Any) -> Any:
    """YAML 1.1 reads `1e-3` (no dot) as a string: take it as the number it was meant to be."""
    return float(value) if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()) else value


class OptimCfg(Section):
    name: Literal["adamw", "sgd"] = Field("adamw", description="optimizer, built by timm.optim.create_optimizer_v2")
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False, description="peak learning rate")
    weight_decay: float = Field(0.05, ge=0, allow_inf_nan=False, description=(
        "decoupled weight decay; never on biases, norms or the model's no_weight_decay() parameters"))
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    grad_clip: Optional[float] = Field(5.0, gt=0, allow_inf_nan=False, description=(
        "clip the global gradient norm to this (null: no clipping)"))

    _numbers = field_validator("lr", "weight_decay", "momentum", "grad_clip", mode="before")(_yaml_float)


class ScheduleCfg(Section):
    name: Literal["cosine", "constant"] = Field("cosine", description="timm.scheduler schedule, stepped per optimizer step")
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description="linear warm-up steps")
    min_lr: float = Field(1e-5, ge=0, allow_inf_nan=False, description="cosine floor")

    _numbers = field_validator("min_lr", mode="before")(_yaml_float)


class AdaptCfg(Section):
    space: Optional[str] = Field(None, description=(
        "search space the per-step configs are sampled from (packaged name or YAML path); default: the "
        "method's own (swin_auto for Swin, psvit_deit for ViT)"))
    sandwich: bool = Field(False, description="also train the dense and the sparsest config every step")
    report: List[float] = Field(default_factory=lambda: [0.0, 0.3, 0.5, 0.7], description=(
        "uniform sparsities reported at the end"))

    @field_validator("report")
    @classmethod
    def _fractions(cls, values: List[float]) -> List[float]:
        bad = [v for v in values if not (math.isfinite(v) and 0.0 <= v < 1.0)]
        if bad:
            raise ValueError(f"must be sparsities in [0, 1), got {bad[0]!r}")
        return values


class MethodOptions(Section):
    """Settings of the compression method (`Method.wrap(**options)`); unset ones keep the model file's
    own setting or the method's default. Known options are typed here; an unknown one is kept so that
    the method the model turns out to use names it with its own options in its one-line error (which
    method applies is known only once the model is built)."""
    model_config = ConfigDict(extra="allow", strict=True)

    window_score: Optional[str] = Field(None, description=(
        "SparseViT window ranking, a name of sparsevit_cli.swin.patch.WINDOW_SCORES: l2-centered (default) "
        "or l2 (the paper's raw L2 magnitude)"))

    @field_validator("window_score")
    @classmethod
    def _known_score(cls, name: Optional[str]) -> Optional[str]:
        if name is not None:
            from ..swin.patch import check_window_score  # the engine's registry (imports torch: only here)
            check_window_score(name)  # UserError naming the choices
        return name

    def given(self) -> Dict[str, Any]:
        """The options set, as keyword arguments for `Method.wrap`."""
        return self.model_dump(exclude_none=True)


class TaskOptions(Section):
    """Settings of the task head, passed to `Task.build(backbone, num_classes, **options)` and stored in
    the model file (`model_file.TaskOptions`), so that loading rebuilds the same head. The common ones are
    typed here; any other is passed on as given, and the head names an unknown one in its one-line error."""
    model_config = ConfigDict(extra="allow", strict=True)

    fpn_channels: Optional[int] = Field(None, ge=1, description="FPN width (256 by default)")
    head_channels: Optional[int] = Field(None, ge=1, description="Semantic FPN head width (128)")
    dropout: Optional[float] = Field(None, ge=0, lt=1, description="Semantic FPN dropout before the classifier")
    img_size: Optional[int] = Field(None, ge=1, description=(
        "detectors: min_size and max_size at once (default: the model's img_size, so every image fits an "
        "img_size square, the size MAC budgets are stated at)"))
    min_size: Optional[Union[int, List[int]]] = Field(None, description=(
        "detectors: the shorter side torchvision's transform scales each image to, keeping its aspect ratio "
        "(default img_size); a list for multi-scale training, e.g. [480, 512, 544]: each training image draws "
        "one, evaluation uses the last"))
    max_size: Optional[int] = Field(None, ge=1, description=(
        "detectors: the longer side is never scaled past this (default img_size)"))
    size_divisible: Optional[int] = Field(None, ge=1, description=(
        "detectors: batches are padded to a multiple of this (default: the backbone's largest stride, "
        "32 for Swin-T)"))
    rpn_pre_nms_top_n_test: Optional[int] = Field(None, ge=1)
    rpn_post_nms_top_n_test: Optional[int] = Field(None, ge=1)
    box_detections_per_img: Optional[int] = Field(None, ge=1)
    box_score_thresh: Optional[float] = Field(None, ge=0, le=1)
    box_nms_thresh: Optional[float] = Field(None, ge=0, le=1)
    # heads sized to the backbone (detection / instance segmentation; torchvision's sizes by default)
    box_representation_size: Optional[int] = Field(None, ge=1, description="the box head's MLP width (1024)")
    mask_head_convs: Optional[int] = Field(None, ge=1, description="the mask head's 3x3 convolutions (4)")
    mask_head_channels: Optional[int] = Field(None, ge=1, description="their width and the mask upsampling's (256)")
    anchor_sizes: Optional[List[Any]] = Field(None, description=(
        "anchor size in px per pyramid level, finest first (a number or a list per level); default 8x the "
        "level's stride"))
    anchor_aspect_ratios: Optional[List[float]] = Field(None, description="anchor h/w ratios ([0.5, 1, 2])")
    # torchvision's RoI and RPN sampling while training, and its proposal counts
    rpn_pre_nms_top_n_train: Optional[int] = Field(None, ge=1)
    rpn_post_nms_top_n_train: Optional[int] = Field(None, ge=1)
    rpn_nms_thresh: Optional[float] = Field(None, ge=0, le=1)
    rpn_fg_iou_thresh: Optional[float] = Field(None, ge=0, le=1)
    rpn_bg_iou_thresh: Optional[float] = Field(None, ge=0, le=1)
    rpn_batch_size_per_image: Optional[int] = Field(None, ge=1, description="anchors sampled per image (256)")
    rpn_positive_fraction: Optional[float] = Field(None, gt=0, le=1, description="of them positive at most (0.5)")
    box_fg_iou_thresh: Optional[float] = Field(None, ge=0, le=1)
    box_bg_iou_thresh: Optional[float] = Field(None, ge=0, le=1)
    box_batch_size_per_image: Optional[int] = Field(None, ge=1, description="RoIs sampled per image (512)")
    box_positive_fraction: Optional[float] = Field(None, gt=0, le=1, description="of them positive at most (0.25)")

    _numbers = field_validator("dropout", "box_score_thresh", "box_nms_thresh", "rpn_nms_thresh",
                               "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_positive_fraction",
                               "box_fg_iou_thresh", "box_bg_iou_thresh", "box_positive_fraction",
                               mode="before")(_yaml_float)

    def given(self) -> Dict[str, Any]:
        """The options set, as keyword arguments for `Task.build`."""
        return self.model_dump(exclude_none=True)


class RunConfig(Section):
    model: ModelCfg = Field(default_factory=ModelCfg)
    checkpoint: Optional[str] = Field(None, description=(
        "toolkit model file, or a checkpoint (file or Hugging Face folder) from timm, the official Swin repo, "
        "Hugging Face or mmdetection/mmsegmentation to start from; without model.name its architecture is built"))
    reset_head: bool = Field(False, description=(
        "always re-initialise the checkpoint's classifier, or the class-dependent layers of its task head "
        "(one for another number of classes is re-initialised without it)"))
    data: DataCfg = Field(default_factory=DataCfg)
    sparsity: Any = Field(0.0, description=(
        "sparsity config: a number (uniform), a list of numbers per stage, or a path to a config file"))
    method_options: MethodOptions = Field(default_factory=MethodOptions, description=(
        "the method's settings; a toolkit checkpoint's own settings are kept unless set here"))
    task_options: TaskOptions = Field(default_factory=TaskOptions, description=(
        "keyword arguments of the task head (`Task.build`), stored in the model file: detection / instance "
        "segmentation take fpn_channels, img_size (the detector's resize) and torchvision's FasterRCNN / "
        "MaskRCNN arguments (e.g. rpn_post_nms_top_n_test); segmentation fpn_channels, head_channels, dropout"))
    adapt: AdaptCfg = Field(default_factory=AdaptCfg)
    optim: OptimCfg = Field(default_factory=OptimCfg)
    schedule: ScheduleCfg = Field(default_factory=ScheduleCfg)
    epochs: int = Field(10, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(32, ge=1, le=MAX_BATCH, description="training images per step per process")
    eval_batch_size: int = Field(64, ge=1, le=MAX_BATCH)
    amp: bool = Field(False, description="mixed precision (fp16 on CUDA, bf16 on CPU)")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    out: str = Field("runs/finetune", description="output directory")
    checkpoint_every: int = Field(50, ge=1, le=MAX_STEPS, description="steps between checkpoints (also at every epoch end)")
    max_steps: Optional[int] = Field(None, ge=1, le=MAX_STEPS, description=(
        "total optimizer steps: training ends after this many (or after `epochs`, whichever comes first), "
        "evaluated and with its model file, and the learning-rate schedule spans them"))
    pipeline: Optional[Dict[str, Any]] = Field(None, description=(
        "the `sparsevit pipeline` section (schema: sparsevit_cli.pipeline.PipelineSettings, checked there); "
        "finetune and adapt ignore it, so one file serves the pipeline and the single commands"))

    @field_validator("sparsity", mode="before")
    @classmethod
    def _sparsity(cls, value: Any) -> Any:
        if _is_number(value) or (isinstance(value, str) and value):
            return value
        if isinstance(value, list) and value and all(
                isinstance(group, list) and group and all(_is_number(v) for v in group) for group in value):
            return value
        raise ValueError(f"must be a number, a list of lists of numbers (one list per stage) or a path to a "
                         f"config file, got {shorten(repr(value))}")

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not DEVICE_PATTERN.match(device):
            raise ValueError(f"must be cpu, cuda or cuda:N, got {shorten(repr(device))}")
        return device

    @model_validator(mode="after")
    def _needs_data(self) -> "RunConfig":
        if not self.data.path:
            raise ValueError("data.path is required (an ImageFolder-style directory)")
        return self


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _choices(names: List[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


# --------------------------------------------------------------------------------------------- errors
_KINDS = {"int": "an integer", "float": "a number", "bool": "true/false", "string": "a string",
          "list": "a list", "dict": "a mapping", "model": "a mapping"}


def _section_at(loc: Tuple[Any, ...], schema: Optional[Type[BaseModel]] = None) -> Optional[Type[BaseModel]]:
    """The schema class whose keys live at `loc` (None when `loc` is not a section)."""
    cls: Type[BaseModel] = schema or RunConfig
    for key in loc:
        field = cls.model_fields.get(key) if isinstance(key, str) else None
        sub = field.annotation if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        cls = sub
    return cls


def _path(loc: Tuple[Any, ...]) -> str:
    text = ""
    for key in loc:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text


class _Quoted:
    """A value as an error line quotes it: its repr, cut to a readable length (`{value!r}` in _message)."""

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return shorten(repr(self.value))


def _message(error: Dict[str, Any], src: str, schema: Optional[Type[BaseModel]] = None) -> str:
    """One line for pydantic's first error, in the toolkit's words."""
    loc, kind, ctx, value = tuple(error["loc"]), error["type"], error.get("ctx") or {}, _Quoted(error.get("input"))
    where = _path(loc)
    if kind == "extra_forbidden":
        section = _section_at(loc[:-1], schema)
        names = list(section.model_fields) if section else []
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(names)})" if names else ""
        return f"{src}: unknown key '{where}'{hint}"
    if kind == "missing":
        return f"{src}: {where} is required"
    if not where:
        if kind in ("model_type", "dict_type"):
            return f"{src}: the file must be a mapping of keys, got {value!r}"
        return f"{src}: {error['msg'].removeprefix('Value error, ')}"
    bounds = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}",
              "less_than_equal": "<= {le}"}
    if kind in bounds:
        limit = bounds[kind].format(**{k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()})
        return f"{src}: {where} must be {limit}, got {value!r}"
    if kind == "finite_number":
        return f"{src}: {where} must be a finite number, got {value!r}"
    if kind == "literal_error":
        return f"{src}: {where} must be {ctx.get('expected')}, got {value!r}"
    if kind == "value_error":  # a validator's message; one starting with "." names a key below `where`
        text = error["msg"].removeprefix("Value error, ")
        return f"{src}: {where}{'' if text.startswith('.') else ' '}{text}"
    for prefix, words in _KINDS.items():
        if kind.startswith(prefix):
            return f"{src}: {where} must be {words}, got {value!r}"
    return f"{src}: {where}: {error['msg']} (got {value!r})"


# --------------------------------------------------------------------------------------------- loading
def apply_overrides(data: Dict[str, Any], overrides: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """`data` with dotted keys (`optim.lr`) set from `overrides`; None values are left out (an option
    the user did not give). The one place that turns command-line options into run-config keys."""
    data = dict(data)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        if value is REMOVE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return data


def parse_model_args(items: List[str]) -> Dict[str, Any]:
    """`--model-arg KEY=VALUE` options as the run config's `model.args` mapping, each VALUE read as YAML
    (`embed_dim=32`, `depths=[2,2,6,2]`, `drop_path_rate=0.1`); one line for a malformed one."""
    import yaml

    args: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserError(f"--model-arg takes KEY=VALUE (e.g. embed_dim=32 or depths=[2,2,6,2]), got "
                            f"{shorten(repr(item))}")
        try:
            args[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise UserError(f"--model-arg {key}: cannot read {shorten(repr(value))} as a value "
                            f"({str(e).splitlines()[0]})") from None
    return args


#: an override value that removes the key (an option that replaces another key of the file, e.g. a MAC
#: budget flag replacing the file's latency budget)
REMOVE = object()


def parse_run_config(data: Any, src: str = "config", schema: Type[RunConfig] = RunConfig) -> RunConfig:
    """Validate a run-config mapping against `schema` (RunConfig or a schema extending it, such as the
    pipeline's); UserError with one line for the first problem."""
    try:
        return schema.model_validate({} if data is None else data)
    except ValidationError as e:
        raise_own_user_error(e)
        raise UserError(_message(e.errors()[0], src, schema)) from None


def load_run_config(path: Optional[str | Path], overrides: Optional[Dict[str, Any]] = None,
                    schema: Type[RunConfig] = RunConfig) -> RunConfig:
    """The run config of a YAML file (or the defaults when `path` is None), `overrides` applied.
    Relative paths in the file are relative to the file; a `sparsity:` path is read here."""
    data = load_yaml(path, "run config", mapping=True) if path is not None else {}
    src = str(path) if path is not None else "command line"
    cfg = parse_run_config(apply_overrides(data or {}, overrides), src, schema)
    base = Path(path).parent if path is not None else Path(".")
    for holder, attr in ((cfg.data, "path"), (cfg, "checkpoint")):
        val = getattr(holder, attr)
        if val and not Path(val).is_absolute() and (base / val).exists():
            setattr(holder, attr, str(base / val))
    if isinstance(cfg.sparsity, str):
        sp = Path(cfg.sparsity)
        if not sp.is_absolute() and (base / sp).exists():
            sp = base / sp
        cfg.sparsity = parse_run_config(dict(to_dict(cfg), sparsity=read_sparsity_file(sp)["sparsity"]),
                                        str(sp), schema).sparsity
    return cfg


def to_dict(cfg: RunConfig) -> Dict[str, Any]:
    return cfg.model_dump()
