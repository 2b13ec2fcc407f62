"""Pieces every model family shares (as timm keeps its shared building blocks in `timm.layers`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

#: a config: a list of groups, each a list of gene values (e.g. one sparsity ratio per Swin block pair)
Config = List[List[float]]


@dataclass
class MacBreakdown:
    total: int = 0
    parts: Dict[str, int] = field(default_factory=dict)

    def add(self, name: str, macs: int) -> None:
        self.parts[name] = self.parts.get(name, 0) + int(macs)
        self.total += int(macs)
