"""Ledger results and engine errors as API errors: the one place that maps them.

REST handlers and socket ops both raise these, so a tip refused for lack of tokens is
`INSUFFICIENT_BALANCE` (409) on either path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ledger import LedgerClosed, LedgerOverloaded, LedgerUnavailable, Result
from server.kernel.errors import ApiError, ErrorCode

# Result -> (error code, message). Results missing here are programming errors (malformed
# transfers built by our own code) and surface as INTERNAL_ERROR.
_ERRORS: dict[Result, tuple[ErrorCode, str]] = {
    Result.INSUFFICIENT_FUNDS: (ErrorCode.INSUFFICIENT_BALANCE, "not enough tokens available"),
    Result.EXISTS_WITH_DIFFERENT_FIELDS: (ErrorCode.IDEMPOTENCY_KEY_REUSED,
                                          "this id was already used for a different request"),
    Result.ACCOUNT_NOT_FOUND: (ErrorCode.NOT_FOUND, "account not found"),
    Result.PENDING_NOT_FOUND: (ErrorCode.NOT_FOUND, "hold not found"),
    Result.PENDING_ALREADY_POSTED: (ErrorCode.CONFLICT, "already completed"),
    Result.PENDING_ALREADY_VOIDED: (ErrorCode.CONFLICT, "already cancelled"),
    Result.PENDING_EXPIRED: (ErrorCode.CONFLICT, "expired"),
    Result.EXCEEDS_PENDING_AMOUNT: (ErrorCode.CONFLICT, "more than the hold"),
    Result.OVERFLOWS: (ErrorCode.CONFLICT, "the amount would overflow an account"),
    Result.AMOUNT_MUST_BE_POSITIVE: (ErrorCode.VALIDATION_ERROR, "amount must be positive"),
    Result.ACCOUNTS_MUST_BE_DIFFERENT: (ErrorCode.VALIDATION_ERROR, "source and destination must differ"),
}


# Every code a call through `ledger_call` + `ledger_error`/`require_applied` can end in (INTERNAL_ERROR
# aside): what a route that moves tokens declares in its OpenAPI errors.
LEDGER_ERRORS: tuple[ErrorCode, ...] = (
    *sorted({code for code, _ in _ERRORS.values()}), ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE)


def ledger_error(result: Result) -> ApiError:
    """The API error for a result that did not apply."""
    assert result is not Result.OK and result is not Result.EXISTS, "applied results are not errors"
    code, message = _ERRORS.get(result, (ErrorCode.INTERNAL_ERROR, "the ledger refused the transfer"))
    return ApiError(code, message, details={"ledger_result": result.value})


def require_applied(result: Result) -> None:
    if result is not Result.OK and result is not Result.EXISTS:
        raise ledger_error(result)


@contextmanager
def ledger_call() -> Iterator[None]:
    """Turn the engine's operating errors into 503s (nothing known applied: retry the same id)."""
    try:
        yield
    except LedgerOverloaded:
        raise ApiError(ErrorCode.OVERLOADED, "the ledger is busy; retry shortly with the same id") from None
    except (LedgerClosed, LedgerUnavailable):
        raise ApiError(ErrorCode.UNAVAILABLE, "the ledger is unavailable; retry with the same id") from None
