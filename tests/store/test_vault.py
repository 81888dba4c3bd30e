"""Vault Transit as the region's KEK, against a simulated Transit server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sekisho.store import (
    KeyProviderError,
    RotationIncomplete,
    Stores,
    VaultKeysSpec,
    subjects,
    validate_regions,
)
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
    # Vault's rewrap takes no associated_data (a real Vault fails every key bound to its
    # context there): sekisho re-wraps by decrypt and encrypt, each with the binding.
    assert ("keys", "jp-kek/rotate") in vault.calls and ("rewrap", "jp-kek") not in vault.calls
    assert s.region("jp").kek_versions() == {2: 1}
    assert sink.events[-1][3]["complete"] is True
    await s.close()
    s = await Stores.open(regions, tmp_path, audit=sink)
    doc = await subjects.export(s, subjects.Subject("demo", "PHONE_JP", "09012345678"), actor="x")
    assert len(doc["records"]) == 1
    await s.close()


def test_a_wrong_token_is_a_clear_refusal(vault: VaultTransitSim) -> None:
    spec = VaultKeysSpec.model_validate(keys(vault, token="s.wrong"))
    with pytest.raises(KeyProviderError, match=r"refused encrypt for region 'jp': HTTP 403"):
        VaultTransit(spec, "jp").wrap(b"k" * 32, b"ctx")


def test_a_refusal_quoting_the_token_names_no_token(vault: VaultTransitSim) -> None:
    """The error goes to the log, /readyz and the terminal of `keys rotate`: a Vault (or a
    proxy before it) that quotes the token it refused has it masked there."""
    token = "hvs.wrong-token-7f3a9c2e1b5d"
    vault.quote_token = True
    spec = VaultKeysSpec.model_validate(keys(vault, token=token))
    with pytest.raises(KeyProviderError) as e:
        VaultTransit(spec, "jp").wrap(b"k" * 32, b"ctx")
    assert "permission denied for token [SECRET]" in str(e.value)
    assert token not in str(e.value)


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


def test_vaults_rewrap_ignores_associated_data_as_a_real_vault_does(vault: VaultTransitSim) -> None:
    spec = VaultKeysSpec.model_validate(keys(vault))
    transit = VaultTransit(spec, "jp")
    wrapped = transit.wrap(b"k" * 32, b"ctx")
    with pytest.raises(KeyProviderError, match=r"refused rewrap .* HTTP 400: .*authentication"):
        transit._call("rewrap", "rewrap/jp-kek", {"ciphertext": wrapped, "associated_data": "Y3R4"})
    assert transit.unwrap(transit.rewrap(wrapped, b"ctx"), b"ctx") == b"k" * 32


async def test_a_rotation_cut_short_is_in_the_ledger_and_says_what_is_left(
    tmp_path: Path, sink: Sink, vault: VaultTransitSim
) -> None:
    """Vault rotated its key, then re-wrapping failed: nothing was recorded, and the message
    blamed the token and the key name whatever the cause."""
    regions = {"jp": Region("JP", keys=keys(vault))}
    s = await Stores.open(regions, tmp_path, audit=sink, tenants={"demo": Tenant("jp", FULL_7)})
    await s.for_tenant("demo", "jp").put(exchange())
    vault.refuse = {"encrypt"}  # a token whose policy lost encrypt
    with pytest.raises(RotationIncomplete) as caught:
        await s.rotate_keys("jp", actor="ops")
    message = str(caught.value)
    assert "KEK version 2" in message and "0 of 1 data key(s) were re-wrapped" in message
    assert "tenant 'demo' (generation 1)" in message and "still unwrap them" in message
    assert "refused encrypt" in message and "needs encrypt on transit/encrypt/jp-kek" in message
    _, action, target, details = sink.events[-1]
    assert (action, target) == ("store.kek_rotated", "region:jp")
    assert details["complete"] is False and details["kek_version"] == 2
    assert (details["data_keys_rewrapped"], details["data_keys_left"]) == (0, 1)
    vault.refuse = set()
    assert s.region("jp").kek_versions() == {1: 1}  # still readable under version 1
    assert await s.rotate_keys("jp", actor="ops") == (3, 1)  # run again: done
    await s.close()


def test_a_vault_that_answers_400_is_not_blamed_on_the_token(vault: VaultTransitSim) -> None:
    spec = VaultKeysSpec.model_validate(keys(vault))
    with pytest.raises(KeyProviderError) as caught:
        VaultTransit(spec, "jp")._call("decrypt", "decrypt/jp-kek", {"ciphertext": "nope"})
    assert "HTTP 400" in str(caught.value) and "token" not in str(caught.value)


def test_a_vault_over_plain_http_is_refused_unless_on_loopback(tmp_path: Path) -> None:
    """http://vault.internal:8200 was accepted silently: the token and every data key would
    cross the network in clear."""
    from pydantic import ValidationError

    base = {"type": "vault", "key_name": "k", "token": "t"}
    for address in ("http://vault.internal:8200", "http://10.0.0.5:8200"):
        with pytest.raises(ValidationError, match=r"must be an https:// address"):
            VaultKeysSpec.model_validate({**base, "address": address})
    for address in ("https://vault.internal:8200", "http://127.0.0.1:8200", "http://localhost"):
        assert VaultKeysSpec.model_validate({**base, "address": address}).address == address
    problems = validate_regions(
        {"jp": Region("JP", keys={**base, "address": "http://vault.internal:8200"})}, tmp_path
    )
    assert [p.path for p in problems] == ["regions.jp.keys.address"]
    assert "https://" in problems[0].reason


def test_a_vault_behind_an_internal_ca_is_trusted_through_ca_file(tmp_path: Path) -> None:
    import ssl

    from pki import CA

    ca, other = CA(tmp_path), CA(tmp_path, "some other CA")
    cert, key = ca.issue("vault.internal")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    with VaultTransitSim(tls=server) as sim:
        assert sim.address.startswith("https://")
        trusted = VaultTransit(
            VaultKeysSpec.model_validate(keys(sim, ca_file=str(ca.cert_path))), "jp"
        )
        assert trusted.unwrap(trusted.wrap(b"k" * 32, b"ctx"), b"ctx") == b"k" * 32
        with pytest.raises(KeyProviderError, match=r"CERTIFICATE_VERIFY_FAILED"):
            VaultTransit(VaultKeysSpec.model_validate(keys(sim)), "jp").wrap(b"k" * 32, b"c")
        stranger = keys(sim, ca_file=str(other.cert_path))
        with pytest.raises(KeyProviderError, match=r"CERTIFICATE_VERIFY_FAILED"):
            VaultTransit(VaultKeysSpec.model_validate(stranger), "jp").wrap(b"k" * 32, b"c")
    missing = keys(sim, ca_file=str(tmp_path / "nope.pem"))
    with pytest.raises(KeyProviderError, match=r"regions.jp.keys.ca_file: cannot load"):
        VaultTransit(VaultKeysSpec.model_validate(missing), "jp")


async def test_an_old_vault_key_version_is_retired_only_once_nothing_it_wrapped_is_live(
    tmp_path: Path, sink: Sink, vault: VaultTransitSim
) -> None:
    """Retiring a version in Vault raises the key's min_decryption_version past it and trims
    it; refused while a data key is wrapped under it; a refusal by Vault part way is in the
    ledger as incomplete."""
    from sekisho.store import StoreError

    regions = {"jp": Region("JP", keys=keys(vault))}
    s = await Stores.open(regions, tmp_path, audit=sink, tenants={"demo": Tenant("jp", FULL_7)})
    await s.for_tenant("demo", "jp").put(exchange())
    VaultTransit(VaultKeysSpec.model_validate(keys(vault)), "jp").rotate()  # not re-wrapped
    kv = await s.kek_versions("jp")
    assert (kv.current, kv.held, kv.usage) == (2, [1, 2], {1: [("demo", 1)]})
    with pytest.raises(StoreError, match="still wraps 1 data key"):
        await s.retire_kek("jp", 1, actor="ops")
    assert await s.rotate_keys("jp", actor="ops") == (3, 1)
    with pytest.raises(StoreError, match="current one"):
        await s.retire_kek("jp", 3, actor="ops")
    with pytest.raises(StoreError, match=r"before version 1: .* oldest first"):
        await s.retire_kek("jp", 2, actor="ops")
    assert "store.kek_retired" not in sink.actions()

    await s.retire_kek("jp", 1, actor="ops")
    assert ("keys", "jp-kek/config") in vault.calls and ("keys", "jp-kek/trim") in vault.calls
    assert sorted(vault.keys["jp-kek"]) == [2, 3]
    assert sink.events[-1][1:3] == ("store.kek_retired", "region:jp")
    assert sink.events[-1][3]["complete"] is True and sink.events[-1][3]["kek_version"] == 1
    assert (await s.kek_versions("jp")).held == [2, 3]

    vault.refuse = {"trim"}  # a token whose policy allows config but not trim
    with pytest.raises(KeyProviderError, match="refused trim"):
        await s.retire_kek("jp", 2, actor="ops")
    details = sink.events[-1][3]
    assert details["complete"] is False and details["kek_version"] == 2
    await s.close()
    s = await Stores.open(regions, tmp_path, audit=sink)
    doc = await subjects.export(s, subjects.Subject("demo", "PERSON", "山田 太郎"), actor="dpo")
    assert doc["records"][0]["output"] == "承知しました"  # what is live still reads
    await s.close()
