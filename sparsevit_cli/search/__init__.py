"""Config search: search spaces as data (`space`), the DEAP evolution engine (`evolution`), and the
`sparsevit search` command that wires them to a model (`run`, imported on demand: it needs torch)."""
from .evolution import (Budget, EvolutionSettings, SearchResult, pareto_front, plot_pareto, random_search,
                        run_evolution)
from .space import Group, SearchSpace, list_spaces, load_space

__all__ = ["Budget", "EvolutionSettings", "SearchResult", "pareto_front", "plot_pareto", "random_search",
           "run_evolution", "Group", "SearchSpace", "list_spaces", "load_space"]
