"""Bad input gets a clear error naming what was wrong; the gateway stays up; nothing is lost."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from harness import Harness, request


def post(
    h: Harness, body: bytes | str, key: str, path: str = "/chat/completions", **headers: str
) -> Any:
    data = body.encode() if isinstance(body, str) else body
    return request(
        "POST",
        h.base_url + path,
        content=data,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json", **headers},
        timeout=10,
    )


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ("{not json", None, "not valid JSON"),
        ("[1, 2]", None, "must be a JSON object"),
        ("", None, "empty"),
        ('{"messages": []}', "model", "Missing required parameter: 'model'"),
        ('{"model": 5, "messages": []}', "model", "expected a string, but got an integer"),
        ('{"model": "gpt-4o"}', "messages", "Missing required parameter: 'messages'"),
        ('{"model": "gpt-4o", "messages": "hi"}', "messages", "expected an array"),
        ('{"model": "gpt-4o", "messages": []}', "messages", "empty array"),
        ('{"model": "gpt-4o", "messages": [{"content": "x"}]}', "messages[0].role", "role"),
        (
            '{"model": "gpt-4o", "messages": [{"role": "wizard", "content": "x"}]}',
            "messages[0].role",
            "'wizard'",
        ),
        (
            '{"model": "gpt-4o", "messages": [{"role": "user", "content": 3}]}',
            "messages[0].content",
            "got an integer",
        ),
        (
            '{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
            "temperature",
            "out of range",
        ),
        (
            '{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}],'
            ' "temperature": "hot"}',
            "temperature",
            "expected a number",
        ),
        (
            '{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            "stream",
            "expected a boolean",
        ),
        (
            '{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "n": 0}',
            "n",
            "expected an integer between 1 and 128",
        ),
        (
            '{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}],'
            ' "stream_options": {"include_usage": true}}',
            "stream_options",
            "only allowed",
        ),
        (
            '{"model": "gpt-4o", "messages": [{"role": "tool", "content": "x"}]}',
            "messages[0].tool_call_id",
            "tool_call_id",
        ),
        # a role that is not a string was a 500 (unhashable type: 'list')
        (
            '{"model": "gpt-4o", "messages": [{"role": ["user"], "content": "x"}]}',
            "messages[0].role",
            "expected a string, but got an array",
        ),
        # a function that is not an object was forwarded: OpenAI refused it, a simulator hung
        (
            '{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}],'
            ' "tools": [{"type": "function", "function": "f"}]}',
            "tools[0].function",
            "expected an object, but got a string",
        ),
        (
            '{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}],'
            ' "tools": [{"type": "function", "function": {"description": "d"}}]}',
            "tools[0].function.name",
            "Missing required parameter: 'tools[0].function.name'",
        ),
    ],
)
def test_malformed_chat_requests_get_400_naming_the_parameter(
    gateway: Harness, body: str, param: str | None, words: str
) -> None:
    key = gateway.key()
    before = gateway.bytes_received()
    r = post(gateway, body, key)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert words in err["message"]
    assert gateway.bytes_received() == before  # nothing went upstream
    ok = post(gateway, '{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}', key)
    assert ok.status_code == 200  # the gateway stays up


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ('{"input": [{"role": {}, "content": "x"}]}', "input[0].role", "expected a string"),
        ('{"input": "x", "tools": [{"type": "function"}]}', "tools[0].name", "Missing required"),
        ('{"input": "x", "tools": [{"type": "function", "name": 5}]}', "tools[0].name", "integer"),
    ],
)
def test_malformed_responses_requests_get_400_naming_the_parameter(
    gateway: Harness, body: str, param: str, words: str
) -> None:
    key = gateway.key()
    r = post(gateway, '{"model": "gpt-4o", ' + body[1:], key, "/responses")
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["type"]) == (param, "invalid_request_error")
    assert words in err["message"]


def test_bad_embeddings_input(gateway: Harness) -> None:
    key = gateway.key()
    r = post(gateway, '{"model": "text-embedding-3-small", "input": {"a": 1}}', key, "/embeddings")
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = post(gateway, '{"model": "text-embedding-3-small", "input": [1, "a"]}', key, "/embeddings")
    assert r.status_code == 400


def test_oversized_body_is_413_before_anything_goes_upstream(tmp_path: object) -> None:
    from pathlib import Path

    from harness import start_example

    def small(raw: dict) -> None:  # type: ignore[type-arg]
        raw["server"]["max_body_bytes"] = 2048

    h = start_example(Path(str(tmp_path)), small)
    try:
        key = h.key()
        big = '{"model": "gpt-4o", "messages": [{"role": "user", "content": "' + "x" * 5000 + '"}]}'
        r = post(h, big, key)
        assert r.status_code == 413
        assert "2048" in r.json()["error"]["message"]
        assert sum(h.bytes_received().values()) == 0

        # chunked upload without content-length is cut off too
        def gen():  # type: ignore[no-untyped-def]
            yield big.encode()

        r = request(
            "POST",
            h.base_url + "/chat/completions",
            content=gen(),
            headers={"authorization": f"Bearer {key}"},
        )
        assert r.status_code == 413
    finally:
        h.stop()


def test_wrong_method_and_unknown_path(gateway: Harness) -> None:
    key = gateway.key()
    r = request(
        "GET", gateway.base_url + "/chat/completions", headers={"authorization": f"Bearer {key}"}
    )
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"  # RFC 9110: a 405 says what the path accepts
    auth = {"authorization": f"Bearer {key}"}
    for method, path, allow in (
        ("POST", "/v1/models", "GET, HEAD"),
        ("PUT", "/ledger/checkpoint", "GET, HEAD"),
        ("PUT", "/v1/responses/resp_x", "GET, HEAD, DELETE"),
        ("PUT", "/v1/responses/resp_x/input_items", "GET, HEAD"),
        ("DELETE", "/admin/v1/whoami", "GET, HEAD"),
    ):
        r = request(method, gateway.root + path, headers=auth)
        assert (r.status_code, r.headers.get("allow")) == (405, allow), (method, path)
    r = request("GET", gateway.root + "/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"


def test_openai_client_raises_its_usual_exception_classes(gateway: Harness) -> None:
    c = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key(), max_retries=0)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(
            model="gpt-4o",
            messages=[],
        )
    with pytest.raises(openai.NotFoundError):
        c.embeddings.create(model="nope", input="x")


def test_a_compressed_body_is_415_naming_the_encoding(gateway: Harness) -> None:
    """It was read as broken JSON ("not valid UTF-8: surrogates not allowed"). The 415 says
    which codings are accepted (Accept-Encoding: identity, RFC 9110 §15.5.16), which a client
    or proxy that compresses request bodies reads to send the body again uncompressed."""
    import gzip

    body = gzip.compress(b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}')
    r = request(
        "POST",
        gateway.base_url + "/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {gateway.key()}", "content-encoding": "gzip",
                 "content-type": "application/json"},
    )  # fmt: skip
    assert r.status_code == 415 and r.headers["accept-encoding"] == "identity"
    error = r.json()["error"]
    assert error["code"] == "unsupported_content_encoding" and "'gzip'" in error["message"]
    assert all(not sim.stats.bodies for sim in gateway.sims.values())
