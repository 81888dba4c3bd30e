"""TLS contexts from config: the gateway's own listener, and its connections to endpoints.

Upstream: an endpoint without a ``tls`` block shares the default context (the system's trust
store, TLS 1.2 or newer). One with a block gets a context of its own: only the CAs in
``ca_file`` trusted (a private PKI, and the endpoint pinned to it), a client certificate
presented for mutual TLS, a higher minimum version.

Listener: ``server.tls`` serves HTTPS with a certificate and key, and with ``client_ca_file``
accepts only clients presenting a certificate that CA issued (mutual TLS).

Certificate verification and host-name checks stay on in every case. Files are read once, at
start-up and by ``config check``; a file that cannot be read or parsed stops start-up with its
key path, as every other config error does.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable

from sekisho.routing.catalogue import TLS, Endpoint

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TLSSettingError(ValueError):
    """A TLS setting that cannot be used; ``field`` is its key within its ``tls`` block."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def client_context(tls: TLS) -> ssl.SSLContext:
    """The client context an endpoint's ``tls`` block describes; raise TLSSettingError."""
    # A ca_file replaces the system's trust store (and so pins the endpoint to that CA).
    ctx = ssl.create_default_context() if tls.ca_file is None else _trusting("ca_file", tls.ca_file)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    if tls.client_cert is not None:
        _load_chain(ctx, ("client_cert", "client_key", "client_key_password"),
                    tls.client_cert, tls.client_key, tls.client_key_password)  # fmt: skip
    return ctx


def contexts_for(endpoints: Iterable[Endpoint]) -> dict[str, ssl.SSLContext]:
    """A client context per endpoint id, for the endpoints that have a ``tls`` block."""
    return {ep.id: client_context(ep.tls) for ep in endpoints if ep.tls is not None}


def server_context(
    cert_file: str,
    key_file: str | None = None,
    key_password: str | None = None,
    client_ca_file: str | None = None,
) -> ssl.SSLContext:
    """The listener's context (as uvicorn will build it from the same files), to check the
    files at start-up; raise TLSSettingError naming the key under ``server.tls``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(ctx, ("cert_file", "key_file", "key_password"), cert_file, key_file, key_password)
    if client_ca_file is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        _trusting("client_ca_file", client_ca_file, ctx)
    return ctx


def _trusting(field: str, path: str, ctx: ssl.SSLContext | None = None) -> ssl.SSLContext:
    """``ctx`` (or a new default client context) trusting the CAs in ``path`` only."""
    try:
        if ctx is None:  # with a cafile, the default context does not load the system store
            ctx = ssl.create_default_context(cafile=path)
        else:
            ctx.load_verify_locations(cafile=path)
    except FileNotFoundError:
        raise TLSSettingError(field, f"no such file: {path}") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TLSSettingError(
            field, f"cannot load CA certificates from {path}: {_why(exc)}"
        ) from None
    if not ctx.get_ca_certs():
        raise TLSSettingError(field, f"{path} holds no CA certificate")
    return ctx


def _load_chain(
    ctx: ssl.SSLContext,
    fields: tuple[str, str, str],
    cert: str,
    key: str | None,
    password: str | None,
) -> None:
    cert_field, key_field, password_field = fields
    try:
        ctx.load_cert_chain(cert, key, password)
    except FileNotFoundError as exc:
        missing = exc.filename or key or cert
        field = key_field if missing == key else cert_field
        raise TLSSettingError(field, f"no such file: {missing}") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        where = cert + (f" and {key}" if key else "")
        raise TLSSettingError(
            cert_field,
            f"cannot load the certificate and key from {where}: {_why(exc)} (a certificate "
            f"and its key in PEM; an encrypted key needs {password_field})",
        ) from None


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__
