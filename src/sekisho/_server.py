"""How ``serve`` listens and stops: a clear error when it cannot listen, before anything starts,
and a last log line when it has stopped.

uvicorn binds its listening socket only after the application's start-up: on a port already
taken, the log said "sekisho ready" and "Application startup complete" before uvicorn's bare
"[Errno 98] address already in use". And once a signal has stopped it gracefully, uvicorn
raises that signal again so that the process ends as the signal asks: SIGTERM's default action
then ended the process before the log's last lines were written, and a clean stop ended at
"Waiting for application shutdown.", like a kill.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import socket
import threading
from collections.abc import Iterator

import uvicorn
from uvicorn.server import HANDLED_SIGNALS

log = logging.getLogger("sekisho.serve")


def cannot_listen(host: str, port: int) -> str | None:
    """Why the gateway could not listen on ``host:port`` (the port is taken, the address is
    not this machine's, a port below 1024 without the right), or None. Each address is bound
    as uvicorn (asyncio's ``create_server``) will bind it, then let go."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        return f"cannot listen on {where}: the host name does not resolve ({exc})"
    for family, kind, proto, _, address in dict.fromkeys(addresses):
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason += " (another gateway, or another program, listens there)"
            return (
                f"cannot listen on {where}: {reason}. Stop what holds it, or choose another "
                "address with --host/--port (server.host, server.port)"
            )
    return None


class Server(uvicorn.Server):
    """uvicorn's server, except that a signal that stopped it is not raised again: ``serve``
    returns, and ``stopped`` ends the process as the signal would, after the last line."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    @property
    def stopped_by(self) -> int | None:
        """The first signal that stopped the server, if one did."""
        return self._captured_signals[0] if self._captured_signals else None


def stopped(by: int | None = None) -> int:
    """Log that the gateway has stopped, as the last line, once every other line is written;
    then end as before: stopped by SIGTERM, by that signal (an exit status service managers
    read as a clean stop), else with status 0."""
    from sekisho import logs

    how = {"signal": signal.Signals(by).name} if by is not None else {}
    log.info("sekisho stopped", extra=how)
    logs.flush()
    if by == signal.SIGTERM:
        signal.signal(by, signal.SIG_DFL)
        signal.raise_signal(by)
    return 0
