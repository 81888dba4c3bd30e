"""docs/policies.md's EU subsidiary beside its Japanese parent, served by a real gateway and
called with the official openai client: each tenant's personal data goes only where its own
law lets it, and each tenant's records stay in its own region's store."""

from __future__ import annotations

import argparse
import io
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from docs_examples import examples, write_example

from harness import Harness, start_config
from sekisho.config import load_config
from sekisho.policy.cli import cmd_test

PHONE_DE = "+49 30 12345678"
TAX_ID = "Steuer-ID: 12 345 678 901"


def test_the_eu_example_loads_with_each_tenant_in_its_own_region(tmp_path: Path) -> None:
    config = load_config(write_example("eu-config", tmp_path))
    assert {n: config.model.tenants[n].home_region for n in config.tenants} == {
        "acme-jp": "jp",
        "acme-eu": "de",
    }
    assert config.model.regions["de"].country == "DE"


def test_the_eu_example_policy_test_cases_all_pass(tmp_path: Path) -> None:
    config = write_example("eu-config", tmp_path)
    cases = write_example("eu-policy-tests", tmp_path)
    out = io.StringIO()
    code = cmd_test(argparse.Namespace(file=str(cases), config=str(config)), out)
    assert code == 0, out.getvalue()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    (text,) = examples("eu-config")
    raw: dict[str, Any] = yaml.safe_load(text)
    h = start_config(tmp_path_factory.mktemp("eu"), raw, keep_bodies=True)
    try:
        yield h
    finally:
        h.stop()


def client(h: Harness, tenant: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=h.base_url, api_key=h.key(tenant), max_retries=0, timeout=10)


def test_eu_personal_data_never_reaches_an_endpoint_the_gdpr_pack_excludes(
    gateway: Harness,
) -> None:
    gateway.reset_stats()
    eu = client(gateway, "acme-eu")
    texts = [
        f"Bitte rufen Sie Frau Weber unter {PHONE_DE} zurück.",
        "Bitte Herrn José García zurückrufen.",
        "Kontoinhaber: IBAN DE89 3704 0044 0532 0130 00",
        "Antwort an hans.mueller@beispiel.de",
    ]
    for text in texts:
        for _ in range(3):
            answer = eu.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": text}]
            )
            assert answer.headers["x-sekisho-endpoint"] in {
                "frankfurt-gpu",
                "global-useast",
                "tokyo-gpu",
            }
    received = gateway.bytes_received()
    assert received["paris-free-tier"] == 0  # trains on prompts: no processor (Art. 28)
    assert received["startup-frankfurt"] == 0  # a US recipient, servers in the EEA (Art. 44)
    assert received["frankfurt-gpu"] > 0  # preferred, and at home

    # The only endpoint of o3-mini is in the US with no transfer tool: refused, nothing sent.
    with pytest.raises(openai.PermissionDeniedError) as refused:
        eu.chat.completions.create(
            model="o3-mini", messages=[{"role": "user", "content": f"Rückruf: {PHONE_DE}"}]
        )
    body = refused.value.body
    assert isinstance(body, dict)
    assert body["code"] == "sovereignty_policy_violation"
    message = body["message"]
    assert "eu-gdpr/transfer-data-centre" in message
    assert "jurisdiction.country=US (legal bases recorded: none)" in message
    assert "PHONE_INTL" in message
    assert gateway.bytes_received()["reasoning-uswest"] == 0
    # Without personal data the same model serves the subsidiary.
    fine = eu.chat.completions.create(
        model="o3-mini", messages=[{"role": "user", "content": "Summarise the ECB's decision."}]
    )
    assert fine.choices[0].message.content


def test_each_tenants_records_are_kept_in_its_own_regions_store_only(gateway: Harness) -> None:
    eu, jp = client(gateway, "acme-eu"), client(gateway, "acme-jp")
    eu.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Sehr geehrter Herr Müller,"}]
    )
    jp.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "田中太郎様へのご連絡"}]
    )
    kept: dict[str, set[str]] = {}
    for region in ("de", "jp"):
        db = sqlite3.connect(gateway.data_dir / f"store-{region}.db")
        try:
            kept[region] = {t for (t,) in db.execute("SELECT DISTINCT tenant FROM records")}
            (marker,) = db.execute("SELECT region, country FROM store_marker").fetchall()
        finally:
            db.close()
        assert marker == (region, region.upper())
    assert kept == {"de": {"acme-eu"}, "jp": {"acme-jp"}}


def test_a_data_subject_request_finds_the_eu_tenants_records_by_its_own_identifiers(
    gateway: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GDPR Art. 15/17: the subsidiary's DPO finds a person's records by a phone number
    abroad, by the tax id its own pattern found and by a name written with accents, in the
    German store."""
    from sekisho.cli import main

    eu = client(gateway, "acme-eu")
    eu.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": f"Herrn José García ({TAX_ID}) unter {PHONE_DE}"}],
    )
    config = tmp_path / "sekisho.yaml"
    config.write_text(yaml.safe_dump(gateway.raw, allow_unicode=True), encoding="utf-8")
    base = ["--config", str(config), "--tenant", "acme-eu", "--actor", "dpo@acme.eu"]
    for given, kind in [(["--phone", "+49 (0)30 1234 5678"], "PHONE_INTL"),
                        (["--type", "CUSTOM", "--value", TAX_ID], "CUSTOM"),
                        (["--name", "José García"], "PERSON")]:  # fmt: skip
        assert main(["subject", "find", *base, *given]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"^[1-9][0-9]* record\(s\) of tenant acme-eu mention this {kind}$",
                         out, re.M), out  # fmt: skip
        assert re.search(r"^rec_\S+  de  ", out, re.M), out  # kept in region de
