"""Vault Transit as the region's KEK, against a simulated Transit server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sekisho.store import KeyProviderError, Stores, VaultKeysSpec, subjects
from sekisho.store.keys import VaultTransit
from store.helpers import FULL_7, Region, Sink, Tenant, exchange
from store.vault_sim import VaultTransitSim


@pytest.fixture
def vault() -> Iterator[VaultTransitSim]:
    with VaultTransitSim() as sim:
        yield sim


def keys(vault: VaultTransitSim, **changes: str) -> dict[str, str]:
    return {
        "type": "vault",
        "address": vault.address,
        "key_name": "jp-kek",
        "token": vault.token,
        **changes,
    }


async def test_data_keys_are_wrapped_by_vault_and_records_read_back(
    tmp_path: Path, sink: Sink, vault: VaultTransitSim
) -> None:
    regions = {"jp": Region("JP", keys=keys(vault))}
    s = await Stores.open(regions, tmp_path, audit=sink, tenants={"demo": Tenant("jp", FULL_7)})
    await s.for_tenant("demo", "jp").put(exchange())
    await s.close()
    assert ("encrypt", "jp-kek") in vault.calls
    assert not (tmp_path / "keys" / "region-jp.kek").exists()  # no local KEK when Vault holds it
    s = await Stores.open(regions, tmp_path, audit=sink)
    doc = await subjects.export(s, subjects.Subject("demo", "PERSON", "山田 太郎"), actor="dpo")
    assert doc["records"][0]["output"] == "承知しました"
    assert ("decrypt", "jp-kek") in vault.calls
    await s.close()


async def test_rotation_in_vault_rewraps_without_exposing_data_keys(
    tmp_path: Path, sink: Sink, vault: VaultTransitSim
) -> None:
    regions = {"jp": Region("JP", keys=keys(vault))}
    s = await Stores.open(regions, tmp_path, audit=sink, tenants={"demo": Tenant("jp", FULL_7)})
    await s.for_tenant("demo", "jp").put(exchange())
    assert await s.rotate_keys("jp", actor="ops") == (2, 1)
    assert ("rewrap", "jp-kek") in vault.calls and ("keys", "jp-kek/rotate") in vault.calls
    assert s.region("jp").kek_versions() == {2: 1}
    await s.close()
    s = await Stores.open(regions, tmp_path, audit=sink)
    doc = await subjects.export(s, subjects.Subject("demo", "PHONE_JP", "09012345678"), actor="x")
    assert len(doc["records"]) == 1
    await s.close()


def test_a_wrong_token_is_a_clear_refusal(vault: VaultTransitSim) -> None:
    spec = VaultKeysSpec.model_validate(keys(vault, token="s.wrong"))
    with pytest.raises(KeyProviderError, match=r"refused encrypt for region 'jp': HTTP 403"):
        VaultTransit(spec, "jp").wrap(b"k" * 32, b"ctx")


def test_an_unreachable_vault_is_a_clear_error() -> None:
    spec = VaultKeysSpec.model_validate(
        {"type": "vault", "address": "http://127.0.0.1:9", "key_name": "k", "token": "t"}
    )
    with pytest.raises(KeyProviderError, match=r"Cannot reach Vault Transit key transit/k"):
        VaultTransit(spec, "jp").wrap(b"k" * 32, b"ctx")


async def test_a_data_key_bound_to_another_tenant_does_not_unwrap(
    tmp_path: Path, sink: Sink, vault: VaultTransitSim
) -> None:
    regions = {"jp": Region("JP", keys=keys(vault))}
    s = await Stores.open(regions, tmp_path, audit=sink, tenants={"demo": Tenant("jp", FULL_7)})
    jp = s.region("jp")
    from sqlalchemy import update

    from sekisho.store.schema import tenant_keys

    with jp.keyring_db.connect() as conn:
        (wrapped,) = conn.execute(tenant_keys.select()).first()[2:3]
    with jp.keyring_db.begin() as conn:  # copy demo's wrapped key to another tenant's row
        conn.execute(
            tenant_keys.insert().values(
                tenant="acme", generation=1, wrapped=wrapped, kek_version=1, created_at=0
            )
        )
    with pytest.raises(KeyProviderError, match=r"tenant 'acme'.*cannot be unwrapped with Vault"):
        jp.tenant_keys("acme")
    with jp.keyring_db.begin() as conn:
        conn.execute(update(tenant_keys).where(tenant_keys.c.tenant == "acme").values(wrapped=None))
    await s.close()
