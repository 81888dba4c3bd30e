"""Each adapter sends exactly the wire format its API family expects, checked on the bytes a
simulated server receives on a real socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from harness import Harness, start_example


def azure(raw: dict[str, Any]) -> None:
    ep = raw["endpoints"][1]  # sim-global-japaneast becomes an Azure OpenAI resource
    ep["family"] = "azure_openai"
    ep["completions_api"] = True
    ep["api_key"] = "azure-secret-key"
    ep["api_version"] = "2024-10-21"
    ep["models"] = [
        {"id": "gpt-4o", "deployment": "prod-gpt4o", "aliases": ["azure-gpt"]},
        {
            "id": "text-embedding-3-small",
            "kind": "embedding",
            "deployment": "prod-embed",
            "aliases": ["azure-embed"],
        },
    ]
    raw["endpoints"][0]["api_key"] = "domestic-secret"


@pytest.fixture
def gw(tmp_path: Path) -> Any:
    h = start_example(tmp_path, azure)
    yield h
    h.stop()


def test_azure_adapter_uses_deployment_url_api_key_header_and_api_version(gw: Harness) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="azure-gpt", messages=[{"role": "user", "content": "hi azure"}], temperature=0.5
    )
    assert raw.headers["x-sekisho-endpoint"] == "sim-global-japaneast"
    stats = gw.sims["sim-global-japaneast"].stats
    assert (
        stats.paths[-1] == "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    )
    headers = stats.headers[-1]
    assert headers["api-key"] == "azure-secret-key"
    assert headers["accept-encoding"] == "identity"
    assert "authorization" not in headers
    # Azure's own header for the caller's id of the request: sekisho's, so both sides' logs meet
    assert headers["x-ms-client-request-id"] == raw.headers["x-sekisho-request-id"]
    assert "x-client-request-id" not in headers
    body = orjson.loads(stats.bodies[-1])
    assert "model" not in body  # Azure selects the model by deployment
    assert body["messages"] == [{"role": "user", "content": "hi azure"}]
    assert body["temperature"] == 0.5


def test_azure_embeddings_path(gw: Harness) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    c.embeddings.create(model="azure-embed", input="x")
    stats = gw.sims["sim-global-japaneast"].stats
    assert stats.paths[-1] == "/openai/deployments/prod-embed/embeddings?api-version=2024-10-21"


def test_azure_responses_api_uses_the_v1_path_with_the_deployment_as_model(gw: Harness) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    raw = c.responses.with_raw_response.create(model="azure-gpt", input="hi azure")
    assert raw.headers["x-sekisho-endpoint"] == "sim-global-japaneast"
    assert "You said: hi azure" in raw.parse().output_text
    stats = gw.sims["sim-global-japaneast"].stats
    assert stats.paths[-1] == "/openai/v1/responses"
    assert stats.headers[-1]["api-key"] == "azure-secret-key"
    body = orjson.loads(stats.bodies[-1])
    assert body["model"] == "prod-gpt4o"  # the v1 API takes the deployment as the model
    assert body["input"] == "hi azure" and body["store"] is False


def test_azure_completions_path(gw: Harness) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    c.completions.create(model="azure-gpt", prompt="def f():")
    stats = gw.sims["sim-global-japaneast"].stats
    assert stats.paths[-1] == "/openai/deployments/prod-gpt4o/completions?api-version=2024-10-21"
    assert "model" not in orjson.loads(stats.bodies[-1])


def test_openai_responses_api_wire_format(gw: Harness) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    with c.responses.stream(model="chat-default", input="hi", max_output_tokens=64) as stream:
        stream.get_final_response()
    stats = gw.sims["sim-domestic-tokyo"].stats
    assert stats.paths[-1] == "/v1/responses"
    assert stats.headers[-1]["authorization"] == "Bearer domestic-secret"
    body = orjson.loads(stats.bodies[-1])
    assert body["model"] == "llama-3.1-swallow-70b" and body["stream"] is True
    assert body["max_output_tokens"] == 64
    assert "stream_options" not in body  # a Responses stream always ends with its usage


def test_openai_adapter_uses_bearer_and_the_endpoints_model_name(gw: Harness) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    c.chat.completions.create(
        model="chat-default",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    ).close()
    stats = gw.sims["sim-domestic-tokyo"].stats
    assert stats.paths[-1] == "/v1/chat/completions"
    headers = stats.headers[-1]
    assert headers["authorization"] == "Bearer domestic-secret"
    assert headers["content-type"] == "application/json"
    assert headers["x-client-request-id"].startswith("req_")  # OpenAI's header for it
    assert headers["accept-encoding"] == "identity"  # the gateway reads every answer
    assert headers["user-agent"].startswith("sekisho/")
    body = orjson.loads(stats.bodies[-1])
    assert body["model"] == "llama-3.1-swallow-70b"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_the_clients_own_credentials_never_reach_the_upstream(gw: Harness) -> None:
    key = gw.key()
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    c.chat.completions.create(model="chat-default", messages=[{"role": "user", "content": "x"}])
    sim = gw.sims["sim-domestic-tokyo"].stats
    assert key not in repr(sim.headers[-1])
    assert key.encode() not in sim.bodies[-1]


def test_a_compressed_answer_it_did_not_ask_for_is_an_upstream_error_naming_it(gw: Harness) -> None:
    # llama-3.1-swallow-70b is served by the domestic endpoint alone: no failover to hide it
    gw.fault("sim-domestic-tokyo", mode="gzip")
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        c.chat.completions.create(
            model="llama-3.1-swallow-70b", messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.status_code == 502
    assert "content-encoding 'gzip'; sekisho asked for identity" in str(err.value)


@pytest.mark.parametrize(("api_version", "asks"), [("2024-10-21", True), ("2024-06-01", False)])
def test_azure_is_asked_for_stream_usage_only_from_the_api_version_that_accepts_it(
    tmp_path: Path, api_version: str, asks: bool
) -> None:
    def older(raw: dict[str, Any]) -> None:
        azure(raw)
        raw["endpoints"][1]["api_version"] = api_version

    h = start_example(tmp_path, older)
    try:
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        chunks = list(
            c.chat.completions.create(
                model="azure-gpt", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
        assert chunks and all(ch.usage is None for ch in chunks)
        body = orjson.loads(h.sims["sim-global-japaneast"].stats.bodies[-1])
        assert ("stream_options" in body) is asks
        if asks:
            assert body["stream_options"] == {"include_usage": True}
    finally:
        h.stop()


def test_a_models_params_go_with_every_request_unless_the_client_sets_them(
    tmp_path: Path,
) -> None:
    """Qwen3 on vLLM, say, served without its thinking phase: the operator's parameters are
    sent with each request for that model, and a client's own value wins."""

    def params(raw: dict[str, Any]) -> None:
        raw["endpoints"][0]["models"][0]["params"] = {
            "chat_template_kwargs": {"enable_thinking": False},
            "top_k": 20,
        }

    h = start_example(tmp_path, params)
    try:
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        model = h.raw["endpoints"][0]["models"][0]["id"]  # served by the domestic endpoint only
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        sent = orjson.loads(h.sims["sim-domestic-tokyo"].stats.bodies[-1])
        assert sent["chat_template_kwargs"] == {"enable_thinking": False}
        assert sent["top_k"] == 20 and sent["model"] == model
        c.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], extra_body={"top_k": 5}
        )
        sent = orjson.loads(h.sims["sim-domestic-tokyo"].stats.bodies[-1])
        assert sent["top_k"] == 5  # the client's own value
        assert sent["chat_template_kwargs"] == {"enable_thinking": False}
    finally:
        h.stop()


def test_params_may_not_set_the_request_itself() -> None:
    import yaml

    from harness import example_config
    from sekisho.config import parse_config
    from sekisho.errors import ConfigError

    raw = example_config()
    raw["endpoints"][0]["models"][0]["params"] = {"messages": [], "top_k": 1}
    with pytest.raises(ConfigError, match="params may not set messages"):
        parse_config(yaml.safe_dump(raw), "sekisho.yaml")


def test_a_rotated_key_file_is_used_after_a_reload_without_a_restart(tmp_path: Path) -> None:
    """api_key_file: a mounted secret, rotated by replacing the file, picked up on reload (the
    admin API or SIGHUP); a reload that would read an unusable file changes nothing."""
    key_file = tmp_path / "tokyo.key"
    key_file.write_text("key-one\n")

    def from_file(raw: dict[str, Any]) -> None:
        ep = raw["endpoints"][0]
        ep.pop("api_key", None)
        ep["api_key_file"] = str(key_file)

    h = start_example(tmp_path / "gw", from_file, config_path=tmp_path / "sekisho.yaml")
    try:
        sim = h.sims["sim-domestic-tokyo"]
        sim.spec.require_key = "key-one"
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        model = h.raw["endpoints"][0]["models"][0]["id"]  # served by this endpoint only
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert sim.stats.headers[-1]["authorization"] == "Bearer key-one"

        key_file.write_text("key-two\n")  # rotated: the endpoint now wants the new key
        sim.spec.require_key = "key-two"
        result = h.call(h.gateway.reload_policy())
        assert result["rotated_keys"] == ["sim-domestic-tokyo"]
        h.gateway.health.success("sim-domestic-tokyo")
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert sim.stats.headers[-1]["authorization"] == "Bearer key-two"

        key_file.write_text("")  # a broken rotation: refused, the key in use stays
        from sekisho.errors import ConfigError

        with pytest.raises(ConfigError, match=r"api_key_file: .*tokyo.key is empty"):
            h.call(h.gateway.reload_policy())
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert sim.stats.headers[-1]["authorization"] == "Bearer key-two"
    finally:
        h.stop()


def test_api_key_file_must_exist_and_stand_alone(tmp_path: Path) -> None:
    import yaml

    from harness import example_config
    from sekisho.config import parse_config
    from sekisho.errors import ConfigError

    raw = example_config()
    raw["endpoints"][0]["api_key_file"] = str(tmp_path / "missing.key")
    raw["endpoints"][0].pop("api_key")
    with pytest.raises(ConfigError, match=r"endpoints\[0\]\(sim-domestic-tokyo\)\.api_key_file"):
        parse_config(yaml.safe_dump(raw), "sekisho.yaml")
    raw["endpoints"][0]["api_key"] = "also-this"
    with pytest.raises(ConfigError, match="one of api_key, api_key_file and auth"):
        parse_config(yaml.safe_dump(raw), "sekisho.yaml")


def _key_file_on_tokyo(key_file: Path) -> Any:
    def from_file(raw: dict[str, Any]) -> None:
        ep = raw["endpoints"][0]
        ep.pop("api_key", None)
        ep["api_key_file"] = str(key_file)

    return from_file


def test_a_key_file_emptied_after_start_keeps_the_key_read_at_start(tmp_path: Path) -> None:
    """The key is read at start (as the docs say), not on the endpoint's first request: a
    secret emptied or removed meanwhile neither breaks the endpoint nor answers 500."""
    key_file = tmp_path / "tokyo.key"
    key_file.write_text("key-one\n")
    h = start_example(tmp_path / "gw", _key_file_on_tokyo(key_file))
    try:
        sim = h.sims["sim-domestic-tokyo"]
        sim.spec.require_key = "key-one"
        key_file.write_text("")  # before the endpoint's first request
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        model = h.raw["endpoints"][0]["models"][0]["id"]  # served by this endpoint only
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert sim.stats.headers[-1]["authorization"] == "Bearer key-one"
        key_file.unlink()
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert sim.stats.headers[-1]["authorization"] == "Bearer key-one"
    finally:
        h.stop()


def test_a_key_file_unusable_when_a_request_needs_it_fails_that_endpoint_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that could not read the key file (a secret replaced between the config's
    validation and the worker's start): its requests fail over to the next eligible endpoint,
    and with none a 502 names the endpoint and the unusable file (never its content); the
    decision gets its outcome and the answer its request id. Readable again, it is used."""
    from harness import ledger_incomplete, request
    from sekisho.providers import keyfile
    from sekisho.providers import openai as adapter

    key_file = tmp_path / "tokyo.key"
    key_file.write_text("key-one\n")

    def unreadable(path: str) -> str:
        raise keyfile.KeyFileUnusable(f"{path} is empty")

    monkeypatch.setattr(adapter, "read_key_file", unreadable)
    h = start_example(tmp_path / "gw", _key_file_on_tokyo(key_file))
    monkeypatch.setattr(adapter, "read_key_file", keyfile.read_key_file)
    try:
        sim = h.sims["sim-domestic-tokyo"]
        sim.spec.require_key = "key-one"
        key_file.write_text("SECRET-PART-ONE\nSECRET-PART-TWO\n")  # a broken rotation
        key = h.key()
        model = h.raw["endpoints"][0]["models"][0]["id"]  # served by this endpoint only
        r = request(
            "POST",
            h.base_url + "/chat/completions",
            json_body={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {key}"},
        )
        assert r.status_code == 502, r.text
        error = r.json()["error"]
        assert error["code"] == "upstream_failed"
        assert "sim-domestic-tokyo" in error["message"]
        assert "api_key_file is unusable" in error["message"]
        assert str(key_file) in error["message"]
        assert "SECRET" not in r.text
        assert r.headers["x-sekisho-request-id"].startswith("req_")
        assert sim.stats.requests == 0  # nothing was sent without its key

        # Another eligible endpoint answers what this one cannot.
        c = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0)
        done = c.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        assert done.headers["x-sekisho-endpoint"] != "sim-domestic-tokyo"
        assert ledger_incomplete(h) == []

        key_file.write_text("key-one\n")  # fixed: read when next needed
        h.gateway.health.success("sim-domestic-tokyo")
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert sim.stats.headers[-1]["authorization"] == "Bearer key-one"
    finally:
        h.stop()
