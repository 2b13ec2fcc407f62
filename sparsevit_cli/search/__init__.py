"""Config search: search spaces as data (`space`: the `SpaceFile` schema, checked against the method's gene
values) and the DEAP evolution engine (`evolution`). The `sparsevit search` command that wires them to a
model file lives in `commands/search.py`."""
from .evolution import (Budget, EvolutionSettings, SearchResult, pareto_front, plot_pareto, random_search,
                        run_evolution)
from .space import Group, SearchSpace, SpaceFile, list_spaces, load_space

__all__ = ["Budget", "EvolutionSettings", "SearchResult", "pareto_front", "plot_pareto", "random_search",
           "run_evolution", "Group", "SearchSpace", "SpaceFile", "list_spaces", "load_space"]
