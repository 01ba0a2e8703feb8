"""The shell: error shape, 404/405/413, malformed JSON, OpenAPI validity, migrations."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from server.app.migrator import discover, migrate
from server.kernel.settings import SettingsError, load_settings


async def test_unknown_path_is_404_in_error_shape(client: TestClient) -> None:
    resp = await client.get("/v1/nope")
    assert resp.status == 404
    body = await resp.json()
    assert body["error"]["code"] == "NOT_FOUND"
    assert resp.headers["X-Request-Id"]


async def test_wrong_method_is_405_in_error_shape(client: TestClient) -> None:
    resp = await client.delete("/v1/openapi.json")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_request_id_is_echoed(client: TestClient) -> None:
    resp = await client.get("/v1/openapi.json", headers={"X-Request-Id": "abc123"})
    assert resp.headers["X-Request-Id"] == "abc123"


async def test_openapi_document_is_valid_3_1(client: TestClient) -> None:
    resp = await client.get("/v1/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"] == "3.1.0"
    validate(doc)
    assert "/v1/openapi.json" in doc["paths"]


def test_malformed_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENROOM_PORT", "eighty")
    with pytest.raises(SettingsError, match="GREENROOM_PORT"):
        load_settings()
    monkeypatch.setenv("GREENROOM_PORT", "8080")
    monkeypatch.setenv("GREENROOM_TOKEN_PACKS", "100:abc")
    with pytest.raises(SettingsError, match="GREENROOM_TOKEN_PACKS"):
        load_settings()


async def test_concurrent_migrations_apply_once(postgres, dsn: str) -> None:  # type: ignore[no-untyped-def]
    # Fresh database without the template's migrations: drop the record and the tables by recreating.
    admin = await asyncpg.connect(postgres.admin_uri)
    name = "gr_mig_" + dsn.rsplit("/", 1)[1].split("?")[0][-8:]
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    from server.app.embedded_postgres import with_database

    url = with_database(postgres.admin_uri, name)
    conns = [await asyncpg.connect(url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = [name for r in results for name in r]
        assert sorted(applied) == sorted(m.name for m in discover())
        assert len(applied) == len(set(applied))
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(discover())
    finally:
        for c in conns:
            await c.close()
        admin = await asyncpg.connect(postgres.admin_uri)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_startup_heap_is_frozen(aiohttp_client, make_app, settings) -> None:  # type: ignore[no-untyped-def]
    import gc

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    await aiohttp_client(make_app(settings))
    # The started app's long-lived objects sit in the permanent generation, out of full collections.
    assert gc.get_freeze_count() > 0
