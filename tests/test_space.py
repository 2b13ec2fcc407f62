"""Search spaces: operators always give valid genomes, sampling is uniform, files are validated."""
from __future__ import annotations

import collections
import itertools
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsevit_cli.errors import UserError
from sparsevit_cli.search.space import Group, SearchSpace, list_spaces, load_space

CHOICES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


# ---- strategies: small random spaces (some groups unordered, some pinned)
@st.composite
def spaces(draw, max_groups: int = 4, max_size: int = 4, max_choices: int = 5) -> SearchSpace:
    n_groups = draw(st.integers(1, max_groups))
    groups = []
    for i in range(n_groups):
        size = draw(st.integers(1, max_size))
        k = draw(st.integers(1, max_choices))
        choices = tuple(sorted(draw(st.sets(st.sampled_from(CHOICES), min_size=k, max_size=k))))
        monotonic = draw(st.booleans())
        fixed = None
        if draw(st.integers(0, 4)) == 0:  # sometimes pin a group to a valid value list
            g = Group(f"g{i}", size, choices, monotonic)
            fixed = tuple(g.sample(random.Random(draw(st.integers(0, 1000)))))
        groups.append(Group(f"g{i}", size, choices, monotonic, fixed))
    return SearchSpace(name="h", method="sparsevit", groups=groups)


def well_formed(space: SearchSpace, genome) -> bool:
    """Independent check of validity through the decoded values (not via is_valid)."""
    config = space.decode(genome)
    for g, values in zip(space.groups, config):
        if len(values) != g.size or any(v not in g.choices for v in values):
            return False
        if g.monotonic and values != sorted(values):
            return False
        if g.fixed is not None and values != [g.choices[i] for i in g.fixed]:
            return False
    return True


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(space=spaces(), seed=st.integers(0, 2**32 - 1), prob=st.floats(0.0, 1.0))
def test_operators_always_give_valid_genomes(space, seed, prob):
    rng = random.Random(seed)
    a, b = space.sample(rng), space.sample(rng)
    assert space.is_valid(a) and well_formed(space, a)
    m = space.mutate(a, rng, prob)
    assert space.is_valid(m) and well_formed(space, m)
    c1, c2 = space.crossover(a, m, rng)
    assert space.is_valid(c1) and space.is_valid(c2)
    assert well_formed(space, c1) and well_formed(space, c2)
    # each group of a child comes whole from one parent, and the two children split the parents
    for p1, p2, x, y in zip(*(space._split(g) for g in (a, m, c1, c2))):
        assert (list(x), list(y)) in ((list(p1), list(p2)), (list(p2), list(p1)))
    for which in ("dense", "sparsest"):
        assert space.is_valid(space.extreme(which))


@FAST
@given(space=spaces(), seed=st.integers(0, 2**32 - 1))
def test_encode_decode_round_trip(space, seed):
    genome = space.sample(random.Random(seed))
    config = space.decode(genome)
    assert space.encode(config) == genome
    # values that went through YAML/float math still encode
    assert space.encode([[v + 1e-9 for v in g] for g in config]) == genome


@FAST
@given(space=spaces(max_groups=3, max_size=3, max_choices=4))
def test_num_configs_matches_enumeration(space):
    brute = [list(g) for g in itertools.product(*(range(len(gr.choices)) for gr in space.groups
                                                    for _ in range(gr.size))) if space.is_valid(list(g))]
    assert space.num_configs() == len(brute)
    assert sorted(space.all_genomes()) == sorted(brute)


def test_mutation_with_prob_zero_and_one():
    space = load_space("swin_t")
    rng = random.Random(1)
    g = space.sample(rng)
    assert space.mutate(g, rng, 0.0) == g
    # with prob 1 every gene is resampled, so over many draws every value shows up somewhere
    seen = collections.Counter(v for _ in range(300) for v in space.mutate(g, rng, 1.0))
    assert set(seen) == set(range(len(CHOICES)))


# ---- uniformity of sample()
def chi_square(sampler, space: SearchSpace, n: int, seed: int) -> float:
    rng = random.Random(seed)
    cells = [tuple(g) for g in space.all_genomes()]
    counts = collections.Counter(tuple(sampler(rng)) for _ in range(n))
    assert set(counts) <= set(cells)
    expected = n / len(cells)
    return sum((counts[c] - expected) ** 2 / expected for c in cells)


def chi2_critical_999(dof: int) -> float:
    """Upper 0.1% point of chi-square (Wilson-Hilferty), good to a few percent for dof >= 10."""
    z = 3.090232
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("sizes,k", [([1, 2], 3), ([3], 4), ([2, 3], 3)])
def test_sample_is_uniform_over_valid_configs(sizes, k):
    space = SearchSpace("u", "sparsevit", [Group(f"g{i}", n, tuple(CHOICES[:k]), True) for i, n in enumerate(sizes)])
    cells = space.num_configs()
    n = 300 * cells
    limit = chi2_critical_999(cells - 1)
    assert chi_square(space.sample, space, n, seed=123) < limit

    # the check has teeth: "sort L uniform draws" (not uniform over multisets) fails it
    def sorted_draws(rng):
        return [i for g in space.groups for i in sorted(rng.randrange(k) for _ in range(g.size))]
    assert chi_square(sorted_draws, space, n, seed=123) > limit


# ---- encode errors, extremes, uniform
def test_encode_rejects_bad_configs():
    space = load_space("swin_t")
    with pytest.raises(UserError, match="4 groups"):
        space.encode([[0.0], [0.0], [0.0, 0.0, 0.0]])
    with pytest.raises(UserError, match="3 values"):
        space.encode([[0.0], [0.0], [0.0, 0.0], [0.0]])
    with pytest.raises(UserError, match="0.85 in group 'stage2' is not a choice"):
        space.encode([[0.0], [0.85], [0.0, 0.0, 0.0], [0.0]])
    with pytest.raises(UserError, match="non-decreasing"):
        space.encode([[0.0], [0.0], [0.5, 0.2, 0.6], [0.0]])


def test_extremes_and_uniform():
    space = load_space("swin_t")
    assert space.decode(space.extreme("dense")) == [[0.0], [0.0], [0.0] * 3, [0.0]]
    assert space.decode(space.extreme("sparsest")) == [[0.8], [0.8], [0.8] * 3, [0.8]]
    assert space.decode(space.uniform(0.3)) == [[0.3], [0.3], [0.3] * 3, [0.3]]
    with pytest.raises(UserError, match="0.35 is not a choice"):
        space.uniform(0.35)


# ---- files
def test_packaged_spaces_all_load():
    names = list_spaces()
    assert {"swin_t", "swin_s", "swin_b", "swin_l", "swin_auto"} <= set(names)
    expected = {"swin_t": [1, 1, 3, 1], "swin_s": [1, 1, 9, 1], "swin_b": [1, 1, 9, 1], "swin_l": [1, 1, 9, 1]}
    for name in names:
        if name.startswith(("psvit", "swinv2")):
            continue  # PSViT spaces: tests/test_psvit.py; Swin V2 (method sparsevit-v2): its own tests
        space = load_space(name, group_sizes=expected.get(name, [1, 1, 1, 1]))
        assert space.name == name and space.method == "sparsevit"
        assert space.num_configs() > 1
        if name in expected:
            assert space.group_sizes == expected[name]
            assert load_space(name).group_sizes == expected[name]  # explicit groups need no model
            assert space.groups[0].choices == tuple(CHOICES) and all(g.monotonic for g in space.groups)
    assert load_space("swin_t").num_configs() == 9 * 9 * math.comb(11, 3) * 9


def test_groups_auto_takes_sizes_from_the_model():
    space = load_space("swin_auto", group_sizes=[1, 1, 1, 1])  # custom Swin, depths (2, 2, 2, 2)
    assert space.group_sizes == [1, 1, 1, 1] and [g.name for g in space.groups] == ["stage1", "stage2", "stage3", "stage4"]
    assert load_space("swin_auto", group_sizes=[1, 1, 9, 1]).num_configs() == load_space("swin_s").num_configs()
    with pytest.raises(UserError, match="'groups' is 'auto'"):
        load_space("swin_auto")


def test_group_sizes_must_match_the_model():
    with pytest.raises(UserError, match=r"group sizes \[1, 1, 3, 1\] but the model has \[1, 1, 9, 1\]"):
        load_space("swin_t", group_sizes=[1, 1, 9, 1])


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="unknown search space 'swin_xl'.*swin_t"):
        load_space("swin_xl")
    with pytest.raises(UserError, match="not found"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="is a directory, not a file"):
        load_space(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(UserError, match="binary.yaml' is not UTF-8 text"):
        load_space(binary)


def test_yaml_file_with_overrides_and_fixed(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text(
        "method: sparsevit\n"
        "groups:\n"
        "  - {name: a, genes: 2}\n"
        "  - {name: b, genes: 2, choices: [0.5, 0.0], monotonic: false}\n"
        "  - {name: c, genes: 1}\n"
        "choices: [0.0, 0.4]\n"
        "fixed: {a: [0.0, 0.4], c: 0.4}\n")
    space = load_space(p, group_sizes=[2, 2, 1])
    assert space.name == "mine"  # defaults to the file name
    assert space.groups[1].choices == (0.0, 0.5) and not space.groups[1].monotonic
    assert space.num_configs() == 4  # only group b is free: 2 choices ^ 2 genes, unordered
    for seed in range(20):
        config = space.decode(space.sample(random.Random(seed)))
        assert config[0] == [0.0, 0.4] and config[2] == [0.4]
    assert space.decode(space.uniform(0.0)) == [[0.0, 0.4], [0.0, 0.0], [0.4]]
    again = SearchSpace.from_dict(space.to_dict())
    assert again.groups == space.groups


BAD = [
    ("groups: [\n  - {name: a", "is not valid YAML", None),
    ("- 1\n- 2\n", "expected a mapping", None),
    ("method: sparsevit\ngroups: auto\nchoices: [0.0]\nsparsity: 1\n", "'sparsity' is not a known key", None),
    ("groups: auto\nchoices: [0.0]\n", "'method' is missing", None),
    ("method: sparsevit\nchoices: [0.0]\n", "'groups' is missing", None),
    ("method: sparsevit\ngroups: []\nchoices: [0.0]\n", "'groups' must be a non-empty list", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 0}]\nchoices: [0.0]\n", "'groups[0].genes' must be a positive integer", None),
    ("method: sparsevit\ngroups: [{name: a, genes: two}]\nchoices: [0.0]\n", "'groups[0].genes'", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 1, size: 2}]\nchoices: [0.0]\n", "'groups[0].size' is not a known key", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 1}, {name: a, genes: 1}]\nchoices: [0.0]\n", "'groups[1].name' repeats", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 1}]\n", "'groups[0].choices' is missing", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 1}]\nchoices: [0.0, 1.0]\n", "'choices' holds 1.0, which method sparsevit cannot run", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 1}]\nchoices: [-0.1]\n", "'choices' holds -0.1", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 1}]\nchoices: [0.0, high]\n", "'choices' must hold numbers only", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 1}]\nchoices: []\n", "'choices' must be a non-empty list", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 1}]\nchoices: [0.1, 0.1]\n", "'choices' lists 0.1 twice", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 1, choices: [0.5, 2]}]\nchoices: [0.0]\n", "'groups[0].choices' holds 2", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 1}]\nchoices: [0.0]\nmonotonic: yes please\n", "'monotonic' must be true or false", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 1, monotonic: 1}]\nchoices: [0.0]\n", "'groups[0].monotonic' must be true or false", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 1}]\nchoices: [0.0]\nfixed: {b: [0.0]}\n", "'fixed.b' names no group", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 2}]\nchoices: [0.0, 0.5]\nfixed: {a: [0.5, 0.0]}\n", "'fixed.a' must be non-decreasing", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 2}]\nchoices: [0.0, 0.5]\nfixed: {a: [0.3, 0.5]}\n", "'fixed.a' pins 0.3", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 2}]\nchoices: [0.0, 0.5]\nfixed: {a: [0.0]}\n", "'fixed.a' must list 2 value(s)", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 2}]\nchoices: [0.0]\n", "group sizes [2] but the model has [1]", [1]),
    ("method: 3\ngroups: auto\nchoices: [0.0]\n", "'method' must be a non-empty string", [1]),
    # issue 11: the method, not the file, says which values a gene may take
    ("method: sparsevit\ngroups: auto\nchoices: [0, 0.25, 0.9]\n", "'choices' holds 0.25, which method sparsevit cannot run", [1]),
    ("method: sparsevit\ngroups: [{name: a, genes: 1, choices: [0.0, 0.9]}]\n", "'groups[0].choices' holds 0.9, which method sparsevit", None),
    ("method: psvit\ngroups: auto\nchoices: [0.0, 0.5]\n", "'choices' holds 0.5, which method psvit cannot run (its genes take 0, 1)", [3, 6]),
    ("method: pruning\ngroups: auto\nchoices: [0.0]\n", "'method' names an unknown method 'pruning' (known: psvit, sparsevit", [1]),
    ("method: sparsevit\ngroups: auto\nchoice: [0.0]\n", "'choice' is not a known key (did you mean 'choices'?", [1]),
    ("method: sparsevit\ngroups: [{name: a, gene: 1}]\nchoices: [0.0]\n", "'groups[0].gene' is not a known key (did you mean 'genes'?", None),
    ("method: sparsevit\ngroups: [stage1]\nchoices: [0.0]\n", "'groups[0]' must be a mapping like {name: stage1, genes: 1}, got 'stage1'", None),
    ("method: sparsevit\ngroups: every\nchoices: [0.0]\n", "'groups' must be a non-empty list of {name, genes} or 'auto', got 'every'", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 1}]\nchoices: [0.0, .nan]\n", "'choices' must hold numbers only, got nan", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 1}]\nchoices: ['0.5']\n", "'choices' must hold numbers only, got '0.5'", None),
    ("method: sparsevit\ngroups: [{name: a, genes: true}]\nchoices: [0.0]\n", "'groups[0].genes' must be a positive integer, got True", None),
    ("method: sparsevit\ngroups: [{name: a, genes: 1}]\nchoices: [0.0]\nfixed: {a: zero}\n", "'fixed.a' must be a number or a list of numbers, got 'zero'", None),
    ("method: sparsevit\ngroups: [{name: '  ', genes: 1}]\nchoices: [0.0]\n", "'groups[0].name' must be a non-empty string", None),
]


@pytest.mark.parametrize("text,message,sizes", BAD, ids=[m for _, m, _ in BAD])
def test_malformed_files_name_the_file_and_key(tmp_path, text, message, sizes):
    p = tmp_path / "broken_space.yaml"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        load_space(p, group_sizes=sizes)
    msg = str(e.value)
    assert message in msg
    assert str(p) in msg and "\n" not in msg


def test_choices_snap_to_the_methods_own_values(tmp_path):
    """A choice written as 0.30000001 runs as the method's 0.3 (the value the engine compares against)."""
    from sparsevit_cli.swin.patch import RATIO_CHOICES
    p = tmp_path / "near.yaml"
    p.write_text("method: sparsevit\ngroups: auto\nchoices: [0.0, 0.3000000001]\n")
    assert load_space(p, group_sizes=[1]).groups[0].choices == (0.0, RATIO_CHOICES[3])


def test_gene_values_come_from_the_method(tmp_path, monkeypatch):
    """One fact, one place: the loader asks the method; changing the method's values changes what loads."""
    from sparsevit_cli.methods import get_method
    from sparsevit_cli.swin.patch import RATIO_CHOICES
    method = get_method("sparsevit")
    assert tuple(method.gene_values) == RATIO_CHOICES
    assert tuple(get_method("psvit").gene_values) == (0.0, 1.0)
    p = tmp_path / "s.yaml"
    p.write_text("method: sparsevit\ngroups: auto\nchoices: [0.0, 0.8]\n")
    assert load_space(p, group_sizes=[1]).groups[0].choices == (0.0, 0.8)
    monkeypatch.setattr(type(method), "gene_values", (0.0, 0.5))
    with pytest.raises(UserError, match="'choices' holds 0.8, which method sparsevit cannot run"):
        load_space(p, group_sizes=[1])


def test_every_packaged_space_runs_on_its_method():
    """Every choice of every packaged space is a value its method runs (the engine never rejects one)."""
    from sparsevit_cli.methods import get_method
    for name in list_spaces():
        try:
            space = load_space(name)  # explicit groups
        except UserError:  # `groups: auto`: any model's sizes will do
            space = load_space(name, group_sizes=[3, 6] if name.startswith("psvit") else [1, 1, 1, 1])
        values = get_method(space.method).gene_values
        assert all(c in values for g in space.groups for c in g.choices), name


def test_space_for_another_method_is_refused_naming_both():
    with pytest.raises(UserError) as e:
        load_space("psvit_deit", group_sizes=[1, 1], for_method="sparsevit", model_label="the model file")
    msg = str(e.value)
    assert "is for method psvit, but the model file holds a sparsevit model" in msg and "swin_auto" in msg
    assert load_space("swin_auto", group_sizes=[1, 1], for_method="sparsevit").method == "sparsevit"


def test_schema_is_documented():
    from sparsevit_cli.search.space import SpaceFile
    schema = SpaceFile.model_json_schema()
    assert schema["additionalProperties"] is False and schema["required"] == ["method", "groups"]
    assert all(p.get("description") for p in schema["properties"].values())


# ---- hostile files: whatever the YAML holds, loading gives a space or one UserError line naming the file
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 12), st.sampled_from(CHOICES + [1.0, 0.25, -0.0]),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                     st.sampled_from(["auto", "sparsevit", "psvit", "stage1", "a"]))
_KEYS = st.sampled_from(["name", "method", "model", "description", "groups", "choices", "monotonic", "fixed",
                         "genes", "a", "stage1", "choice", "sparsity"])
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(_KEYS, inner, max_size=4)), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.dictionaries(_KEYS, _VALUES, max_size=7), _VALUES),
       sizes=st.one_of(st.none(), st.lists(st.integers(1, 3), min_size=1, max_size=3)))
def test_fuzzed_space_files_load_or_fail_in_one_line(tmp_path, data, sizes):
    import yaml
    p = tmp_path / "fuzzed.yaml"
    p.write_text(yaml.safe_dump(data))
    try:
        space = load_space(p, group_sizes=sizes)
    except UserError as e:
        msg = str(e)
        assert "\n" not in msg and str(p) in msg, msg
    else:
        assert space.num_configs() >= 1 and space.is_valid(space.extreme("dense"))
