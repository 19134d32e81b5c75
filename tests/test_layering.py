"""The package's layers: a module imports only modules of its own layer or lower ones, and no library module
imports a command-line module (docs/architecture.md, "Layers").

Imports inside functions count as much as module-level ones, and importing `pangu_zoo.models.layers` from
outside `pangu_zoo.models` counts as importing `pangu_zoo.models` as well, since Python runs the package's
`__init__.py` first. Only imports under `if TYPE_CHECKING:` are left out: they never run.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pangu_zoo
from pangu_zoo.cli import SUBCOMMANDS

FOUNDATION, BLOCKS, FORMATS, DECODING, MODELS, LOADERS, WORKFLOWS, COMMANDS = range(8)
LAYER_NAMES = ["foundation", "building blocks", "checkpoint formats", "decoding", "models", "model loaders",
               "workflows", "commands"]

# module or package prefix -> layer; the longest matching prefix wins, and a module no entry names is held to
# the strictest layer (the root's)
LAYERS = {
    "pangu_zoo": FOUNDATION,  # also errors, config, runtime, buckets, attention_masks
    "pangu_zoo.models.layers": BLOCKS,
    "pangu_zoo.models.graphs": BLOCKS,
    "pangu_zoo.models.openpangu_layers": BLOCKS,
    "pangu_zoo.models.moe": BLOCKS,
    "pangu_zoo.models.basics": BLOCKS,
    "pangu_zoo.inference.sampling": BLOCKS,
    "pangu_zoo.tokenizers": BLOCKS,
    "pangu_zoo.data": BLOCKS,
    "pangu_zoo.demo_corpus": BLOCKS,
    "pangu_zoo.parallel": BLOCKS,  # the plan: strategy, placement, context, grad_norm, sharded inference
    "pangu_zoo.checkpoint": FORMATS,  # files <-> {name: array}; never a model
    "pangu_zoo.inference.generation": DECODING,  # drives any object with config, graph(name), check_input_ids
    "pangu_zoo.models": MODELS,
    "pangu_zoo.checkpoint.loader": LOADERS,
    "pangu_zoo.training": WORKFLOWS,
    "pangu_zoo.evaluation": WORKFLOWS,
    "pangu_zoo.serving": WORKFLOWS,
    "pangu_zoo.parallel.dryrun_worker": WORKFLOWS,  # compiles the training step
}
# every `pangu` subcommand module, plus the command-line code that is not one
COMMAND_MODULES = {module for module, _ in SUBCOMMANDS.values()} | {
    "pangu_zoo.cli", "pangu_zoo.arg_types", "pangu_zoo.inference.predict"}

SOURCE_ROOT = Path(pangu_zoo.__file__).resolve().parent.parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULE_FILES = {_module_name(path): path for path in sorted((SOURCE_ROOT / "pangu_zoo").rglob("*.py"))}
PACKAGES = {name for name, path in MODULE_FILES.items() if path.name == "__init__.py"}


@dataclass(frozen=True)
class Import:
    target: str
    line: int


def layer_of(module: str) -> int:
    if module in COMMAND_MODULES:
        return COMMANDS
    prefixes = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return LAYERS[max(prefixes, key=len)]


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if module in PACKAGES else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_only(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING"


def imports_of(module: str, source: str) -> list[Import]:
    """The pangu_zoo modules `source` (the text of `module`) imports, at module level or in any function."""
    found: list[Import] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                continue
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(module, child)
                # `from package import submodule` imports the submodule; `from module import name` the module
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULE_FILES else base for a in child.names]
            else:
                visit(child)
                continue
            found.extend(Import(name, child.lineno) for name in names
                         if name == "pangu_zoo" or name.startswith("pangu_zoo."))

    visit(ast.parse(source))
    return found


def modules_run_by(importer: str, target: str) -> list[str]:
    """`target` and each package above it that `importer` is not inside (their `__init__.py` runs too)."""
    parts = target.split(".")
    parents = [".".join(parts[:i]) for i in range(1, len(parts))]
    return [p for p in parents if not (importer == p or importer.startswith(p + "."))] + [target]


def upward_imports(module: str, imports: list[Import]) -> list[str]:
    own = layer_of(module)
    return [f"{module} ({LAYER_NAMES[own]}) imports {target} ({LAYER_NAMES[layer_of(target)]}), line {imp.line}"
            for imp in imports for target in modules_run_by(module, imp.target) if layer_of(target) > own]


IMPORTS = {module: imports_of(module, path.read_text(encoding="utf-8")) for module, path in MODULE_FILES.items()}
LIBRARY_MODULES = [module for module in MODULE_FILES if module not in COMMAND_MODULES]


def test_every_import_points_to_the_same_or_a_lower_layer():
    problems = dict.fromkeys(problem for module, imports in IMPORTS.items()
                             for problem in upward_imports(module, imports))
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_no_library_module_imports_a_command_module():
    problems = dict.fromkeys(f"{module} imports the command-line module {target}, line {imp.line}"
                             for module in LIBRARY_MODULES for imp in IMPORTS[module]
                             for target in modules_run_by(module, imp.target) if target in COMMAND_MODULES)
    assert not problems, "\n".join(problems)


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph` as a path that ends where it starts, or [] when there is none."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_library_modules_import_each_other_without_cycles():
    library = set(LIBRARY_MODULES)
    graph = {module: {target for imp in IMPORTS[module] for target in modules_run_by(module, imp.target)
                      if target in library and target != module}
             for module in library}
    cycle = _cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_every_command_module_exists():
    assert COMMAND_MODULES <= set(MODULE_FILES), sorted(COMMAND_MODULES - set(MODULE_FILES))


def test_the_check_sees_imports_inside_functions_and_through_packages():
    in_function = "def f():\n    from pangu_zoo.training import build\n"
    assert upward_imports("pangu_zoo.models.causal_lm", imports_of("pangu_zoo.models.causal_lm", in_function))
    # the module itself is a building block, but its package's __init__ imports the model classes
    through_package = "from pangu_zoo.models.layers import Backbone\n"
    assert upward_imports("pangu_zoo.inference.generation",
                          imports_of("pangu_zoo.inference.generation", through_package))
    relative = "from ..training.build import build_train_step\n"
    assert upward_imports("pangu_zoo.models.causal_lm", imports_of("pangu_zoo.models.causal_lm", relative))
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
