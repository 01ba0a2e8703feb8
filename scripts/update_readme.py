"""Regenerate the README's settings and routes tables from the code (run after adding either)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rest import ROUTERS  # noqa: E402
from server.kernel.settings import settings_table  # noqa: E402

WHO = {"public": "anyone", "optional": "anyone (more when signed in)", "user": "signed-in user"}


def routes_table() -> str:
    rows = ["| method | path | who | what |", "| --- | --- | --- | --- |"]
    for router in ROUTERS:
        for r in router.routes:
            who = ", ".join(r.roles) if r.roles else WHO[r.auth]
            rows.append(f"| {r.method} | `{r.path}` | {who} | {r.summary.replace('|', '/')} |")
    return "\n".join(rows)


def render(text: str) -> str:
    for name, table in (("settings", settings_table()), ("routes", routes_table())):
        text = re.sub(rf"(<!-- {name}:begin -->\n).*?(\n<!-- {name}:end -->)",
                      lambda m, t=table: m.group(1) + t + m.group(2), text, flags=re.S)
    return text


if __name__ == "__main__":
    readme = ROOT / "README.md"
    readme.write_text(render(readme.read_text()))
