"""Search spaces as data: which values each gene of a config may take, and how to draw valid configs.

A *config* is a list of groups, each a list of gene values (SparseViT on Swin: one group per stage, one
window-sparsity ratio per pair of blocks). A search space is a small YAML file (search_spaces/*.yaml)::

    name: swin_t
    method: sparsevit
    model: swin_tiny_patch4_window7_224      # informational: the model it was written for
    groups:                                  # one per stage; or `groups: auto` (sizes from the model)
      - {name: stage1, genes: 1}
      - {name: stage3, genes: 3, choices: [0.0, 0.4, 0.8], monotonic: false}   # per-group overrides
    choices: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]   # default for every group
    monotonic: true                          # non-decreasing inside each group (default for every group)
    fixed: {stage1: [0.0]}                   # optional: pin every gene of a group

The evolutionary search works on *genomes*: flat lists of choice indices, one per gene, groups laid out
one after the other. Every operator here (sample, mutate, crossover) returns a valid genome by
construction, so the search needs no repair step and can never propose a config the method rejects.
Values are ordered "amount of skipped computation": the smallest choice is the densest.
"""
from __future__ import annotations

import itertools
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml

from ..errors import UserError
from ..layers import Config

Genome = List[int]

#: values closer than this to a choice are taken to be that choice (configs come from YAML and float math)
_TOLERANCE = 1e-6

_TOP_KEYS = ("name", "method", "model", "description", "groups", "choices", "monotonic", "fixed")
_GROUP_KEYS = ("name", "genes", "choices", "monotonic")


@dataclass(frozen=True)
class Group:
    """One group of genes (e.g. one Swin stage) and the values its genes may take."""

    name: str
    size: int
    #: allowed values, sorted ascending and distinct (index 0 = densest)
    choices: Tuple[float, ...]
    #: genes must be non-decreasing inside the group (a pruned window never comes back)
    monotonic: bool = True
    #: choice indices every gene is pinned to, or None when the group is searched
    fixed: Optional[Tuple[int, ...]] = None

    def num_configs(self) -> int:
        """Number of valid value lists for this group."""
        if self.fixed is not None:
            return 1
        k, n = len(self.choices), self.size
        # multisets of size n from k values (stars and bars) when ordered, else free tuples
        return math.comb(n + k - 1, n) if self.monotonic else k ** n

    def is_valid(self, genes: Sequence[int]) -> bool:
        if len(genes) != self.size:
            return False
        if any(not isinstance(g, int) or isinstance(g, bool) or not 0 <= g < len(self.choices) for g in genes):
            return False
        if self.fixed is not None:
            return tuple(genes) == self.fixed
        return not self.monotonic or all(a <= b for a, b in zip(genes, genes[1:]))

    def sample(self, rng: random.Random) -> List[int]:
        """A uniformly random valid gene list."""
        if self.fixed is not None:
            return list(self.fixed)
        k, n = len(self.choices), self.size
        if not self.monotonic:
            return [rng.randrange(k) for _ in range(n)]
        # Stars and bars: a non-decreasing n-tuple over k values <-> n "star" positions among n + k - 1
        # slots. Choosing the positions uniformly makes every multiset equally likely; sorting n uniform
        # draws would not (it favours tuples with distinct values, which have n! orderings).
        positions = sorted(rng.sample(range(n + k - 1), n))
        return [p - i for i, p in enumerate(positions)]

    def mutate(self, genes: Sequence[int], rng: random.Random, prob: float) -> List[int]:
        """Resample each gene with probability `prob`, among the values that keep the group valid."""
        out = list(genes)
        if self.fixed is not None:
            return out
        k = len(self.choices)
        for j in range(self.size):
            if rng.random() >= prob:
                continue
            if self.monotonic:
                # the left neighbour is final; the right one is still the old value and will itself be
                # resampled (if at all) above whatever we pick here, so the group stays non-decreasing
                lo = out[j - 1] if j > 0 else 0
                hi = out[j + 1] if j + 1 < self.size else k - 1
                out[j] = rng.randint(lo, hi)
            else:
                out[j] = rng.randrange(k)
        return out

    def all_configs(self) -> Iterator[Tuple[int, ...]]:
        """Every valid gene list (for tests and tiny spaces)."""
        if self.fixed is not None:
            yield self.fixed
        elif self.monotonic:
            yield from itertools.combinations_with_replacement(range(len(self.choices)), self.size)
        else:
            yield from itertools.product(range(len(self.choices)), repeat=self.size)

    def index_of(self, value: float) -> Optional[int]:
        for i, c in enumerate(self.choices):
            if abs(c - value) <= _TOLERANCE:
                return i
        return None


@dataclass
class SearchSpace:
    """A parsed search space. Build it with `load_space` (files) or `SearchSpace.from_dict` (data)."""

    name: str
    method: str
    groups: List[Group]
    model: Optional[str] = None
    description: str = ""
    #: where it was read from, for error messages
    source: str = "<memory>"
    _offsets: List[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._offsets = [0]
        for g in self.groups:
            self._offsets.append(self._offsets[-1] + g.size)

    # ---- shape
    @property
    def group_sizes(self) -> List[int]:
        return [g.size for g in self.groups]

    @property
    def num_genes(self) -> int:
        return self._offsets[-1]

    def _split(self, genome: Sequence[int]) -> List[Sequence[int]]:
        return [genome[self._offsets[i]:self._offsets[i + 1]] for i in range(len(self.groups))]

    def num_configs(self) -> int:
        """Exact number of valid configs (product of the groups' counts)."""
        return math.prod(g.num_configs() for g in self.groups)

    # ---- genome <-> config
    def is_valid(self, genome: Sequence[int]) -> bool:
        return len(genome) == self.num_genes and all(g.is_valid(part) for g, part in zip(self.groups, self._split(genome)))

    def decode(self, genome: Sequence[int]) -> Config:
        """Genome (choice indices) -> config (values), one list per group."""
        if not self.is_valid(genome):
            raise ValueError(f"invalid genome {list(genome)} for search space '{self.name}'")
        return [[g.choices[i] for i in part] for g, part in zip(self.groups, self._split(genome))]

    def encode(self, config: Sequence[Sequence[float]]) -> Genome:
        """Config (values) -> genome; UserError naming the first value that is not allowed."""
        if not isinstance(config, (list, tuple)) or len(config) != len(self.groups):
            raise UserError(f"config must have {len(self.groups)} groups {self.group_sizes} for search space "
                            f"'{self.name}', got {config!r}")
        genome: Genome = []
        for g, values in zip(self.groups, config):
            if not isinstance(values, (list, tuple)) or len(values) != g.size:
                raise UserError(f"group '{g.name}' of the config must have {g.size} values, got {values!r}")
            part = []
            for v in values:
                idx = g.index_of(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
                if idx is None:
                    raise UserError(f"value {v!r} in group '{g.name}' is not a choice of search space "
                                    f"'{self.name}' ({', '.join(f'{c:g}' for c in g.choices)})")
                part.append(idx)
            if g.fixed is not None and tuple(part) != g.fixed:
                raise UserError(f"group '{g.name}' is fixed to {[g.choices[i] for i in g.fixed]} in search space "
                                f"'{self.name}', got {list(values)}")
            if g.monotonic and any(a > b for a, b in zip(part, part[1:])):
                raise UserError(f"group '{g.name}' must be non-decreasing in search space '{self.name}', "
                                f"got {list(values)}")
            genome += part
        return genome

    # ---- operators (each returns a new, valid genome)
    def sample(self, rng: random.Random) -> Genome:
        """A genome drawn uniformly over all valid configs."""
        return [i for g in self.groups for i in g.sample(rng)]

    def mutate(self, genome: Sequence[int], rng: random.Random, prob: float) -> Genome:
        """Resample each gene with probability `prob`; the result is valid without repair."""
        return [i for g, part in zip(self.groups, self._split(genome)) for i in g.mutate(part, rng, prob)]

    def crossover(self, a: Sequence[int], b: Sequence[int], rng: random.Random) -> Tuple[Genome, Genome]:
        """Uniform crossover of whole groups: each group comes from one parent, so each stays valid."""
        c1: Genome = []
        c2: Genome = []
        for pa, pb in zip(self._split(a), self._split(b)):
            if rng.random() < 0.5:
                pa, pb = pb, pa
            c1 += pa
            c2 += pb
        return c1, c2

    def extreme(self, which: str) -> Genome:
        """'dense' (smallest value everywhere) or 'sparsest' (largest): the two ends of the sandwich rule."""
        if which not in ("dense", "sparsest"):
            raise ValueError(f"extreme must be 'dense' or 'sparsest', got {which!r}")
        genome: Genome = []
        for g in self.groups:
            genome += list(g.fixed) if g.fixed is not None else [0 if which == "dense" else len(g.choices) - 1] * g.size
        return genome

    def uniform(self, value: float) -> Genome:
        """Every searchable gene set to `value` (fixed groups keep their pinned values)."""
        genome: Genome = []
        for g in self.groups:
            if g.fixed is not None:
                genome += list(g.fixed)
                continue
            idx = g.index_of(float(value))
            if idx is None:
                raise UserError(f"{value:g} is not a choice of group '{g.name}' in search space '{self.name}' "
                                f"({', '.join(f'{c:g}' for c in g.choices)})")
            genome += [idx] * g.size
        return genome

    def all_genomes(self) -> Iterator[Genome]:
        """Every valid genome, in lexicographic order of groups (only sensible for tiny spaces)."""
        for parts in itertools.product(*(g.all_configs() for g in self.groups)):
            yield [i for p in parts for i in p]

    # ---- (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        """The space in the YAML format with explicit groups (what `from_dict` reads back)."""
        d: Dict[str, Any] = {"name": self.name, "method": self.method}
        if self.model:
            d["model"] = self.model
        if self.description:
            d["description"] = self.description
        d["groups"] = [{"name": g.name, "genes": g.size, "choices": list(g.choices), "monotonic": g.monotonic}
                       for g in self.groups]
        fixed = {g.name: [g.choices[i] for i in g.fixed] for g in self.groups if g.fixed is not None}
        if fixed:
            d["fixed"] = fixed
        return d

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>", group_sizes: Optional[Sequence[int]] = None,
                  default_name: str = "space") -> "SearchSpace":
        """Validate parsed YAML. Every problem is a one-line UserError naming `source` and the key."""
        return _Parser(source).parse(data, group_sizes, default_name)


class _Parser:
    """Checks a parsed YAML document key by key, so each error can name the file and the key."""

    def __init__(self, source: str):
        self.source = source

    def error(self, key: str, msg: str) -> UserError:
        return UserError(f"search space {self.source}: '{key}' {msg}")

    def parse(self, data: Any, group_sizes: Optional[Sequence[int]], default_name: str) -> SearchSpace:
        if not isinstance(data, dict):
            raise UserError(f"search space {self.source}: expected a mapping of keys (name, method, groups, "
                            f"choices, ...), got {type(data).__name__}")
        unknown = [k for k in data if k not in _TOP_KEYS]
        if unknown:
            raise self.error(str(unknown[0]), f"is not a known key (allowed: {', '.join(_TOP_KEYS)})")
        method = self.string(data, "method", required=True)
        name = self.string(data, "name") or default_name
        model = self.string(data, "model")
        description = self.string(data, "description") or ""
        default_choices = self.choices(data["choices"], "choices", method) if "choices" in data else None
        default_monotonic = self.boolean(data.get("monotonic", True), "monotonic")

        if "groups" not in data:
            raise self.error("groups", "is missing (a list of {name, genes} or 'auto')")
        raw_groups = data["groups"]
        if raw_groups == "auto":
            if group_sizes is None:
                raise self.error("groups", "is 'auto': it takes the group sizes from the model, but none were given")
            if default_choices is None:
                raise self.error("choices", "is missing (needed with 'groups: auto')")
            if not group_sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in group_sizes):
                raise UserError(f"search space {self.source}: model group sizes {list(group_sizes)} are not "
                                f"positive gene counts")
            groups = [Group(f"stage{i + 1}", n, default_choices, default_monotonic) for i, n in enumerate(group_sizes)]
        else:
            groups = self.groups(raw_groups, default_choices, default_monotonic, method)

        if group_sizes is not None and [g.size for g in groups] != list(group_sizes):
            raise self.error("groups", f"has group sizes {[g.size for g in groups]} but the model has "
                                       f"{list(group_sizes)} (use a space written for this model, or 'groups: auto')")
        if data.get("fixed") is not None:
            groups = self.fixed(data["fixed"], groups)
        return SearchSpace(name=name, method=method, groups=groups, model=model, description=description,
                           source=self.source)

    def string(self, data: dict, key: str, required: bool = False) -> Optional[str]:
        value = data.get(key)
        if value is None:
            if required:
                raise self.error(key, "is missing")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def choices(self, value: Any, key: str, method: str) -> Tuple[float, ...]:
        if not isinstance(value, list) or not value:
            raise self.error(key, f"must be a non-empty list of numbers, got {value!r}")
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise self.error(key, f"must hold numbers only, got {v!r}")
            if method == "sparsevit" and not 0.0 <= v < 1.0:
                raise self.error(key, f"holds {v!r}: SparseViT sparsity ratios must be in [0, 1)")
            out.append(float(v))
        out.sort()
        dupes = [a for a, b in zip(out, out[1:]) if abs(a - b) <= _TOLERANCE]
        if dupes:
            raise self.error(key, f"lists {dupes[0]:g} twice")
        return tuple(out)

    def groups(self, raw: Any, default_choices: Optional[Tuple[float, ...]], default_monotonic: bool,
               method: str) -> List[Group]:
        if not isinstance(raw, list) or not raw:
            raise self.error("groups", f"must be a non-empty list of {{name, genes}} or 'auto', got {raw!r}")
        groups: List[Group] = []
        for i, g in enumerate(raw):
            key = f"groups[{i}]"
            if not isinstance(g, dict):
                raise self.error(key, f"must be a mapping like {{name: stage1, genes: 1}}, got {g!r}")
            unknown = [k for k in g if k not in _GROUP_KEYS]
            if unknown:
                raise self.error(f"{key}.{unknown[0]}", f"is not a known key (allowed: {', '.join(_GROUP_KEYS)})")
            name = g.get("name", f"group{i + 1}")
            if not isinstance(name, str) or not name.strip():
                raise self.error(f"{key}.name", f"must be a non-empty string, got {name!r}")
            if any(name == other.name for other in groups):
                raise self.error(f"{key}.name", f"repeats group name '{name}'")
            genes = g.get("genes")
            if isinstance(genes, bool) or not isinstance(genes, int) or genes < 1:
                raise self.error(f"{key}.genes", f"must be a positive integer, got {genes!r}")
            if "choices" in g:
                choices = self.choices(g["choices"], f"{key}.choices", method)
            elif default_choices is not None:
                choices = default_choices
            else:
                raise self.error(f"{key}.choices", "is missing and there is no top-level 'choices'")
            monotonic = self.boolean(g["monotonic"], f"{key}.monotonic") if "monotonic" in g else default_monotonic
            groups.append(Group(name, genes, choices, monotonic))
        return groups

    def fixed(self, raw: Any, groups: List[Group]) -> List[Group]:
        if not isinstance(raw, dict):
            raise self.error("fixed", f"must map group names to pinned values, got {raw!r}")
        by_name = {g.name: i for i, g in enumerate(groups)}
        groups = list(groups)
        for name, values in raw.items():
            key = f"fixed.{name}"
            if name not in by_name:
                raise self.error(key, f"names no group (groups: {', '.join(by_name)})")
            g = groups[by_name[name]]
            if isinstance(values, (int, float)) and not isinstance(values, bool):
                values = [values] * g.size  # shorthand: one value for the whole group
            if not isinstance(values, list) or len(values) != g.size:
                raise self.error(key, f"must list {g.size} value(s) for group '{name}', got {values!r}")
            idx = []
            for v in values:
                i = g.index_of(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
                if i is None:
                    raise self.error(key, f"pins {v!r}, which is not one of the group's choices")
                idx.append(i)
            if g.monotonic and any(a > b for a, b in zip(idx, idx[1:])):
                raise self.error(key, f"must be non-decreasing (group '{name}' is monotonic), got {values!r}")
            groups[by_name[name]] = Group(g.name, g.size, g.choices, g.monotonic, tuple(idx))
        return groups


# ---- finding spaces
def _packaged_dir():
    """The installed spaces (package data), or the repository's search_spaces/ in a source checkout."""
    try:
        from importlib.resources import files
        d = files("sparsevit_cli.search_spaces")
        if any(p.name.endswith(".yaml") for p in d.iterdir()):
            return d
    except (ImportError, TypeError, OSError, ValueError):  # not installed as a package (e.g. older editable)
        pass
    return Path(__file__).resolve().parents[2] / "search_spaces"


def list_spaces() -> List[str]:
    """Names of the packaged search spaces."""
    d = _packaged_dir()
    try:
        return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml"))
    except OSError:
        return []


def _looks_like_path(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text or Path(text).is_file()


def load_space(name_or_path: str | os.PathLike, group_sizes: Optional[Sequence[int]] = None) -> SearchSpace:
    """Load a packaged space by name ("swin_t") or a YAML file by path.

    `group_sizes` are the model's genes per group: required by `groups: auto`, and checked against
    explicit groups so a space written for Swin-T is not silently used on Swin-B.
    """
    text_name = os.fspath(name_or_path)
    if _looks_like_path(text_name):
        path = Path(text_name)
        if not path.is_file():
            raise UserError(f"search space file '{path}' not found")
        source, stem = str(path), path.stem
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"search space {source}: cannot read ({e})")
    else:
        res = _packaged_dir() / f"{text_name}.yaml"
        if not res.is_file():
            raise UserError(f"unknown search space '{text_name}' (packaged: {', '.join(list_spaces()) or 'none'}; "
                            f"or give the path of a YAML file)")
        source, stem = f"'{text_name}'", text_name
        text = res.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"search space {source}: invalid YAML{where}: {problem}")
    return SearchSpace.from_dict(data, source=source, group_sizes=group_sizes, default_name=stem)
