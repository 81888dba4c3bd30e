"""TLS contexts from config: the gateway's own listener, and its connections to endpoints.

Upstream: an endpoint without a ``tls`` block shares the default context (the system's trust
store, TLS 1.2 or newer). One with a block gets a context of its own: only the CAs in
``ca_file`` trusted (a private PKI, and the endpoint pinned to it), a client certificate
presented for mutual TLS, a higher minimum version.

Listener: ``server.tls`` serves HTTPS with a certificate and key, and with ``client_ca_file``
accepts only clients presenting a certificate that CA issued (mutual TLS).

Certificate verification and host-name checks stay on in every case. Files are read at
start-up and by ``config check``; a file that cannot be read or parsed stops start-up with its
key path, as every other config error does.

Certificates are rotated without a restart (証明書の更新): a reload (SIGHUP, or the admin API's
policy reload) reads every file again. The listener then presents the new certificate, and
trusts the new ``client_ca_file``, on every new connection (``Listener``); each endpoint's new
connections use its new context, and its connections made with the old one close once idle.
Connections already open keep the certificate they were made with. A reload that cannot load
a file changes nothing.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sekisho.routing.catalogue import TLS, Endpoint

if TYPE_CHECKING:
    from sekisho.config import ServerTLS

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


def server_context(settings: ServerTLS) -> ssl.SSLContext:
    """The listener's context for ``server.tls``; raise TLSSettingError naming the key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[settings.min_version]
    _load_chain(
        ctx,
        ("cert_file", "key_file", "key_password"),
        settings.cert_file,
        settings.key_file,
        settings.key_password,
    )
    if settings.client_ca_file is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        _trusting("client_ca_file", settings.client_ca_file, ctx)
    return ctx


class Listener:
    """The listener's TLS: uvicorn's ``ssl_context_factory``, and what a reload swaps.

    uvicorn binds one context to the listening socket for the life of the process. Its
    server-name callback, which OpenSSL calls on every ClientHello (with or without SNI), hands
    the handshake the context last loaded: the certificate, key and client CAs of the latest
    successful ``reload``. The protocol version range and whether a client certificate is
    required are settled before that callback runs, so they stay on the bound context: the
    minimum version is updated there, and adding or removing ``client_ca_file`` needs a restart.
    """

    def __init__(self, settings: ServerTLS) -> None:
        self.settings = settings
        self._bound: ssl.SSLContext | None = None
        self._current: ssl.SSLContext | None = None

    def __getstate__(self) -> dict[str, Any]:  # `serve --workers N` sends it to each worker
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]

    def __call__(self, _config: object = None, _default: object = None) -> ssl.SSLContext:
        global _listener
        ctx = server_context(self.settings)
        ctx.sni_callback = self._select
        self._bound = self._current = ctx
        _listener = self  # one listener per process: uvicorn's
        return ctx

    def _select(self, conn: ssl.SSLObject, _name: str | None, bound: ssl.SSLContext) -> None:
        current = self._current
        if current is not None and current is not bound:
            conn.context = current

    def reload(self, settings: ServerTLS) -> None:
        """Load ``settings``' files for new connections; raise TLSSettingError (and change
        nothing) if one cannot be used or the change needs a restart."""
        if (settings.client_ca_file is None) != (self.settings.client_ca_file is None):
            raise TLSSettingError(
                "client_ca_file",
                "adding or removing client_ca_file needs a restart (whether the listener asks "
                "for client certificates is fixed when it starts)",
            )
        ctx = server_context(settings)
        if self._bound is not None:
            self._bound.minimum_version = ctx.minimum_version
        self._current = ctx
        self.settings = settings


_listener: Listener | None = None


def active_listener() -> Listener | None:
    """This process's TLS listener, once uvicorn has built it (``server.tls`` set)."""
    return _listener


def certificate_expiry(path: str) -> datetime.datetime | None:
    """When the first certificate in the PEM file ``path`` expires (None if none is readable)."""
    from cryptography import x509

    try:
        with open(path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return None
    return cert.not_valid_after_utc


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


class _Encrypted(Exception):
    """An encrypted key met with no password configured."""


def _load_chain(
    ctx: ssl.SSLContext,
    fields: tuple[str, str, str],
    cert: str,
    key: str | None,
    password: str | None,
) -> None:
    cert_field, key_field, password_field = fields

    def no_password() -> str:
        # Without a password OpenSSL would ask for one on the terminal (a `config check` or a
        # start-up that waits for ever) or, with none, fail with "Invalid argument".
        raise _Encrypted

    try:
        ctx.load_cert_chain(cert, key, password if password is not None else no_password)
    except _Encrypted:
        raise TLSSettingError(
            key_field if key else cert_field,
            f"{key or cert}: the key is encrypted: set {password_field} (use ${{ENV_VAR}})",
        ) from None
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
