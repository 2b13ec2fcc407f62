"""The package's import structure: imports run one way (core below commands below the CLI), no module
imports another module's private names, and `import sparsevit_cli` / `sparsevit --help` stay light."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "sparsevit_cli"

# Lowest layer first. A module may import modules of its own layer or below, never above.
LAYERS = [
    {"errors", "layers", "io", "timing", "dist", "batch_memory"},  # foundations
    {"methods", "timm_models", "checkpoints", "data"},             # registries, timm access, checkpoints, data sets
    {"swin", "swinv2", "vit"},                                     # model families (engine, cost, latency, method)
    {"tasks", "model_file", "evaluate", "latency", "search", "detection"},   # what every pipeline step shares
    {"train"},                                                     # the trainer
    {"pipeline"},                                                  # the pipeline's settings and stage bookkeeping
    {"commands"},                                                  # thin commands, side by side
    {"cli", "__init__", "__main__"},                               # the Typer app and the package facade
]


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"module sparsevit_cli.{module} is in no layer: add its package to LAYERS")


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = list(rel.parts)
        if parts[0] == "search_spaces":
            continue
        is_pkg = parts[-1] == "__init__"
        if is_pkg and len(parts) > 1:
            parts = parts[:-1]
        yield ".".join(parts), is_pkg and len(parts) >= 1 and rel.parts[-1] == "__init__", path


def _imports(module: str, is_pkg: bool, path: Path):
    """(imported sparsevit_cli module, imported names) for every import in the file, also inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module.split(".") if is_pkg else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("sparsevit_cli"):
                target = node.module[len("sparsevit_cli"):].lstrip(".")
            else:
                continue
            names = [a.name for a in node.names]
            if node.module is None:  # `from . import dist` (a module) or `from . import __version__` (a name)
                folder = PKG.joinpath(*target.split(".")) if target else PKG
                for n in names:
                    if (folder / f"{n}.py").is_file() or (folder / n).is_dir():
                        yield (f"{target}.{n}" if target else n), []
                    else:
                        yield target, [n]
            else:
                yield target, names
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("sparsevit_cli."):
                    yield a.name[len("sparsevit_cli."):], []


def test_imports_run_one_way():
    problems = []
    for module, is_pkg, path in _modules():
        if module == "__init__":
            continue
        for target, _ in _imports(module, is_pkg, path):
            if not target or target == "__init__":
                continue  # the package facade (e.g. __version__)
            if _layer(target) > _layer(module):
                problems.append(f"{module} imports {target} (layer {_layer(target)} > {_layer(module)})")
    assert not problems, "imports that run back up:\n" + "\n".join(problems)


def test_no_module_imports_another_modules_private_names():
    problems = []
    for module, is_pkg, path in _modules():
        for target, names in _imports(module, is_pkg, path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != module:
                problems.append(f"{module} imports {', '.join(private)} from {target}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("code", ["import sparsevit_cli", "import sparsevit_cli.cli"])
def test_importing_the_package_and_the_cli_does_not_import_torch(code):
    out = subprocess.run([sys.executable, "-c", f"{code}; import sys; print('torch' in sys.modules, 'timm' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


def test_cli_choices_are_the_cores_names():
    """The CLI's Enum choices are built or checked against the one owner of each list."""
    from sparsevit_cli.cli import Precision, Preset
    from sparsevit_cli.commands.workflow import PRESETS
    from sparsevit_cli.timing import DTYPES
    assert [p.value for p in Precision] == list(DTYPES)
    assert [p.value for p in Preset] == list(PRESETS)
    from sparsevit_cli.cli import MacScope
    from sparsevit_cli.commands.search import MAC_SCOPES
    assert [m.value for m in MacScope] == list(MAC_SCOPES)
    import typing
    from sparsevit_cli.cli import PickRule
    from sparsevit_cli.pipeline import SearchStage
    from sparsevit_cli.search.confirm import PICK_RULES
    assert [r.value for r in PickRule] == list(PICK_RULES)
    from sparsevit_cli.cli import SegLabels
    from sparsevit_cli.data.demo import SEG_LABELS
    assert [s.value for s in SegLabels] == list(SEG_LABELS)
    assert typing.get_args(SearchStage.model_fields["pick"].annotation) == PICK_RULES
    # and the default pick rule too (the CLI and the pipeline schema cannot import the search's torch code)
    import inspect
    from sparsevit_cli.cli import search as search_command
    from sparsevit_cli.search.confirm import DEFAULT_PICK_RULE, confirm
    assert inspect.signature(search_command).parameters["pick"].default.default.value == DEFAULT_PICK_RULE
    assert SearchStage.model_fields["pick"].default == DEFAULT_PICK_RULE
    assert inspect.signature(confirm).parameters["rule"].default == DEFAULT_PICK_RULE
