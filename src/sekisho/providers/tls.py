"""TLS for upstream connections: one client context per endpoint that asks for its own.

An endpoint without a ``tls`` block shares the default context (the system's trust store,
TLS 1.2 or newer). One with a block gets a context of its own: only the CAs in ``ca_file``
trusted (a private PKI, and the endpoint pinned to it), a client certificate presented for
mutual TLS, a higher minimum version. Hostname checks and certificate verification stay on in
every case. Files are read once, at start-up; a file that cannot be read or parsed stops
start-up with the endpoint's key path, as every other config error does.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable

from sekisho.routing.catalogue import TLS, Endpoint

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TLSSettingError(ValueError):
    """A ``tls`` setting that cannot be used; ``field`` is its key under ``tls``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def client_context(tls: TLS) -> ssl.SSLContext:
    """The client context ``tls`` describes; raise TLSSettingError naming the bad setting."""
    if tls.ca_file is None:
        ctx = ssl.create_default_context()
    else:
        try:
            # With a cafile, the default context trusts that file only, not the system store.
            ctx = ssl.create_default_context(cafile=tls.ca_file)
        except FileNotFoundError:
            raise TLSSettingError("ca_file", f"no such file: {tls.ca_file}") from None
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise TLSSettingError(
                "ca_file", f"cannot load CA certificates from {tls.ca_file}: {_why(exc)}"
            ) from None
        if not ctx.get_ca_certs():
            raise TLSSettingError("ca_file", f"{tls.ca_file} holds no CA certificate")
    ctx.minimum_version = _VERSIONS[tls.min_version]
    if tls.client_cert is not None:
        try:
            ctx.load_cert_chain(tls.client_cert, tls.client_key, tls.client_key_password)
        except FileNotFoundError as exc:
            missing = exc.filename or tls.client_key or tls.client_cert
            field = "client_key" if missing == tls.client_key else "client_cert"
            raise TLSSettingError(field, f"no such file: {missing}") from None
        except (ssl.SSLError, OSError, ValueError) as exc:
            where = tls.client_cert + (f" and {tls.client_key}" if tls.client_key else "")
            raise TLSSettingError(
                "client_cert",
                f"cannot load the client certificate and key from {where}: {_why(exc)} "
                "(a certificate and its key in PEM; an encrypted key needs client_key_password)",
            ) from None
    return ctx


def contexts_for(endpoints: Iterable[Endpoint]) -> dict[str, ssl.SSLContext]:
    """A client context per endpoint id, for the endpoints that have a ``tls`` block."""
    return {ep.id: client_context(ep.tls) for ep in endpoints if ep.tls is not None}


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__
