"""`sparsevit measure`: dense vs sparse latency of one model on a device, with the MAC-ideal speedup."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..timing import resolve_device, resolve_dtype, time_models


@dataclass
class MeasureResult:
    model: str
    img_size: int
    batch_size: int
    device: str
    dtype: str
    sparsity: list
    dense_gmacs: float
    sparse_gmacs: float
    ideal_speedup: float
    dense_ms: float
    sparse_ms: float
    speedup: float
    efficiency: float

    def to_dict(self) -> dict:
        return asdict(self)


def measure_dense_vs_sparse(dense: nn.Module, method, config, model_name: str, img_size: int, batch_size: int = 1,
                            device: str = "cpu", dtype: str = "fp32", warmup: int = 3, repeats: int = 10,
                            cuda_graphs: bool = False) -> MeasureResult:
    """Time the dense timm model against its sparse twin (same weights) under `config`."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    dense = dense.eval().to(dev, dt)
    sparse = method.wrap(copy.deepcopy(dense))
    config = method.validate(sparse, config)
    method.apply(sparse, config)
    dense_macs = method.macs(sparse, method.dense_config(sparse), img_size, batch_size)
    sparse_macs = method.macs(sparse, config, img_size, batch_size)
    x = torch.randn(batch_size, 3, img_size, img_size, device=dev, dtype=dt)
    ms = time_models({"dense": dense, "sparse": sparse}, x, warmup=warmup, repeats=repeats, cuda_graphs=cuda_graphs)
    ideal = dense_macs / sparse_macs
    speedup = ms["dense"] / ms["sparse"]
    return MeasureResult(model=model_name, img_size=img_size, batch_size=batch_size, device=str(dev), dtype=dtype,
                         sparsity=config, dense_gmacs=dense_macs / 1e9, sparse_gmacs=sparse_macs / 1e9,
                         ideal_speedup=ideal, dense_ms=ms["dense"], sparse_ms=ms["sparse"], speedup=speedup,
                         efficiency=speedup / ideal)
