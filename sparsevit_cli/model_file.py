"""The toolkit's self-describing model file: weights in safetensors plus metadata (method, timm model
name and constructor args, image size, sparsity config, task, toolkit version), so that
`sparsevit_cli.load(path)` returns a ready sparse model without any other file.

`ModelMeta` is the one holder of a loaded model's facts: `load` validates and applies the sparsity
config once, and the loaded model's `sparsevit_meta` says which config it runs. Model files are
safetensors only: loading one never executes code (a pickle file is refused, never unpickled).

Format 2 files carry a SHA-256 of their tensors (`weights_digest`: names, dtypes, shapes and bytes) beside
the metadata; every command checks it on load (`read_weights`), so a flipped byte is one line, not a
silently different model. Format 1 files (written before the digest existed) are read without that
check. Weights that are not finite (NaN, inf) are refused on load whatever the format, naming the tensor.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch.nn as nn
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator, with_config
from typing_extensions import TypedDict

from .errors import UserError, first_line, raise_own_user_error, shorten
from .io import atomic_write_bytes, check_file, note_input
from .timm_models import nonfinite_tensor, state_dict_problem

FORMAT_VERSION = 2
FORMAT = f"sparsevit-model/{FORMAT_VERSION}"
#: formats this version reads: 1 has no weights digest (read without that check), 2 has one
READABLE_FORMATS = (1, 2)
#: safetensors metadata key of the weights' SHA-256 (beside "sparsevit", the metadata JSON)
DIGEST_KEY = "sparsevit_weights_sha256"
#: longest metadata JSON read (real ones are a few kilobytes)
MAX_META_CHARS = 1_000_000
SUFFIX = ".safetensors"
#: image size of a model whose metadata and constructor args name none (timm's 224 px models)
DEFAULT_IMG_SIZE = 224


@with_config(ConfigDict(extra="allow"))  # an unknown option is kept so that the method names it in its error
class MethodOptions(TypedDict, total=False):
    """A method's settings, as `Method.wrap` takes them (SparseViT: `window_score`; PSViT: none)."""
    window_score: str


@with_config(ConfigDict(extra="allow"))  # an unknown option reaches the task head, which names it
class TaskOptions(TypedDict, total=False):
    """Keyword arguments of the task head (`Task.build(backbone, num_classes, **options)`), stored so that a
    model file rebuilds the head it was trained with. Detection / instance segmentation: the FPN width,
    the detector's resize and torchvision's FasterRCNN / MaskRCNN arguments (any other is kept as given)."""
    fpn_channels: int
    img_size: int
    min_size: Union[int, List[int]]
    max_size: int
    size_divisible: int
    rpn_pre_nms_top_n_test: int
    rpn_post_nms_top_n_test: int
    box_detections_per_img: int
    box_score_thresh: float
    box_nms_thresh: float


class ModelMeta(BaseModel):
    """What a model file says about its model. Unknown keys (metrics such as `top1`, `adapted`) are
    kept as extras. Reads like a mapping too (`meta["sparsity"]`, `meta.get("task")`)."""
    model_config = ConfigDict(extra="allow")

    format: str = FORMAT
    toolkit_version: Optional[str] = None
    method: str = "sparsevit"
    #: timm model name and the constructor args it was built with
    model: str
    model_args: Dict[str, Any] = {}
    img_size: Optional[int] = None
    #: a name in tasks.TASKS (checked where the task head is built: the registry is the one list)
    task: str = "classification"
    num_classes: Optional[int] = None
    #: the task head's build options (`TaskOptions`); None: the head's defaults
    task_options: Optional[TaskOptions] = None
    #: names of the classes (detection: of labels 1..K, in order), for pictures and reports
    class_names: Optional[List[str]] = None
    #: detection: the data set's category id of each label 1..K (COCO ids need not be contiguous); a
    #: prediction's label L is category `category_ids[L - 1]`, named `class_names[L - 1]`
    category_ids: Optional[List[int]] = None
    #: the sparsity config the model runs (after `load`: the one applied, override included)
    sparsity: Optional[List[List[float]]] = None
    method_options: MethodOptions = {}
    #: search space the model was adapted on (`adapt`), the default space of `search`
    space: Optional[str] = None
    trained_by: Optional[str] = None

    @model_validator(mode="after")
    def _consistent(self) -> "ModelMeta":
        """Metadata that contradicts itself would rebuild another model than the one trained: refused."""
        built = self.model_args.get("img_size")
        if self.img_size is not None and built is not None and built != self.img_size:
            raise ValueError(f"img_size is {self.img_size} but model_args.img_size is {shorten(built)}")
        head = self.model_args.get("num_classes")
        if (self.task == "classification" and self.num_classes is not None and head is not None
                and head != self.num_classes):
            raise ValueError(f"num_classes is {self.num_classes} but model_args.num_classes is {shorten(head)}")
        if self.num_classes is not None and self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.class_names is not None and self.num_classes is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names lists {len(self.class_names)} names for {self.num_classes} classes")
        if self.category_ids is not None and self.num_classes is not None and len(self.category_ids) != self.num_classes:
            raise ValueError(f"category_ids lists {len(self.category_ids)} ids for {self.num_classes} classes")
        return self

    @classmethod
    def of(cls, meta: Union["ModelMeta", Mapping[str, Any]], source: str = "model metadata") -> "ModelMeta":
        """`meta` as a ModelMeta (callers may hold a plain dict); invalid metadata is one UserError line."""
        if isinstance(meta, ModelMeta):
            return meta
        try:
            return cls.model_validate(dict(meta))
        except ValidationError as e:
            raise_own_user_error(e)
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "metadata"
            message = shorten(err["msg"].removeprefix("Value error, "), 200)
            raise UserError(f"{source}: invalid sparsevit metadata at '{where}': {message}") from None

    # ---- the facts commands ask for
    @property
    def format_version(self) -> Optional[int]:
        """The model-file format's number (2 for "sparsevit-model/2")."""
        return _format_version(self.format)

    @property
    def image_size(self) -> int:
        """Input resolution the model was built for (square)."""
        return int(self.img_size or self.model_args.get("img_size") or DEFAULT_IMG_SIZE)

    def resolve_img_size(self, requested: Optional[int], own_size_only: bool = False) -> int:
        """The size to run at: `requested` (e.g. `--img-size`) when given, else the model's. Another size
        than the model's is refused for a method whose model runs only at its own (`Method.any_size`:
        a Swin runs any size, a ViT its built one), and with `own_size_only` (a search: what it adapted at)."""
        from .methods import get_method
        if requested is None or int(requested) == self.image_size:
            return self.image_size
        if own_size_only:
            raise UserError(f"the model file was built for img_size {self.image_size}, not {requested}; "
                            f"leave out --img-size to use the model's")
        if int(requested) < 1:
            raise UserError(f"--img-size must be a positive number of pixels, got {requested}")
        if not getattr(get_method(self.method), "any_size", False):
            raise UserError(f"the model file was built for img_size {self.image_size}, not {requested}, and a "
                            f"{self.method} model runs only at its own size; leave out --img-size to use it")
        return int(requested)

    def sparsity_from(self, config: Union[None, List, Mapping[str, Any]]) -> Optional[List]:
        """The config to run: `config` if given (a list of groups, or a sparsity file's mapping whose
        `method`/`model` must be this model's), else the stored one."""
        if config is None:
            return self.sparsity
        if isinstance(config, Mapping):
            for key in ("method", "model"):
                if config.get(key) not in (None, getattr(self, key)):
                    raise UserError(f"config is for {key} '{config[key]}', the model file holds '{getattr(self, key)}'")
            return config["sparsity"]
        return config

    def check_data(self, dataset, data_path: Any, path: Any) -> None:
        """One line when `dataset` has another number of classes than the model predicts (its scores would
        mean nothing, and a detector's labels would name no category of the data)."""
        have = getattr(dataset, "num_classes", None)
        if self.num_classes is not None and have is not None and have != self.num_classes:
            raise UserError(f"model file '{path}' is a {self.task} model for {self.num_classes} classes, "
                            f"'{data_path}' has {have}; fine-tune it on this data first (finetune and adapt "
                            f"re-initialise the class-dependent layers)")
        have_ids = getattr(dataset, "category_ids", None)
        if self.category_ids is not None and have_ids is not None and list(have_ids) != self.category_ids:
            raise UserError(f"model file '{path}' predicts category ids {self.category_ids}, '{data_path}' has "
                            f"{list(have_ids)}; fine-tune it on this data first")

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able mapping of every key that has a value (extras included), as stored in the file."""
        return self.model_dump(mode="json", exclude_none=True)

    # ---- read-only mapping interface, for callers written against the metadata dict
    def __getitem__(self, key: str) -> Any:
        data = self.to_dict()
        if key not in data:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        known = key in type(self).model_fields or key in (self.model_extra or {})
        value = getattr(self, key) if known else None
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.to_dict()

    def keys(self) -> Iterator[str]:
        return iter(self.to_dict())

    def items(self):
        return self.to_dict().items()


MetaLike = Union[ModelMeta, Mapping[str, Any]]


def not_a_model_file(path: Path, why: str) -> UserError:
    """The error for a file without toolkit metadata (e.g. a plain timm checkpoint), saying what to do."""
    return UserError(f"'{path}' is not a sparsevit model file ({why}); make one from a timm checkpoint with "
                     f"`sparsevit adapt --checkpoint FILE --model NAME` or `sparsevit finetune`")


def save_model(path: str | os.PathLike, model: nn.Module, meta: MetaLike) -> None:
    """Write `model`'s weights and `meta` (a ModelMeta or a dict of its keys) atomically to a
    .safetensors file."""
    from safetensors.torch import save
    from . import __version__

    meta = ModelMeta.of(dict(ModelMeta.of(meta).to_dict(), format=FORMAT, toolkit_version=__version__))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    bad = nonfinite_tensor(state)
    if bad is not None:  # a file of NaNs would be refused by every command that reads it
        raise UserError(f"refusing to write model file '{path}': weight {bad} is not finite")
    metadata = {"sparsevit": json.dumps(meta.to_dict()), DIGEST_KEY: weights_digest(state)}
    # the shared atomic writer: normal permissions, fsync, no temp file left behind by a failure or a kill
    atomic_write_bytes(path, canonical_safetensors(save(state, metadata=metadata)), "model file")


def canonical_safetensors(blob: bytes) -> bytes:
    """`blob` (a .safetensors file) with its header's metadata keys in sorted order. safetensors keeps the
    metadata in a Rust HashMap, whose order is random per process: the same weights and metadata would give
    other bytes in another process (a resumed run's model file must equal an uninterrupted run's)."""
    import struct

    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    if isinstance(header.get("__metadata__"), dict):
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(text)) + text + blob[8 + n:]


def weights_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 over a state dict's tensors in name order: each name, dtype, shape and raw bytes. What a
    format-2 model file stores and `read_weights` checks."""
    import hashlib
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _format_version(value: Any) -> Optional[int]:
    """1 for "sparsevit-model/1" (or 1); None when unreadable."""
    text = str(value)
    if text.startswith("sparsevit-model/"):
        text = text[len("sparsevit-model/"):]
    try:
        return int(text)
    except ValueError:
        return None


def _raw_meta(path: Path, limit: Optional[int] = MAX_META_CHARS) -> Optional[Dict[str, Any]]:
    """The sparsevit metadata mapping of a .safetensors file as stored (not validated), None when it has
    none; one line when it cannot be read, is longer than `limit` characters, or is not a JSON mapping."""
    from safetensors import safe_open
    check_file(path)
    if path.suffix != SUFFIX:
        raise not_a_model_file(path, f"model files are {SUFFIX}; pickle files such as .pth are never "
                                     f"loaded, as they can run code")
    note_input(path, "model file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("sparsevit")
    except Exception as e:
        raise UserError(f"model file '{path}' cannot be read: {first_line(e)}")
    if raw is None:
        return None
    if limit is not None and len(raw) > limit:
        raise UserError(f"model file '{path}' has {len(raw)} characters of sparsevit metadata; real ones have a "
                        f"few thousand (a damaged or hostile file?)")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise UserError(f"model file '{path}' has corrupt sparsevit metadata") from None
    except RecursionError:
        raise UserError(f"model file '{path}' has sparsevit metadata nested too deeply to be read (a damaged "
                        f"or hostile file?)") from None
    if not isinstance(data, dict):
        raise UserError(f"model file '{path}' has sparsevit metadata without a model name")
    return data


def read_meta(path: str | os.PathLike) -> Optional[ModelMeta]:
    """The toolkit metadata of a model file, or None if it is not one of ours (e.g. a plain timm file)."""
    path = Path(path)
    if path.suffix != SUFFIX:
        return None
    data = _raw_meta(path)
    if data is None:
        return None
    if not isinstance(data.get("model"), str):
        raise UserError(f"model file '{path}' has sparsevit metadata without a model name")
    # the version first: a newer format may hold keys this version cannot validate
    if "format" not in data:
        raise UserError(f"model file '{path}' has sparsevit metadata without a 'format'; every sparsevit writes "
                        f"one (a damaged or hand-made file?)")
    version = _format_version(data["format"])
    if version not in READABLE_FORMATS:
        shown = version if version is not None else shorten(repr(data.get("format")))
        raise UserError(f"model file '{path}' has model-file format {shown}; this sparsevit reads formats "
                        f"{', '.join(map(str, READABLE_FORMATS))} (written by a newer sparsevit? upgrade it)")
    try:
        return ModelMeta.of(data, f"model file '{path}'")
    except RecursionError:
        raise UserError(f"model file '{path}' has sparsevit metadata nested too deeply to be read") from None


def read_weights(path: str | os.PathLike, meta: Optional[ModelMeta] = None) -> Dict[str, Any]:
    """The tensors of a toolkit model file, checked: the SHA-256 a format-2 file carries must match (one
    line on a flipped byte or a missing digest), and every tensor must be finite (one line naming the
    first that is not). The one reader of a model file's weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    meta = meta if meta is not None else read_model_meta(path)
    try:  # the header was parsed already; reading the tensors can still fail (I/O, unsupported dtype)
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get(DIGEST_KEY)
    except Exception as e:
        raise UserError(f"model file '{path}' cannot be read: {first_line(e)}")
    if (meta.format_version or 0) >= 2:
        if stored is None:
            raise UserError(f"model file '{path}' (format {meta.format}) carries no weights digest; it was "
                            f"not written by sparsevit or has been altered")
        if weights_digest(state) != stored:
            raise UserError(f"model file '{path}' is damaged: its weights do not match the SHA-256 stored in it "
                            f"(a flipped byte, an interrupted copy?); copy it again")
    bad = nonfinite_tensor(state)
    if bad is not None:
        raise UserError(f"model file '{path}' holds non-finite weights (NaN or inf) in {bad}; it cannot be used "
                        f"(saved from a diverged run?)")
    return state


def build_from_meta(meta: MetaLike) -> Tuple[nn.Module, Any]:
    """Build the (untrained) model a metadata block describes, wrapped by its method."""
    from .methods import get_method
    from .timm_models import create_timm_model
    from .tasks import build_task_model

    meta = ModelMeta.of(meta)
    check_task_fields(meta)
    method = get_method(meta.method)
    backbone = create_timm_model(meta.model, **meta.model_args)
    backbone = method.wrap(backbone, **meta.method_options)
    options = dict(meta.task_options or {})
    try:
        model = build_task_model(backbone, meta.task, meta.num_classes, **options)
    except (TypeError, ValueError, RuntimeError) as e:  # a head's constructor refusing a stored option
        raise UserError(f"model metadata: task_options do not fit the {meta.task} head: {first_line(e)}") from None
    return model, method


def check_task_fields(meta: ModelMeta) -> None:
    """One line when the metadata carries what only another task's head has (a classification file with
    detection category ids would score its labels against categories it never predicted), or restates under
    task_options what it says once."""
    from .tasks import get_task

    task = get_task(meta.task)
    if meta.category_ids is not None and not task.has_category_ids:
        raise UserError(f"model metadata: category_ids belong to a detector, the file holds a {meta.task} model")
    reserved = next((k for k in ("backbone", "task", "num_classes") if k in (meta.task_options or {})), None)
    if reserved is not None:  # a head option may not restate what the metadata says once
        raise UserError(f"model metadata: task_options.{reserved} is not a task option (the metadata says it once)")


def read_model_meta(path: str | os.PathLike) -> ModelMeta:
    """The metadata of a file that must be a toolkit model file (one line on anything else)."""
    path = check_file(path)
    if path.suffix != SUFFIX:
        raise not_a_model_file(path, f"model files are {SUFFIX}; pickle files such as .pth are never "
                                     f"loaded, as they can run code")
    meta = read_meta(path)
    if meta is None:
        raise not_a_model_file(path, "no sparsevit metadata")
    return meta


def config_option(config_path: Optional[str | os.PathLike], sparsity: Optional[float]):
    """What a command's `--config FILE` / `--sparsity S` pair asks a model file to run, as `load` takes it: the
    sparsity file's mapping, the uniform sparsity, or None (the stored config); both at once is one line."""
    from .io import read_sparsity_file

    if sparsity is not None and config_path is not None:
        raise UserError("give either --sparsity or --config, not both")
    return read_sparsity_file(config_path) if config_path is not None else sparsity


def load(path: str | os.PathLike, config: Union[None, float, List, Mapping[str, Any]] = None,
         checkpoints: bool = True) -> nn.Module:
    """Load a toolkit model file and return the ready model (eval mode) running its stored sparsity
    config, or `config` if given (a number: uniform sparsity; a list of groups; or a sparsity file's mapping
    from `io.read_sparsity_file`, checked to be for this method and model). `model.sparsevit_meta` is the
    file's ModelMeta with `sparsity` the config the model runs. With `checkpoints`, a checkpoint in any
    layout `checkpoints.LAYOUTS` reads (timm, official Swin, a Hugging Face file or folder, mmdetection)
    loads too: a classifier of the architecture it holds, dense unless `config` says otherwise."""
    from .tasks import backbone_of

    if checkpoints and is_raw_checkpoint(path):
        model, method, meta = _from_checkpoint(path)
    else:
        meta = read_model_meta(path)
        model, method = build_from_meta(meta)
        _load_weights(model, path, read_weights(path, meta))
    backbone = backbone_of(model)
    if isinstance(config, (int, float)):
        sparsity = method.uniform_config(backbone, float(config))
    else:
        sparsity = meta.sparsity_from(config)
        if isinstance(sparsity, (int, float)):  # a sparsity file's `sparsity: 0.5`: uniform
            sparsity = method.uniform_config(backbone, float(sparsity))
    if sparsity is not None:  # the one place a loaded model's config is validated and applied
        sparsity = method.validate(backbone, sparsity)
        method.apply(backbone, sparsity)
    model.sparsevit_meta = meta.model_copy(update={"sparsity": sparsity})
    return model.eval()


def _load_weights(model: nn.Module, path: Any, state: Mapping[str, Any]) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"model file '{path}' does not match its own metadata: {state_dict_problem(e)}")


#: longest value `inspect_model_file` shows in a row
SHOWN_CHARS = 200


def inspect_model_file(path: str | os.PathLike) -> Tuple[List[Tuple[str, str]], List[str]]:
    """(rows, faults) of a model file, for `sparsevit info`: every metadata key it holds with its value (cut to
    `SHOWN_CHARS`), and one line per reason every other command would refuse it, found by the steps `load`
    takes (the metadata's schema, field by field; the task's fields; building the method, timm model and
    head; the stored sparsity config against that model; the weights' digest and finiteness; the weights
    against the model). A file that is no model file at all (missing, a pickle, no metadata, metadata
    that is not JSON) is one UserError line, as for every command."""
    from .tasks import backbone_of

    path = check_file(path)
    data, faults = _raw_meta(path, limit=None), []
    if data is None:
        raise not_a_model_file(path, "no sparsevit metadata")
    rows = [(str(k), shorten(json.dumps(v) if isinstance(v, (list, dict)) else str(v), SHOWN_CHARS))
            for k, v in data.items()]
    meta: Optional[ModelMeta] = None
    try:
        meta = read_model_meta(path)
    except UserError as e:
        faults.append(str(e))
        try:  # the schema's other faults too, one line each
            ModelMeta.model_validate(data)
        except ValidationError as v:
            for err in v.errors()[1:]:
                where = ".".join(str(p) for p in err["loc"]) or "metadata"
                faults.append(f"invalid sparsevit metadata at '{where}': "
                              f"{shorten(err['msg'].removeprefix('Value error, '), 200)}")
        except Exception:  # noqa: BLE001 (the first fault is already said)
            pass
    model = method = None
    if meta is not None:
        try:
            model, method = build_from_meta(meta)
        except UserError as e:
            faults.append(str(e))
    if model is not None and meta.sparsity is not None:
        try:
            method.validate(backbone_of(model), meta.sparsity)
        except UserError as e:
            faults.append(f"stored sparsity: {e}")
    state = None
    try:
        version = ModelMeta.model_construct(format=str(data.get("format", FORMAT)))
        state = read_weights(path, meta if meta is not None else version)
        rows.append(("weights", "finite, SHA-256 verified" if (version.format_version or 0) >= 2 else
                     "finite (format 1: no digest to verify)"))
    except UserError as e:
        faults.append(str(e))
    if model is not None and state is not None:
        try:
            _load_weights(model, path, state)
        except UserError as e:
            faults.append(str(e))
    return rows, faults


def is_raw_checkpoint(path: str | os.PathLike) -> bool:
    """True for what is not a sparsevit model file: a folder, or a file without sparsevit metadata (a
    checkpoint for `checkpoints.read_checkpoint`)."""
    path = Path(path)
    if os.path.isdir(path) or path.suffix != SUFFIX:  # (os.path: a name too long is no folder, not an error)
        return True
    try:  # only whether sparsevit metadata is there: a file with faulty metadata is still a model file
        return _raw_meta(path, limit=None) is None
    except UserError:  # unreadable: the model-file path says why in one line
        return False


def _from_checkpoint(path: str | os.PathLike) -> Tuple[nn.Module, Any, ModelMeta]:
    """A classifier (or a headless backbone) of the architecture a checkpoint in any layout `checkpoints`
    reads holds, its weights loaded, wrapped by its family's method, and the metadata a model file of it
    would carry (dense: no stored sparsity)."""
    from .checkpoints import model_for, read_checkpoint
    from .methods import method_for_model
    from .timm_models import create_timm_model, load_timm_checkpoint

    ckpt = read_checkpoint(path)
    name, args = model_for(ckpt, None, {})
    backbone = create_timm_model(name, **args)
    load_timm_checkpoint(backbone, path, checkpoint=ckpt)
    method = method_for_model(backbone)
    model = method.wrap(backbone)
    size = getattr(backbone.patch_embed, "img_size", None)  # the file's, else the timm model's default
    img_size = ckpt.architecture.img_size or (int(size[0]) if size else DEFAULT_IMG_SIZE)
    meta = ModelMeta(method=method.name, model=name, model_args=dict(args, img_size=img_size), img_size=img_size,
                     num_classes=ckpt.architecture.num_classes, trained_by=ckpt.layout,
                     sparsity=method.uniform_config(model, 0.0))  # dense: what the checkpoint computes
    return model, method, meta


def load_model_file(path: str | os.PathLike, config_file: Union[None, float, Mapping[str, Any]] = None,
                    checkpoints: bool = False):
    """(model, method, meta) of `load(path, config_file, checkpoints)`; `meta.sparsity` is the config it
    runs. By default only a toolkit model file (what search and export need: an adapted model)."""
    from .methods import get_method

    model = load(path, config_file, checkpoints)
    meta = model.sparsevit_meta
    return model, get_method(meta.method), meta
