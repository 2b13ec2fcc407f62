"""`sparsevit pipeline`'s settings and bookkeeping, below the commands that run its stages.

A pipeline run config is a run config (`train.run_config.RunConfig`: model, checkpoint, data, task,
optimiser, ...) plus a `pipeline:` section (`PipelineSettings`): the budget (MACs or latency, with the
device and batch it is measured at), which stages run (dense finetune, adapt, search, finetune, evaluate,
export) and their sizes. `commands/pipeline.py` runs the stages; `sparsevit demo` is the same pipeline on
the built-in data.

Every stage keeps its output under `out/<stage>/` and records the fingerprint of its inputs there
(`inputs.json`: content hashes of the model files it starts from, a digest of the data folder's listing,
the budget and its settings). `Stages` skips a stage whose output exists, resumes one that was
interrupted, and refuses, with one line naming what changed, a stage whose inputs are not the recorded
ones: a changed checkpoint, data set or budget never silently reuses a result computed from the old one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional

from pydantic import Field, field_validator, model_validator
from rich.console import Console

from .errors import UserError
from .layers import DEFAULT_BUDGET, MAX_SEED
from .io import atomic_write_json, remove_stale_temp_files
from .train.run_config import DEVICE_PATTERN, RunConfig, Section, load_run_config

#: the stages, in the order they run
STAGES = ("dense", "adapt", "search", "finetune", "evaluate", "export")
#: the export formats (commands/export.FORMATS has one writer per name; a test keeps the two equal)
EXPORT_FORMATS = ("onnx", "torchscript", "pt2")
INPUTS = "inputs.json"
#: the content-hash cache of the data fingerprint (`data_digest`), in the pipeline's output folder
DATA_HASHES = ".data-hashes.json"
#: uniform sparsities the report card's curve may use
UNIFORM_CHOICES = tuple(round(0.1 * i, 1) for i in range(1, 9))


class BudgetSettings(Section):
    macs: Optional[str] = Field(None, description=(
        "MAC budget: GMACs per image (e.g. '2.5GMACs') or a percentage of the dense model ('50%')"))
    macs_of: Optional[Literal["model", "backbone"]] = Field(None, description=(
        "what a MAC budget counts: the whole task model as executed, or its sparse backbone alone (default: the "
        "model for classification, the backbone for detection and segmentation, whose neck and heads are a "
        "fixed cost)"))
    latency: Optional[str] = Field(None, description=(
        "latency budget on `device`: milliseconds per forward ('20ms') or a percentage of dense ('60%')"))
    device: Optional[str] = Field(None, description=(
        "where the search measures latency and the report times the models (default: the run's device)"))
    batch_size: int = Field(1, ge=1, description="batch the budget's cost is counted at")
    compile: bool = Field(False, description="time the torch.compile'd model (latency budgets only)")

    @field_validator("macs", "latency", mode="before")
    @classmethod
    def _number_is_text(cls, value: Any) -> Any:
        # `macs: 2.5` in YAML is read as the text '2.5', which the checks refuse as `--budget-macs 2.5` is:
        # a budget carries its unit ('2.5GMACs', '20ms') or '%'
        return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("device")
    @classmethod
    def _device(cls, device: Optional[str]) -> Optional[str]:
        if device is not None and not DEVICE_PATTERN.match(device):
            raise ValueError(f"must be cpu, cuda or cuda:N, got {device!r}")
        return device

    @model_validator(mode="after")
    def _one_budget(self) -> "BudgetSettings":
        if (self.macs is None) == (self.latency is None):
            raise ValueError("needs exactly one of macs (e.g. '50%') or latency (e.g. '60%' or '20ms')")
        if self.macs is None and self.macs_of not in (None, "model"):
            raise ValueError("macs_of says what a MAC budget counts; a latency budget times the whole model")
        if self.compile and self.latency is None:
            raise ValueError("compile applies to a latency budget; MACs do not depend on it")
        return self

    def text(self, run_device: str = "cpu") -> str:
        """The budget in words, e.g. '60% of dense latency (cpu, batch 1)'."""
        if self.macs is not None:
            what = "backbone MACs" if self.macs_of == "backbone" else "MACs"
            return f"{self.macs} of dense {what}" if self.macs.endswith("%") else f"{self.macs} GMACs"
        where = f"{self.device or run_device}, batch {self.batch_size}{', compiled' if self.compile else ''}"
        return (f"{self.latency} of dense latency" if self.latency.endswith("%") else f"{self.latency} latency") + \
            f" ({where})"


class TrainStage(Section):
    run: bool = True
    epochs: Optional[int] = Field(None, ge=1, description="epochs (default: the run config's `epochs`)")
    lr: Optional[float] = Field(None, gt=0, allow_inf_nan=False, description=(
        "peak learning rate (default: the run config's optim.lr, halved for adapt, quartered for finetune)"))


class DenseStage(TrainStage):
    run: bool = Field(False, description=(
        "train the dense model on the data first (off when the checkpoint is already trained for the task)"))


class SearchStage(Section):
    run: bool = Field(True, description="search a config in the budget (off: the run config's `sparsity`)")
    space: Optional[str] = Field(None, description="search space (default: the one the model was adapted on)")
    population: int = Field(50, ge=1, description="configs in the first (random, in-budget) population")
    generations: int = Field(20, ge=1)
    parents: int = Field(10, ge=1)
    mutations: int = Field(25, ge=0)
    crossovers: int = Field(25, ge=0)
    mutation_prob: float = Field(0.1, ge=0, le=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    eval_samples: Optional[int] = Field(None, ge=1, description=(
        "val images every candidate is scored on (fitness split); default: half of what the report split leaves, "
        "at most 1000 (commands.precheck.plan_splits)"))
    confirm_samples: Optional[int] = Field(None, ge=1, description=(
        "other val images the top candidates and the best uniform config are re-scored on (confirmation split); "
        "default: as eval_samples"))
    report_samples: Optional[int] = Field(None, ge=1, description=(
        "val images in neither split, which the report card scores (at least); default: 20% of the val images, "
        "at least 10. A val split too small for the three is refused unless pipeline.allow_small_val"))
    fitness: Optional[Literal["logprob", "metric"]] = Field(None, description=(
        "what candidates are ranked by (default: the task's first: logprob for classification)"))
    pick: Literal["best", "gain-shown"] = Field("gain-shown", description=(
        "gain-shown: the best candidate on the confirmation split only when its gain over the best uniform config "
        "is shown there, else that uniform config; best: the best candidate there, shown or not "
        "(search.confirm.PICK_RULES, DEFAULT_PICK_RULE)"))


    @model_validator(mode="after")
    def _parents_fit(self) -> "SearchStage":
        # `--population 6` alone: the default 10 parents shrink to the population instead of being refused
        if "parents" not in self.model_fields_set and self.parents > self.population:
            self.__dict__["parents"] = self.population
        return self


class EvaluateStage(Section):
    run: bool = Field(True, description="score and time dense, uniform and searched models; write the report card")
    uniform: List[float] = Field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8], description=(
        "uniform sparsities of the adapted model: the report's uniform curve and its best-uniform-in-budget row"))
    pictures: int = Field(3, ge=0, description="val images drawn with the windows the final model keeps")
    throughput_batch: Optional[int] = Field(None, ge=1, description="batch of the throughput column (default 64)")
    repeats: int = Field(10, ge=1, description=(
        "timed repeats per model, interleaved (the median and interquartile range are reported)"))
    dense_finetune: bool = Field(True, description=(
        "like-for-like dense row: finetune the adapted model dense for the finetune stage's epochs, so dense "
        "and the pick have the same training (off: the dense row is the model as trained before adapt, and the "
        "card says its gap to the pick includes the extra epochs)"))

    @field_validator("uniform")
    @classmethod
    def _fractions(cls, values: List[float]) -> List[float]:
        # the values every method takes (SparseViT's ratios stop at 0.8), checked before any stage trains
        bad = [v for v in values if not (isinstance(v, (int, float)) and round(v, 1) in UNIFORM_CHOICES
                                         and abs(v - round(v, 1)) < 1e-9)]
        if bad:
            raise ValueError(f"must be sparsities 0.1 to 0.8 in steps of 0.1, got {bad[0]!r}")
        return values


class ExportStage(Section):
    run: bool = True
    format: Literal["onnx", "torchscript", "pt2"] = "onnx"
    tolerance: float = Field(1e-4, ge=0, allow_inf_nan=False, description="largest relative error vs PyTorch")


class PipelineSettings(Section):
    budget: BudgetSettings = Field(default_factory=lambda: BudgetSettings(macs=DEFAULT_BUDGET), description=(
        f"default: {DEFAULT_BUDGET} of dense MACs"))
    allow_small_val: bool = Field(False, description=(
        "run on a val split too small for the fitness, confirmation and report splits (the search shrinks its "
        "splits; the report card may score images the search saw)"))
    dense: DenseStage = Field(default_factory=DenseStage)
    adapt: TrainStage = Field(default_factory=TrainStage)
    search: SearchStage = Field(default_factory=SearchStage)
    finetune: TrainStage = Field(default_factory=TrainStage)
    evaluate: EvaluateStage = Field(default_factory=EvaluateStage)
    export: ExportStage = Field(default_factory=ExportStage)

    @property
    def budget_given(self) -> bool:
        """Whether the run config or a flag set the budget (else the default is used, and said)."""
        return "budget" in self.model_fields_set


class PipelineConfig(RunConfig):
    """A run config with a `pipeline:` section; the rest is what every training stage starts from."""
    out: str = Field("runs/pipeline", description="output folder: one subfolder per stage, the report card")
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)

    def run_config(self, **changes: Any) -> RunConfig:
        """The plain run config of one training stage: this one without the pipeline section, `changes`
        (dotted keys) applied."""
        from .train.run_config import apply_overrides, parse_run_config
        # only the keys that were set: what a run leaves unset (e.g. the task) it takes from a model file
        data = self.model_dump(exclude={"pipeline"}, exclude_unset=True)
        return parse_run_config(apply_overrides(data, changes), "pipeline stage")

    @property
    def target_device(self) -> str:
        return self.pipeline.budget.device or self.device


def load_pipeline_config(path: Optional[str | os.PathLike], overrides: Optional[Dict[str, Any]] = None) -> PipelineConfig:
    """The pipeline config of a run-config YAML (or of the defaults when `path` is None), `overrides`
    (dotted keys, e.g. `pipeline.budget.latency`) applied; one line for the first bad key."""
    cfg = load_run_config(path, overrides, schema=PipelineConfig)
    assert isinstance(cfg, PipelineConfig)
    return cfg


# --------------------------------------------------------------------------------------------- fingerprints
def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes: a checkpoint with other weights is another input, wherever it lies. A
    folder (a Hugging Face save_pretrained checkpoint): of its files' names and bytes, in name order."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(path).iterdir() if p.is_file()) if os.path.isdir(path) else [Path(path)]
    try:
        for file in files:
            if os.path.isdir(path):
                h.update(f"{file.name}\0".encode())
            with open(file, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    except OSError as e:
        raise UserError(f"cannot read '{path}': {e.strerror or e}") from None
    return h.hexdigest()


#: a file changed less than this long ago may change again within the same timestamp tick: its content hash
#: is not cached (as git treats a "racily clean" file)
RACY_NS = 2_000_000_000


def data_digest(path: str | os.PathLike, cache: Optional[str | os.PathLike] = None) -> Dict[str, Any]:
    """The data folder as a stage input: its path and a digest of exactly the files the loaders read
    (`io.data_files`, the listing they share: hidden names skipped, a FIFO refused), each by its relative path,
    size and SHA-256 of its content, so an image changed in place at the same size, or two images swapped, is
    seen. The content hashes are cached in `cache` (a JSON file) under the file's size, mtime_ns, ctime_ns and
    inode, as make and rsync judge a file unchanged (and git's index): an unchanged data set is stat()ed, not
    read again; a file whose stat differs in any of them (a rename or swap changes ctime and inode, an edit
    mtime) is read again. The folder holding `cache` (the pipeline's output) is left out of the listing."""
    import time
    from .io import atomic_write_json, data_files

    root = Path(path)
    if not root.is_dir():
        raise UserError(f"data folder '{root}' not found" if not root.exists() else f"data '{root}' is not a folder")
    old: Dict[str, Any] = {}
    if cache is not None and os.path.isfile(cache):
        try:
            old = json.loads(Path(cache).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}  # a torn or foreign cache: every file is hashed again
        old = old if isinstance(old, dict) and old.get("root") == str(root.resolve()) else {}
    known = old.get("files", {}) if isinstance(old.get("files"), dict) else {}
    now = time.time_ns()
    h, n, fresh = hashlib.sha256(), 0, {}
    # the pipeline's own output folder (where the cache lives) may lie inside the data: its files are no data
    for p in data_files(root, skip=[Path(cache).parent] if cache is not None else ()):
        rel = p.relative_to(root).as_posix()
        try:
            st = p.stat()
        except OSError as e:
            raise UserError(f"cannot read '{p}': {e.strerror or e}") from None
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = known.get(rel)
        sha = entry[1] if isinstance(entry, list) and len(entry) == 2 and entry[0] == key else file_digest(p)
        if now - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS:
            fresh[rel] = [key, sha]
        h.update(os.fsencode(rel) + f"\0{st.st_size}\0{sha}\n".encode())
        n += 1
    if cache is not None and fresh != known:
        atomic_write_json(cache, {"root": str(root.resolve()), "files": fresh}, indent=None,
                          what="data hash cache")
    return {"path": str(root.resolve()), "files": n, "listing": h.hexdigest()}


def first_change(old: Dict[str, Any], new: Dict[str, Any]) -> Optional[str]:
    """'key: was X, now Y' for the first input that differs (None when none does)."""
    from .train.state import flatten  # the trainer's resume check flattens the same way (imports torch)
    a, b = flatten(json.loads(json.dumps(old))), flatten(json.loads(json.dumps(new)))

    def short(v: Any) -> str:
        text = json.dumps(v) if not isinstance(v, str) else v
        return text if len(text) <= 24 else text[:12] + "…"

    for key in sorted(a.keys() | b.keys()):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            return f"{key} was {short(a.get(key, '<unset>'))}, now {short(b.get(key, '<unset>'))}"
    return None


def _holds_work(folder: Path) -> bool:
    """Whether a stage folder holds anything a run wrote besides its input record (and the lock)."""
    from .io import FolderLock
    return any(p.name not in (INPUTS, FolderLock.NAME) and not p.name.startswith(".") for p in folder.iterdir())


class StageStopped(Exception):
    """A stage ended without its output (a training run stopped early on purpose: an interrupt it saved a
    checkpoint for); the stages after it cannot run yet."""

    def __init__(self, stage: str, output: Path):
        super().__init__(f"the {stage} stage stopped before writing '{output}'; run the same command again "
                         f"to continue it")
        self.stage = stage


class Stages:
    """Runs each stage unless its output exists, prints which stage runs, and refuses a stage whose
    recorded inputs differ from this run's (one line naming the first difference)."""

    def __init__(self, console: Console):
        self.console, self.n = console, 0

    def __call__(self, title: str, output: Path, run: Callable[[], Any],
                 inputs: Optional[Dict[str, Any]] = None) -> Path:
        self.n += 1
        folder = output.parent
        record = folder / INPUTS
        if inputs is not None:
            if record.is_file():
                try:
                    old = json.loads(record.read_text())
                except ValueError:
                    old = None  # torn by hand; the writer is atomic
                change = first_change(old, inputs) if isinstance(old, dict) else "its record is unreadable"
                if change and not _holds_work(folder):
                    change = None  # an attempt that failed before writing anything: nothing to mix up
                    atomic_write_json(record, inputs)
                if change:
                    raise UserError(f"the {folder.name} stage in '{folder}' was run with other inputs ({change}); "
                                    f"remove '{folder}' and the stages after it, or choose another --out")
            elif output.exists():
                raise UserError(f"'{folder}' holds a result without a record of its inputs; remove it or "
                                f"choose another --out")
        if output.exists():
            self.console.print(f"[dim]{self.n}. {title}: done ({output})[/]")
            return output
        if inputs is not None and not record.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(record, inputs)
        remove_stale_temp_files(folder)  # a killed stage's half-written files (the pipeline holds the lock)
        self.console.rule(f"{self.n}. {title}")
        run()
        if not output.exists():
            raise StageStopped(folder.name, output)
        return output
