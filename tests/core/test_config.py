"""The config is validated at start-up; every problem names file, key path and reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import EXAMPLE, example_config
from sekisho.config import json_schema, load_config, parse_config
from sekisho.errors import ConfigError


def problems(raw: dict, env: dict[str, str] | None = None) -> list[str]:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as e:
        parse_config(yaml.safe_dump(raw, allow_unicode=True), "bad.yaml", env=env or {})
    return [str(p) for p in e.value.problems]


def test_example_config_is_valid_and_documented() -> None:
    config = load_config(EXAMPLE)
    assert {ep.id for ep in config.catalogue.endpoints} == {
        "sim-domestic-tokyo",
        "sim-global-japaneast",
        "sim-global-useast",
    }
    assert "demo" in config.tenants
    gpt = {r.endpoint.id for r in config.catalogue.routes("gpt-4o")}
    assert gpt == {"sim-domestic-tokyo", "sim-global-japaneast", "sim-global-useast"}
    tokyo = config.catalogue.by_id["sim-domestic-tokyo"]
    assert tokyo.jurisdiction.country == "JP" and "ISMAP" in tokyo.certifications
    east = config.catalogue.by_id["sim-global-japaneast"]
    assert east.operator.countries == frozenset({"JP", "US"})
    assert config.policies["demo"].digest


def test_typo_in_a_key_names_the_path() -> None:
    raw = example_config()
    raw["endpoints"][1]["jurisdiction"]["contry"] = "JP"
    out = problems(raw)
    assert any(
        "bad.yaml: endpoints[1](sim-global-japaneast).jurisdiction.contry: unknown key" in p
        for p in out
    ), out


def test_an_egress_proxy_must_be_an_http_proxy_url_and_takes_its_secret_from_env() -> None:
    raw = example_config()
    raw["endpoints"][1]["proxy"] = "https://proxy.corp.example:3128"
    raw["endpoints"][2]["proxy"] = "http://proxy.corp.example"  # no port
    out = "\n".join(problems(raw))
    assert "endpoints[1](sim-global-japaneast).proxy" in out and "http://host:port" in out
    assert "endpoints[2](sim-global-useast).proxy" in out
    raw = example_config()
    raw["endpoints"][1]["proxy"] = "http://gw:${PROXY_PASSWORD}@proxy.corp.example:3128"
    config = parse_config(yaml.safe_dump(raw), "ok.yaml", env={"PROXY_PASSWORD": "s3cret"})
    assert config.catalogue.by_id["sim-global-japaneast"].proxy == (
        "http://gw:s3cret@proxy.corp.example:3128"
    )


def test_wrong_country_code_and_certification_are_explained() -> None:
    raw = example_config()
    raw["endpoints"][0]["jurisdiction"]["country"] = "Japan"
    raw["endpoints"][2]["certifications"] = ["ISO27001", "SOC-7"]
    out = "\n".join(problems(raw))
    assert "endpoints[0](sim-domestic-tokyo).jurisdiction.country" in out
    assert "ISO 3166-1 alpha-2" in out
    assert "unknown certification 'SOC-7'" in out


def test_certification_spellings_are_normalised() -> None:
    raw = example_config()
    raw["endpoints"][0]["certifications"] = ["ISO/IEC 27001", "iso 27017", "ismap"]
    config = parse_config(yaml.safe_dump(raw), "x.yaml", env={})
    assert config.catalogue.by_id["sim-domestic-tokyo"].certifications == (
        "ISO27001",
        "ISO27017",
        "ISMAP",
    )


def test_missing_environment_variable_is_named() -> None:
    raw = example_config()
    raw["endpoints"][0]["api_key"] = "${AZURE_OPENAI_KEY}"
    out = problems(raw)
    assert any(
        "endpoints[0](sim-domestic-tokyo).api_key" in p and "AZURE_OPENAI_KEY is not set" in p
        for p in out
    )


def test_every_problem_is_named_at_once_not_one_stage_at_a_time() -> None:
    """A missing ${VAR} used to hide every other mistake until it was fixed: each fix then
    revealed the next problem, one restart at a time."""
    raw = example_config()
    raw["endpoints"][0]["base_url"] = "${INTERNAL_VLLM_URL}"
    raw["endpoints"][1]["jurisdiction"]["country"] = "XX"
    raw["tenants"]["demo"]["home_regio"] = "jp"
    out = problems(raw, env={})
    assert len(out) == 3, out  # the empty base_url is not judged again as a bad URL
    assert any("INTERNAL_VLLM_URL is not set" in p for p in out)
    assert any("jurisdiction.country" in p and "'XX'" in p for p in out)
    assert any("home_regio" in p for p in out)


def test_problems_of_every_stage_are_named_in_one_report() -> None:
    """A typo'd key, a bad value, a store URL and an unknown policy pack: one run names all
    four (the store and the pack used to appear only after the others were fixed)."""
    raw = example_config()
    raw["routing"]["max_attemps"] = 3
    raw["endpoints"][0]["weight"] = -1
    raw["regions"]["jp"]["store"] = "sqlit"
    raw["tenants"]["demo"]["policy"]["extends"] = ["jp-appi", "jp-mynumbr"]
    out = "\n".join(problems(raw))
    assert "routing.max_attemps: unknown key" in out
    assert "endpoints[0](sim-domestic-tokyo).weight" in out
    assert "regions.jp.store: must be 'sqlite'" in out
    assert "unknown pack 'jp-mynumbr'" in out
    # a store URL and a pack, with the rest right: the same two
    raw = example_config()
    raw["regions"]["jp"]["store"] = "sqlit"
    raw["tenants"]["demo"]["policy"]["extends"] = ["jp-appi", "jp-mynumbr"]
    out = "\n".join(problems(raw))
    assert "regions.jp.store" in out and "unknown pack 'jp-mynumbr'" in out


def test_environment_variables_are_expanded() -> None:
    raw = example_config()
    raw["endpoints"][0]["api_key"] = "${MY_KEY}"
    config = parse_config(yaml.safe_dump(raw), "x.yaml", env={"MY_KEY": "s3cret"})
    assert config.catalogue.by_id["sim-domestic-tokyo"].api_key == "s3cret"


def test_unknown_home_region_and_duplicate_endpoint_ids() -> None:
    raw = example_config()
    raw["tenants"]["demo"]["home_region"] = "eu"
    raw["endpoints"][2]["id"] = "sim-domestic-tokyo"
    out = "\n".join(problems(raw))
    assert "tenants.demo.home_region: unknown region 'eu'; declared regions: jp" in out
    assert "endpoints[2].id" in out and "already used" in out


def test_zero_data_retention_contradiction() -> None:
    raw = example_config()
    raw["endpoints"][0]["data_terms"]["retention_days"] = 30
    out = "\n".join(problems(raw))
    assert "zero_data_retention is true but retention_days is not 0" in out


def test_azure_endpoint_needs_api_version_and_deployments() -> None:
    raw = example_config()
    raw["endpoints"][1]["family"] = "azure_openai"
    out = "\n".join(problems(raw))
    assert "api_version" in out


def test_invalid_yaml_names_line() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config("server:\n  port: [1,\n", "broken.yaml")
    assert "broken.yaml: line" in str(e.value)


def test_unreadable_file() -> None:
    with pytest.raises(ConfigError) as e:
        load_config("/nonexistent/sekisho.yaml")
    assert "cannot read" in str(e.value)


def test_json_schema_describes_the_config() -> None:
    schema = json_schema()
    assert schema["title"] == "sekisho configuration"
    assert "endpoints" in schema["properties"]
    text = json.dumps(schema)
    assert "ISO 3166-1" in text


def test_config_check_command_exits_2_listing_problems(tmp_path: Path) -> None:
    raw = example_config()
    raw["server"]["port"] = "eighty"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    r = subprocess.run(
        [sys.executable, "-m", "sekisho", "config", "check", str(bad)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert f"{bad}: server.port" in r.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "sekisho", "config", "check", str(EXAMPLE)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout


def test_serve_refuses_to_start_on_invalid_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nendpoints: []\n")
    r = subprocess.run(
        [sys.executable, "-m", "sekisho", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "regions" in r.stderr and "endpoints" in r.stderr


def test_the_packaged_example_is_the_documented_one() -> None:
    """`sekisho demo` runs from the copy inside the package; it must be examples/sekisho.yaml."""
    packaged = Path(__file__).resolve().parents[2] / "src" / "sekisho" / "data" / "example.yaml"
    assert packaged.read_bytes() == EXAMPLE.read_bytes()


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    raw = example_config()
    raw["server"]["trusted_proxies"] = ["10.0.0.0/8", "lb.corp.example"]
    out = "\n".join(problems(raw))
    assert "server.trusted_proxies" in out and "'lb.corp.example' is not an IP address" in out
    raw["server"]["trusted_proxies"] = ["10.0.0.0/8", "2001:db8::1", "192.0.2.7"]
    assert parse_config(yaml.safe_dump(raw), "ok.yaml").server.trusted_proxies[1] == "2001:db8::1"


def test_config_check_warns_of_endpoints_reached_in_clear_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from harness import example_config
    from sekisho.cli import main

    raw = example_config()
    raw["endpoints"][0]["base_url"] = "http://10.20.0.5:8000/v1"  # an internal vLLM, say
    path = tmp_path / "sekisho.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["config", "check", str(path)]) == 0  # a warning, not an error
    out = capsys.readouterr().out
    assert "warning: endpoint sim-domestic-tokyo is plain HTTP (http://10.20.0.5:8000/v1)" in out
    assert "and its credential cross the network unencrypted" in out
    # the loopback simulators are not warned about as plain HTTP, but as simulators
    assert out.count("warning:") == 2
    assert (
        "warning: endpoints sim-domestic-tokyo, sim-global-japaneast, sim-global-useast are "
        "sekisho simulators (simulated: true): answers are made up"
    ) in out


def test_a_key_written_twice_is_an_error_not_a_silently_dropped_policy(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: a tenant written again at the end of the file
    (with only its region) would lose its policy and be served with no rules at all."""
    text = EXAMPLE.read_text(encoding="utf-8") + "  demo:\n    home_region: jp\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "twice.yaml")
    (problem,) = [str(p) for p in err.value.problems]
    assert problem.startswith("twice.yaml: line ")
    assert "duplicate key 'demo' (first on line " in problem
    # a merge may still bring keys in that the mapping then overrides
    merged = "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n"
    from sekisho import _yaml

    assert _yaml.load(merged)["other"] == {"x": 3, "y": 2}


def test_config_check_warns_about_a_tenant_whose_policy_restricts_nothing(tmp_path: Path) -> None:
    raw = example_config()
    raw["tenants"]["demo"].pop("policy")
    path = tmp_path / "open.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "sekisho", "config", "check", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "warning: tenant demo has an empty policy" in done.stdout


def test_values_no_one_could_mean_stop_start_up() -> None:
    """A country code that is not one (XX, or UK for GB), a port no socket has, and a secret
    that arrived empty: each is a problem naming its key, not a gateway that starts wrong."""
    raw = example_config()
    raw["endpoints"][0]["jurisdiction"]["country"] = "XX"
    raw["endpoints"][1]["operator"]["country"] = "UK"
    raw["endpoints"][2]["base_url"] = "http://127.0.0.1:99999/v1"
    raw["endpoints"][2]["api_key"] = "${EMPTY_SECRET}"
    out = "\n".join(problems(raw, env={"EMPTY_SECRET": ""}))
    assert "environment variable EMPTY_SECRET is set but empty" in out
    raw["endpoints"][2]["api_key"] = "${EMPTY_SECRET:-fallback}"
    out = "\n".join(problems(raw, env={"EMPTY_SECRET": ""}))
    assert "endpoints[0](sim-domestic-tokyo).jurisdiction.country" in out and "'XX'" in out
    assert "the United Kingdom is GB" in out
    assert "port outside 1-65535" in out
    raw = example_config()
    raw["server"]["host"] = "999.1.1.1"
    assert any("server.host" in p and "not an IP address" in p for p in problems(raw))


def test_a_file_that_is_not_utf8_is_named_with_where_and_how_to_convert(tmp_path: Path) -> None:
    """A Shift_JIS comment (a file saved by a Japanese Windows editor) was a traceback."""
    path = tmp_path / "sjis.yaml"
    path.write_bytes("# 東京の設定\n".encode("cp932") + EXAMPLE.read_bytes())
    done = subprocess.run(
        [sys.executable, "-m", "sekisho", "config", "check", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{path}: line 1: not UTF-8 (byte 0x93 at offset 2)" in done.stderr
    assert "iconv -f CP932 -t UTF-8" in done.stderr
    # A byte-order mark (Windows Notepad's UTF-8) is not a problem.
    path.write_bytes(b"\xef\xbb\xbf" + EXAMPLE.read_bytes())
    assert load_config(path).tenants
    with pytest.raises(ConfigError, match="name the file with --config FILE"):
        load_config(tmp_path / "missing.yaml")


def test_ledger_url_is_checked_and_no_problem_quotes_a_password() -> None:
    """A ledger.url the ledger cannot open passed the check, and serve then took it for a file
    path (logging it, password and all); URL problems elsewhere quoted passwords too."""
    raw = example_config()
    raw["ledger"] = {"url": "postgresql+psycopg://sekisho:S3cretPW@db.internal/ledger"}
    raw["endpoints"][0]["base_url"] = "https://user:S3cretPW@api.example.jp:99999/v1"
    raw["redis"] = "http://:S3cretPW@cache.internal:6379/0"
    out = "\n".join(problems(raw))
    assert "S3cretPW" not in out, out
    assert "ledger.url: must be a postgresql:// URL (not postgresql+psycopg://)" in out
    assert "'https://user:***@api.example.jp:99999/v1' has a port outside 1-65535" in out
    assert "redis: 'http://:***@cache.internal:6379/0' is not a Redis URL" in out
    for bad, said in [
        ("postgresql://db.internal", "names no database"),
        ("postgresql://db.internal/x?schema=a-b", "schema name 'a-b'"),
        ("sqlite:///", "sqlite:///PATH must name a database file"),
        ("/var/lib/sekisho/ledger.sqlite3", "must be a postgresql:// URL or sqlite:///PATH"),
    ]:
        raw = example_config()
        raw["ledger"] = {"url": bad}
        assert any(p.startswith("bad.yaml: ledger.url: ") and said in p for p in problems(raw))
    for good in ["postgresql://u:pw@db.internal:5432/ledger?schema=gw", "sqlite:///ledger.db"]:
        raw = example_config()
        raw["ledger"] = {"url": good}
        assert parse_config(yaml.safe_dump(raw), "ok.yaml").ledger.url == good


def test_endpoint_headers_that_no_request_could_send_are_refused_at_load() -> None:
    """A header name with a space, a value with CR/LF, a framing header: each passed the check
    and then failed every request (HTTP 502); an Authorization header next to api_key went
    upstream as a second one."""
    cases = [
        ({"X Tenant": "bank"}, "header name 'X Tenant' is not a valid HTTP header name"),
        ({"X-Tenant:": "bank"}, "header name 'X-Tenant:' is not a valid HTTP header name"),
        ({"X-Foo": "a\r\nEvil: 1"}, "header 'X-Foo' has a CR, LF or NUL in its value"),
        ({"Content-Length": "5"}, "header 'Content-Length' is set by the gateway"),
        ({"Transfer-Encoding": "chunked"}, "header 'Transfer-Encoding' is set by the gateway"),
        ({"connection": "close"}, "header 'connection' is set by the gateway"),
        ({"Authorization": "Bearer x"}, "header 'Authorization' is the credential header the "
         "gateway sends from api_key"),
    ]  # fmt: skip
    for headers, said in cases:
        raw = example_config()
        raw["endpoints"][0]["api_key"] = "k"
        raw["endpoints"][0]["headers"] = headers
        [problem] = problems(raw)
        assert problem.startswith(f"bad.yaml: endpoints[0](sim-domestic-tokyo).headers: {said}")
    # Host may be given: the name a server behind the base_url's address answers to
    raw = example_config()
    raw["endpoints"][0]["headers"] = {"Host": "models.internal"}
    parse_config(yaml.safe_dump(raw, allow_unicode=True), "ok.yaml", env={})
    # Azure's key goes in api-key: that one is refused there, whatever its case
    raw = example_config()
    raw["endpoints"][1].update(
        family="azure_openai", api_key="k", api_version="2024-10-21", headers={"API-Key": "x"}
    )
    raw["endpoints"][1]["models"] = [{"id": "gpt-4o", "deployment": "gpt4o"}]
    out = "\n".join(problems(raw))
    assert "endpoints[1](sim-global-japaneast).headers: header 'API-Key' is the credential" in out
    # With no credential of its own, an endpoint may take its Authorization from headers
    raw = example_config()
    raw["endpoints"][0].pop("api_key", None)
    raw["endpoints"][0]["headers"] = {"Authorization": "Bearer ${TOKEN}", "User-Agent": "bank/1"}
    config = parse_config(yaml.safe_dump(raw), "ok.yaml", env={"TOKEN": "t"})
    from sekisho.providers.h1 import H1Client
    from sekisho.providers.openai import transport_for

    ep = config.catalogue.by_id["sim-domestic-tokyo"]
    sent = transport_for("openai", H1Client()).endpoint_headers(ep, {})
    # one User-Agent (the configured one replaces the gateway's), one Authorization
    assert sorted(n.lower() for n in sent) == ["authorization", "user-agent"]
    assert sent["authorization"] == "Bearer t" and sent["user-agent"] == "bank/1"


def test_oidc_issuers_name_only_declared_tenants() -> None:
    """A token from an issuer mapped to a tenant the file does not declare had nowhere to go:
    the typo showed only as refused logins."""
    raw = example_config()
    raw["auth"] = {
        "oidc": [
            {"issuer": "https://login.example.jp", "audience": "sekisho", "tenant": "demoo",
             "default_role": "app"},
            {"issuer": "https://idp.example.jp", "audience": "sekisho", "tenant_claim": "org",
             "tenant_map": {"acme": "demo", "globex": "globx"}, "default_role": "app"},
        ]
    }  # fmt: skip
    out = problems(raw)
    assert out == [
        "bad.yaml: auth.oidc[0].tenant: unknown tenant 'demoo'; declared tenants: demo",
        "bad.yaml: auth.oidc[1].tenant_map.globex: unknown tenant 'globx'; declared tenants: demo",
    ], out
    raw["auth"]["oidc"][0]["tenant"] = "demo"
    raw["auth"]["oidc"][1]["tenant_map"]["globex"] = "demo"
    assert parse_config(yaml.safe_dump(raw), "ok.yaml").model.auth is not None


def test_the_schema_takes_an_environment_reference_wherever_the_loader_does() -> None:
    """`port: ${PORT}` loads ("Any string may be written ${NAME}"), but the schema said it was
    not an integer: an editor checking against `config schema` marked a valid file wrong."""
    import re

    raw = example_config()
    raw["server"]["port"] = "${PORT:-8080}"
    raw["endpoints"][0]["simulated"] = "${SIMULATED}"
    raw["endpoints"][0]["weight"] = "${WEIGHT}"
    config = parse_config(
        yaml.safe_dump(raw), "ok.yaml", env={"PORT": "9000", "SIMULATED": "true", "WEIGHT": "2"}
    )
    assert config.server.port == 9000 and config.catalogue.endpoints[0].weight == 2
    schema = json_schema()
    unchecked: list[str] = []

    def walk(node: object, where: str, inside_reference_choice: bool) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]", inside_reference_choice)
            return
        if not isinstance(node, dict):
            return
        choices = node.get("anyOf", [])
        offers = any(
            isinstance(c, dict) and re.search(c.get("pattern", "^$"), "${NAME:-x}") for c in choices
        )
        constrained = node.get("type") in ("integer", "number", "boolean") or "enum" in node
        if constrained and not inside_reference_choice:
            unchecked.append(where)
        for key, value in node.items():
            if key in ("properties", "$defs"):
                for name, sub in value.items():
                    walk(sub, f"{where}.{name}", False)
            elif key in ("items", "additionalProperties", "anyOf", "oneOf"):
                walk(value, f"{where}.{key}", offers and key == "anyOf")

    walk(schema, "", False)
    assert not unchecked, unchecked
    port = schema["$defs"]["ServerConfig"]["properties"]["port"]
    assert port["default"] == 8080 and {"type": "integer", "minimum": 0, "maximum": 65535} in [
        {k: v for k, v in c.items() if k != "description"} for c in port["anyOf"]
    ]


def test_a_region_keys_block_without_a_type_is_a_local_key_file_as_the_schema_says() -> None:
    """`keys: {}` and `keys: {path: …}` passed the schema (type defaults to local) and were
    refused by the loader with "Unable to extract tag using discriminator 'type'"."""
    for keys, path in [({}, None), ({"path": "/srv/keys/jp.kek"}, "/srv/keys/jp.kek")]:
        raw = example_config()
        raw["regions"]["jp"]["keys"] = keys
        config = parse_config(yaml.safe_dump(raw), "ok.yaml")
        assert config.regions["jp"].keys.type == "local"
        assert config.regions["jp"].keys.path == path  # type: ignore[union-attr]
    for keys in [
        {"type": "kms"},
        {"address": "https://vault.tokyo.example.jp:8200", "key_name": "jp", "token": "t"},
    ]:
        raw = example_config()
        raw["regions"]["jp"]["keys"] = keys
        assert problems(raw) == [
            "bad.yaml: regions.jp.keys: set type: local (a key file, the default) or type: vault "
            "(HashiCorp Vault Transit; it needs address, key_name and token)"
        ]


def test_a_boolean_is_not_taken_for_a_number_nor_a_number_for_a_boolean() -> None:
    """`retention_days: true` was a day of retention and `trains_on_data: 1` a yes: YAML most
    likely read something other than what was meant. The schema refused both; now so does the
    loader. Text (what ${VAR} expands to) is still converted."""
    raw = example_config()
    terms = raw["endpoints"][0]["data_terms"]
    terms.update(retention_days=True, trains_on_data=1, zero_data_retention=0)
    raw["endpoints"][1]["weight"] = False
    out = problems(raw)
    where = "bad.yaml: endpoints[0](sim-domestic-tokyo).data_terms"
    assert out == [
        f"{where}.retention_days: YAML read this as a boolean (true); a number is needed here",
        f"{where}.trains_on_data: 1 is a number; write true or false",
        f"{where}.zero_data_retention: 0 is a number; write true or false",
        "bad.yaml: endpoints[1](sim-global-japaneast).weight: YAML read this as a boolean "
        "(false); a number is needed here",
    ], out
    raw = example_config()
    raw["endpoints"][0]["data_terms"]["trains_on_data"] = "${TRAINS:-false}"
    raw["server"]["workers"] = "${WORKERS:-2}"
    config = parse_config(yaml.safe_dump(raw), "ok.yaml", env={})
    assert config.server.workers == 2
    assert config.catalogue.endpoints[0].data_terms.trains_on_data is False


def test_yaml_pitfalls_are_named_with_how_to_quote(tmp_path: Path) -> None:
    """YAML 1.1 reads NO (Norway) as false, 2024-10-21 as a date and 1.3 as a number: the
    messages were "Input should be a valid string" and "Input should be '1.2' or '1.3'"."""
    text = EXAMPLE.read_text(encoding="utf-8")
    text = text.replace("  jp:\n    country: JP\n", "  no:\n    country: NO\n", 1)
    text = text.replace("home_region: jp", "home_region: no")
    text = text.replace(
        "    api_key: ${GLOBAL_CLOUD_KEY:-simulator}\n",
        "    api_key: ${GLOBAL_CLOUD_KEY:-simulator}\n    api_version: 2024-10-21\n"
        "    tls: {min_version: 1.3}\n",
        1,
    ).replace("http://127.0.0.1:9102", "https://127.0.0.1:9102")
    with pytest.raises(ConfigError) as err:
        parse_config(text, "pitfalls.yaml", env={})
    out = [str(p) for p in err.value.problems]
    assert out == [
        'pitfalls.yaml: regions.no: YAML read this key as a boolean (no); quote it: "no":',
        "pitfalls.yaml: regions.no.country: YAML read this as a boolean (NO); quote it: "
        'country: "NO"',
        "pitfalls.yaml: endpoints[1](sim-global-japaneast).api_version: YAML read this as a "
        'date (2024-10-21); quote it: api_version: "2024-10-21"',
        "pitfalls.yaml: endpoints[1](sim-global-japaneast).tls.min_version: YAML read this as a "
        'number (1.3); quote it: min_version: "1.3"',
        "pitfalls.yaml: tenants.demo.home_region: YAML read this as a boolean (no); quote it: "
        'home_region: "no"',
    ], out
    # ${VAR} in a flow mapping is not valid YAML at all: the error says what to do
    with pytest.raises(ConfigError, match=r"a \$\{VAR\} inside a \{…\} or \[…\] must be quoted"):
        parse_config("server: {port: ${PORT}}\n", "flow.yaml", env={"PORT": "1"})


def test_the_example_azure_endpoint_works_once_uncommented() -> None:
    """Uncommented, the example's Azure block was not valid YAML (${VAR} in a {…} mapping) and
    lacked the deployment names Azure needs."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("  # - id: azure-"))
    end = start
    while lines[end].startswith("  # "):
        end += 1
    lines[start:end] = ["  " + line[4:] for line in lines[start:end]]
    env = {"AZURE_CLIENT_ID": "app", "AZURE_CLIENT_SECRET": "s3cret"}
    config = parse_config("".join(lines), "azure.yaml", env=env)
    azure = config.catalogue.by_id["azure-japaneast"]
    assert azure.family == "azure_openai" and azure.api_version == "2024-10-21"
    assert azure.models[0].deployment == "gpt-4o-prod"
    assert azure.auth is not None and azure.auth.client_secret == "s3cret"


def test_each_problem_is_named_once_at_the_key_the_file_writes() -> None:
    """Union members (`.vault.`, `.str`), a missing ${VAR} reported a second time as an empty
    value, endpoint ids left out of ${VAR} problems, a detection path written twice and a
    "Tuple should have at least 1 item" for a list whose only item was wrong."""
    raw = example_config()
    raw["regions"]["jp"]["keys"] = {
        "type": "vault", "address": "https://vault.tokyo.example.jp:8200", "key_name": "jp",
        "token": "${VAULT_TOKEN}",
    }  # fmt: skip
    raw["auth"] = {
        "oidc": [
            {"issuer": "https://login.example.jp", "audience": {"x": 1}, "tenant": "demo",
             "default_role": "app"},
            {"issuer": "https://idp.example.jp", "audience": ["sekisho", 5], "tenant": "demo",
             "default_role": "app"},
        ]
    }  # fmt: skip
    raw["endpoints"][0]["api_key"] = "${TOKYO_KEY}"
    raw["endpoints"][1]["models"] = [{"id": 4}]
    out = problems(raw)
    assert sorted(out) == [
        "bad.yaml: auth.oidc[0].audience: Input should be a valid string or a valid list",
        'bad.yaml: auth.oidc[1].audience[1]: YAML read this as a number (5); quote it: "5"',
        "bad.yaml: endpoints[0](sim-domestic-tokyo).api_key: environment variable TOKYO_KEY is "
        "not set (referenced as ${TOKYO_KEY})",
        "bad.yaml: endpoints[1](sim-global-japaneast).models[0].id: YAML read this as a number "
        '(4); quote it: id: "4"',
        "bad.yaml: regions.jp.keys.token: environment variable VAULT_TOKEN is not set "
        "(referenced as ${VAULT_TOKEN})",
    ], out
    raw = example_config()
    raw["tenants"]["demo"]["detection"] = {"custom": [{"name": "x", "pattern": "("}]}
    raw["regions"]["jp"]["keys"] = {"type": "vault", "address": "https://v.example.jp:8200"}
    out = problems(raw)
    assert "bad.yaml: regions.jp.keys.key_name: required key is missing" in out
    assert not any(".vault." in p for p in out), out
    raw = example_config()
    raw["tenants"]["demo"]["detection"] = {"custom": [{"name": "x", "pattern": "("}]}
    [problem] = problems(raw)
    assert problem.startswith("bad.yaml: tenants.demo.detection.custom[0]: custom rule 'x': ")


def test_infinite_and_absurd_numbers_are_refused_with_their_bound() -> None:
    """`weight: .inf` sent every request to that endpoint, `timeouts: {total: .inf}` waited
    for ever, `deadline_ms: 1e308` never refused an entry: each loaded without a word."""
    raw = example_config()
    raw["endpoints"][0]["weight"] = float("inf")
    raw["endpoints"][1]["weight"] = 1e308
    raw["endpoints"][2]["timeouts"] = {"connect": float("nan"), "total": 1e9}
    raw["ledger"] = {"deadline_ms": float("inf"), "checkpoint_interval_ms": 1e308}
    raw["tenants"]["demo"]["limits"] = {"tokens_per_month": 10**30}
    out = "\n".join(problems(raw))
    assert "endpoints[0](sim-domestic-tokyo).weight: Input should be a finite number" in out
    assert (
        "endpoints[1](sim-global-japaneast).weight: Input should be less than or equal to 1000000"
        in out
    )
    assert "endpoints[2](sim-global-useast).timeouts.connect: Input should be a finite number" in (
        out
    )
    assert "endpoints[2](sim-global-useast).timeouts.total: Input should be less than or equal" in (
        out
    )
    assert "ledger.deadline_ms: Input should be a finite number" in out
    assert "ledger.checkpoint_interval_ms: Input should be less than or equal to 3600000" in out
    assert "tenants.demo.limits.tokens_per_month: Input should be less than or equal" in out
    # written as YAML writes them
    text = EXAMPLE.read_text(encoding="utf-8").replace("    weight: 1\n", "    weight: .inf\n", 1)
    with pytest.raises(ConfigError, match=r"weight: Input should be a finite number"):
        parse_config(text, "inf.yaml")


def test_aliases_that_expand_past_a_bound_are_refused_quickly(tmp_path: Path) -> None:
    """Nine nested aliases of nine ("billion laughs", 387 million values) made `config check`
    (and a reload through the admin API, which reads the same way) run for ever and grow
    without bound: each alias was copied when ${VAR}s were expanded."""
    import time

    lines = ['l0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"l{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(EXAMPLE.read_text(encoding="utf-8") + "\n".join(lines) + "\n")
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_config(bomb)
    assert time.monotonic() - started < 10
    [problem] = [str(p) for p in err.value.problems]
    assert "more than 200000 values once its aliases (*name) are expanded" in problem
    # an alias that contains itself ends the same way
    with pytest.raises(ConfigError, match="an alias that contains itself"):
        parse_config("a: &a [*a]\n", "loop.yaml")
    # aliases as a configuration really uses them are fine
    from sekisho import _yaml

    shared = "terms: &t {retention_days: 0, trains_on_data: false}\n"
    shared += "".join(f"e{i}: {{data_terms: *t}}\n" for i in range(1000))
    assert _yaml.load(shared)["e999"]["data_terms"]["retention_days"] == 0


def test_a_literal_dollar_brace_is_written_twice_dollar() -> None:
    """A secret or header holding `${` had no way to be written: `$${K}` expanded K."""
    raw = example_config()
    raw["endpoints"][0]["api_key"] = "pa$${K}ss"
    raw["endpoints"][1]["api_key"] = "$${NOT_SET}-${K}-$$-$${"
    config = parse_config(yaml.safe_dump(raw), "ok.yaml", env={"K": "X"})
    assert config.catalogue.by_id["sim-domestic-tokyo"].api_key == "pa${K}ss"
    assert config.catalogue.by_id["sim-global-japaneast"].api_key == "${NOT_SET}-X-$$-${"


def test_a_tenants_cap_on_active_keys_is_its_limits_max_active_keys_with_a_default() -> None:
    raw = example_config()
    config = parse_config(yaml.safe_dump(raw, allow_unicode=True), "ok.yaml", env={})
    assert config.tenants["demo"].max_active_keys == 1000  # no limits: the default
    raw["tenants"]["demo"]["limits"] = {"max_active_keys": 20}
    config = parse_config(yaml.safe_dump(raw, allow_unicode=True), "ok.yaml", env={})
    assert config.tenants["demo"].max_active_keys == 20
    raw["tenants"]["demo"]["limits"] = {"requests_per_minute": 60}
    config = parse_config(yaml.safe_dump(raw, allow_unicode=True), "ok.yaml", env={})
    assert config.tenants["demo"].max_active_keys == 1000
    raw["tenants"]["demo"]["limits"] = {"max_active_keys": 0}
    out = "\n".join(problems(raw))
    assert "tenants.demo.limits.max_active_keys" in out and "1" in out
    limits = json_schema()["$defs"]["LimitsSpec"]["properties"]["max_active_keys"]
    assert limits["default"] == 1000 and "tenant_key_limit" in limits["description"]


def test_a_tenants_cap_on_requests_in_flight_is_optional_and_within_bounds() -> None:
    raw = example_config()
    config = parse_config(yaml.safe_dump(raw, allow_unicode=True), "ok.yaml", env={})
    assert config.tenants["demo"].max_concurrent_requests is None  # no cap unless set
    raw["tenants"]["demo"]["limits"] = {"max_concurrent_requests": 8}
    config = parse_config(yaml.safe_dump(raw, allow_unicode=True), "ok.yaml", env={})
    assert config.tenants["demo"].max_concurrent_requests == 8
    for bad, bound in ((0, "greater than or equal to 1"), (1_000_001, "less than or equal")):
        raw["tenants"]["demo"]["limits"] = {"max_concurrent_requests": bad}
        out = "\n".join(problems(raw))
        assert "tenants.demo.limits.max_concurrent_requests" in out and bound in out, out
    schema = json_schema()["$defs"]["LimitsSpec"]["properties"]["max_concurrent_requests"]
    text = json.dumps(schema)  # an integer (or ${NAME}) within bounds, or null
    assert '"maximum": 1000000, "minimum": 1, "type": "integer"' in text
    assert '{"type": "null"}' in text and schema["default"] is None
    assert "tenant_concurrency_limit" in schema["description"]


def test_the_text_a_stream_may_carry_is_a_server_setting_within_bounds() -> None:
    raw = example_config()
    config = parse_config(yaml.safe_dump(raw, allow_unicode=True), "ok.yaml", env={})
    assert config.server.max_stream_text_chars == 64 * 1024 * 1024
    raw["server"]["max_stream_text_chars"] = 1_000_000
    config = parse_config(yaml.safe_dump(raw, allow_unicode=True), "ok.yaml", env={})
    assert config.server.max_stream_text_chars == 1_000_000
    for bad, bound in ((100, "greater than or equal to 1024"), (2**27, "less than or equal")):
        raw["server"]["max_stream_text_chars"] = bad
        out = "\n".join(problems(raw))
        assert "bad.yaml: server.max_stream_text_chars" in out and bound in out, out
