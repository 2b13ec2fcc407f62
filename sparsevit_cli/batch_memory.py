"""What a search keeps of its fitness images' batches from one generation to the next.

A search scores every generation on the same fitness batches with the same weights, so the decoded batches
themselves (keyed by their dataset indices) and whatever a family computes from a batch before any config
matters (Swin: the first pruned block run wide on the stage-1 input, `swin.patch.PrefixCache`; keyed by the
batch's own tensors, compared exactly, never by position) are the same in every generation. `BatchMemory` holds
both, up to one byte budget. A search passes over the batches in the same order every generation, so the first
batches that fit are kept and none is evicted for a later one (evicting in that cyclic order would keep nothing
useful).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

Keys = Tuple[Optional[torch.Tensor], ...]

#: sampled elements of a batch's first tensor that index the memory (an exact comparison confirms a match)
_FINGERPRINT_POINTS = 16


def tensor_bytes(tensors: Sequence[Optional[torch.Tensor]]) -> int:
    """Bytes held by `tensors`, each storage counted once."""
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def _fingerprint(keys: Keys) -> tuple:
    x = keys[0]
    flat = x.reshape(-1)
    points = torch.linspace(0, flat.numel() - 1, min(_FINGERPRINT_POINTS, flat.numel()), device=x.device).long()
    return tuple(x.shape), x.dtype, tuple(flat[points].tolist())


def same_tensors(a: Keys, b: Keys) -> bool:
    """Whether two tuples of tensors (or None) are equal element by element: same shapes, dtypes and values."""
    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and x.shape == y.shape
                                      and x.dtype == y.dtype and torch.equal(x, y)) for x, y in zip(a, b))


class BatchMemory:
    """Per image batch (its `keys`: the tensors it is recognised by, e.g. the stage-1 input and its padding), one
    payload, for one model, up to `max_bytes` (the payloads' tensors, as `size` counts them, and the keys).
    `hits` counts the payloads found again."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.hits = 0
        self._entries: List[Tuple[tuple, Keys, Any, int]] = []  # (fingerprint, keys, payload, bytes)
        self._images: Dict[tuple, Tuple[Any, int]] = {}  # decoded batches (and their bytes) by dataset indices

    @property
    def used(self) -> int:
        """Bytes held: the payloads with their keys and the decoded batches."""
        return sum(e[3] for e in self._entries) + self._images_bytes()

    def _images_bytes(self) -> int:
        return sum(n for _, n in self._images.values())

    def find(self, keys: Keys) -> Optional[Any]:
        """The payload kept for the batch with these `keys`, or None."""
        if not self._entries:
            return None
        fp = _fingerprint(keys)
        for other_fp, other, payload, _ in self._entries:
            if other_fp == fp and same_tensors(other, keys):
                self.hits += 1
                return payload
        return None

    def offer(self, keys: Keys, payload: Any, size: Callable[[Any], int]) -> bool:
        """Keep `payload` for the batch with these `keys` (replacing what it had) if it fits the budget; whether it
        is kept. `size(payload)`: its bytes beside the keys'."""
        fp = _fingerprint(keys)
        entries = [e for e in self._entries if not (e[0] == fp and same_tensors(e[1], keys))]
        need = size(payload) + tensor_bytes(keys)
        if sum(e[3] for e in entries) + self._images_bytes() + need > self.max_bytes:
            return False
        self._entries = entries + [(fp, keys, payload, need)]
        return True

    def __len__(self) -> int:
        return len(self._entries)

    def images(self, key: tuple) -> Optional[Any]:
        """The decoded batch (what the data loader gave) kept for the dataset indices `key`, or None."""
        got = self._images.get(key)
        return None if got is None else got[0]

    def keep_images(self, key: tuple, batch: Any) -> bool:
        """Keep a decoded batch of the dataset indices `key` if it fits the budget; whether it is kept."""
        if key in self._images:
            return True
        need = tensor_bytes(list(nested_tensors(batch)))
        if self.used + need > self.max_bytes:
            return False
        self._images[key] = (batch, need)
        return True


def nested_tensors(obj: Any):
    """Every tensor in `obj` (tensors, lists, tuples, dicts of them)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from nested_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from nested_tensors(v)
