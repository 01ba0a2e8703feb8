"""Under `python -O` (assertions off) the ledger's invariant checks vanish: the engine refuses to
start and `greenroom serve` exits before serving anything."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_START_ENGINE = """
import asyncio, sys
from ledger import Engine, LedgerAssertionsOff

async def main() -> None:
    try:
        await Engine(sys.argv[1]).start()
    except LedgerAssertionsOff as exc:
        print("refused:", exc)
        return
    print("started")

asyncio.run(main())
"""


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "PYTHONOPTIMIZE"} | env
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)


async def test_engine_start_raises_under_python_O(dsn: str) -> None:
    optimized = await asyncio.to_thread(_run, ["-O", "-c", _START_ENGINE, dsn], {})
    assert optimized.returncode == 0, optimized.stderr
    assert optimized.stdout.startswith("refused: assertions are off"), optimized.stdout
    assert "python -O" in optimized.stdout
    # The same script with assertions on starts (and is then dropped with its process).
    plain = await asyncio.to_thread(_run, ["-c", _START_ENGINE, dsn], {})
    assert plain.stdout.strip() == "started", plain.stdout + plain.stderr


async def test_greenroom_serve_exits_nonzero_under_python_O(dsn: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": dsn, "GREENROOM_DATA_DIR": str(tmp_path / "data"), "GREENROOM_LOG_LEVEL": "INFO"}
    done = await asyncio.to_thread(_run, ["-O", "-m", "server.cli", "serve", "--port", "0"], env)
    assert done.returncode != 0
    # One line saying why, and nothing else: no database started, no migration, no worker.
    [line] = done.stderr.splitlines()
    assert line.startswith("greenroom: refusing to serve: assertions are off"), done.stderr
    assert "python -O" in line
    assert done.stdout == ""
