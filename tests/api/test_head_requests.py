"""HEAD is answered as GET without the body (RFC 9110 §9.3.2): the same status and headers,
Content-Length included, on every route that serves GET; the same keys are needed."""

from __future__ import annotations

import openai

from harness import Harness, request

# Headers that differ between any two answers, whatever the method.
_PER_ANSWER = {"date", "x-request-id", "x-sekisho-request-id"}


def _same_answer(h: Harness, path: str, key: str | None) -> tuple[int, dict[str, str]]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    got = request("GET", h.root + path, headers=headers)
    head = request("HEAD", h.root + path, headers=headers)
    assert head.content == b"", path
    assert head.status_code == got.status_code, (path, head.status_code, head.text)
    assert int(head.headers["content-length"]) == len(got.content), path
    assert {k: v for k, v in head.headers.items() if k not in _PER_ANSWER} == {
        k: v for k, v in got.headers.items() if k not in _PER_ANSWER
    }, path
    return head.status_code, head.headers


def test_every_get_route_answers_head_with_the_same_status_and_headers(gateway: Harness) -> None:
    key = gateway.key()
    c = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    kept = c.responses.create(model="gpt-4o", input="hello")
    chat = c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    call_id = chat.headers["x-sekisho-request-id"]
    for path in (
        "/healthz",
        "/readyz",
        "/v1/models",
        "/v1/models/gpt-4o",
        "/ledger/checkpoint",
        f"/ledger/receipts/{call_id}",
        f"/v1/responses/{kept.id}",
        f"/v1/responses/{kept.id}/input_items",
        "/admin/v1/whoami",
    ):
        assert _same_answer(gateway, path, key)[0] == 200, path
    # The metrics change from one scrape to the next; what a HEAD of them says is the same.
    head = request("HEAD", gateway.root + "/metrics")
    assert head.status_code == 200 and head.content == b""
    assert (
        head.headers["content-type"]
        == request("GET", gateway.root + "/metrics").headers["content-type"]
    )
    assert int(head.headers["content-length"]) > 0


def test_head_needs_the_key_get_needs(gateway: Harness) -> None:
    for path in ("/v1/models", "/v1/models/gpt-4o", "/admin/v1/whoami"):
        status, _ = _same_answer(gateway, path, None)
        assert status == 401, path
    status, _ = _same_answer(gateway, "/v1/models/no-such-model", gateway.key())
    assert status == 404


def test_a_405_names_head_wherever_get_is_allowed(gateway: Harness) -> None:
    auth = {"authorization": f"Bearer {gateway.key()}"}
    for method, path, allow in (
        ("POST", "/v1/models", "GET, HEAD"),
        ("PUT", "/ledger/checkpoint", "GET, HEAD"),
        ("PUT", "/v1/responses/resp_x", "GET, HEAD, DELETE"),
        ("PUT", "/v1/responses/resp_x/input_items", "GET, HEAD"),
        ("DELETE", "/admin/v1/whoami", "GET, HEAD"),
        ("HEAD", "/v1/chat/completions", "POST"),  # a model call is not a read
        ("POST", "/healthz", "GET, HEAD"),  # probes and scrapes read; they were 200 to anything
        ("DELETE", "/readyz", "GET, HEAD"),
        ("PUT", "/metrics", "GET, HEAD"),
    ):
        r = request(method, gateway.root + path, headers=auth)
        assert (r.status_code, r.headers.get("allow")) == (405, allow), (method, path)
