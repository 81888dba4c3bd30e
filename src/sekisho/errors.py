"""The one error hierarchy of sekisho.

Every error a client can see carries a stable ``code``; the HTTP layer maps it to OpenAI's error
body (``{"error": {"message", "type", "param", "code"}}``) and status, so that the official SDKs
raise their usual exception classes (``BadRequestError``, ``AuthenticationError``,
``PermissionDeniedError``, ``NotFoundError``, ``RateLimitError``, ``InternalServerError`` ...).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sekisho.routing.catalogue import Route


def quoted_id(value: str, limit: int = 512) -> str:
    """An id the client sent, quoted whole in an error message (sekisho's own response ids run
    past 100 characters); past ``limit`` characters, cut with an ellipsis that says so."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "…"


class SekishoError(Exception):
    """Base of every error sekisho raises on purpose."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"
    # The route whose endpoint gave this answer (an upstream's 4xx passed on), else None.
    route: Route | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(SekishoError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(SekishoError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(SekishoError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class PolicyViolation(PermissionDenied):
    """No endpoint is eligible under the tenant's sovereignty policy, or the policy blocks."""

    code = "sovereignty_policy_violation"


class NotFound(SekishoError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(SekishoError):
    """A 405, with the ``Allow`` header RFC 9110 requires: the methods the path accepts."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: tuple[str, ...]) -> None:
        if "GET" in allow and "HEAD" not in allow:  # every GET route answers HEAD (app.py)
            after = allow.index("GET") + 1
            allow = (*allow[:after], "HEAD", *allow[after:])
        super().__init__(message, headers={"allow": ", ".join(allow)})


class RequestTooLarge(SekishoError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(SekishoError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_content_encoding"


class RequestTimeout(SekishoError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class RateLimited(SekishoError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QuotaExhausted(RateLimited):
    """A day's or a month's budget used up: OpenAI's insufficient_quota, its type and code."""

    type = "insufficient_quota"
    code = "insufficient_quota"


class ConcurrencyLimited(SekishoError):
    """The tenant has as many requests in flight as its operator allows
    (``max_concurrent_requests``): refused at once, nothing sent. A 429 with Retry-After,
    which the SDKs retry."""

    status = 429
    type = "rate_limit_error"
    code = "tenant_concurrency_limit"


class UpstreamRateLimited(SekishoError):
    """Every eligible endpoint answered 429: the provider's quota, not the gateway's limits.
    A 429 with Retry-After, which the OpenAI SDKs back off and retry on."""

    status = 429
    type = "rate_limit_error"
    code = "upstream_rate_limited"


class EndpointsBusy(SekishoError):
    """Every eligible endpoint stayed at its concurrency limit (``max_concurrency``) for its
    connect timeout: nothing was sent. A 429 with Retry-After, which the SDKs retry."""

    status = 429
    type = "rate_limit_error"
    code = "endpoints_busy"


class UpstreamFailed(SekishoError):
    """Every eligible endpoint failed (connect error, 5xx, 429, garbage) before a byte was sent."""

    status = 502
    type = "upstream_error"
    code = "upstream_failed"


class UpstreamTimeout(UpstreamFailed):
    status = 504
    code = "upstream_timeout"


class ServiceUnavailable(SekishoError):
    """sekisho cannot meet one of its promises right now (e.g. the ledger cannot record)."""

    status = 503
    type = "server_error"
    code = "service_unavailable"


class UnusableFile(Exception):
    """A file the gateway keeps in its data directory cannot be opened as what it should be
    (damaged, or another program's): the path and the reason, for the operator."""

    def __init__(self, what: str, path: object, reason: object) -> None:
        super().__init__(
            f"cannot use {what} at {path}: {reason}. Restore it from a backup, or move it "
            "aside to start it afresh"
        )


class ConfigError(Exception):
    """A configuration that does not validate. Each problem names file, key path and reason."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# scheme://user:PASSWORD@ (the user part may be empty: redis://:PASSWORD@host)
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"/@:]*:)[^\s'\"@]*@")


def hide_url_passwords(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***@", text)


class ConfigProblem:
    __slots__ = ("file", "path", "reason")

    def __init__(self, file: str, path: str, reason: str) -> None:
        self.file = file
        self.path = path
        # A URL's password (a database's, Redis's, a proxy's) never reaches a terminal or a
        # log through a config problem that quotes the URL.
        self.reason = hide_url_passwords(reason)

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.reason}"

    def __repr__(self) -> str:
        return f"ConfigProblem({self.file!r}, {self.path!r}, {self.reason!r})"
