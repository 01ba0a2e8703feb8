"""The architecture contracts of pyproject.toml ([tool.importlinter]) hold, and each of them can fail.

`lint-imports` runs as a subprocess (the venv's binary, no cache). Every contract gets a forbidden
import written into a copy of the packages, and its check must then fail naming that import; the
unmodified tree must keep every contract. `make lint` (and so `make test`, which CI runs) must run
`lint-imports`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "ledger", "signaling", "sfu_bridge", "rest")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONTRACTS: dict[str, dict[str, Any]] = {
    c["id"]: c for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
}

# For every contract: a file, an import that the contract forbids, written at the end of that file
# (in a copy of the tree), and the edge `importer -> imported` that lint-imports must then report.
INJECTIONS: dict[str, tuple[str, str, str, str]] = {
    "ledger-leaf": ("ledger/ids.py", "import signaling", "ledger.ids", "signaling"),
    "ledger-core-no-flows": ("ledger/store.py", "import ledger.flows.tips", "ledger.store", "ledger.flows.tips"),
    "kernel-leaf": ("server/kernel/limits.py", "import server.accounts.users",
                    "server.kernel.limits", "server.accounts.users"),
    "composition-root": ("rest/platform/meta.py", "import server.app.factory",
                         "rest.platform.meta", "server.app.factory"),
    "http-knows-only-the-rest-framework": ("server/http/access_log.py", "import rest.rooms.tips",
                                           "server.http.access_log", "rest.rooms.tips"),
    "domain-no-adapters": ("server/platform/audit_log.py", "import signaling.features.chat.chat",
                           "server.platform.audit_log", "signaling.features.chat.chat"),
    # ledger directly: the contract's ignore_imports (server.kernel's own path to ledger) hides no more.
    "socket-core": ("signaling/core/frames.py", "import ledger.engine", "signaling.core.frames", "ledger.engine"),
    "signaling-no-rest": ("signaling/client.py", "import rest.framework.responses",
                          "signaling.client", "rest.framework.responses"),
    "rest-no-socket-machinery": ("rest/rooms/tips.py", "import signaling.core.hub", "rest.rooms.tips",
                                 "signaling.core.hub"),
    "media": ("sfu_bridge/__init__.py", "import ledger", "sfu_bridge", "ledger"),
    "rest-areas-independent": ("rest/webhooks/stripe.py", "import rest.commerce.wallet",
                               "rest.webhooks.stripe", "rest.commerce.wallet"),
    "domain-packages": ("server/accounts/users.py", "import server.commerce.wallet",
                        "server.accounts.users", "server.commerce.wallet"),
}

EDGE = re.compile(r"^\s*-?\s*([\w.]+) -> ([\w.]+) \(l\.[\d, ]+\)", re.MULTILINE)


def lint_imports(cwd: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    args = [str(LINT_IMPORTS), "--no-cache", "--no-logo"]
    for contract in contracts:
        args += ["--contract", contract]
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def flat(text: str) -> str:
    """The report with its line wrapping undone (long contract names wrap at the terminal width)."""
    return " ".join(text.split())


def name(contract: str) -> str:
    return str(CONTRACTS[contract]["name"])


def edges(report: str) -> set[tuple[str, str]]:
    return set(EDGE.findall(report))


def copy_tree(dest: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def inject(tree: Path, path: str, statement: str) -> int:
    """Append `statement` to `tree/path`; return its line number."""
    target = tree / path
    text = target.read_text()
    if not text.endswith("\n"):
        text += "\n"
    target.write_text(text + statement + "\n")
    return text.count("\n") + 1


def test_the_venv_has_lint_imports() -> None:
    assert LINT_IMPORTS.is_file(), f"{LINT_IMPORTS} is missing: import-linter belongs to the test extras"


def test_every_contract_has_an_injection_that_must_break_it() -> None:
    assert set(INJECTIONS) == set(CONTRACTS)


@pytest.mark.parametrize("contract", sorted(INJECTIONS))
def test_a_forbidden_import_breaks_the_contract(contract: str, tmp_path: Path) -> None:
    """One injection per copy: another injection's chain cannot be what breaks the contract."""
    path, statement, importer, imported = INJECTIONS[contract]
    copy_tree(tmp_path)
    line = inject(tmp_path, path, statement)
    result = lint_imports(tmp_path, contract)
    report = result.stdout + result.stderr
    assert result.returncode != 0, report
    assert f"{flat(name(contract))} BROKEN" in flat(report), report
    # The injected import itself is named, with its line: the contract caught it, not something else.
    assert re.search(rf"{re.escape(importer)} -> {re.escape(imported)} \(l\.{line}\)", report), report


def test_the_copy_is_what_lint_imports_reads(tmp_path: Path) -> None:
    """The injections are seen in the copy, not the installed (editable) tree: a clean copy passes
    exactly like the tree itself, and the copy with `import signaling` in ledger breaks ledger-leaf."""
    copy_tree(tmp_path)
    assert lint_imports(tmp_path, "ledger-leaf").returncode == 0
    inject(tmp_path, "ledger/model.py", "import signaling")
    result = lint_imports(tmp_path)
    report = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{flat(name('ledger-leaf'))} BROKEN" in flat(report), report
    assert ("ledger.model", "signaling") in edges(report), report
    assert lint_imports(ROOT, "ledger-leaf").returncode == 0  # the real tree is untouched


def test_the_tree_keeps_every_contract_but_the_socket_core() -> None:
    others = [c for c in CONTRACTS if c != "socket-core"]
    result = lint_imports(ROOT, *others)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    for contract in others:
        assert f"{flat(name(contract))} KEPT" in flat(report), report


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_ledger_core_contract_lists_every_module_outside_flows() -> None:
    modules = {"ledger"} | {
        "ledger." + p.stem for p in (ROOT / "ledger").glob("*.py") if p.name != "__init__.py"}
    listed = set(CONTRACTS["ledger-core-no-flows"]["source_modules"])
    assert listed == modules
    assert not (ROOT / "ledger" / "flows.py").exists()
    subpackages = {p.name for p in (ROOT / "ledger").iterdir() if (p / "__init__.py").exists()}
    assert subpackages == {"flows"}, "a new ledger subpackage: add it to the ledger-core contract"


def test_the_http_contract_forbids_every_route_area() -> None:
    areas = {f"rest.{p.name}" for p in (ROOT / "rest").iterdir() if (p / "__init__.py").exists()}
    forbidden = set(CONTRACTS["http-knows-only-the-rest-framework"]["forbidden_modules"])
    assert forbidden == areas - {"rest.framework"}


# --- make lint runs lint-imports ----------------------------------------------------------


def make_rules(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """target -> (prerequisites, recipe lines) of a plain Makefile (no includes, no pattern rules)."""
    rules: dict[str, tuple[list[str], list[str]]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("\t") and current is not None:
            current.append(line.strip())
            continue
        match = re.match(r"^([\w$().-]+)\s*:(?!=)\s*(.*)$", line)
        if match and not line.startswith("."):
            current = []
            rules[match.group(1)] = (match.group(2).split(), current)
        elif line.strip() and not line.startswith("#"):
            current = None
    return rules


def commands(rules: dict[str, tuple[list[str], list[str]]], target: str) -> list[str]:
    """What `make target` runs, in order: its prerequisites' recipes (those defined here), then its own."""
    prereqs, recipe = rules[target]
    out: list[str] = []
    for p in prereqs:
        if p in rules:
            out += commands(rules, p)
    return out + recipe


def test_make_lint_and_make_test_run_lint_imports() -> None:
    rules = make_rules((ROOT / "Makefile").read_text())
    lint = commands(rules, "lint")
    assert any(c.split()[0].endswith("/lint-imports") for c in lint), lint
    test = commands(rules, "test")
    position = {c.split()[0].rsplit("/", 1)[-1]: i for i, c in enumerate(test)}
    assert {"ruff", "mypy", "lint-imports", "pytest"} <= set(position), test
    assert position["lint-imports"] < position["pytest"], test
    assert "make test" in (ROOT / ".ci" / "run").read_text()  # what CI runs
