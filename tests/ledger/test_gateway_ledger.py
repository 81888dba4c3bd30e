"""Nothing leaves without a record: the ledger seen through a running gateway, as clients,
tenants and auditors use it."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from harness import (
    Harness,
    demo_sim_specs,
    ledger_entries,
    receipt,
    request,
    start_example,
)
from sekisho.ledger import merkle, open_checkpoint
from sekisho.ledger.note import Verifier
from sekisho.ledger.storage import NewEntry, open_storage
from serve_process import ServeProcess, Simulators, write_config

ROOT = Path(__file__).resolve().parents[2]


def two_tenants(raw: dict[str, Any]) -> None:
    """The example, plus a second tenant ``other`` in the same region; quick checkpoints."""
    raw["ledger"] = {"checkpoint_interval_ms": 100}
    raw["tenants"]["other"] = {"home_region": "jp", "policy": {"extends": ["jp-appi"]}}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = start_example(tmp_path_factory.mktemp("ledger-gw"), two_tenants)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def demo_key(gw: Harness) -> str:
    return gw.key("demo")


@pytest.fixture(scope="module")
def auditor_key(gw: Harness) -> str:
    return gw.key("other", role="auditor")


def client(h: Harness, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0, timeout=15)


def chat(
    h: Harness, key: str, text: str = "status report please", model: str = "gpt-4o", **kw: Any
) -> Any:
    return client(h, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **kw
    )


def verifier_key(h: Harness) -> str:
    return str(h.gateway.ledger.verifier.key_string())


def sekisho(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sekisho", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


# -- receipts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_every_answer_carries_a_receipt_that_fetches_a_proved_decision_and_outcome(
    gw: Harness, demo_key: str, stream: bool
) -> None:
    raw = chat(gw, demo_key, stream=stream)
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        assert "status report please" in text
    index, _, leaf_hash = raw.headers["x-sekisho-receipt"].partition(" ")
    rid = raw.headers["x-request-id"]

    got = receipt(gw, rid, demo_key)  # a tenant fetches its own receipt with its app key
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["request_id"] == rid
    assert body["index"] == int(index)
    entry = base64.b64decode(body["entry"])
    assert base64.b64encode(merkle.leaf_hash(entry)).decode() == leaf_hash
    assert body["tlog_proof"].startswith("c2sp.org/tlog-proof@v1\n")
    decision, outcome = ledger_entries(body)
    assert decision["kind"] == "decision" and decision["tenant"] == "demo"
    # internal gpt-4o under jp-appi: the three endpoints, domestic first
    assert decision["eligible"] == [
        "sim-domestic-tokyo",
        "sim-global-japaneast",
        "sim-global-useast",
    ]
    assert outcome is not None and outcome["kind"] == "outcome"
    assert outcome["status"] == 200
    assert outcome["endpoint"] == raw.headers["x-sekisho-endpoint"]
    assert body["outcome"]["index"] > body["index"]
    # The provider's id of the request, to quote to its operator in an incident: in the
    # outcome, in a header and in the log; the provider got sekisho's id in return.
    upstream_id = raw.headers["x-sekisho-upstream-request-id"]
    assert upstream_id.startswith("simreq_") and outcome["upstream_request_id"] == upstream_id
    sim = gw.sims[raw.headers["x-sekisho-endpoint"]].stats
    assert sim.headers[-1]["x-client-request-id"] == raw.headers["x-sekisho-request-id"]


def test_outcome_names_the_endpoint_that_answered_after_failover(
    gw: Harness, demo_key: str
) -> None:
    gw.fault("sim-domestic-tokyo", mode="status", status=503)
    try:
        for _ in range(40):  # until the weighted plan tries Tokyo first
            gw.gateway.health.success("sim-domestic-tokyo")  # type: ignore[union-attr]
            raw = chat(gw, demo_key)
            rid = raw.headers["x-request-id"]
            decision, outcome = ledger_entries(receipt(gw, rid, demo_key).json())
            if decision["endpoint"] == "sim-domestic-tokyo":  # the first it meant to try
                break
        else:
            pytest.fail("the plan never tried Tokyo first")
    finally:
        gw.fault("sim-domestic-tokyo", mode="none")
        gw.gateway.health.success("sim-domestic-tokyo")  # type: ignore[union-attr]
    answered = raw.headers["x-sekisho-endpoint"]
    assert answered != "sim-domestic-tokyo"  # it failed over
    assert answered in decision["eligible"]
    assert outcome is not None and outcome["endpoint"] == answered


def test_a_refusal_is_recorded_with_nothing_eligible_and_no_sensitive_value(
    gw: Harness, demo_key: str
) -> None:
    # gpt-4.1 is served only in the US; jp-mynumber lets a My Number reach the domestic
    # operator alone: nothing is eligible.
    with pytest.raises(openai.PermissionDeniedError) as e:
        chat(gw, demo_key, text="個人番号123456789018を確認して", model="gpt-4.1")
    headers = e.value.response.headers
    assert e.value.body["code"] == "sovereignty_policy_violation"  # type: ignore[index]
    assert headers["x-sekisho-classification"] == "restricted"
    # The way out: a model whose endpoints may see a My Number (served in Tokyo).
    assert "Models that may take this request: " in e.value.message
    offered = e.value.message.split("Models that may take this request: ")[1].rstrip(".")
    assert "gpt-4o" in offered and "gpt-4.1" not in offered
    assert "text-embedding-3-small" not in offered  # not a chat model
    # Three names of one model on one endpoint are one way out, not three.
    assert "also called" in offered and offered.count(" (") == 1, offered
    index = int(headers["x-sekisho-receipt"].split()[0])
    body = receipt(gw, headers["x-request-id"], demo_key).json()
    assert body["index"] == index
    decision, outcome = ledger_entries(body)
    assert decision["eligible"] == [] and decision["endpoint"] is None
    assert decision["findings"] == {"MY_NUMBER": 1}
    assert outcome is not None and outcome["status"] == 403
    assert outcome["error_code"] == "sovereignty_policy_violation"
    assert "123456789018" not in json.dumps(body)
    assert "123456789018" not in base64.b64decode(body["entry"]).decode()


def test_sekisho_verify_checks_a_receipt_offline_and_rejects_a_tampered_one(
    gw: Harness, demo_key: str, tmp_path: Path
) -> None:
    rid = chat(gw, demo_key).headers["x-request-id"]
    body = receipt(gw, rid, demo_key).json()
    good = tmp_path / "receipt.json"
    good.write_text(json.dumps(body))
    key = verifier_key(gw)

    ok = sekisho("verify", str(good), "--key", key)
    assert ok.returncode == 0, ok.stderr
    assert "verified" in ok.stdout

    decision = json.loads(base64.b64decode(body["entry"]))
    decision["eligible"] = ["sim-global-useast"]  # rewrite history: claim it went to the US
    forged = {**body, "entry": base64.b64encode(json.dumps(decision).encode()).decode()}
    bad = tmp_path / "forged.json"
    bad.write_text(json.dumps(forged))
    refused = sekisho("verify", str(bad), "--key", key)
    assert refused.returncode != 0
    assert "FAILED" in refused.stderr


def test_verify_links_a_receipt_to_checkpoints_an_auditor_kept(
    gw: Harness, demo_key: str, tmp_path: Path
) -> None:
    """The witness flow of docs/ledger.md over HTTP: keep checkpoints with consistency proofs
    from the public routes, then verify a later receipt against them."""
    chat(gw, demo_key)
    first = request("GET", f"{gw.root}/ledger/checkpoint")  # no key: public
    assert first.status_code == 200
    kept = tmp_path / "kept.jsonl"
    kept.write_text(json.dumps({"checkpoint": first.text, "consistency_from_previous": []}) + "\n")
    old_size = int(first.text.splitlines()[1])

    chat(gw, demo_key)
    second = _checkpoint_after(gw, old_size)
    new_size = int(second.splitlines()[1])
    proof = request("GET", f"{gw.root}/ledger/proofs/consistency?old={old_size}&new={new_size}")
    assert proof.status_code == 200, proof.text
    with kept.open("a") as f:
        f.write(
            json.dumps({"checkpoint": second, "consistency_from_previous": proof.json()["proof"]})
            + "\n"
        )

    rid = chat(gw, demo_key).headers["x-request-id"]
    body = receipt(gw, rid, demo_key, since=new_size).json()
    assert body["consistency"], "asked with ?since=, the receipt links to that size"
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(body))
    ok = sekisho("verify", str(path), "--key", verifier_key(gw), "--checkpoints", str(kept))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "kept checkpoints: 2 loaded" in ok.stdout


@pytest.mark.parametrize("since", ["%C2%B2", "abc", "-1", "1e3", "99999999999999999999999"])
def test_a_receipts_since_that_is_no_size_is_a_400_naming_it(
    gw: Harness, demo_key: str, since: str
) -> None:
    """'?since=²' was a 500 (isdigit() then int()); 'abc' and -1 were silently ignored, and
    the receipt came without the consistency proof asked for."""
    rid = chat(gw, demo_key).headers["x-request-id"]
    r = request(
        "GET",
        f"{gw.root}/ledger/receipts/{rid}?since={since}",
        headers={"authorization": f"Bearer {demo_key}"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "since"
    assert "non-negative integer" in r.json()["error"]["message"]


def _checkpoint_after(h: Harness, size: int) -> str:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = request("GET", f"{h.root}/ledger/checkpoint").text
        if int(text.splitlines()[1]) > size:
            return text
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint beyond size {size} within 5 s")


def test_checkpoint_is_a_signed_note_and_proofs_verify_against_it(
    gw: Harness, demo_key: str
) -> None:
    raw = chat(gw, demo_key)
    index = int(raw.headers["x-sekisho-receipt"].split()[0])
    leaf_hash = base64.b64decode(raw.headers["x-sekisho-receipt"].split()[1])
    old = open_checkpoint(
        _checkpoint_after(gw, index), [Verifier.from_key_string(verifier_key(gw))]
    )
    assert old.size > index

    inclusion = request(
        "GET", f"{gw.root}/ledger/proofs/inclusion?index={index}&tree_size={old.size}"
    )
    assert inclusion.status_code == 200, inclusion.text
    hashes = [base64.b64decode(p) for p in inclusion.json()["proof"]]
    merkle.verify_inclusion(index, old.size, leaf_hash, hashes, old.root_hash)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(index, old.size, b"\x00" * 32, hashes, old.root_hash)

    chat(gw, demo_key)
    new = open_checkpoint(
        _checkpoint_after(gw, old.size), [Verifier.from_key_string(verifier_key(gw))]
    )
    consistency = request(
        "GET", f"{gw.root}/ledger/proofs/consistency?old={old.size}&new={new.size}"
    )
    assert consistency.status_code == 200, consistency.text
    proof = [base64.b64decode(p) for p in consistency.json()["proof"]]
    merkle.verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)


# -- tenant isolation ----------------------------------------------------------------------------


def test_another_tenants_app_key_cannot_fetch_a_receipt_but_an_auditor_can(
    gw: Harness, demo_key: str, auditor_key: str
) -> None:
    rid = chat(gw, demo_key).headers["x-request-id"]
    other_app = gw.key("other")
    stranger = receipt(gw, rid, other_app)
    assert stranger.status_code == 404
    assert "demo" not in stranger.text
    # word for word what a request id nobody used gets: no way to tell that it exists
    unused = "req_" + "0" * (len(rid) - 4)
    nobody = receipt(gw, unused, other_app)
    assert nobody.status_code == 404
    assert stranger.json()["error"] == {
        **nobody.json()["error"],
        "message": nobody.json()["error"]["message"].replace(unused, rid),
    }
    assert receipt(gw, rid, auditor_key).status_code == 200
    assert receipt(gw, rid, demo_key).status_code == 200


def test_a_tenant_reads_its_own_entries_by_index_but_not_another_tenants(
    gw: Harness, demo_key: str, auditor_key: str
) -> None:
    rid = chat(gw, demo_key).headers["x-request-id"]
    body = receipt(gw, rid, demo_key).json()
    for index in (body["index"], body["outcome"]["index"]):
        url = f"{gw.root}/ledger/entries/{index}"
        own = request("GET", url, headers={"authorization": f"Bearer {demo_key}"})
        assert own.status_code == 200, own.text
        other = request("GET", url, headers={"authorization": f"Bearer {gw.key('other')}"})
        assert other.status_code in (403, 404)
        audited = request("GET", url, headers={"authorization": f"Bearer {auditor_key}"})
        assert audited.status_code == 200


# -- requests refused before the policy decides -----------------------------------------------

LEDGER_DOC = ROOT / "docs" / "ledger.md"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
# (what, method, path under /v1, body, extra headers, whose key, status, code)
BEFORE_THE_POLICY: list[tuple[str, str, str, bytes, dict[str, str], str | None, int, str]] = [
    ("a method other than POST", "GET", "chat/completions", b"", {}, "app", 405,
     "method_not_allowed"),
    ("a browser's preflight", "OPTIONS", "chat/completions", b"",
     {"origin": "https://app.example", "access-control-request-method": "POST"}, "app", 403,
     "cors_not_supported"),
    ("no key", "POST", "chat/completions", json.dumps(CHAT).encode(), {}, None, 401,
     "invalid_api_key"),
    ("a key whose role calls no model", "POST", "chat/completions",
     json.dumps(CHAT).encode(), {}, "auditor", 403, "insufficient_role"),
    ("a key of a tenant not configured", "POST", "chat/completions",
     json.dumps(CHAT).encode(), {}, "gone", 403, "permission_denied"),
    ("a body too large", "POST", "chat/completions", b" " * (4 * 1024 * 1024 + 1), {}, "app",
     413, "request_too_large"),
    ("a compressed body", "POST", "chat/completions", b"\x1f\x8b",
     {"content-encoding": "gzip"}, "app", 415, "unsupported_content_encoding"),
    ("a body that does not parse", "POST", "chat/completions", b"{", {}, "app", 400,
     "invalid_request"),
    ("a provider feature the tenant does not allow", "POST", "chat/completions",
     json.dumps({**CHAT, "store": True}).encode(), {}, "app", 400,
     "provider_feature_not_allowed"),
    ("a model no endpoint serves", "POST", "chat/completions",
     json.dumps({**CHAT, "model": "no-such-model"}).encode(), {}, "app", 404,
     "model_not_found"),
    ("a chat model asked for embeddings", "POST", "embeddings",
     json.dumps({"model": "gpt-4o", "input": "hello"}).encode(), {}, "app", 400,
     "model_not_supported"),
]  # fmt: skip


def refused_before_the_policy_paragraph() -> str:
    doc = LEDGER_DOC.read_text(encoding="utf-8")
    return doc.split("Requests refused before the policy decides leave no entry", 1)[1].split(
        "\n\n", 1
    )[0]


@pytest.mark.parametrize("case", BEFORE_THE_POLICY, ids=[c[0] for c in BEFORE_THE_POLICY])
def test_a_request_refused_before_the_policy_decides_has_no_entry_as_ledger_md_says(
    gw: Harness, case: tuple[str, str, str, bytes, dict[str, str], str | None, int, str]
) -> None:
    """ledger.md lists the refusals that leave no entry, so that an auditor counting entries
    against a client's requests knows which answers to leave out: it named 400, 401, 404, 429
    and 503 alone, where 403s before the policy, 405, 413 and 415 leave none either."""
    _, method, path, body, extra, whose, status, code = case
    headers = {"content-type": "application/json", **extra}
    if whose is not None:
        role = {"app": "app", "auditor": "auditor", "gone": "app"}[whose]
        key = gw.key("gone" if whose == "gone" else "demo", role=role)
        headers["authorization"] = f"Bearer {key}"
    size = gw.gateway.ledger.storage.tree_size()
    r = request(method, f"{gw.base_url}/{path}", content=body or None, headers=headers)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    # A preflight is no model request: it has the gateway's x-request-id alone.
    rid = r.headers.get("x-sekisho-request-id") or r.headers["x-request-id"]
    assert gw.gateway.ledger.find(rid) == []
    assert gw.gateway.ledger.storage.tree_size() == size
    said = refused_before_the_policy_paragraph()
    assert str(status) in said and f"`{code}`" in said, f"ledger.md does not name {status} {code}"


# -- a ledger that cannot record ------------------------------------------------------------------


class StuckStorage:
    """Make the gateway's ledger storage hang on the entries ``stuck`` picks, until released."""

    def __init__(self, h: Harness, kinds: tuple[str, ...], delay: float | None = None) -> None:
        self.storage = h.gateway.ledger.storage
        self.original = self.storage.sequence
        self.kinds = kinds
        self.delay = delay
        self.release = threading.Event()

    def sequence(self, entries: list[NewEntry]) -> int:
        if any(e.kind in self.kinds for e in entries):
            if self.delay is None:
                self.release.wait(30)
            else:
                time.sleep(self.delay)
        return int(self.original(entries))

    def __enter__(self) -> StuckStorage:
        self.storage.sequence = self.sequence
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.storage.sequence = self.original


def short_deadline(raw: dict[str, Any]) -> None:
    raw["ledger"] = {"deadline_ms": 300, "checkpoint_interval_ms": 100}


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = start_example(tmp_path_factory.mktemp("ledger-tight"), short_deadline)
    yield h
    h.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_hanging_ledger_refuses_with_503_and_nothing_goes_upstream(
    tight: Harness, stream: bool
) -> None:
    key = tight.key()
    before = tight.bytes_received()
    started = time.monotonic()
    with StuckStorage(tight, ("decision",)), pytest.raises(openai.APIStatusError) as e:
        chat(tight, key, stream=stream)
    assert time.monotonic() - started < 5, "a hanging ledger means refusal, never a hang"
    assert e.value.status_code == 503
    err = e.value.body
    assert isinstance(err, dict)
    assert err["code"] == "ledger_unavailable"
    assert err["type"] and "ledger" in err["message"]
    assert e.value.response.json()["error"]["code"] == "ledger_unavailable"  # OpenAI's shape
    assert tight.bytes_received() == before, "not one byte may go upstream unrecorded"
    # operators see it where the docs say: the refusal counter on /metrics
    metrics = request("GET", f"{tight.root}/metrics").text
    refused = [
        line
        for line in metrics.splitlines()
        if line.startswith('sekisho_ledger_refusals_total{reason="deadline"}')
    ]
    assert refused and float(refused[0].split()[-1]) >= 1, metrics[:500]
    # released, the gateway records (and serves) again
    assert chat(tight, key).status_code == 200


def test_readyz_is_503_while_the_ledger_cannot_record_and_200_once_it_can(
    tight: Harness,
) -> None:
    key = tight.key()
    assert request("GET", f"{tight.root}/readyz").json()["ledger"] == {"ok": True}
    with StuckStorage(tight, ("decision",)):
        with pytest.raises(openai.APIStatusError):
            chat(tight, key)
        ready = request("GET", f"{tight.root}/readyz")
        assert ready.status_code == 503  # a balancer stops sending what could only be refused
        body = ready.json()
        assert body["ready"] is False and body["ledger"]["ok"] is False
        assert "slow or hanging" in body["ledger"]["reason"]
        assert body["stores"]["jp"] == {"ok": True}
    # Released, the stuck commit completes: ready again without waiting for traffic.
    deadline = time.monotonic() + 5
    while request("GET", f"{tight.root}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "readiness did not come back"
        time.sleep(0.05)
    assert chat(tight, key).status_code == 200


def test_an_answer_whose_outcome_cannot_be_recorded_is_not_delivered(tight: Harness) -> None:
    key = tight.key()
    with StuckStorage(tight, ("outcome",)), pytest.raises(openai.APIStatusError) as e:
        chat(tight, key, text="answer me")
    assert e.value.status_code == 503
    assert "SIMULATOR" not in e.value.response.text
    # The request did reach an endpoint: the message must not claim that nothing was sent.
    message = e.value.response.json()["error"]["message"]
    assert "Nothing was sent upstream" not in message
    assert "The answer is withheld" in message and "did reach endpoint sim-" in message


def test_a_stream_whose_outcome_cannot_be_recorded_never_ends_with_done(
    tight: Harness,
) -> None:
    key = tight.key()
    with StuckStorage(tight, ("outcome",)):
        r = request(
            "POST",
            f"{tight.base_url}/chat/completions",
            json_body={
                "model": "gpt-4o",
                "stream": True,
                "messages": [{"role": "user", "content": "one two three"}],
            },
            headers={"authorization": f"Bearer {key}"},
        )
    assert r.status_code == 200
    assert b"[DONE]" not in r.content
    assert b"ledger_unavailable" in r.content  # the client is told why, in the stream


def test_a_streams_outcome_is_durable_before_done_reaches_the_client(
    gw: Harness, demo_key: str
) -> None:
    # Outcome entries take 0.3 s to become durable: were [DONE] sent first, the client would
    # see it long before the entry exists.
    with StuckStorage(gw, ("outcome",), delay=0.3):
        raw = chat(gw, demo_key, stream=True)
        rid = raw.headers["x-request-id"]
        for _ in raw.parse():  # ends when [DONE] arrives
            pass
        kinds = [kind for _, kind in gw.gateway.ledger.find(rid)]
    assert kinds == ["decision", "outcome"]


# -- kill -9 -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_under_load_leaves_a_consistent_log_and_only_unfinished_requests_incomplete(
    tmp_path: Path,
) -> None:
    sims = Simulators(demo_sim_specs(keep_bodies=False, chunk_delay_ms=40)).start()
    data_dir = tmp_path / "data"

    def quick_checkpoints(raw: dict[str, Any]) -> None:
        raw["ledger"] = {"checkpoint_interval_ms": 50}

    config = write_config(tmp_path / "sekisho.yaml", sims.config(quick_checkpoints))
    gateway = ServeProcess(config, data_dir).start()
    key = gateway.key("demo")
    finished: set[str] = set()  # the client saw the whole answer
    streaming: set[str] = set()  # the client saw a first event, and not [DONE]
    stop = threading.Event()
    refusals: list[str] = []

    def load(worker: int) -> None:
        n = 0
        while not stop.is_set():
            rid = f"load-{worker}-{n}"
            n += 1
            try:
                gid = _one(gateway.root, key, rid, stream=worker % 2 == 0, streaming=streaming)
                finished.add(gid)
                streaming.discard(gid)
            except RuntimeError as exc:  # a refusal (e.g. 503 on a busy machine): keep going
                refusals.append(str(exc)[:200])
                time.sleep(0.05)
            except OSError:  # the gateway is gone
                return

    workers = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    try:
        for w in workers:
            w.start()
        time.sleep(1.0)
        # kill while a stream is on the wire (the client has seen events, not [DONE])
        deadline = time.monotonic() + 15
        while not streaming and time.monotonic() < deadline:
            time.sleep(0.005)
        gateway.signal(signal.SIGKILL)
        gateway.wait(20)
        stop.set()
        for w in workers:
            w.join(10)
        assert finished, "the load finished some requests before the kill"
        mid_stream = set(streaming)
        # Streams take ~0.6 s: the kill lands inside at least one (else it tested nothing).
        assert mid_stream, f"the kill cut no stream (refusals: {refusals[:5]})"

        again = ServeProcess(config, data_dir).start()
        try:
            after = _one(again.root, key, "after-restart", stream=True, streaming=set())
        finally:
            again.stop()  # SIGTERM: graceful (uvicorn re-raises the signal after shutdown)
    finally:
        stop.set()
        sims.stop()

    audit = sekisho("ledger", "audit", "--data-dir", str(data_dir), "--json")
    report = json.loads(audit.stdout)
    assert audit.returncode == 0 and report["ok"], audit.stdout + audit.stderr
    assert report["problems"] == []
    assert report["checkpoints_checked"] >= 2
    incomplete = {item["request_id"] for item in report["incomplete"]}
    assert not incomplete & (finished | {after}), "finished requests have outcomes"
    storage = open_storage(str(data_dir))
    try:
        for rid in incomplete:
            assert [kind for _, kind in storage.find(rid)] == ["decision"]
        for rid in mid_stream:  # the client saw upstream bytes: the decision was durable first
            assert [kind for _, kind in storage.find(rid)][:1] == ["decision"]
        for rid in finished | {after}:
            assert [kind for _, kind in storage.find(rid)] == ["decision", "outcome"]
    finally:
        storage.close()


def _one(root: str, key: str, rid: str, *, stream: bool, streaming: set[str]) -> str:
    """One chat request over a raw socket; returns the gateway's request id (the ledger's);
    raises OSError when the gateway dies under it."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", int(root.rsplit(":", 1)[1]), timeout=10)
    try:
        body = {
            "model": "gpt-4o",
            "stream": stream,
            "messages": [{"role": "user", "content": "one two three four five six seven eight"}],
        }
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps(body),
            headers={
                "authorization": f"Bearer {key}",
                "content-type": "application/json",
                "x-request-id": rid,
            },
        )
        r = conn.getresponse()
        if r.status != 200:
            raise RuntimeError(f"{rid}: HTTP {r.status} {r.read()[:200]!r}")
        gid = r.getheader("x-sekisho-request-id") or rid
        if not stream:
            r.read()
            return gid
        while True:
            line = r.readline()
            if not line:
                raise ConnectionResetError(f"{rid}: stream ended without [DONE]")
            if line.startswith(b"data: [DONE]"):
                return gid
            if line.startswith(b"data: "):
                streaming.add(gid)
    finally:
        conn.close()


def test_a_reused_request_id_never_puts_another_tenants_outcome_in_a_receipt(
    tmp_path: Path,
) -> None:
    """Clients choose x-request-id freely (and it is echoed), but the ledger keys every request
    by the gateway's own id (x-sekisho-request-id), so a reused id cannot mix receipts."""
    h = start_example(tmp_path, two_tenants, chunk_delay_ms=50)
    try:
        mine, theirs = h.key("demo"), h.key("other")
        slow_result: list[Any] = []
        slow = threading.Thread(
            target=lambda: slow_result.append(
                request(
                    "POST",
                    f"{h.base_url}/chat/completions",
                    json_body={
                        "model": "gpt-4o",
                        "stream": True,
                        "messages": [{"role": "user", "content": "one two three four five six"}],
                    },
                    headers={"authorization": f"Bearer {mine}", "x-request-id": "shared-id"},
                )
            )
        )
        slow.start()
        time.sleep(0.1)  # my stream is under way; another tenant reuses my request id
        other = request(
            "POST",
            f"{h.base_url}/chat/completions",
            json_body={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {theirs}", "x-request-id": "shared-id"},
        )
        assert other.headers["x-sekisho-endpoint"] == "sim-global-useast"
        slow.join(10)
        (my_response,) = slow_result
        assert my_response.headers["x-request-id"] == "shared-id"  # echoed as given
        my_id = my_response.headers["x-sekisho-request-id"]
        their_id = other.headers["x-sekisho-request-id"]
        assert my_id != their_id != "shared-id"
        decision, outcome = ledger_entries(receipt(h, my_id, mine).json())
        assert outcome is not None
        assert outcome["endpoint"] in decision["eligible"]
        assert outcome["endpoint"] != "sim-global-useast"  # mine went to Japan
        _, theirs_outcome = ledger_entries(receipt(h, their_id, theirs).json())
        assert theirs_outcome is not None and theirs_outcome["endpoint"] == "sim-global-useast"
        assert receipt(h, their_id, mine).status_code == 404  # not mine to see
    finally:
        h.stop()


def test_an_index_no_database_can_hold_is_a_400_not_a_500(gw: Harness, demo_key: str) -> None:
    auth = {"authorization": f"Bearer {demo_key}"}
    for path in (
        "/ledger/entries/99999999999999999999999999",
        "/ledger/entries/%D9%A3",  # a digit, but not an ASCII one (Arabic-Indic 3)
        "/ledger/proofs/inclusion?index=0&tree_size=99999999999999999999",
    ):
        r = request("GET", gw.root + path, headers=auth)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_an_administrative_entry_about_a_tenants_data_belongs_to_that_tenant() -> None:
    """A kept response read back is recorded as an admin entry naming the tenant in its
    details: that tenant's keys were refused it as 'another tenant's'."""
    from datetime import UTC, datetime

    from sekisho.api.ledger import _entry_tenant
    from sekisho.ledger.records import AdminRecord

    def leaf(details: dict[str, Any]) -> bytes:
        record = AdminRecord(datetime.now(UTC), "key:abc", "responses.retrieve", "resp_x", details)
        return record.to_bytes()

    nothing: Any = None  # an admin entry never needs the ledger to find its tenant
    assert _entry_tenant(nothing, 0, leaf({"request_id": "req_1", "tenant": "demo"})) == "demo"
    assert _entry_tenant(nothing, 0, leaf({"request_id": "req_1"})) is None  # the operator's
    assert _entry_tenant(nothing, 0, leaf({"tenant": 5})) is None


def test_the_decision_entry_names_the_endpoint_the_request_went_to(tmp_path: Path) -> None:
    """It named the most preferred endpoint while weights sent a third of the requests to its
    equal (another operator, another parent country): an auditor read the wrong one."""

    def no_preference(raw: dict[str, Any]) -> None:  # the endpoints share one tier: weights
        raw["tenants"]["demo"]["policy"].pop("prefer", None)

    gw = start_example(tmp_path, no_preference)
    demo_key = gw.key("demo")
    went: set[str] = set()
    for _ in range(16):
        raw = chat(gw, demo_key)
        decision, outcome = ledger_entries(
            receipt(gw, raw.headers["x-sekisho-request-id"], demo_key).json()
        )
        assert outcome is not None
        assert decision["endpoint"] == outcome["endpoint"] == raw.headers["x-sekisho-endpoint"]
        went.add(outcome["endpoint"])
    gw.stop()
    assert len(went) > 1  # the weights did share the requests out
