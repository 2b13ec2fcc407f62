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

The file's schema is `SpaceFile` (pydantic; `SpaceFile.model_json_schema()` documents it). Which values a
gene may take is the method's fact, not the file's: every choice must be one of the space's method's
`gene_values` (SparseViT: `swin.patch.RATIO_CHOICES`), so a space never offers a value the model rejects.

The evolutionary search works on *genomes*: flat lists of choice indices, one per gene, groups laid out
one after the other. Every operator here (sample, mutate, crossover) returns a valid genome by
construction, so the search needs no repair step and can never propose a config the method rejects.
Values are ordered "amount of skipped computation": the smallest choice is the densest.
"""
from __future__ import annotations

import difflib
import itertools
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, StrictBool, StrictInt, StrictStr, Tag,
                      ValidationError)

from ..errors import UserError, raise_own_user_error
from ..io import load_yaml
from ..layers import Config

Genome = List[int]

#: values closer than this to a choice are taken to be that choice (configs come from YAML and float math)
_TOLERANCE = 1e-6


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

    def uniform_values(self) -> List[float]:
        """The values every searched group offers (each a uniform config), ascending."""
        searched = [g for g in self.groups if g.fixed is None]
        return sorted(set.intersection(*(set(g.choices) for g in searched))) if searched else []

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
                  default_name: str = "space", for_method: Optional[str] = None,
                  model_label: str = "the model") -> "SearchSpace":
        """Validate parsed YAML (schema: `SpaceFile`). Every problem is a one-line UserError naming `source`
        and the key. `for_method`: the method of the model the space will run on; a space written for another
        method is refused before anything else is checked."""
        return _Builder(source).parse(data, group_sizes, default_name, for_method, model_label)


# ---- the file format, as pydantic models: typed, documented (`SpaceFile.model_json_schema()`), strict
def _pick_group_form(value: Any) -> str:
    return "auto" if isinstance(value, str) else "list"


def _pick_pin_form(value: Any) -> str:
    return "values" if isinstance(value, list) else "value"


#: a gene value as written in the file (bools and strings are refused, not converted)
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
NonEmptyStr = Annotated[StrictStr, Field(pattern=r"\S")]
Choices = Annotated[List[Number], Field(min_length=1)]


class GroupSpec(BaseModel):
    """One entry of `groups:`."""

    model_config = ConfigDict(extra="forbid")

    name: Optional[NonEmptyStr] = Field(None, description="Group name, unique in the space (default: groupN).")
    genes: Annotated[StrictInt, Field(ge=1)] = Field(description="Number of genes (e.g. Swin block pairs).")
    choices: Optional[Choices] = Field(None, description="Values of this group's genes (default: top-level choices).")
    monotonic: Optional[StrictBool] = Field(None, description="Genes non-decreasing (default: top-level monotonic).")


class SpaceFile(BaseModel):
    """A search-space YAML file (search_spaces/*.yaml)."""

    model_config = ConfigDict(extra="forbid")

    method: NonEmptyStr = Field(description="Registered method whose configs this space holds (sparsevit, psvit).")
    name: Optional[NonEmptyStr] = Field(None, description="Space name (default: the file name).")
    model: Optional[NonEmptyStr] = Field(None, description="Informational: the timm model it was written for.")
    description: Optional[StrictStr] = Field(None, description="One line for humans.")
    choices: Optional[Choices] = Field(None, description="Default gene values of every group; each must be a "
                                                         "value the method can run.")
    monotonic: StrictBool = Field(True, description="Default for every group: genes non-decreasing inside it.")
    groups: Annotated[Union[Annotated[Literal["auto"], Tag("auto")],
                            Annotated[Annotated[List[GroupSpec], Field(min_length=1)], Tag("list")]],
                      Discriminator(_pick_group_form)] = Field(
        description="One entry per group, or 'auto': one group per model stage, sizes from the model.")
    fixed: Optional[Dict[StrictStr, Annotated[Union[Annotated[Number, Tag("value")],
                                                    Annotated[List[Number], Tag("values")]],
                                              Discriminator(_pick_pin_form)]]] = Field(
        None, description="Pin every gene of a group: group name -> one value or one value per gene.")


#: what a key must hold, for the one-line message (pydantic's own texts name neither the file nor YAML terms)
_EXPECT = {
    "method": "must be a non-empty string", "name": "must be a non-empty string",
    "model": "must be a non-empty string", "description": "must be a string",
    "genes": "must be a positive integer", "monotonic": "must be true or false",
    "choices": "must be a non-empty list of numbers", "groups": "must be a non-empty list of {name, genes} or 'auto'",
    "fixed": "must map group names to pinned values",
}
_HINT_MISSING = {"groups": " (a list of {name, genes} or 'auto')"}


def _problem(error: Dict[str, Any]) -> Tuple[str, str]:
    """(key as the user wrote it, what is wrong with it) for one pydantic error."""
    loc = list(error["loc"])
    # drop the discriminator tags pydantic puts into locations: groups.<form>..., fixed.<group>.<form>...
    if loc[:1] == ["groups"] and len(loc) > 1:
        del loc[1]
    if loc[:1] == ["fixed"] and len(loc) > 2:
        del loc[2]
    kind, value = error["type"], error["input"]
    if not loc:
        return "", f"expected a mapping of keys ({', '.join(SpaceFile.model_fields)}), got {type(value).__name__}"
    if kind == "extra_forbidden":
        allowed = list(GroupSpec.model_fields if loc[0] == "groups" else SpaceFile.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return _key(loc), f"is not a known key ({hint}allowed: {', '.join(allowed)})"
    if kind == "missing":
        return _key(loc), "is missing" + _HINT_MISSING.get(str(loc[-1]), "")
    if loc[0] == "fixed" and len(loc) > 1:
        return _key(loc[:2]), f"must be a number or a list of numbers, got {value!r}"
    if loc[0] == "groups" and len(loc) == 2:
        return _key(loc), f"must be a mapping like {{name: stage1, genes: 1}}, got {value!r}"
    if isinstance(loc[-1], int) and len(loc) > 1 and loc[-2] == "choices":
        return _key(loc[:-1]), f"must hold numbers only, got {value!r}"
    return _key(loc), f"{_EXPECT.get(str(loc[-1]), 'is invalid')}, got {value!r}"


def _key(loc: Sequence[Any]) -> str:
    """('groups', 0, 'genes') -> groups[0].genes"""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Builder:
    """Turns a validated `SpaceFile` into a `SearchSpace`, checking what the schema alone cannot (values the
    method runs, duplicates, group sizes, pins). Every error names the file and the key."""

    def __init__(self, source: str):
        self.source = source

    def error(self, key: str, msg: str) -> UserError:
        return UserError(f"search space {self.source}: '{key}' {msg}")

    def parse(self, data: Any, group_sizes: Optional[Sequence[int]], default_name: str,
              for_method: Optional[str], model_label: str) -> SearchSpace:
        try:
            spec = SpaceFile.model_validate(data)
        except ValidationError as e:
            raise_own_user_error(e)  # a validator's own line (a UserError is a ValueError: pydantic wraps it)
            errors = sorted(e.errors(), key=lambda err: err["type"] != "extra_forbidden")  # typos first
            key, msg = _problem(errors[0])
            raise UserError(f"search space {self.source}: " + (f"'{key}' {msg}" if key else msg))
        if for_method is not None and spec.method != for_method:
            from ..methods import get_method
            raise UserError(f"search space {self.source} is for method {spec.method}, but {model_label} holds a "
                            f"{for_method} model (use a {for_method} space, e.g. {get_method(for_method).default_space})")
        gene_values = self.gene_values(spec.method)
        default_choices = self.choices(spec.choices, "choices", spec.method, gene_values) if spec.choices else None

        if spec.groups == "auto":
            if group_sizes is None:
                raise self.error("groups", "is 'auto': it takes the group sizes from the model, but none were given")
            if default_choices is None:
                raise self.error("choices", "is missing (needed with 'groups: auto')")
            if not group_sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in group_sizes):
                raise UserError(f"search space {self.source}: model group sizes {list(group_sizes)} are not "
                                f"positive gene counts")
            groups = [Group(f"stage{i + 1}", n, default_choices, spec.monotonic) for i, n in enumerate(group_sizes)]
        else:
            groups = []
            for i, g in enumerate(spec.groups):
                key = f"groups[{i}]"
                name = g.name if g.name is not None else f"group{i + 1}"
                if any(name == other.name for other in groups):
                    raise self.error(f"{key}.name", f"repeats group name '{name}'")
                if g.choices is not None:
                    choices = self.choices(g.choices, f"{key}.choices", spec.method, gene_values)
                elif default_choices is not None:
                    choices = default_choices
                else:
                    raise self.error(f"{key}.choices", "is missing and there is no top-level 'choices'")
                groups.append(Group(name, g.genes, choices, spec.monotonic if g.monotonic is None else g.monotonic))

        if group_sizes is not None and [g.size for g in groups] != list(group_sizes):
            raise self.error("groups", f"has group sizes {[g.size for g in groups]} but the model has "
                                       f"{list(group_sizes)} (use a space written for this model, or 'groups: auto')")
        if spec.fixed:
            groups = self.fixed(spec.fixed, groups)
        return SearchSpace(name=spec.name or default_name, method=spec.method, groups=groups, model=spec.model,
                           description=spec.description or "", source=self.source)

    def gene_values(self, method: str) -> Tuple[float, ...]:
        """The values the space's method can run: the method owns them (e.g. SparseViT's RATIO_CHOICES)."""
        from ..methods import get_method
        try:
            return tuple(get_method(method).gene_values)
        except UserError as e:
            raise self.error("method", f"names an {e}")

    def choices(self, values: Sequence[float], key: str, method: str, gene_values: Sequence[float]) -> Tuple[float, ...]:
        out = []
        for v in values:
            runnable = [c for c in gene_values if abs(c - v) <= _TOLERANCE]
            if not runnable:
                raise self.error(key, f"holds {v!r}, which method {method} cannot run (its genes take "
                                      f"{', '.join(f'{c:g}' for c in gene_values)})")
            out.append(float(runnable[0]))  # the method's own value, not the YAML's rounding of it
        out.sort()
        dupes = [a for a, b in zip(out, out[1:]) if a == b]
        if dupes:
            raise self.error(key, f"lists {dupes[0]:g} twice")
        return tuple(out)

    def fixed(self, raw: Dict[str, Any], groups: List[Group]) -> List[Group]:
        by_name = {g.name: i for i, g in enumerate(groups)}
        groups = list(groups)
        for name, values in raw.items():
            key = f"fixed.{name}"
            if name not in by_name:
                raise self.error(key, f"names no group (groups: {', '.join(by_name)})")
            g = groups[by_name[name]]
            if not isinstance(values, list):
                values = [values] * g.size  # shorthand: one value for the whole group
            if len(values) != g.size:
                raise self.error(key, f"must list {g.size} value(s) for group '{name}', got {values!r}")
            idx = []
            for v in values:
                i = g.index_of(v)
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
    return text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text or Path(text).exists()


def load_space(name_or_path: str | os.PathLike, group_sizes: Optional[Sequence[int]] = None,
               for_method: Optional[str] = None, model_label: str = "the model") -> SearchSpace:
    """Load a packaged space by name ("swin_t") or a YAML file by path.

    `group_sizes` are the model's genes per group: required by `groups: auto`, and checked against
    explicit groups so a space written for Swin-T is not silently used on Swin-B. `for_method` is the
    method of that model (a PSViT space on a Swin model is refused with one line naming both).
    """
    text_name = os.fspath(name_or_path)
    if _looks_like_path(text_name):
        path = Path(text_name)
        source, stem = str(path), path.stem
    else:
        path = Path(_packaged_dir() / f"{text_name}.yaml")
        if not path.is_file():
            raise UserError(f"unknown search space '{text_name}' (packaged: {', '.join(list_spaces()) or 'none'}; "
                            f"or give the path of a YAML file)")
        source, stem = f"'{text_name}'", text_name
    data = load_yaml(path, "search space")  # missing, a directory, binary, bad YAML: one line naming the file
    return SearchSpace.from_dict(data, source=source, group_sizes=group_sizes, default_name=stem,
                                 for_method=for_method, model_label=model_label)
