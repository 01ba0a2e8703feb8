"""The one error shape for REST and socket: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import ValidationError


class ErrorCode(StrEnum):
    """Every error code the server emits, on REST and socket alike, with the HTTP status it carries."""

    status: int

    def __new__(cls, value: str, status: int) -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        return member

    BAD_REQUEST = "BAD_REQUEST", 400
    MALFORMED_JSON = "MALFORMED_JSON", 400
    VALIDATION_ERROR = "VALIDATION_ERROR", 422
    AUTHENTICATION_REQUIRED = "AUTHENTICATION_REQUIRED", 401
    INVALID_TOKEN = "INVALID_TOKEN", 401
    TOKEN_EXPIRED = "TOKEN_EXPIRED", 401
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS", 401
    PERMISSION_DENIED = "PERMISSION_DENIED", 403
    ACCOUNT_DISABLED = "ACCOUNT_DISABLED", 403
    BANNED = "BANNED", 403
    MUTED = "MUTED", 403
    NOT_FOUND = "NOT_FOUND", 404
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED", 405
    CONFLICT = "CONFLICT", 409
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED", 409
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT", 408  # the body did not arrive within `http_body_timeout_s`
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE", 413
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE", 415
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE", 409
    # the wallet owes tokens from a refunded/disputed purchase: no tips, no payouts
    WALLET_RESTRICTED = "WALLET_RESTRICTED", 403
    PAYMENT_PROVIDER_ERROR = "PAYMENT_PROVIDER_ERROR", 502  # Stripe refused or failed a call
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED", 429
    SLOW_MODE = "SLOW_MODE", 429
    UNKNOWN_OP = "UNKNOWN_OP", 400  # socket: no such op
    NOT_JOINED = "NOT_JOINED", 409  # socket: the op names a room this connection has not joined
    ALREADY_JOINED = "ALREADY_JOINED", 409  # socket: join for a room already joined (leave first to rejoin)
    # socket: over `ws_max_rooms_per_conn`
    TOO_MANY_ROOMS = "TOO_MANY_ROOMS", 429
    # socket: over `ws_max_conns_per_user` on all nodes, or guests per address (then closed 4009)
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS", 429
    OVERLOADED = "OVERLOADED", 503
    UNAVAILABLE = "UNAVAILABLE", 503
    INTERNAL_ERROR = "INTERNAL_ERROR", 500


class ApiError(Exception):
    """A refusal with a stable code; becomes the error shape on REST and socket."""

    def __init__(self, code: ErrorCode, message: str, *, status: int | None = None,
                 details: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else code.status
        self.details = details
        self.headers = headers

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            err["details"] = self.details
        return {"error": err}


def not_found(what: str = "resource") -> ApiError:
    return ApiError(ErrorCode.NOT_FOUND, f"{what} not found")


def forbidden(message: str = "you may not do this") -> ApiError:
    return ApiError(ErrorCode.PERMISSION_DENIED, message)


def validation_details(exc: ValidationError) -> dict[str, Any]:
    """A pydantic failure as `details` of the error shape: `{errors: [{field, issue}]}`."""
    errors = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        errors.append({"field": loc or "(body)", "issue": err["msg"]})
    return {"errors": errors}
