"""What a reload may change: one judgement for every way a reload comes (the admin route,
SIGHUP to a single process, SIGHUP to the ``serve --workers N`` supervisor)."""

from __future__ import annotations

from sekisho.config import Config
from sekisho.errors import ConfigProblem

# `server` settings the --workers supervisor holds (its socket, its worker count and data
# directory): workers it starts with a new configuration cannot change them.
SUPERVISOR_HELD = ("host", "port", "workers", "data_dir")


def refusals(old: Config, new: Config) -> list[ConfigProblem]:
    """Why ``new`` may not replace ``old`` by a reload (it takes a restart), or []: the
    endpoint catalogue changed, tenants were added or removed, a tenant's home region moved,
    or ``server.tls`` was added or removed."""
    file = new.source_file
    if {e.id: e for e in new.catalogue.endpoints} != {e.id: e for e in old.catalogue.endpoints}:
        return [
            ConfigProblem(
                file,
                "endpoints",
                "the endpoint catalogue changed; a policy reload swaps policies only — "
                "restart the gateway to change endpoints",
            )
        ]
    if set(new.tenants) != set(old.tenants):
        return [
            ConfigProblem(
                file,
                "tenants",
                "tenants were added or removed; restart the gateway to change tenants",
            )
        ]
    moved = [
        ConfigProblem(
            file,
            f"tenants.{name}.home_region",
            f"changed from {old.tenants[name].home_region!r} to "
            f"{tenant.home_region!r}: where a tenant's data is kept (and the country its "
            "policy calls home) does not change by a reload; restart the gateway to "
            "move it, after deciding what becomes of the records in the old region",
        )
        for name, tenant in new.tenants.items()
        if tenant.home_region != old.tenants[name].home_region
    ]
    if moved:
        return moved
    if (old.server.tls is None) != (new.server.tls is None):
        return [ConfigProblem(file, "server.tls", "adding or removing server.tls needs a restart")]
    return []


def pending_sections(old: Config, new: Config) -> list[str]:
    """Top-level sections of the file, other than endpoints and tenants, that differ: what a
    single process's reload does not apply."""
    was, now = old.file_model.model_dump(), new.file_model.model_dump()
    return sorted(
        k
        for k in set(was) | set(now)
        if k not in ("endpoints", "tenants") and was.get(k) != now.get(k)
    )


def supervisor_held(old: Config, new: Config) -> list[str]:
    """``server`` settings that differ and that only restarting ``serve --workers N`` itself
    applies."""
    was, now = old.file_model.server, new.file_model.server
    return [f"server.{k}" for k in SUPERVISOR_HELD if getattr(was, k) != getattr(now, k)]
