"""Structure rules, checked by parsing the source: no import cycle in spectra_core (lazy imports inside
functions count; imports only for type checking do not), and the method plugins use only the public
API (no peft, no spectra_core.training/adapters internals)."""

from __future__ import annotations

import ast
from pathlib import Path

import spectra_core

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "spectra_core"
PUBLIC = {"spectra_core", "spectra_core.errors", "spectra_core.strategies", "spectra_core.plan",
          "spectra_core.scores", "spectra_core.changes", "spectra_core.atomic", "spectra_core.spectral.types"}
FORBIDDEN_THIRD_PARTY = ("peft", "bitsandbytes", "transformers", "accelerate")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path, name: str) -> list[str]:
    """Absolute names of every module ``path`` imports (``from a import b`` also yields ``a.b``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                continue
            if isinstance(child, ast.Import):
                found.extend(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                found.append(base)
                found.extend(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def core_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in CORE.rglob("*.py")}
    return {name: {m for m in imports(path, name) if m in files and m != name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_spectra_core_has_no_import_cycle():
    graph = core_graph()
    assert "spectra_core.adapters" in graph["spectra_core.training.session"]  # the walk sees real edges
    assert "spectra_core.training.trainer" in graph["spectra_core.pipeline"]  # lazy imports count
    assert cycles(graph) == []


def plugin_offences(root: Path, forbidden: tuple[str, ...] = FORBIDDEN_THIRD_PARTY,
                    plugins: tuple[str, ...] = ("*",)) -> list[str]:
    """Imports under ``root/<plugin>/<package>/`` that are not the public API (or are in ``forbidden``)."""
    offences = []
    for path in sorted(p for plugin in plugins for p in root.glob(f"{plugin}/spectra_*/**/*.py")):
        name = module_name(path, path.parents[len(path.relative_to(root).parts) - 2])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "spectra_core" and not node.level:
                offences += [f"{path.name}: spectra_core.{a.name} is not exported"
                             for a in node.names if a.name not in spectra_core.__all__]
        for imported in imports(path, name):
            top = imported.split(".")[0]
            private = top == "spectra_core" and imported not in PUBLIC and imported.rpartition(".")[0] not in PUBLIC
            if top in forbidden or private:
                offences.append(f"{path.relative_to(root)} imports {imported}")
    return offences


def test_the_plugin_rule_flags_peft_and_internals(tmp_path):
    bad = tmp_path / "x" / "spectra_x"
    bad.mkdir(parents=True)
    (bad / "m.py").write_text("def f():\n    from peft import LoraConfig\n"
                              "from spectra_core.training.modeling import load_base\nfrom spectra_core import _x\n")
    assert plugin_offences(tmp_path) == ["m.py: spectra_core._x is not exported", "x/spectra_x/m.py imports peft",
                                         "x/spectra_x/m.py imports peft.LoraConfig",
                                         "x/spectra_x/m.py imports spectra_core.training.modeling",
                                         "x/spectra_x/m.py imports spectra_core.training.modeling.load_base"]


def test_every_plugin_imports_only_the_public_api_and_no_peft():
    """Also ``baselines``, which reproduces peft's own selection (its target matching, KappaTune) through
    the core's public helpers."""
    assert plugin_offences(ROOT / "plugins") == []


def test_the_examples_import_only_the_public_api_and_no_peft():
    """The example plugins are what third parties copy (a quantizer there loads through transformers)."""
    assert len(list((ROOT / "examples").glob("*/spectra_*/*.py"))) >= 7
    assert plugin_offences(ROOT / "examples", forbidden=("peft", "bitsandbytes")) == []
