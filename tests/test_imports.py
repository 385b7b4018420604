"""The import graph: no cycles in the attention core, and nothing below the package root imports the root.

Read statically from the source (module-level and function-level imports alike), so a lazy import inside a
function that closes a circle is found too. The attention core's cycle check counts `if TYPE_CHECKING:`
imports as well: a circle hidden there is still a circle in the design (kernels.py <-> blocked.py was one).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import attnlab

ROOT = Path(attnlab.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path], type_checking: bool = False) -> set[str]:
    """attnlab modules `path` imports; `from pkg import sub` counts as importing pkg.sub only. With
    `type_checking`, imports under `if TYPE_CHECKING:` count too."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            if not type_checking and (getattr(test, "id", None) == "TYPE_CHECKING"
                                      or getattr(test, "attr", None) == "TYPE_CHECKING"):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names if a.name in modules)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level or not node.module or node.module not in modules:
                return
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(node.module)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _graph(type_checking: bool = False) -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules, type_checking) - {name} for name, path in modules.items()}


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A path start -> ... -> goal, or None."""
    stack, seen = [(start, [start])], {start}
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph[node]):
            if nxt == goal:
                return [*path, nxt]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_the_attention_core_has_no_import_cycle() -> None:
    graph = _graph(type_checking=True)
    for name in sorted(graph):
        if name.startswith("attnlab.attention."):
            cycle = _reaches(graph, name, name)
            assert cycle is None, " -> ".join(cycle)


def test_lower_floors_do_not_import_the_package_root() -> None:
    """`from attnlab import __version__` inside io.py or the models closed a circle through the root,
    which imports the attention core and the models; the version lives in attnlab/_version.py."""
    graph = _graph()
    floors = {"attention", "models", "io", "data", "train", "errors", "_version"}
    below = [n for n in graph if n.split(".")[1:2] and n.split(".")[1] in floors]
    offenders = sorted(n for n in below if "attnlab" in graph[n])
    assert not offenders, f"import the package root: {offenders}"
    assert "attnlab" not in graph["attnlab.models.gpt"] and "attnlab" not in graph["attnlab.io"]


def test_the_type_checking_scan_sees_a_circle(tmp_path: Path) -> None:
    """The scan itself: an `if TYPE_CHECKING:` import is an edge when asked for, and not otherwise."""
    src = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from attnlab.attention.blocked import X\n"
    path = tmp_path / "probe.py"
    path.write_text(src, encoding="utf-8")
    assert _imports(path, _modules(), type_checking=True) == {"attnlab.attention.blocked"}
    assert _imports(path, _modules()) == set()


def test_attention_is_a_callable_package_whose_submodules_import() -> None:
    """`attnlab.attention` is both the entry point and the subpackage: dotted imports of its submodules work,
    in either order with the first call (a fresh interpreter each, so no earlier import helps)."""
    checks = [
        "import attnlab.attention.registry as reg; import attnlab, torch; q = torch.ones(1, 1, 2, 4); "
        "assert attnlab.attention(q, q, q).shape == q.shape; assert 'softmax1' in reg.normalizer_names()",
        "import attnlab, torch; q = torch.ones(1, 1, 2, 4); "
        "assert attnlab.attention(q, q, q).shape == q.shape; "
        "import attnlab.attention.registry as reg; import attnlab.models.gpt; "
        "from attnlab import attention; assert attention(q, q, q).shape == q.shape",
    ]
    for code in checks:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
