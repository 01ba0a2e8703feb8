"""The README documents every setting and every REST route that exists."""

from __future__ import annotations

from pathlib import Path

from rest import ROUTERS
from server.kernel.settings import Settings, env_name

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [env_name(f) for f in Settings.model_fields if f"`{env_name(f)}`" not in README]
    assert not missing, f"README lacks settings: {missing}"


def test_every_route_is_documented() -> None:
    missing = [f"{r.method} {r.path}" for router in ROUTERS for r in router.routes
               if f"| {r.method} | `{r.path}` |" not in README]
    assert not missing, f"README lacks routes: {missing}"


def test_readme_names_the_two_commands_ci_runs() -> None:
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "make run" in README and "make test" in README
    assert ci.strip().splitlines()[-1] == "make test"


def test_generated_tables_are_current() -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "update_readme.py"
    spec = importlib.util.spec_from_file_location("update_readme", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render(README) == README, "run `python scripts/update_readme.py`"
