"""The official openai client works against sekisho unchanged: sync, async, streaming."""

from __future__ import annotations

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import Harness, request


def client(h: Harness, key: str | None = None, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=h.base_url, api_key=key or h.key(), max_retries=0, **kw)


def test_chat_completion_answers_with_sovereignty_headers(gateway: Harness) -> None:
    c = client(gateway)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Hello from a test"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert "SIMULATOR" in completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert raw.headers["x-request-id"].startswith("req_")
    endpoint = raw.headers["x-sekisho-endpoint"]
    assert endpoint in gateway.sims
    assert raw.headers["x-sekisho-jurisdiction"] in {"JP/tokyo", "JP/japaneast", "US/us-east"}
    assert gateway.sims[endpoint].stats.chat == 1


def test_client_request_id_is_echoed(gateway: Harness) -> None:
    c = client(gateway)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": "trace-123"},
    )
    assert raw.headers["x-request-id"] == "trace-123"


def test_alias_is_sent_upstream_under_the_endpoints_own_model_name(gateway: Harness) -> None:
    c = client(gateway)
    raw = c.chat.completions.with_raw_response.create(
        model="chat-default", messages=[{"role": "user", "content": "alias"}]
    )
    assert raw.headers["x-sekisho-endpoint"] == "sim-domestic-tokyo"
    import orjson

    sent = orjson.loads(gateway.sims["sim-domestic-tokyo"].stats.bodies[-1])
    assert sent["model"] == "llama-3.1-swallow-70b"


def test_parameters_pass_through_unchanged(gateway: Harness) -> None:
    import orjson

    c = client(gateway)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "use the tool"}],
        tools=tools,
        tool_choice="auto",
        temperature=0.3,
        top_p=0.9,
        n=2,
        stop=["END"],
        response_format={"type": "json_object"},
        seed=7,
        max_tokens=50,
    )
    completion = raw.parse()
    assert completion.choices[0].message.tool_calls[0].function.name == "lookup"
    assert len(completion.choices) == 2
    sent = orjson.loads(gateway.sims[raw.headers["x-sekisho-endpoint"]].stats.bodies[-1])
    for k, v in {
        "tools": tools,
        "tool_choice": "auto",
        "temperature": 0.3,
        "top_p": 0.9,
        "n": 2,
        "stop": ["END"],
        "response_format": {"type": "json_object"},
        "seed": 7,
        "max_tokens": 50,
    }.items():
        assert sent[k] == v, k


def test_streaming_delivers_every_chunk_and_usage(gateway: Harness) -> None:
    c = client(gateway)
    stream = c.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "stream me something"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert "SIMULATOR" in text and "stream me something" in text
    assert usage is not None and usage.completion_tokens > 0


async def test_async_client_streams_and_completes(gateway: Harness) -> None:
    c = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=gateway.key(), max_retries=0)
    r = await c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "a"}])
    assert r.choices[0].message.content
    stream = await c.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "async stream"}], stream=True
    )
    pieces = [
        ch.choices[0].delta.content
        async for ch in stream
        if ch.choices and ch.choices[0].delta.content
    ]
    assert "async stream" in "".join(pieces)
    await c.close()


def test_embeddings(gateway: Harness) -> None:
    c = client(gateway)
    raw = c.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["a", "b"])
    res = raw.parse()
    assert len(res.data) == 2 and len(res.data[0].embedding) == 16
    assert raw.headers["x-sekisho-endpoint"] in gateway.sims


def test_models_lists_only_what_the_key_may_use(gateway: Harness) -> None:
    all_models = {m.id for m in client(gateway).models.list()}
    assert {"gpt-4o", "chat-default", "text-embedding-3-small"} <= all_models
    limited = client(gateway, gateway.key(models=("gpt-4o",)))
    assert {m.id for m in limited.models.list()} == {"gpt-4o"}
    with pytest.raises(openai.NotFoundError):
        limited.chat.completions.create(
            model="chat-default", messages=[{"role": "user", "content": "x"}]
        )


def test_models_leaves_out_what_the_tenants_policy_never_lets_a_request_reach(
    tmp_path: object,
) -> None:
    """A tenant whose every request must stay in Japan can never use gpt-4.1 (served only in
    the US): it is not listed, and GET /v1/models/gpt-4.1 is a 404 as for an unknown model."""
    from pathlib import Path
    from typing import Any

    from harness import start_example

    def japan_only(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["policy"]["rules"] = [
            {"id": "jp-only", "title": "Japan only", "jurisdictions": ["JP"]}
        ]

    h = start_example(Path(str(tmp_path)), japan_only)
    try:
        listed = {m.id for m in client(h).models.list()}
        assert "gpt-4o" in listed and "gpt-4.1" not in listed
        with pytest.raises(openai.NotFoundError):
            client(h).models.retrieve("gpt-4.1")
    finally:
        h.stop()


def test_unknown_model_is_404_model_not_found(gateway: Harness) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client(gateway).chat.completions.create(
            model="gpt-9", messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.code == "model_not_found"
    assert "gpt-9" in e.value.message


def test_embedding_model_cannot_chat(gateway: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(gateway).chat.completions.create(
            model="text-embedding-3-small", messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.code == "model_not_supported"
    assert "is an embedding model" in e.value.message
    with pytest.raises(openai.BadRequestError) as other:
        client(gateway).embeddings.create(model="gpt-4o", input="x")
    assert "'gpt-4o' is a chat model" in other.value.message


def test_bad_key_is_401(gateway: Harness) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        client(gateway, "sk-sekisho-000000000000-nope").models.list()
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(gateway, "sk-wrong").chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )


def test_expired_and_revoked_keys_are_refused(gateway: Harness) -> None:
    import time

    from sekisho.identity import KeyStore

    expired = gateway.key(expires_at=time.time() - 1)
    with pytest.raises(openai.AuthenticationError) as e:
        client(gateway, expired).models.list()
    assert "expired" in e.value.message
    key = gateway.key()
    client(gateway, key).models.list()
    KeyStore(gateway.data_dir / "identity.db").revoke(key.split("-")[2])
    with pytest.raises(openai.AuthenticationError) as e:
        client(gateway, key).models.list()
    assert "revoked" in e.value.message


def test_missing_key_is_401_with_a_hint(gateway: Harness) -> None:
    r = request("POST", gateway.base_url + "/chat/completions", json_body={})
    assert r.status_code == 401
    assert "Authorization: Bearer" in r.json()["error"]["message"]


def test_azure_style_api_key_header_is_accepted(gateway: Harness) -> None:
    r = request(
        "POST",
        gateway.base_url + "/chat/completions",
        headers={"api-key": gateway.key()},
        json_body={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 200


def test_a_browsers_cors_preflight_is_refused_saying_why(gateway: Harness) -> None:
    """A web page calling sekisho directly would hold a key anyone loading it can read: the
    browser's preflight (OPTIONS with Origin and Access-Control-Request-Method) is refused
    with a reason a developer finds in the network tab and the operator in the log, not
    '/v1/chat/completions accepts POST' followed by advice on stored chat completions. No
    answer allows an origin."""
    preflight = {
        "origin": "http://localhost:3000",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    for path in ("/v1/chat/completions", "/v1/responses", "/v1/models", "/openai/responses"):
        r = request("OPTIONS", gateway.root + path, headers=preflight)
        assert r.status_code == 403, (path, r.status_code)
        error = r.json()["error"]
        assert error["code"] == "cors_not_supported" and "server" in error["message"]
        assert not any(h.startswith("access-control-") for h in r.headers)
    sent = request(
        "POST", gateway.base_url + "/chat/completions",
        headers={"origin": "http://localhost:3000", "authorization": f"Bearer {gateway.key()}"},
        json_body={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
    )  # fmt: skip
    assert sent.status_code == 200
    assert not any(h.startswith("access-control-") for h in sent.headers)
    # OPTIONS that is not a preflight is a method the path does not accept, as before.
    plain = request("OPTIONS", gateway.base_url + "/chat/completions")
    assert (plain.status_code, plain.headers["allow"]) == (405, "POST")


def azure(h: Harness, key: str | None = None, **kw: object) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=h.root, api_key=key or h.key(), api_version="2024-10-21", max_retries=0,
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_an_application_written_for_azure_openai_only_changes_its_endpoint(
    gateway: Harness,
) -> None:
    """openai.AzureOpenAI sends /openai/deployments/{deployment}/chat/completions with
    ?api-version= and an api-key header: sekisho serves it, the deployment naming the model."""
    c = azure(gateway)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello from Azure code"}]
    )
    assert raw.http_request.url.path == "/openai/deployments/gpt-4o/chat/completions"
    assert raw.http_request.headers["api-key"]
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-sekisho-endpoint"] in gateway.sims and raw.headers["x-request-id"]
    chunks = list(
        c.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "stream"}], stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    emb = c.embeddings.create(model="text-embedding-3-small", input="a")
    assert len(emb.data[0].embedding) == 16
    assert "gpt-4o" in {m.id for m in c.models.list()}  # GET /openai/models

    # The deployment decides the model, as in Azure OpenAI: the body's model is not read.
    pinned = azure(gateway, azure_deployment="chat-default")
    sent = pinned.chat.completions.with_raw_response.create(
        model="whatever-the-code-says", messages=[{"role": "user", "content": "x"}]
    )
    assert sent.headers["x-sekisho-endpoint"] == "sim-domestic-tokyo"  # chat-default's only one
    with pytest.raises(openai.NotFoundError) as e:  # a deployment no endpoint serves
        azure(gateway).chat.completions.create(
            model="gpt-9", messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.code == "model_not_found" and "gpt-9" in e.value.message
    with pytest.raises(openai.AuthenticationError):
        azure(gateway, "wrong-key").chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )
    # The newer Azure layout without deployments: /openai/v1/…, the model in the body.
    v1 = openai.OpenAI(base_url=gateway.root + "/openai/v1", api_key=gateway.key(), max_retries=0)
    assert v1.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}]
    ).choices


def test_azure_openai_code_reaches_the_responses_api(gateway: Harness) -> None:
    """openai.AzureOpenAI sends the Responses API without a deployment, as Azure serves it:
    POST /openai/responses?api-version=…, and GET /openai/responses/{id} (and its
    input_items) to read one back. sekisho answered 404 unknown_url to all of them."""
    c = azure(gateway)
    raw = c.responses.with_raw_response.create(model="gpt-4o", input="hello from Azure code")
    assert raw.http_request.url.path == "/openai/responses"
    first = raw.parse()
    assert first.output_text and raw.headers["x-sekisho-endpoint"] in gateway.sims
    streamed = c.responses.create(
        model="gpt-4o", input="again", previous_response_id=first.id, stream=True
    )
    done = [e for e in streamed if e.type == "response.completed"]
    assert len(done) == 1
    second = done[0].response.id
    assert c.responses.retrieve(second).id == second
    roles = [getattr(i, "role", None) for i in c.responses.input_items.list(second, order="asc")]
    assert roles[:1] == ["user"] and len(roles) == 3  # hello, its answer, again


def test_an_azure_deployment_may_name_a_model_with_a_slash(tmp_path: object) -> None:
    """Models served by vLLM are named like "Qwen/Qwen2.5-7B-Instruct": openai.AzureOpenAI
    sends such a deployment as it is, /openai/deployments/Qwen/Qwen2.5-7B-Instruct/…, and it is
    one model, not an unknown path (404 unknown_url); so is its quoted form (%2F)."""
    from pathlib import Path
    from typing import Any

    from harness import start_example

    def slashed(raw: dict[str, Any]) -> None:
        raw["endpoints"][0]["models"][0]["aliases"].append("Qwen/Qwen2.5-7B-Instruct")

    h = start_example(Path(str(tmp_path)), slashed)
    try:
        c = azure(h, azure_deployment="Qwen/Qwen2.5-7B-Instruct")
        raw = c.chat.completions.with_raw_response.create(
            model="ignored", messages=[{"role": "user", "content": "x"}]
        )
        assert raw.http_request.url.raw_path.startswith(
            b"/openai/deployments/Qwen/Qwen2.5-7B-Instruct/chat/completions?"
        )
        assert raw.headers["x-sekisho-endpoint"] == "sim-domestic-tokyo"
        for deployment in ("Qwen/Qwen2.5-7B-Instruct", "Qwen%2FQwen2.5-7B-Instruct"):
            r = request(
                "POST",
                f"{h.root}/openai/deployments/{deployment}/embeddings?api-version=2024-10-21",
                headers={"api-key": h.key()},
                json_body={"input": "x"},
            )
            assert r.status_code == 400 and "is a chat model" in r.json()["error"]["message"]
        unpinned = azure(h).chat.completions.create(
            model="Qwen/Qwen2.5-7B-Instruct", messages=[{"role": "user", "content": "x"}]
        )
        assert unpinned.choices[0].message.content
    finally:
        h.stop()


def test_the_stored_chat_completions_api_says_why_it_is_not_served(gateway: Harness) -> None:
    """chat.completions.list, retrieve, update, delete and messages.list read completions a
    provider stored: each is refused saying so and where sekisho's own kept answers are read,
    not only 'accepts POST, not GET' or 'Unknown path'."""
    c = client(gateway)
    done = c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.APIStatusError) as listed:
        c.chat.completions.list()
    assert listed.value.status_code == 405
    assert listed.value.response.headers["allow"] == "POST"
    calls = (
        lambda: c.chat.completions.retrieve(done.id),
        lambda: c.chat.completions.update(done.id, metadata={"a": "b"}),
        lambda: c.chat.completions.delete(done.id),
        lambda: c.chat.completions.messages.list(done.id),
    )
    errors: list[openai.APIStatusError] = [listed.value]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as missing:
            call()
        assert missing.value.code == "unknown_url"
        errors.append(missing.value)
    for error in errors:
        assert "Stored chat completions ('store': true) are kept by a provider" in error.message
        assert "GET /v1/responses/{id}" in error.message


def test_operations_endpoints(gateway: Harness) -> None:
    assert request("GET", gateway.root + "/healthz").json() == {"status": "ok"}
    assert request("GET", gateway.root + "/readyz").json()["ready"] is True
    client(gateway).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "m"}]
    )
    metrics = request("GET", gateway.root + "/metrics").text
    assert "sekisho_requests_total{" in metrics
    assert 'route="chat",status="200"' in metrics
    assert "sekisho_request_duration_seconds_bucket" in metrics
    assert (
        'sekisho_tokens_total{direction="prompt"' in metrics or "sekisho_tokens_total{" in metrics
    )


def test_every_series_names_a_jurisdiction_the_same_way(gateway: Harness) -> None:
    """Request durations and upstream latencies join on ``jurisdiction``: one form, JP/tokyo
    (tokens, upstream errors and latencies said only the country)."""
    import re

    client(gateway).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}]
    )
    metrics = request("GET", gateway.root + "/metrics").text
    labels = set(re.findall(r'jurisdiction="([^"]*)"', metrics))
    assert labels and all(re.fullmatch(r"[A-Z]{2}/[\w-]+|-", v) for v in labels), labels
    for series in ("sekisho_tokens_total", "sekisho_upstream_latency_seconds_count",
                   "sekisho_requests_total"):  # fmt: skip
        assert re.search(series + r'\{[^}]*jurisdiction="[A-Z]{2}/', metrics), series


def test_metrics_can_be_kept_to_the_scraper_that_holds_the_token(tmp_path: object) -> None:
    """Series name tenants and count their findings by type: with server.metrics_token set,
    /metrics answers only that bearer token (compared in constant time)."""
    from pathlib import Path
    from typing import Any

    from harness import start_example

    def guarded(raw: dict[str, Any]) -> None:
        raw["server"]["metrics_token"] = "s3cret-scrape-token"

    h = start_example(Path(str(tmp_path)), guarded)
    try:
        assert request("GET", h.root + "/metrics").status_code == 401
        wrong = request("GET", h.root + "/metrics", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "metrics_token" in wrong.json()["error"]["message"]
        ok = request(
            "GET", h.root + "/metrics", headers={"authorization": "Bearer s3cret-scrape-token"}
        )
        assert ok.status_code == 200 and "sekisho_requests_total" in ok.text
        for header in ("bearer s3cret-scrape-token", "BEARER  s3cret-scrape-token"):
            # the scheme in any case, as the API accepts it
            assert (
                request("GET", h.root + "/metrics", headers={"authorization": header}).status_code
                == 200
            )
        for header in ("Basic s3cret-scrape-token", "Bearer s3cret-scrape-token2", "Bearer"):
            assert (
                request("GET", h.root + "/metrics", headers={"authorization": header}).status_code
                == 401
            )
        assert request("GET", h.root + "/healthz").status_code == 200  # probes stay open
        # /readyz answers every probe, but why (endpoints' last errors name internal hosts)
        # only to the token's holder.
        h.gateway.health.failure("sim-global-useast", "HTTP 503 from 127.0.0.1")  # type: ignore[union-attr]
        probe = request("GET", h.root + "/readyz")
        assert probe.status_code == 200 and probe.json() == {"ready": True}
        full = request(
            "GET", h.root + "/readyz", headers={"authorization": "Bearer s3cret-scrape-token"}
        )
        assert full.json()["ready"] is True
        assert "127.0.0.1" in full.json()["endpoints"]["sim-global-useast"]["last_error"]
    finally:
        h.stop()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60))
def test_any_azure_style_path_maps_to_a_served_path_or_stays_unknown(rest: str) -> None:
    from sekisho.app import _DEPLOYMENT, _azure_path

    scope: dict[str, object] = {}
    path = _azure_path(scope, "/openai/" + rest)  # type: ignore[arg-type]
    assert path == "/openai/" + rest or path.startswith("/v1/")
    if _DEPLOYMENT in scope:
        assert path in {"/v1/chat/completions", "/v1/embeddings", "/v1/completions",
                        "/v1/responses"}  # fmt: skip
        assert scope[_DEPLOYMENT]
