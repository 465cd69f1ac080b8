"""The house ordered by concern (operators/__init__.py): every import inside operators/ points from a
concern to one below it, never up or sideways into a circle. Read from the source (ast), so an import
hidden inside a function counts as much as one at the top of a module."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "operators"
# a concern may import from its own and any lower rank; the base modules (operators/*.py) are rank 0
RANK = {"base": 0, "output": 1, "io": 2, "audio": 3, "asr": 4, "labeling": 5}


def _concern(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in RANK else "base"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of operators a file imports (`from operators import x` counts as operators.x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("operators.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "operators":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if (ROOT.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                        or (ROOT.parent / sub.replace(".", "/")).is_dir() else node.module)
    return out


FILES = sorted(ROOT.rglob("*.py"))


def test_the_layout_is_what_operators_init_describes():
    assert {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(RANK) - {"base"}
    base = {p.stem for p in ROOT.glob("*.py")} - {"__init__"}
    assert base == {"config", "schema", "tasks", "backends", "storage", "retry", "metrics"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    me = _module_name(path)
    up = sorted(m for m in _imports(path) if RANK[_concern(m)] > RANK[_concern(me)])
    assert not up, f"{me} ({_concern(me)}) imports from a concern above its own: {up}"


def test_no_import_circle_between_modules():
    graph = {_module_name(p): {m for m in _imports(p) if m != _module_name(p)} for p in FILES}
    seen, stack, circles = set(), [], []

    def visit(m):
        if m in stack:
            circles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            visit(d)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not circles, f"import circles: {circles}"


def test_the_plugin_import_path_stays_valid():
    """A plugin implements operators.asr.base's protocol and may use its task vocabulary from there."""
    base = importlib.import_module("operators.asr.base")
    tasks = importlib.import_module("operators.tasks")
    for name in ("ASRBackend", "Transcript", "TaskSpec", "TRANSCRIBE", "TRANSLATE", "capabilities", "model_identity"):
        assert hasattr(base, name), name
    assert base.TaskSpec is tasks.TaskSpec and base.capabilities is tasks.capabilities
    from operators.asr import available_backends, backend_class

    assert "whisper" in available_backends() and backend_class("simulated").name == "simulated"
