"""Pieces every model family shares (as timm keeps its shared building blocks in `timm.layers`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence

#: the largest seed any option or run config takes (numpy's and Python's RNGs take 32 bits; 1e23 is a typo)
MAX_SEED = 2 ** 32 - 1

#: the pipeline's search budget when the user gives none (a share of the dense model's MACs); here, below the
#: CLI, so that its `--help` states it without importing the pipeline's schema
DEFAULT_BUDGET = "50%"

#: a config: a list of groups, each a list of gene values (e.g. one sparsity ratio per Swin block pair)
Config = List[List[float]]


def format_config(config: Sequence[Sequence[float]]) -> str:
    """Compact config label: one number when every gene has the same value, else groups separated by '|'
    and genes by ','."""
    flat = {v for group in config for v in group}
    if len(flat) == 1:
        return f"{flat.pop():g}"
    return "|".join(",".join(f"{v:g}" for v in group) for group in config)


@dataclass
class MacBreakdown:
    total: int = 0
    parts: Dict[str, int] = field(default_factory=dict)

    def add(self, name: str, macs: int) -> None:
        self.parts[name] = self.parts.get(name, 0) + int(macs)
        self.total += int(macs)


#: networks a search scores together (by one shared-prefix tree, or one race) and journals together: a kill
#: loses at most one chunk's work
EVAL_CHUNK = 16
#: MiB a search keeps, from one generation to the next, of what its fitness batches give before any config
#: (`batch_memory.BatchMemory`: the decoded batches and each batch's first wide block)
PREFIX_MEMORY_MIB = 1024
