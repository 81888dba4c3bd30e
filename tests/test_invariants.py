"""The product's core promises, end to end through a real gateway and simulated upstreams on real
sockets: no byte leaves the eligible set (whatever the catalogue, the policy, the request and
the faults), and an unreadable classification fails closed."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import openai
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from harness import (
    Harness,
    ledger_entries,
    receipt,
    refuse_connections,
    start_config,
    start_example,
)
from sekisho.classify import summarise
from sekisho.types import Action, Level

MODEL = "sim-chat"
EMAIL = "taro.yamada@example.jp"
MY_NUMBER = "123456789018"  # a valid 個人番号 (check digit 8)
COUNTRIES = ("JP", "US", "DE")
CERTS = ("ISMAP", "ISO27001", "SOC2")
BASES = ("appi:equivalent_measures", "appi:consent")
FAULTS = (
    "none", "refused", "status500", "status429", "hang", "garbage", "wrong_type", "close",
    "drop_midstream",
)  # fmt: skip
TEXTS = (
    "Summarise the quarterly plan in three lines.",
    f"Please reply to {EMAIL} about the invoice.",
    f"私の個人番号は{MY_NUMBER}です。",
    f"Customer {EMAIL}, My Number {MY_NUMBER}: update the address.",
)
# (what the client sends as x-sekisho-classification, what the gateway reads from it)
DECLARED: tuple[tuple[str | None, str | None], ...] = (
    (None, None),
    ("public", "public"),
    ("internal", "internal"),
    ("confidential", "confidential"),
    ("restricted", "restricted"),
    (quote("機密性2"), "機密性2"),
    ("garbage", "garbage"),
    ("", ""),
    ("top-secret!", "top-secret!"),
)


# -- generated worlds -----------------------------------------------------------------------------


@st.composite
def endpoints(draw: st.DrawFn, index: int) -> dict[str, Any]:
    country = draw(st.sampled_from(COUNTRIES))
    operator: dict[str, Any] = {
        "name": f"Operator {index} (simulator)",
        "country": draw(st.sampled_from(COUNTRIES)),
    }
    if draw(st.booleans()):
        operator["parent"] = f"Parent {index} (simulator)"
        operator["parent_country"] = draw(st.sampled_from(COUNTRIES))
    retention = draw(st.sampled_from((0, 30)))
    return {
        "id": f"ep{index}",
        "family": "openai",
        "base_url": "http://127.0.0.1:9/v1",  # the harness points it at the simulator
        "api_key": "simulator",
        "simulated": True,
        "models": [{"id": MODEL}],
        "jurisdiction": {"country": country, "region": f"region-{index}"},
        "operator": operator,
        "data_terms": {
            "retention_days": retention,
            "trains_on_data": draw(st.booleans()),
            "zero_data_retention": retention == 0 and draw(st.booleans()),
            "legal_bases": draw(st.lists(st.sampled_from(BASES), unique=True, max_size=2)),
        },
        "certifications": draw(st.lists(st.sampled_from(CERTS), unique=True, max_size=3)),
        "timeouts": {"connect": 0.5, "first_byte": 0.3, "total": 3},
    }


@st.composite
def level_constraints(draw: st.DrawFn) -> dict[str, Any]:
    c: dict[str, Any] = {}
    if draw(st.booleans()):
        c["jurisdictions"] = draw(st.lists(st.sampled_from(COUNTRIES), unique=True, max_size=3))
    if draw(st.booleans()):
        c["domestic_operator_only"] = True
    if draw(st.booleans()):
        c["certifications"] = draw(
            st.lists(st.sampled_from(CERTS), unique=True, min_size=1, max_size=2)
        )
    if draw(st.booleans()):
        c["max_retention_days"] = draw(st.sampled_from((0, 30)))
    return c


@st.composite
def worlds(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(3, 5))
    eps = [draw(endpoints(i)) for i in range(n)]
    ids = [e["id"] for e in eps]
    packs = draw(st.lists(st.sampled_from(("jp-appi", "jp-mynumber")), unique=True, max_size=2))
    levels = draw(
        st.dictionaries(
            st.sampled_from(("public", "internal", "confidential", "restricted")),
            level_constraints(),
            max_size=4,
        )
    )
    policy: dict[str, Any] = {"extends": packs, "levels": levels}
    if "jp-mynumber" in packs and draw(st.booleans()):
        allow = draw(st.lists(st.sampled_from(ids), unique=True, min_size=1, max_size=2))
        policy["overrides"] = {
            "jp-mynumber/no-model-endpoint": {
                "reason": "entrusted processor (test)",
                "endpoints": {"allow": allow},
            }
        }
    if draw(st.booleans()):
        policy["prefer"] = {"domestic": True}
    requests = draw(
        st.lists(
            st.tuples(st.sampled_from(TEXTS), st.sampled_from(range(len(DECLARED))), st.booleans()),
            min_size=2,
            max_size=4,
        )
    )
    return {
        "config": {
            "version": 1,
            "routing": {
                "max_attempts": 3,
                "health": {"failure_threshold": 1, "backoff_initial_seconds": 5},
            },
            "regions": {"jp": {"country": "JP", "store": "sqlite"}},
            "endpoints": eps,
            "tenants": {
                "t": {
                    "home_region": "jp",
                    "default_classification": draw(
                        st.sampled_from(("public", "internal", "confidential"))
                    ),
                    "policy": policy,
                    "retention": {"mode": "none"},
                }
            },
        },
        # about half the endpoints healthy, so that failover often finds one that answers
        "faults": {eid: draw(st.just("none") | st.sampled_from(FAULTS)) for eid in ids},
        "requests": requests,
    }


def inject(h: Harness, endpoint_id: str, fault: str) -> None:
    if fault == "refused":
        refuse_connections(h, endpoint_id)
    elif fault == "status500":
        h.fault(endpoint_id, mode="status", status=500)
    elif fault == "status429":
        h.fault(endpoint_id, mode="status", status=429, retry_after="1")
    elif fault != "none":
        h.fault(endpoint_id, mode=fault)


# -- what the policy says, worked out apart from the gateway -------------------------------------


@dataclass
class Expected:
    level: Level
    eligible: tuple[str, ...]  # empty: the gateway must refuse with 403


def expected(h: Harness, text: str, declared: str | None) -> Expected:
    """The tenant's compiled policy applied to the request, outside the request path."""
    config = h.gateway.config
    policy = config.policies["t"]
    counts = summarise(h.gateway.pipeline.scanners["t"].scan(text))
    level = policy.classify(counts, declared)
    decision = policy.decide(
        model=MODEL,
        routes=config.catalogue.routes(MODEL),
        level=level,
        finding_counts=counts,
    )
    eligible = () if decision.action == Action.BLOCK else tuple(decision.eligible_ids)
    return Expected(level, eligible)


def may_be_eligible(world: dict[str, Any], ep: dict[str, Any], level: Level, text: str) -> bool:
    """Necessary conditions from the generated policy itself (not from the compiler): an
    endpoint failing any of them must never be eligible."""
    policy = world["config"]["tenants"]["t"]["policy"]
    c = policy["levels"].get(level.label, {})
    op = ep["operator"]
    if "jurisdictions" in c and ep["jurisdiction"]["country"] not in c["jurisdictions"]:
        return False
    if c.get("domestic_operator_only") and {op["country"], op.get("parent_country", "JP")} != {
        "JP"
    }:
        return False
    if not set(c.get("certifications", ())) <= set(ep["certifications"]):
        return False
    limit = c.get("max_retention_days")
    if limit is not None and ep["data_terms"]["retention_days"] > limit:
        return False
    if MY_NUMBER in text and "jp-mynumber" in policy["extends"]:
        override = policy.get("overrides", {}).get("jp-mynumber/no-model-endpoint")
        if override is None or ep["id"] not in override["endpoints"]["allow"]:
            return False
    return True


# -- one request, checked ------------------------------------------------------------------------


def send(
    client: openai.OpenAI, text: str, header: str | None, stream: bool, rid: str
) -> tuple[int, dict[str, str], str]:
    """Status, headers and whatever the client saw (content or error message)."""
    extra = {"x-request-id": rid}
    if header is not None:
        extra["x-sekisho-classification"] = header
    messages = [{"role": "user", "content": text}]
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=messages,
            stream=stream,
            extra_headers=extra,  # type: ignore[arg-type]
        )
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return e.status_code, dict(e.response.headers), f"{body.get('code')}|{e.message}"
    headers = dict(raw.headers)
    if not stream:
        return raw.status_code, headers, raw.parse().choices[0].message.content or ""
    seen = []
    try:
        for chunk in raw.parse():
            seen.extend(c.delta.content or "" for c in chunk.choices)
    except openai.APIError as e:  # broke mid-stream: reported in the stream
        return raw.status_code, headers, f"stream-error|{e.message}"
    return raw.status_code, headers, "".join(seen)


def check_request(
    h: Harness,
    world: dict[str, Any],
    client: openai.OpenAI,
    auditor: str,
    rid: str,
    text: str,
    declared: tuple[str | None, str | None],
    stream: bool,
) -> None:
    want = expected(h, text, declared[1])
    by_id = {ep["id"]: ep for ep in world["config"]["endpoints"]}
    for eid in want.eligible:
        assert may_be_eligible(world, by_id[eid], want.level, text), (eid, want)
    before = h.bytes_received()
    status, headers, seen = send(client, text, declared[0], stream, rid)
    broken = " broken" if seen.startswith("stream-error") else ""
    event(f"HTTP {status}{' stream' if stream else ''}{broken}")
    time.sleep(0.02)  # let any byte still on its way to a simulator be counted
    after = h.bytes_received()
    received = {eid: after[eid] - before[eid] for eid in after}
    leaked = {eid: n for eid, n in received.items() if n and eid not in want.eligible}
    assert not leaked, f"excluded endpoints received bytes: {leaked} (eligible {want.eligible})"

    if not want.eligible:
        assert status == 403, (status, seen)
        code, _, message = seen.partition("|")
        assert code == "sovereignty_policy_violation"
        assert want.level.label in message
        assert EMAIL not in message and MY_NUMBER not in message
        assert "x-sekisho-receipt" in headers, "a refusal is recorded too"

    assert headers["x-request-id"] == rid  # the client's id is echoed; the ledger uses its own
    got = receipt(h, headers["x-sekisho-request-id"], auditor)
    assert got.status_code == 200, got.text
    decision, outcome = ledger_entries(got.json())
    assert tuple(decision["eligible"]) == want.eligible
    if not want.eligible:
        assert outcome is not None and outcome["status"] == 403
        assert outcome["error_code"] == "sovereignty_policy_violation"
        return
    assert decision["classification"] == want.level.label
    assert outcome is not None, "a finished request has an outcome entry"
    if status == 200:
        answered = headers["x-sekisho-endpoint"]
        assert answered in want.eligible
        assert outcome["endpoint"] == answered
        assert headers["x-sekisho-classification"] == want.level.label
    else:
        assert status in (429, 502, 504), (status, seen)
        if status == 429:  # only when every endpoint tried said 429 (the provider's quota)
            assert seen.startswith("upstream_rate_limited|"), seen
            tried = {eid for eid in want.eligible if received[eid]}
            if tried:
                assert all(world["faults"].get(eid) == "status429" for eid in tried)
            else:  # each eligible endpoint is inside the Retry-After its own 429 gave earlier
                assert "Nothing was sent" in seen, seen
                assert all(world["faults"].get(eid) == "status429" for eid in want.eligible)
        assert outcome["endpoint"] is None or outcome["endpoint"] in want.eligible


@settings(
    max_examples=int(os.environ.get("SEKISHO_INVARIANT_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(world=worlds())
def test_no_byte_leaves_the_eligible_set_whatever_the_policy_request_or_fault(
    world: dict[str, Any],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        h = start_config(Path(tmp), world["config"])
        try:
            app_key = h.key("t")
            auditor = h.key("t", role="auditor")
            for eid, fault in world["faults"].items():
                inject(h, eid, fault)
            client = openai.OpenAI(base_url=h.base_url, api_key=app_key, max_retries=0, timeout=10)
            for n, (text, declared, stream) in enumerate(world["requests"]):
                check_request(
                    h, world, client, auditor, f"inv-{n}", text, DECLARED[declared], stream
                )
        finally:
            h.stop()


# -- fail closed ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Any:
    h = start_example(tmp_path_factory.mktemp("example"))
    yield h
    h.stop()


@pytest.mark.parametrize("header", ["garbage", "", "機密性9", "restricted-ish", "0"])
def test_unreadable_classification_header_counts_as_restricted(
    example: Harness, header: str
) -> None:
    """The example's tenant sends restricted requests only to the domestic operator: an
    unreadable declared level must land there, never on the global endpoints."""
    client = openai.OpenAI(base_url=example.base_url, api_key=example.key(), max_retries=0)
    before = example.bytes_received()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "weekly status, nothing sensitive"}],
        extra_headers={"x-sekisho-classification": quote(header)},
    )
    after = example.bytes_received()
    assert raw.headers["x-sekisho-classification"] == "restricted"
    assert raw.headers["x-sekisho-endpoint"] == "sim-domestic-tokyo"
    assert after["sim-global-japaneast"] == before["sim-global-japaneast"]
    assert after["sim-global-useast"] == before["sim-global-useast"]


def test_a_classification_header_sent_twice_is_one_list_and_restricted(example: Harness) -> None:
    """Two header lines (public, then restricted) were read as the first alone: a proxy that
    adds the header after the client's could not raise the level."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", example.port, timeout=30)
    body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    conn.putrequest("POST", "/v1/chat/completions")
    for name, value in [
        ("authorization", f"Bearer {example.key()}"),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("x-sekisho-classification", "public"),
        ("x-sekisho-classification", "restricted"),
    ]:
        conn.putheader(name, value)
    conn.endheaders(body)
    answer = conn.getresponse()
    answer.read()
    conn.close()
    assert answer.status == 200
    assert answer.getheader("x-sekisho-classification") == "restricted"
    assert answer.getheader("x-sekisho-endpoint") == "sim-domestic-tokyo"


def test_missing_classification_header_takes_the_tenants_default(example: Harness) -> None:
    """No header is not a parse failure: the tenant's written default_classification applies."""
    client = openai.OpenAI(base_url=example.base_url, api_key=example.key(), max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "weekly status"}]
    )
    assert raw.headers["x-sekisho-classification"] == "internal"


def test_missing_classification_with_restricted_default_stays_home(tmp_path: Path) -> None:
    def restricted_default(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["default_classification"] = "restricted"

    h = start_example(tmp_path, restricted_default)
    try:
        client = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        for _ in range(3):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": "weekly status"}]
            )
            assert raw.headers["x-sekisho-classification"] == "restricted"
            assert raw.headers["x-sekisho-endpoint"] == "sim-domestic-tokyo"
        assert h.bytes_received()["sim-global-useast"] == 0
        assert h.bytes_received()["sim-global-japaneast"] == 0
    finally:
        h.stop()
