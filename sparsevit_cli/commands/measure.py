"""`sparsevit measure`: dense vs sparse speed of one model on a device, with the MAC-ideal speedup.

The model is either a toolkit model file (built as its metadata says: timm name and args, method and its
options, task, image size, stored sparsity) or a timm model name with an optional plain timm checkpoint.
The dense side is always timm's own model with the same weights, so the speedup includes every overhead
of the sparse engine. Speed is batch-1 latency and throughput (images/s) at a larger batch, each against
the MAC-ideal speedup (efficiency = measured speedup / ideal).
"""
from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

from ..errors import UserError
from ..timing import THROUGHPUT_BATCH, latency_and_throughput, resolve_device, resolve_dtype

DEFAULT_MODEL = "swin_tiny_patch4_window7_224"
DEFAULT_IMG_SIZE = 672  # a timm name alone: the high resolution window pruning is for
DEFAULT_SPARSITY = 0.6  # the paper's headline operating point


@dataclass
class MeasuredModels:
    """What `measure` times: timm's dense model and its sparse twin (same weights) under `config`."""
    dense: nn.Module
    sparse: nn.Module
    method: Any
    config: list
    name: str
    img_size: int
    task: str = "classification"  # a model file's task: MACs count the whole task model (a detector's heads too)


@dataclass
class MeasureResult:
    model: str
    img_size: int
    batch_size: int            # the throughput batch; latency is always batch 1
    device: str
    dtype: str
    compiled: bool
    sparsity: list
    dense_gmacs: float         # per image
    sparse_gmacs: float
    ideal_speedup: float
    dense_ms: float            # batch-1 latency
    sparse_ms: float
    speedup: float
    efficiency: float
    dense_images_per_s: float  # throughput at batch_size
    sparse_images_per_s: float
    throughput_speedup: float
    throughput_efficiency: float
    #: a task model (detector, segmenter): its backbone alone, timed on what it reads inside the task model
    #: (a detector's resized, padded batch); the same keys as the end-to-end numbers above. None: classifiers
    backbone: Optional[Dict[str, float]] = None

    def to_dict(self) -> dict:
        return asdict(self)


def _speed_numbers(dense_macs: int, sparse_macs: int, dense: Dict[str, float], sparse: Dict[str, float]) -> Dict[str, float]:
    """GMACs, the MAC-ideal speedup, latency and throughput with their speedups and efficiencies (measured
    speedup / ideal) of a dense and a sparse model, as MeasureResult names them."""
    ideal = dense_macs / sparse_macs
    speedup = dense["ms"] / sparse["ms"]
    throughput = sparse["images_per_s"] / dense["images_per_s"]
    return {"dense_gmacs": dense_macs / 1e9, "sparse_gmacs": sparse_macs / 1e9, "ideal_speedup": ideal,
            "dense_ms": dense["ms"], "sparse_ms": sparse["ms"], "speedup": speedup, "efficiency": speedup / ideal,
            "dense_images_per_s": dense["images_per_s"], "sparse_images_per_s": sparse["images_per_s"],
            "throughput_speedup": throughput, "throughput_efficiency": throughput / ideal}


def measured_models(model: Optional[str], checkpoint: Optional[Path], img_size: Optional[int],
                    sparsity: Optional[float], config_path: Optional[Path]) -> MeasuredModels:
    """Build what `measure` times from the command's options. A toolkit model file describes itself;
    `--model` must then name the model it holds and `--img-size` rebuilds it at another resolution."""
    from ..model_file import config_option, read_meta

    config = config_option(config_path, sparsity)
    meta = read_meta(checkpoint) if checkpoint is not None and os.path.isfile(checkpoint) else None
    if meta is not None:
        return _from_model_file(Path(checkpoint), meta, model, img_size, config)
    return _from_timm(model, checkpoint, DEFAULT_IMG_SIZE if img_size is None else img_size,
                      config["sparsity"] if isinstance(config, dict) else config)


def _from_timm(name: Optional[str], checkpoint: Optional[Path], img_size: int, config) -> MeasuredModels:
    """A timm model, from a checkpoint in any layout `checkpoints` reads (its own architecture unless
    `name` is given), else `name` (default Swin-T) with random weights."""
    from ..checkpoints import model_for, read_checkpoint
    from ..methods import method_for_model
    from ..timm_models import create_timm_model, load_timm_checkpoint

    # a missing or unreadable file costs no model build
    ckpt = read_checkpoint(checkpoint) if checkpoint is not None else None
    asked, args = name, {"img_size": img_size}
    if ckpt is not None:
        name, args = model_for(ckpt, name, args)
    name = name or DEFAULT_MODEL
    dense = create_timm_model(name, **args)
    method = method_for_model(dense)
    if ckpt is not None:
        load_timm_checkpoint(dense, checkpoint, checkpoint=ckpt, asked=asked)
    if config is None or isinstance(config, (int, float)):
        config = method.uniform_config(dense, DEFAULT_SPARSITY if config is None else float(config))
    sparse = method.wrap(copy.deepcopy(dense))
    config = method.validate(sparse, config)
    method.apply(sparse, config)
    return MeasuredModels(dense, sparse, method, config, name, img_size)


def _from_model_file(path: Path, meta, model: Optional[str], img_size: Optional[int],
                     config: Union[None, float, Dict[str, Any]]) -> MeasuredModels:
    from ..model_file import load_model_file
    from ..tasks import backbone_of

    if model is not None and model != meta.model:
        raise UserError(f"--model {model} conflicts with '{path}', which holds {meta.model}; leave --model out")
    sparse, method, meta = load_model_file(path, config)
    config = meta.sparsity
    size = meta.image_size if img_size is None else img_size
    state = sparse.state_dict()
    if size != meta.image_size:  # same weights, rebuilt at the requested resolution (windows keep their size)
        sparse = _build(meta, size, state, method, wrap=True)
    dense = _build(meta, size, state, method, wrap=False)
    method.apply(backbone_of(sparse), config)
    return MeasuredModels(dense, sparse, method, config, meta.model, size, meta.task)


def _build(meta, img_size: int, state: Dict[str, torch.Tensor], method, wrap: bool) -> nn.Module:
    """The task model `meta` describes, at `img_size`, holding `state`: timm's own (dense) or wrapped."""
    from ..tasks import build_task_model
    from ..timm_models import create_timm_model, state_dict_problem

    backbone = create_timm_model(meta.model, **{**meta.model_args, "img_size": img_size})
    if wrap:
        backbone = method.wrap(backbone, **meta.method_options)
    model = build_task_model(backbone, meta.task, meta.num_classes, **(meta.task_options or {}))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"the model file's weights do not fit {meta.model} at {img_size} px: "
                        f"{state_dict_problem(e)}")
    return model


def measure_dense_vs_sparse(models: MeasuredModels, batch_size: int = THROUGHPUT_BATCH, device: str = "cpu",
                            dtype: str = "fp32", warmup: int = 3, repeats: int = 10, cuda_graphs: bool = False,
                            compile: bool = False) -> MeasureResult:
    """Time timm's dense model against its sparse twin: batch-1 latency and throughput at `batch_size`,
    interleaved in one run; with `compile`, both are compiled (and checked exact against eager) first."""
    from ..tasks import backbone_of, get_task

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    dense = models.dense.eval().to(dev, dt)
    sparse = models.sparse.eval().to(dev, dt)
    method, config, size = models.method, models.config, models.img_size
    backbone = backbone_of(sparse)
    # what is timed end to end is the whole task model: its MACs (a detector's dense neck and heads too) make
    # the ideal speedup; the dense model is counted as its sparse twin at the dense config
    task = get_task(models.task)
    dense_macs = task.macs(sparse, method, method.dense_config(backbone), size)
    sparse_macs = task.macs(sparse, method, config, size)
    gen = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:
        return torch.randn(n, 3, size, size, generator=gen).to(dev, dt)

    timing = dict(batch_size=batch_size, warmup=warmup, repeats=repeats, cuda_graphs=cuda_graphs, compile=compile)
    speed = latency_and_throughput({"dense": dense, "sparse": sparse}, images, **timing)
    numbers = _speed_numbers(dense_macs, sparse_macs, speed["dense"], speed["sparse"])
    backbone_row = None
    if backbone is not sparse:  # a task model: its backbone alone too, where the speedup is not diluted by heads
        from ..detection.models import BackboneFeatures

        with torch.no_grad():
            bodies = {"dense": BackboneFeatures(backbone_of(dense)).eval(), "sparse": BackboneFeatures(backbone).eval()}
            bb = latency_and_throughput(bodies, lambda n: task.backbone_input(sparse, images(n)), **timing)
        backbone_row = _speed_numbers(task.backbone_macs(sparse, method, method.dense_config(backbone), size),
                                      task.backbone_macs(sparse, method, config, size), bb["dense"], bb["sparse"])
    return MeasureResult(model=models.name, img_size=size, batch_size=batch_size, device=str(dev), dtype=dtype,
                         compiled=compile, sparsity=config, backbone=backbone_row, **numbers)
