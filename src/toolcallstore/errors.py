"""One exception tree, one JSON error envelope (DESIGN §4).

ToolCallError
├── ConfigError                 bad settings or config files; raised at start-up
├── DatabaseError               the data layer could not do what was asked
└── APIError                    becomes {"error": {...}} with its HTTP status
    ├── InvalidRequest          400 invalid_request_error
    ├── Unauthenticated         401 authentication_error
    ├── SpendCapExceeded        402 billing_error / spend_cap_exceeded
    ├── PermissionDenied        403 permission_error
    ├── NotFound                404 invalid_request_error / not_found
    ├── MethodNotAllowed        405
    ├── Conflict                409 idempotency_error / idempotency_key_in_use
    ├── StateConflict           409 invalid_request_error / quote_already_used ...
    ├── Gone                    410 invalid_request_error / quote_expired
    ├── RequestTooLarge         413
    ├── Unprocessable           422
    ├── ProviderError           502 api_error / provider_error
    └── Unavailable             503 api_error / unavailable
"""

from __future__ import annotations

from typing import Any


class ToolCallError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ToolCallError):
    pass


class DatabaseError(ToolCallError):
    pass


class APIError(ToolCallError):
    status = 500
    type = "api_error"
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}
        self.details = details

    def envelope(self, request_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "code": self.code, "message": self.message}
        body.update(self.details)
        body["request_id"] = request_id
        return {"error": body}


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthenticated(APIError):
    status = 401
    type = "authentication_error"
    code = "unauthenticated"


class SpendCapExceeded(APIError):
    status = 402
    type = "billing_error"
    code = "spend_cap_exceeded"


class PermissionDenied(APIError):
    status = 403
    type = "permission_error"
    code = "insufficient_scope"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(APIError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(APIError):
    status = 409
    type = "idempotency_error"
    code = "idempotency_key_in_use"


class StateConflict(APIError):
    """The object is not in a state that allows this (a used quote, a decided approval)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class Gone(APIError):
    status = 410
    type = "invalid_request_error"
    code = "gone"


class RequestTooLarge(APIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Unprocessable(APIError):
    status = 422
    type = "invalid_request_error"
    code = "unprocessable"


class ProviderError(APIError):
    status = 502
    type = "api_error"
    code = "provider_error"


class Unavailable(APIError):
    status = 503
    type = "api_error"
    code = "unavailable"


class InternalError(APIError):
    status = 500
    type = "api_error"
    code = "internal_error"
