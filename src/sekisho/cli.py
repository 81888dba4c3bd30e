"""sekisho's command line: serve, demo, simulate, config, keys, scan, policy, verify, ledger."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from sekisho import release
from sekisho._where import add_data_dir_args, config_of, data_dir
from sekisho.errors import ConfigError, UnusableFile


def main(argv: list[str] | None = None) -> int:
    # Every file sekisho makes (databases and their WAL files, logs of exports, keys) holds
    # prompts' metadata, key hashes or personal data: owner-only, whatever the shell's umask.
    os.umask(os.umask(0o077) | 0o077)
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None) or getattr(args, "handler", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        result = func(args)
    except ConfigError as exc:
        print(
            f"sekisho: configuration is not valid ({len(exc.problems)} problem"
            f"{'s' if len(exc.problems) != 1 else ''}):",
            file=sys.stderr,
        )
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    except UnusableFile as exc:
        print(f"sekisho: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # An unusable path (read-only, missing, no permission): the reason and the path, not
        # a traceback through the code that happened to touch it first.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"sekisho: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sekisho",
        description="sekisho (関所) — a self-hosted sovereign AI gateway.",
    )
    parser.add_argument("--version", action="version", version=f"sekisho {release()}")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument(
        "--config",
        "-c",
        default=os.environ.get("SEKISHO_CONFIG", "sekisho.yaml"),
        metavar="FILE",
        help="YAML config (default: $SEKISHO_CONFIG or ./sekisho.yaml)",
    )
    p.add_argument("--host", help="listen address (overrides server.host)")
    p.add_argument("--port", type=int, help="listen port (overrides server.port)")
    p.add_argument("--workers", type=int, help="gateway processes (overrides server.workers)")
    p.add_argument("--data-dir", help="data directory (overrides server.data_dir)")
    p.add_argument(
        "--with-simulators",
        action="store_true",
        help="also run the three demo simulators in this process (for trying it out), on the "
        "ports the config's simulated endpoints name (default 9101-9103)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="zero-config tour: simulators, gateway, scripted requests")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the gateway up after the tour, until Ctrl-C",
    )
    p.add_argument("--port", type=int, default=0, help="gateway port (default: any free port)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulate", help="run the three simulated model endpoints until stopped")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="first of three consecutive ports (default: 9101-9103, as examples/sekisho.yaml "
        "expects; 0: any free ports)",
    )
    p.set_defaults(func=cmd_simulate)

    cfg = sub.add_parser("config", help="check a config or print its JSON Schema")
    csub = cfg.add_subparsers(metavar="ACTION")
    p = csub.add_parser("check", help="validate a config file; exit 2 listing every problem")
    p.add_argument("file")
    p.set_defaults(func=cmd_config_check)
    p = csub.add_parser("schema", help="print the config's JSON Schema (for editors)")
    p.set_defaults(func=cmd_config_schema)

    eps = sub.add_parser("endpoints", help="the endpoint catalogue against the real endpoints")
    esub = eps.add_subparsers(metavar="ACTION")
    p = esub.add_parser(
        "check",
        help="reach each endpoint as requests would; check credentials and the models it serves",
    )
    p.add_argument(
        "--config",
        "-c",
        default=os.environ.get("SEKISHO_CONFIG", "sekisho.yaml"),
        metavar="FILE",
        help="YAML config (default: $SEKISHO_CONFIG or ./sekisho.yaml)",
    )
    p.add_argument("--endpoint", action="append", metavar="ID", help="only this one (repeatable)")
    p.add_argument(
        "--chat",
        action="store_true",
        help="also send each model one request ('ping', at most one token back)",
    )
    p.add_argument("--timeout", type=float, help="seconds per endpoint (default: its timeouts)")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(func=cmd_endpoints_check)

    keys = sub.add_parser("keys", help="API keys (and the ledger's signing key)")
    ksub = keys.add_subparsers(metavar="ACTION")
    p = ksub.add_parser("create", help="create an API key; prints it once, on the last line")
    p.add_argument("--tenant", required=True, help="the tenant the key acts for")
    p.add_argument(
        "--role",
        default="app",
        choices=["admin", "auditor", "tenant-admin", "developer", "app"],
        help="what the key may do (default: app, which calls models and nothing else)",
    )
    p.add_argument("--name", default="", help="a label shown in keys list (default: none)")
    p.add_argument("--models", help="comma-separated models this key may use (default: all)")
    p.add_argument("--expires-in-days", type=float, help="expiry (default: never)")
    p.add_argument(
        "--actor",
        default="operator",
        help="who does this, as the ledger records it (default: operator)",
    )
    add_data_dir_args(p)
    p.set_defaults(func=cmd_keys_create)
    p = ksub.add_parser("list", help="list keys (never their secrets)")
    p.add_argument("--tenant", help="only this tenant's keys (default: every tenant's)")
    add_data_dir_args(p)
    p.set_defaults(func=cmd_keys_list)
    p = ksub.add_parser("revoke", help="revoke a key by its id")
    p.add_argument("key_id")
    p.add_argument(
        "--actor",
        default="operator",
        help="who does this, as the ledger records it (default: operator)",
    )
    add_data_dir_args(p)
    p.set_defaults(func=cmd_keys_revoke)
    _register_optional(sub, ksub)
    return parser


def _register_optional(sub: Any, ksub: Any) -> None:
    """Commands that live with the step they belong to."""
    import importlib

    for name in ("classify", "policy", "ledger", "store", "identity"):
        try:
            module = importlib.import_module(f"sekisho.{name}.cli")
        except ModuleNotFoundError as exc:
            if exc.name != f"sekisho.{name}.cli":
                raise
            continue
        if name == "store":
            # Subject requests, tenant deletion and key rotation are ledger entries, with who
            # asked, like every admin act of the gateway itself.
            from sekisho.recorder import ledger_audit

            module.register(sub, audit=ledger_audit)
            module.register_keys(ksub, audit=ledger_audit)
            continue
        module.register(sub)
        if hasattr(module, "register_keys"):
            module.register_keys(ksub)


# -- serve ------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from sekisho import logs
    from sekisho.api.protocol import HttpProtocol
    from sekisho.config import config_from_bytes, read_config_file

    flags = dict(host=args.host, port=args.port, workers=args.workers, data_dir=args.data_dir)
    data = read_config_file(args.config)  # with --workers, the bytes every worker will serve
    config = _with_flags(config_from_bytes(data, str(args.config)), **flags)
    logs.configure(config.server.log_level)
    server = config.server
    warning = plain_http_warning(server.host, server.tls is not None)
    if warning:
        logging.getLogger("sekisho.serve").warning(warning)
    for warning in config_warnings(config):
        logging.getLogger("sekisho.serve").warning(warning)
    problem = _unusable_data_dir(Path(server.data_dir))
    if problem is None:
        problem = _exposed_data(config, logging.getLogger("sekisho.serve"))
    if problem:
        logs.flush()  # the warnings above, then the reason, last
        print(f"sekisho: {problem}; the gateway did not start", file=sys.stderr)
        return 2
    from sekisho._open_files import log_open_files_limit, raise_open_files_limit
    from sekisho._server import Server, cannot_listen, stopped

    # As many connections as the system lets this process have, said in the log (workers
    # inherit it): past the soft limit, clients would be reset without a word.
    log_open_files_limit(raise_open_files_limit())
    # Before anything starts (simulators, the ledger, workers): uvicorn would bind only after
    # the application had started and said it was ready.
    problem = cannot_listen(server.host, server.port)
    if problem:
        logs.flush()
        print(f"sekisho: {problem}; the gateway did not start", file=sys.stderr)
        return 1
    common: dict[str, Any] = dict(
        host=server.host,
        port=server.port,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http=HttpProtocol,
        lifespan="on",
        access_log=False,
        log_config=None,
        # The gateway itself ends what is still in flight when the grace period ends, with an
        # answer (Gateway.begin_draining); uvicorn's deadline, later, only backs that up: at
        # its deadline it drops connections mid-response.
        timeout_graceful_shutdown=math.ceil(server.shutdown_grace_seconds) + 2,
        timeout_keep_alive=server.keep_alive_seconds,
        server_header=False,
        # sekisho never reads the client address, so uvicorn's X-Forwarded-* rewriting layer
        # would only cost CPU on every request.
        proxy_headers=False,
        **_tls_options(server.tls),
    )
    if args.with_simulators:
        return asyncio.run(_serve_with_simulators(config, common))
    if server.workers > 1:
        return _serve_workers(args, config, data, flags, common)
    from sekisho.app import create_app

    one = Server(uvicorn.Config(create_app(config), **common))
    one.run()
    if not one.started:
        return 3  # as uvicorn: start-up failed (the log says why)
    return stopped(one.stopped_by)


def _serve_workers(
    args: argparse.Namespace,
    config: Any,
    data: bytes,
    flags: dict[str, Any],
    common: dict[str, Any],
) -> int:
    """``serve --workers N``: sekisho's supervisor (``sekisho._supervisor``) over N workers."""
    import uvicorn

    from sekisho import _supervisor as sup
    from sekisho._server import stopped
    from sekisho.app import create_app
    from sekisho.metrics import MULTIPROC_ENV

    asyncio.run(create_app(config).prepare())  # first-start files, once, before workers race
    source = str(Path(args.config).resolve())
    os.environ["SEKISHO_CONFIG"] = source
    os.environ["SEKISHO_DATA_DIR"] = str(Path(config.server.data_dir).resolve())
    os.environ["SEKISHO_WORKERS"] = str(config.server.workers)  # their share of each endpoint cap
    os.environ["SEKISHO_SUPERVISOR_PID"] = str(os.getpid())  # workers ask it to reload all
    sup.sweep_stale_run_dirs()  # of supervisors killed before they could remove theirs
    run = sup.RunDir.make()
    os.environ[sup.ENV_RUN_DIR] = str(run.root)
    # Metrics from every worker, summed by whichever answers /metrics (sekisho.metrics).
    os.environ[MULTIPROC_ENV] = str(run.metrics)
    listener = None
    if config.server.tls is not None:
        from sekisho.tls import Listener

        listener = Listener
    pinned = config
    pinned.source_file = source  # reloads read it again, named as the workers name it
    try:
        uconfig = uvicorn.Config(
            "sekisho.app:app_from_env", factory=True, workers=config.server.workers, **common
        )
        supervisor = sup.Supervisor(
            uconfig,
            [uconfig.bind_socket()],
            pinned=pinned,
            data=data,
            flags=flags,
            run=run,
            listener=listener,
        )
        supervisor.run()
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(run.root, ignore_errors=True)
    return stopped()


def plain_http_warning(host: str, tls: bool) -> str | None:
    """What to warn about when prompts would reach the gateway in clear over a network."""
    if tls:
        return None
    from sekisho.identity.spec import is_loopback_host

    if is_loopback_host(host):  # a host name other than localhost may resolve anywhere
        return None
    return (
        f"serving plain HTTP on {host}: prompts, personal data in them and API keys cross the "
        "network unencrypted. Set server.tls, or keep a TLS-terminating proxy in front and "
        "the gateway on loopback"
    )


def config_warnings(config: Any) -> list[str]:
    """What an operator should hear before serving with ``config``: endpoints reached in clear
    text, endpoints that are simulators, and tenants whose policy restricts nothing."""
    out = clear_text_endpoints(config)
    simulated = [ep.id for ep in config.catalogue.endpoints if ep.simulated]
    if simulated:
        out.append(
            f"endpoint{'s' if len(simulated) > 1 else ''} {', '.join(simulated)} "
            f"{'are' if len(simulated) > 1 else 'is a'} sekisho "
            f"simulator{'s' if len(simulated) > 1 else ''} (simulated: true): answers are made "
            "up and the sovereignty facts are examples; replace them with real endpoints "
            "before anyone relies on an answer"
        )
    for ep in config.catalogue.endpoints:
        if ep.operator.parent and ep.operator.parent_country is None:
            out.append(
                f"endpoint {ep.id}: operator.parent {ep.operator.parent!r} has no "
                "parent_country; every policy check on operator countries (a domestic "
                "operator, APPI's cross-border rules) excludes it until it is given"
            )
    for name, tenant in config.tenants.items():
        p = tenant.policy
        if not (p.extends or p.levels or p.rules):
            out.append(
                f"tenant {name} has an empty policy (no packs, levels or rules): any endpoint "
                "that serves a model may receive any of its requests, My Numbers included; "
                f"start from tenants.{name}.policy.extends: [jp-appi, jp-mynumber]"
            )
    return out


def clear_text_endpoints(config: Any) -> list[str]:
    """Warnings for endpoints reached over plain HTTP beyond this host: the prompts, and the
    key or token sent with them, cross the network unencrypted (an internal vLLM on http is
    common; it should be a choice, not an accident)."""
    from urllib.parse import urlsplit

    out = []
    for ep in config.catalogue.endpoints:
        parts = urlsplit(ep.base_url)
        if parts.scheme != "http" or plain_http_warning(parts.hostname or "", False) is None:
            continue
        secret = " and its credential" if ep.api_key or ep.auth is not None else ""
        out.append(
            f"endpoint {ep.id} is plain HTTP ({ep.base_url}): prompts{secret} cross the network "
            "unencrypted; use https, with tls.ca_file for a private CA"
        )
    return out


def _tls_options(tls: Any) -> dict[str, Any]:
    """uvicorn's options for ``server.tls`` (config validation already loaded each file): the
    listener's context comes from ``sekisho.tls.Listener``, which a reload can refresh."""
    if tls is None:
        return {}
    from sekisho.tls import Listener

    return {"ssl_context_factory": Listener(tls)}


def _unusable_data_dir(path: Path) -> str | None:
    """Why the gateway could not keep its state in ``path`` (made if missing), or None."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".sekisho-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return (
            f"the data directory {path} cannot be written ({exc.strerror or exc}); "
            "set server.data_dir or --data-dir to a writable directory"
        )
    return None


# What the gateway keeps in its data directory that holds keys, key hashes, the ledger or
# records: SQLite files (and the -wal and -shm files SQLite gives the same mode), the store's
# admin log, and everything under keys/.
_PRIVATE_FILES = ("identity.db", "ledger.sqlite3", "usage.db", "store-admin.jsonl")
_SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def _exposed_data(config: Any, log: logging.Logger) -> str | None:
    """Why the data directory's files are not private to the gateway's user (a restore made
    under umask 022: `sqlite3 .backup` and `cp` make 0644 files, and SQLite then creates the
    -wal and -shm files with the same mode), or None. A directory others can enter is only
    warned about: it may be shared, and its files are what hold the data."""
    import stat

    from sekisho.store.database import locate

    data = Path(config.server.data_dir)
    keys = data / "keys"
    names = [data / n for n in _PRIVATE_FILES]
    names += sorted(data.glob("store-*.db"))
    for name, region in config.regions.items():
        with contextlib.suppress(ValueError):
            names += [at.sqlite_path for at in locate(name, region.store, data) if at.is_sqlite]
    if keys.is_dir():
        names += sorted(p for p in keys.iterdir() if p.is_file())
    exposed: list[str] = []
    seen: set[Path] = set()
    for base in names:
        for side in _SQLITE_SIDE_FILES if base.suffix in (".db", ".sqlite3") else ("",):
            path = base.with_name(base.name + side)
            if path in seen:
                continue
            seen.add(path)
            try:
                mode = path.stat().st_mode
            except OSError:
                continue
            if stat.S_ISREG(mode) and mode & (stat.S_IRWXG | stat.S_IRWXO):
                exposed.append(f"{path} ({stat.S_IMODE(mode):04o})")
    for folder in (data, keys):
        with contextlib.suppress(OSError):
            mode = folder.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning(
                    "the directory %s is open to group or others (mode %04o); sekisho keeps "
                    "its files private, but restrict it too: chmod 700 %s",
                    folder,
                    stat.S_IMODE(mode),
                    folder,
                )
    if not exposed:
        return None
    return (
        f"{len(exposed)} file(s) in the data directory are readable or writable by group or "
        f"others: {', '.join(exposed)}. They hold the ledger, API key hashes, records or "
        "wrapped keys, and sekisho makes them owner-only (0600); files like these come from a "
        "restore or copy made under umask 022. Run: chmod -R go-rwx "
        f"{data} (and any store file outside it), then start again; restore under `umask 077`"
    )


def _with_flags(config: Any, **flags: object) -> Any:
    """The config with command-line overrides; a bad flag is a problem named like a config key."""
    from pydantic import ValidationError

    from sekisho.errors import ConfigProblem

    try:
        return config.with_server(**flags)
    except ValidationError as exc:
        raise ConfigError(
            [
                ConfigProblem(
                    "command line",
                    "--" + str(e["loc"][0]).replace("_", "-") if e["loc"] else "",
                    f"{e['msg']} (got {e.get('input')!r})",
                )
                for e in exc.errors()
            ]
        ) from None


def simulator_base_port(config: Any) -> int | None:
    """The first of the three consecutive ports the config's simulated demo endpoints point
    at (a copy of the example config moved to other ports); None: their usual 9101-9103."""
    from urllib.parse import urlsplit

    from sekisho.simulator import DEMO_ENDPOINTS

    ports: dict[str, int | None] = {}
    for ep in config.catalogue.endpoints:
        if ep.simulated:
            try:
                ports[ep.id] = urlsplit(ep.base_url).port
            except ValueError:
                continue
    first = ports.get(DEMO_ENDPOINTS[0][0].name)
    if first is None or first > 65533:
        return None
    names = [spec.name for spec, _ in DEMO_ENDPOINTS]
    if all(ports.get(name, first + i) == first + i for i, name in enumerate(names)):
        return first
    return None


async def _serve_with_simulators(config: Any, common: dict[str, Any]) -> int:
    import uvicorn

    from sekisho._server import Server, stopped
    from sekisho.app import create_app
    from sekisho.simulator import start_demo_simulators

    base_port = simulator_base_port(config)
    try:
        sims = await start_demo_simulators(base_port=base_port)
    except OSError as exc:
        first = base_port or 9101
        print(
            f"sekisho: cannot start the simulators on 127.0.0.1:{first}-{first + 2} "
            f"({exc.strerror or exc}): is another copy running? Stop it, or run `sekisho "
            "simulate --base-port N` and serve a copy of examples/sekisho.yaml whose base_url "
            "entries point there",
            file=sys.stderr,
        )
        return 1
    for s in sims:
        print(
            f"simulator {s.spec.name} ({s.spec.label}) on {s.base_url}  [SIMULATOR]",
            file=sys.stderr,
        )
    server = Server(uvicorn.Config(create_app(config), **common))
    try:
        await server.serve()
    finally:
        for s in sims:
            await s.stop()
    if not server.started:
        return 3
    return stopped(server.stopped_by)


def cmd_simulate(args: argparse.Namespace) -> int:
    from sekisho.simulator import start_demo_simulators

    if args.base_port is not None and not 0 <= args.base_port <= 65533:
        print("sekisho: --base-port must be 0 (any free ports) or 1-65533", file=sys.stderr)
        return 2

    async def run() -> None:
        sims = await start_demo_simulators(args.host, base_port=args.base_port)
        print("sekisho simulators (NOT real models; they echo what they receive):")
        for s in sims:
            print(f"  {s.spec.name:<24} {s.spec.label:<32} {s.base_url}")
        if args.base_port is None:
            print("Serve through them with: sekisho serve --config examples/sekisho.yaml")
        else:
            print("Point a copy of examples/sekisho.yaml's base_url entries at these addresses.")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        for s in sims:
            await s.stop()

    asyncio.run(run())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sekisho.demo import run_demo

    return asyncio.run(run_demo(port=args.port, keep_running=args.keep_running))


# -- config -----------------------------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    from sekisho.config import load_config

    config = load_config(args.file)
    eps = config.catalogue.endpoints
    print(
        f"{args.file}: OK — {len(eps)} endpoints, {len(config.catalogue.model_names)} model "
        f"names, {len(config.tenants)} tenants, {len(config.regions)} regions"
    )
    for name, policy in config.policies.items():
        print(f"  tenant {name}: policy {policy.digest}")
    for warning in config_warnings(config):
        print(f"  warning: {warning}")
    return 0


def cmd_endpoints_check(args: argparse.Namespace) -> int:
    from sekisho.config import load_config
    from sekisho.routing.check import check_endpoints

    config = load_config(args.config)
    endpoints = list(config.catalogue.endpoints)
    if args.endpoint:
        known = {ep.id for ep in endpoints}
        unknown = [e for e in args.endpoint if e not in known]
        if unknown:
            print(
                f"sekisho: no endpoint {', '.join(map(repr, unknown))} in {args.config} "
                f"(its endpoints: {', '.join(sorted(known))})",
                file=sys.stderr,
            )
            return 2
        endpoints = [ep for ep in endpoints if ep.id in args.endpoint]
    reports = asyncio.run(check_endpoints(endpoints, chat=args.chat, timeout=args.timeout))
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=2, ensure_ascii=False))
    else:
        for r in reports:
            print(f"{'ok ' if r.ok else 'FAIL'} {r.endpoint} ({r.jurisdiction})")
            print(f"     reached: {r.reached}")
            if r.tls:
                print(f"     tls:     {r.tls}")
            print(f"     auth:    {r.auth}")
            if r.models:
                print(f"     models:  {r.models}")
            for line in r.requests:
                print(f"     request: {line}")
            for problem in r.problems:
                print(f"     problem: {problem}")
        bad = sum(not r.ok for r in reports)
        print(f"{len(reports) - bad} of {len(reports)} endpoints ok")
    return 0 if all(r.ok for r in reports) else 1


def cmd_config_schema(args: argparse.Namespace) -> int:
    from sekisho.config import json_schema

    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
    return 0


# -- keys -------------------------------------------------------------------------------------


def cmd_keys_create(args: argparse.Namespace) -> int:
    from sekisho.identity import KeyStore
    from sekisho.identity.keys import MAX_LIFETIME_SECONDS

    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else None
    config = config_of(args)
    if config is not None:
        problem = _unknown_tenant_or_models(config, args.tenant, models or ())
        if problem:
            print(f"sekisho: {problem}; no key was created", file=sys.stderr)
            return 2
    else:
        print(
            f"note: tenant {args.tenant!r} was not checked against a config (give --config "
            "FILE to refuse a tenant or model the gateway does not have)",
            file=sys.stderr,
        )
    store = KeyStore(data_dir(args) / "identity.db")
    expires = None
    if args.expires_in_days is not None:
        if not args.expires_in_days > 0:
            print(
                f"sekisho: --expires-in-days must be more than 0 (got {args.expires_in_days:g}): "
                "a key that has already expired would be refused on its first use",
                file=sys.stderr,
            )
            return 2
        if not args.expires_in_days * 86400 <= MAX_LIFETIME_SECONDS:
            print(
                f"sekisho: --expires-in-days may be at most {MAX_LIFETIME_SECONDS // 86400} "
                f"(100 years; got {args.expires_in_days:g}): leave it out for a key that does "
                "not expire",
                file=sys.stderr,
            )
            return 2
        expires = dt.datetime.now(dt.UTC).timestamp() + args.expires_in_days * 86400
    from sekisho._where import record_key_act
    from sekisho.identity.keys import new_key_id
    from sekisho.identity.roles import TENANT_ROLES

    cap = config.tenants[args.tenant].max_active_keys if config is not None else None
    if cap is not None and args.role in TENANT_ROLES:
        active = store.active_count(args.tenant)
        if active >= cap:
            # The operator's own way to make a key is not held to the cap it set for the API
            # (a replacement when a tenant's admins filled it); it says so.
            print(
                f"note: tenant {args.tenant!r} has {active} active keys, at or past its limit "
                f"of {cap} (tenants.{args.tenant}.limits.max_active_keys): the command line "
                "makes the key anyway; the admin API refuses more",
                file=sys.stderr,
            )
    key_id = new_key_id()
    refused = record_key_act(
        args, "keys.create", f"key/{key_id}", {"tenant": args.tenant, "role": args.role}
    )
    if refused is not None:
        print(f"sekisho: no key was created: {refused}", file=sys.stderr)
        return 1
    key, info = store.create(
        args.tenant,
        role=args.role,
        name=args.name,
        models=models,
        expires_at=expires,
        key_id=key_id,
    )
    print(
        f"created {info.role} key {info.key_id} for tenant {info.tenant}"
        + (f", models {', '.join(models)}" if models else "")
        + ". It is shown only this once; store it now:",
        file=sys.stderr,
    )
    print(key)
    return 0


def _unknown_tenant_or_models(config: Any, tenant: str, models: tuple[str, ...]) -> str | None:
    """Why a key for this tenant and these models could never be used with ``config``."""
    if tenant not in config.tenants:
        known = ", ".join(sorted(config.tenants)) or "none"
        return f"tenant {tenant!r} is not in {config.source_file} (its tenants: {known})"
    served = set(config.catalogue.model_names)
    unknown = [m for m in models if m not in served]
    if unknown:
        return (
            f"no endpoint in {config.source_file} serves {', '.join(map(repr, unknown))} "
            f"(served: {', '.join(sorted(served))})"
        )
    return None


def _existing_keys(args: argparse.Namespace) -> Path | None:
    """The key database that ``serve`` made, or None (and why, on stderr): a command that
    only reads or changes keys must not make an empty database where the operator mistyped."""
    path = data_dir(args) / "identity.db"
    if path.exists():
        return path
    print(
        f"sekisho: there are no API keys at {path}: `serve` and `keys create` make them. Pass "
        "the data directory serve uses (--data-dir DIR) or its config (--config FILE).",
        file=sys.stderr,
    )
    return None


def cmd_keys_list(args: argparse.Namespace) -> int:
    from sekisho.identity import KeyStore
    from sekisho.identity.keys import shown_time

    path = _existing_keys(args)
    if path is None:
        return 1
    store = KeyStore(path)
    rows = store.list(args.tenant)
    # as wide as the longest value (tenant-admin is a long role, tenant names may be long)
    tw = max([16, *(len(k.tenant) + 1 for k in rows)])
    rw = max([10, *(len(k.role) + 1 for k in rows)])
    print(
        f"{'KEY ID':<14} {'TENANT':<{tw}} {'ROLE':<{rw}} {'STATE':<8} {'CREATED (UTC)':<20} "
        f"{'EXPIRES (UTC)':<20} NAME"
    )
    now = dt.datetime.now(dt.UTC).timestamp()

    def when(ts: float | None) -> str:
        if not ts:
            return "-"
        # shown_time: a database from before lifetimes were bounded may hold 1e20
        return dt.datetime.fromtimestamp(shown_time(ts), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

    for k in rows:
        state = (
            "revoked"
            if k.revoked_at
            else ("expired" if k.expires_at and k.expires_at <= now else "active")
        )
        # A rotated key keeps working until its overlap ends: EXPIRES says when.
        print(
            f"{k.key_id:<14} {k.tenant:<{tw}} {k.role:<{rw}} {state:<8} {when(k.created_at):<20} "
            f"{when(k.expires_at):<20} {k.name}"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from sekisho.identity import KeyStore

    path = _existing_keys(args)
    if path is None:
        return 1
    store = KeyStore(path)
    from sekisho._where import record_key_act
    from sekisho.errors import NotFound

    try:
        if store.get(args.key_id).state() == "revoked":
            print(f"sekisho: key {args.key_id} is already revoked", file=sys.stderr)
            return 1
    except NotFound as exc:
        print(f"sekisho: {exc.message}", file=sys.stderr)
        return 1
    refused = record_key_act(args, "keys.revoke", f"key/{args.key_id}", {})
    if refused is not None:
        print(f"sekisho: key {args.key_id} was not revoked: {refused}", file=sys.stderr)
        return 1
    if store.revoke(args.key_id):
        print(f"revoked key {args.key_id}")
        return 0
    print(f"sekisho: no active key {args.key_id}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
