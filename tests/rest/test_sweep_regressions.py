"""Cases the schemathesis sweep (tests/rest/test_schemathesis.py) found, kept as plain tests.

Each test is the request that failed, reduced, with what the document and the server must agree on.
The test client checks every answer against the app's document as well (tests/support/openapi_check.py).
"""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from rest import ROUTERS
from rest.framework.openapi import build_openapi
from server.kernel import keys
from tests.support.factories import make_user


def _doc(client: TestClient) -> dict[str, Any]:
    return build_openapi(ROUTERS, client.app[keys.SETTINGS])


async def test_a_body_whose_fields_are_all_optional_may_be_left_out(client: TestClient) -> None:
    """PATCH /v1/me without a body is `{}` (changes nothing) and answers 200; the document said the
    body was required, so a client following it could not know that, and a checker expected 4xx."""
    viewer = await make_user(client.app)
    resp = await client.patch("/v1/me", headers=viewer.headers)
    assert resp.status == 200, await resp.text()
    doc = _doc(client)
    assert doc["paths"]["/v1/me"]["patch"]["requestBody"]["required"] is False
    assert doc["paths"]["/v1/admin/payouts/{id}/approve"]["post"]["requestBody"]["required"] is False
    # a body with a required field stays required, and leaving it out is refused
    assert doc["paths"]["/v1/streams"]["post"]["requestBody"]["required"] is True
    performer = await make_user(client.app, role="performer")
    resp = await client.post("/v1/streams", headers=performer.headers)
    assert resp.status == 422
