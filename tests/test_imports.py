"""The package's import graph, read from the source (nothing imported): no cycle, arrows that point down the
layers of docs/architecture.md, and a recipe that loads without torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mtbert"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The package modules `path` imports anywhere in it (functions included: a lazy import is still an
    edge), each as the module itself: `from mtbert.x import y` is mtbert.x.y when that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                inner = f"{node.module}.{alias.name}"
                found.add(inner if inner in known else node.module)
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) for name, path in found.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    edges = graph()
    assert {"mtbert.training.setup", "mtbert.training.stages"} <= edges["mtbert.training.loop"]  # it reads imports
    assert "mtbert.training.loop" in edges["mtbert.cli"]  # lazy ones too
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle)


def users_of(prefix: str, edges: dict[str, set[str]]) -> dict[str, set[str]]:
    return {name: {d for d in deps if d == prefix or d.startswith(prefix + ".")} for name, deps in edges.items()
            if any(d == prefix or d.startswith(prefix + ".") for d in deps)}


@pytest.mark.parametrize("layer, forbidden", [
    ("mtbert.model", ("mtbert.training", "mtbert.commands", "mtbert.config", "mtbert.files", "mtbert.objectives",
                      "mtbert.cli")),
    ("mtbert.objectives", ("mtbert.training", "mtbert.commands", "mtbert.cli")),
    ("mtbert.data", ("mtbert.training", "mtbert.commands", "mtbert.objectives", "mtbert.cli")),
    ("mtbert.training", ("mtbert.commands", "mtbert.cli")),
    ("mtbert.commands", ("mtbert.cli",)),
])
def test_imports_point_down_the_layers(layer, forbidden):
    edges = graph()
    wrong = {name: sorted(d for d in deps if d.startswith(forbidden)) for name, deps in edges.items()
             if name.startswith(layer)}
    assert not {name: deps for name, deps in wrong.items() if deps}


def test_only_the_command_line_imports_the_command_line():
    # docsgen writes the command reference from the Typer app: describing the command line is its job.
    assert users_of("mtbert.cli", graph()) == {"mtbert.__main__": {"mtbert.cli"}, "mtbert.docsgen": {"mtbert.cli"}}


def test_only_launch_imports_accelerate_or_deepspeed_in_the_training_core():
    users = set()
    for name, path in modules().items():
        if name.startswith(("mtbert.training", "mtbert.objectives", "mtbert.model", "mtbert.data")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(n.split(".")[0] in ("accelerate", "deepspeed") for n in names) and not _type_checking_only(
                        path, node):
                    users.add(name)
    assert users == {"mtbert.training.launch"}


def _type_checking_only(path: Path, node: ast.AST) -> bool:
    """Whether `node` sits under `if TYPE_CHECKING:` (an annotation's import, never run)."""
    for parent in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(parent, ast.If) and getattr(parent.test, "id", None) == "TYPE_CHECKING":
            if any(getattr(child, "lineno", None) == node.lineno for child in ast.walk(parent)):
                return True
    return False


@pytest.mark.parametrize("module", ["mtbert.errors", "mtbert.config", "mtbert.model.plan"])
def test_reading_a_recipe_imports_no_torch(module):
    code = (f"import sys\nimport {module}\nfrom mtbert.config import parse_recipe\n"
            "parse_recipe({'tasks': {'sst': {}}, 'model': {'init': 'random', 'tokenizer': 'tok', 'sharing': 'F2-S4', "
            "'size': {'num_layers': 6}}})\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr


# Optional or evaluation-only libraries that `mtbert train` must not import before its first optimizer step (issue 17:
# start-up time): `evaluate` (which imports transformers' pipelines and scipy), scikit-learn and scipy load with the
# first evaluation (mtbert/metrics), the others only on the paths that use them. A test of its own in a fresh process.
LAZY = ("evaluate", "sklearn", "scipy", "matplotlib", "deepspeed", "peft", "torchjd", "onnx", "onnxruntime",
        "onnxscript", "optimum", "submitit", "tensorboard")


def test_the_training_path_imports_no_optional_library():
    code = ("import sys\n"
            "import mtbert.cli, mtbert.training.loop, mtbert.training.setup, mtbert.tasks, mtbert.commands.evaluate\n"
            "from transformers import AutoTokenizer  # what data/loading.py's load_tokenizer imports\n"
            f"loaded = sorted(m for m in {LAZY!r} if m in sys.modules)\n"
            "assert not loaded, f'imported at start-up: {loaded}'\n"
            "from mtbert.metrics import compute_metrics\n"
            "assert compute_metrics(['accuracy'], [1, 0], [1, 1]) == {'accuracy': 0.5}\n"
            "assert 'evaluate' in sys.modules and 'sklearn' in sys.modules  # on first use\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr
