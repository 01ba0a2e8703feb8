"""Which failures mean "a dependency is away" (answer 503 and let the client retry) rather than a bug (500).

PostgreSQL unreachable, restarting, out of connections, a connection lost mid-query, the pool's
acquire timing out, or a statement cancelled by `statement_timeout`: the request did nothing it
can be blamed for and may succeed shortly, so REST answers `503 UNAVAILABLE` with `Retry-After`
and a socket op `UNAVAILABLE`. Anything else unexpected stays a 500 `INTERNAL_ERROR`.
"""

from __future__ import annotations

import asyncpg

from server.kernel.errors import ApiError, ErrorCode

RETRY_AFTER_S = 1

DEPENDENCY_DOWN: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable; TimeoutError (a pool acquire or a connect timing out) is one
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # e.g. the connection was closed under the query
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError,  # statement_timeout
    asyncpg.AdminShutdownError,
)


def unavailable() -> ApiError:
    return ApiError(ErrorCode.UNAVAILABLE, "the database is unavailable; retry shortly",
                    headers={"Retry-After": str(RETRY_AFTER_S)})
