"""Checks that run before anything is trained or scored: a mistake costs seconds, not an adapt.

`pipeline` and `search` both call `check_budget` before their first expensive step: the budget's
unit (a bare number is refused: `--budget-latency 60` may mean 60 ms or 60%), the MAC scope (detection and
segmentation count their backbone by default: their neck and heads are a fixed cost no config changes), and
the budget's feasibility, from the cost of the cheapest and the densest config of the search space (analytic
MACs, or both configs timed on the target device: seconds). The pipeline also checks the device, and that
the val split holds the search's fitness and confirmation splits and a report split neither of them saw
(`plan_splits`), before its first stage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from rich.console import Console

from ..errors import UserError

#: fewest val images a split gets when its size is left to the default
MIN_SPLIT_IMAGES = 10
#: share of the val images kept for the report card (unseen by the search) when no size is given
REPORT_SHARE = 0.2
#: most val images the fitness and the confirmation split each take when no size is given
MAX_SEARCH_SPLIT = 1000


def default_mac_scope(task_name: str) -> str:
    """What a MAC budget counts when the user does not say: a classifier is its backbone (the same count);
    a detector or a segmenter counts its backbone, the only part a config changes (its neck and heads are a
    fixed cost, which a whole-model percentage would have to meet too)."""
    return "model" if task_name == "classification" else "backbone"


# --------------------------------------------------------------------------------------------- splits
@dataclass
class SplitPlan:
    """How many val images the search ranks on (fitness), confirms on, and leaves to the report card."""
    n: int
    fitness: int
    confirmation: int
    report: int

    def text(self) -> str:
        return (f"val split: {self.n} images; the search ranks on {self.fitness}, confirms on {self.confirmation}, "
                f"the report card scores {self.report} it never saw")


def plan_splits(n: int, fitness: Optional[int], confirmation: Optional[int], report: Optional[int],
                allow_small: bool, where: str) -> SplitPlan:
    """Sizes of the three disjoint splits of `n` val images. Left to the default (None): the report split is
    REPORT_SHARE of the images (at least MIN_SPLIT_IMAGES), fitness and confirmation share the rest (at most
    MAX_SEARCH_SPLIT each, at least MIN_SPLIT_IMAGES). UserError, naming the counts and the flags, when they
    do not fit, unless `allow_small` (then the search shrinks its splits and the report card may score
    images the search saw)."""
    r = report if report is not None else max(MIN_SPLIT_IMAGES, round(REPORT_SHARE * n))
    half = max(0, (n - r) // 2)
    f = fitness if fitness is not None else min(MAX_SEARCH_SPLIT, half)
    c = confirmation if confirmation is not None else min(MAX_SEARCH_SPLIT, half)
    least = {name: (given if given is not None else max(MIN_SPLIT_IMAGES, value))
             for name, given, value in (("fitness", fitness, f), ("confirmation", confirmation, c),
                                        ("report", report, r))}
    need = sum(least.values())
    if need <= n:
        return SplitPlan(n=n, fitness=f, confirmation=c, report=n - f - c)
    if not allow_small:
        def part(name: str, flag: str, given: Optional[int]) -> str:
            return f"{least[name]} ({flag} {given})" if given is not None else f"{least[name]} ({flag}, at least)"
        raise UserError(
            f"the val split of '{where}' has {n} images; the search's fitness split "
            f"{part('fitness', '--eval-samples', fitness)}, its confirmation split "
            f"{part('confirmation', '--confirm-samples', confirmation)} and the report card's unseen split "
            f"{part('report', '--report-samples', report)} need {need}: add val images, lower those sizes, or "
            f"pass --allow-small-val (the report card may then score images the search saw)")
    f, c = max(1, min(f, n - 1)), max(1, min(c, n - 1))
    return SplitPlan(n=n, fitness=f, confirmation=c, report=max(0, n - f - c))


# --------------------------------------------------------------------------------------------- budget
@dataclass
class BudgetAsk:
    """A budget as the user gave it (text with its unit or %), and the flags that name it in messages."""
    macs: Optional[str] = None
    latency: Optional[str] = None
    macs_of: Optional[str] = None  # None: default_mac_scope(task)
    #: the MAC budget is the default, not the user's: where the space cannot go that low, `check_budget` moves it
    #: up (into `macs`) instead of refusing
    default: bool = False
    macs_flag: str = "--budget-macs"
    latency_flag: str = "--budget-latency"
    scope_flag: str = "--budget-macs-of"


@dataclass
class CostRange:
    """The cost of the densest and the cheapest config of a search space, in `unit`."""
    unit: str
    dense: float
    sparsest: float

    def limit(self, text: str, what: str) -> float:
        """The budget `text` in `unit`; UserError (with the smallest budget that can be met) when no config of
        the space is inside it."""
        from .search import parse_budget
        limit = parse_budget(text, self.dense, self.unit, what)
        assert limit is not None
        if limit < self.sparsest * (1 - 1e-9):
            least = math.ceil(100 * self.sparsest / self.dense)
            raise UserError(f"{what} {text} is {limit:.4g} {self.unit}, below the cheapest config's "
                            f"{self.sparsest:.4g} {self.unit} ({self.sparsest / self.dense:.0%} of dense, "
                            f"{self.dense:.4g} {self.unit}): give at least {least}% or "
                            f"{self.sparsest:.4g}{self.unit}")
        return limit

    def line(self, text: str, limit: float, what: str) -> str:
        fits = " (dense fits: every config is inside it)" if limit >= self.dense else ""
        return (f"budget: {what} {text} = {limit:.4g} {self.unit}; the search space runs from {self.sparsest:.4g} "
                f"(cheapest) to {self.dense:.4g} {self.unit} (dense){fits}")


def check_budget(ask: BudgetAsk, *, model, method, task, space, img_size: int, batch_size: int, device,
                 dataset: Any, console: Optional[Console] = None) -> str:
    """Check a budget against the cheapest and the densest config of `space` on `model` (its weights do not
    matter: MACs are analytic, and timing does not depend on them); print one line with the range, and one
    info line when the MAC scope was defaulted to the backbone. Returns the MAC scope ('model' or
    'backbone'; 'model' for a latency budget, which times the whole model end to end)."""
    import torch

    from ..tasks import backbone_of
    from ..timing import time_fn
    from .search import MAC_SCOPES, budget_number, latency_batch

    say = console.print if console is not None else (lambda *a, **k: None)
    if (ask.macs is None) == (ask.latency is None):
        raise UserError(f"give exactly one budget: {ask.macs_flag} or {ask.latency_flag}")
    backbone = backbone_of(model)
    dense_cfg, cheapest_cfg = (space.decode(space.extreme(end)) for end in ("dense", "sparsest"))
    if ask.macs is not None:
        budget_number(ask.macs, "GMACs", ask.macs_flag)  # its unit first: no model work for a typo
        if ask.macs_of is not None and ask.macs_of not in MAC_SCOPES:
            raise UserError(f"{ask.scope_flag} must be one of {', '.join(MAC_SCOPES)}, got '{ask.macs_of}'")
        scope = ask.macs_of or default_mac_scope(task.name)

        def gmacs(config, part: str) -> float:
            count = task.backbone_macs if part == "backbone" else task.macs
            return count(model, method, config, img_size, batch_size) / 1e9

        costs = CostRange("GMACs", gmacs(dense_cfg, scope), gmacs(cheapest_cfg, scope))
        whole = gmacs(dense_cfg, "model")
        if ask.macs_of is None and scope == "backbone":
            say(f"info: {ask.macs_flag} {ask.macs} counts the backbone's MACs ({costs.dense:.4g} of the "
                f"{task.name} model's {whole:.4g} GMACs): its neck and heads are a fixed cost no config changes; "
                f"{ask.scope_flag} model counts the whole model", highlight=False, soft_wrap=True)
        try:
            limit = costs.limit(ask.macs, ask.macs_flag)
        except UserError as e:
            if ask.default:  # no budget given: midway between the cheapest config and dense, so the search has room
                cheapest = costs.sparsest / costs.dense
                given, ask.macs = ask.macs, f"{math.ceil(50 * (1 + cheapest))}%"
                say(f"info: the default budget {given} is below this model's cheapest config ({cheapest:.0%} of "
                    f"dense {'backbone ' if scope == 'backbone' else ''}MACs at {img_size} px): the budget is "
                    f"{ask.macs}, midway between it and dense", highlight=False, soft_wrap=True)
                limit = costs.limit(ask.macs, ask.macs_flag)
            elif scope == "model" and gmacs(dense_cfg, "backbone") < whole:  # a task model: heads on top
                raise UserError(f"{e}; or {ask.scope_flag} backbone to count the backbone alone (the neck and "
                                f"heads are a fixed {whole - gmacs(dense_cfg, 'backbone'):.4g} GMACs)") from None
            else:
                raise
        say(costs.line(ask.macs, limit, ask.macs_flag + (" (backbone)" if scope == "backbone" else "")),
            highlight=False, soft_wrap=True)
        return scope
    budget_number(ask.latency, "ms", ask.latency_flag)
    if ask.macs_of is not None and ask.macs_of != "model":
        raise UserError(f"{ask.scope_flag} says what a {ask.macs_flag} counts; a latency budget times the whole "
                        f"model")
    x = latency_batch(task, dataset, batch_size, device)

    def ms(config) -> float:
        method.apply(backbone, config)
        with torch.inference_mode():
            return time_fn(lambda: model(x), device, warmup=1, repeats=2)  # a range to check, not a result

    model.eval()
    costs = CostRange("ms", ms(dense_cfg), ms(cheapest_cfg))
    method.apply(backbone, dense_cfg)
    limit = costs.limit(ask.latency, ask.latency_flag)
    say(costs.line(ask.latency, limit, f"{ask.latency_flag} (timed on {device}, batch {batch_size})"),
        highlight=False, soft_wrap=True)
    return "model"


# --------------------------------------------------------------------------------------------- pipeline
def check_pipeline(cfg, console: Optional[Console] = None) -> None:
    """Everything about a pipeline run that needs the model's shape or the data: the val split's sizes and
    the budget against the cheapest and densest config, on a model built like the first stage's (untrained
    weights suffice). Resolves the defaults in `cfg` (the MAC scope, the split sizes), so the stages and
    their fingerprints see what was checked."""
    from ..model_file import DEFAULT_IMG_SIZE, build_from_meta, read_meta
    from ..methods import method_for_model
    from ..search.space import load_space
    from ..tasks import backbone_of, build_task_model, get_task
    from ..timing import resolve_device
    from ..timm_models import create_timm_model
    from ..errors import first_line

    p = cfg.pipeline
    device = resolve_device(cfg.target_device)
    resolve_device(cfg.device)
    meta = read_meta(cfg.checkpoint) if cfg.checkpoint else None
    task_name = meta.task if meta is not None and "task" not in cfg.data.model_fields_set else cfg.data.task
    task = get_task(task_name)
    img_size = meta.image_size if meta is not None else int(cfg.model.args.get("img_size") or DEFAULT_IMG_SIZE)
    val = task.dataset(cfg.data.path, "val", img_size, train=False, skip_bad_images=cfg.data.skip_bad_images)

    s = p.search
    if s.run:
        plan = plan_splits(len(val), s.eval_samples, s.confirm_samples, s.report_samples, p.allow_small_val,
                           f"{cfg.data.path}")
        s.eval_samples, s.confirm_samples = plan.fitness, plan.confirmation
        if console is not None:
            console.print(plan.text(), highlight=False, soft_wrap=True)

    if meta is not None:
        model, method = build_from_meta(meta)
    else:
        args = dict(cfg.model.args)
        classes = getattr(val, "num_classes", None)
        if task_name == "classification" and classes is not None:
            args.setdefault("num_classes", classes)
        backbone = create_timm_model(cfg.model.name, **args)
        method = method_for_model(backbone)
        backbone = method.wrap(backbone, **cfg.method_options.given())
        try:
            model = build_task_model(backbone, task_name, classes, **cfg.task_options.given())
        except TypeError as e:
            raise UserError(f"task_options do not fit the {task_name} head: {first_line(e)}") from None
    model = model.to(device)
    adapted_on = cfg.adapt.space if p.adapt.run else None
    space_name = s.space or adapted_on or (meta.space if meta is not None else None) or method.default_space
    space = load_space(space_name, group_sizes=method.group_sizes(backbone_of(model)), for_method=method.name,
                       model_label="the model")
    b = p.budget
    if not p.budget_given and console is not None:
        console.print(f"info: no budget given: the default, {b.text(cfg.device)} (--budget-macs or "
                      f"--budget-latency to choose one)", highlight=False, soft_wrap=True)
    ask = BudgetAsk(macs=b.macs, latency=b.latency, macs_of=b.macs_of, default=not p.budget_given)
    scope = check_budget(ask, model=model, method=method, task=task, space=space, img_size=img_size,
                         batch_size=b.batch_size, device=device, dataset=val, console=console)
    if b.macs is not None:  # the stages (and their fingerprints) see the budget and scope that were checked
        b.macs, b.macs_of = ask.macs, scope
