"""The test harness's own safety net: a test app whose shutdown hangs says what it waits for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

import tests.conftest
from server.kernel.settings import Settings


async def test_a_slow_shutdown_dumps_where_every_task_waits(make_app: Callable[[Settings], web.Application],
                                                            settings: Settings, aiohttp_client: Any,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tests.conftest, "SHUTDOWN_WATCHDOG_S", 0.2)
    app = make_app(settings)

    async def stuck_in_shutdown(_app: web.Application) -> None:
        await asyncio.sleep(0.6)

    app.on_shutdown.append(stuck_in_shutdown)
    client = await aiohttp_client(app)
    await client.close()
    err = capsys.readouterr().err
    assert "app shutdown still running after 0.2s" in err
    assert "in stuck_in_shutdown" in err  # found down the await chain of the closing task
    assert "task ledger-writer:" in err


async def test_a_quick_shutdown_dumps_nothing(make_app: Callable[[Settings], web.Application], settings: Settings,
                                              aiohttp_client: Any, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tests.conftest, "SHUTDOWN_WATCHDOG_S", 0.5)
    client = await aiohttp_client(make_app(settings))
    await client.close()
    await asyncio.sleep(0.7)  # past the watchdog's time: it was cancelled at the end of cleanup
    assert "app shutdown still running" not in capsys.readouterr().err
