"""An endpoint's 4xx goes back to the client in OpenAI's shape with what the endpoint said:
its message, and the type, param and code clients read (whatever shape the server uses)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sekisho._upstream import client_error_from
from sekisho.classify import Scanner
from sekisho.providers.base import UpstreamStatusError


def rejected(body: Any, status: int = 400) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    e = client_error_from(UpstreamStatusError("ep", status, raw, None), Scanner())
    assert e.status == status
    return {"message": e.message, "type": e.type, "param": e.param, "code": e.code}


def test_openai_shape_keeps_type_param_and_code() -> None:
    err = rejected(
        {
            "error": {
                "message": "Invalid value for 'temperature': 3 is greater than the maximum of 2.",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "decimal_above_max_value",
            }
        }
    )
    assert err == {
        "message": "The endpoint rejected the request: Invalid value for 'temperature': 3 is "
        "greater than the maximum of 2.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "decimal_above_max_value",
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # vLLM (older releases): the error's fields at the top level, code a number
        (
            {
                "object": "error",
                "message": "max_tokens is too large",
                "type": "BadRequestError",
                "param": "max_tokens",
                "code": 400,
            },
            "max_tokens is too large",
        ),
        ({"error": "model 'llama9' not found"}, "model 'llama9' not found"),  # Ollama, TGI
        ({"detail": "Not authenticated"}, "Not authenticated"),  # FastAPI
        (
            {"detail": [{"loc": ["body", "messages"], "msg": "field required"}]},
            "body.messages: field required",
        ),
    ],
)
def test_other_servers_error_shapes_are_read(body: dict[str, Any], message: str) -> None:
    err = rejected(body)
    assert err["message"] == f"The endpoint rejected the request: {message}"
    assert err["type"] == "invalid_request_error"  # not a type the SDKs know: the default
    assert err["code"] == "upstream_rejected"
    if "param" in body:
        assert err["param"] == "max_tokens"


def test_a_body_that_says_nothing_gives_the_status() -> None:
    for body in (b"<html>Bad Request</html>", b"", {"error": {}}, [1, 2]):
        err = rejected(body, 422)
        assert err["message"] == "The endpoint rejected the request (HTTP 422)."
        assert err["code"] == "upstream_rejected" and err["param"] is None


@given(
    st.binary(max_size=300)
    | st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    ["error", "message", "type", "param", "code", "detail", "msg", "loc"]
                ),
                inner,
                max_size=5,
            )
        ),
        max_leaves=20,
    ).map(orjson.dumps)
)
def test_any_body_gives_an_openai_shaped_error(raw: bytes) -> None:
    err = rejected(raw, 404)
    assert err["message"].startswith("The endpoint rejected the request")
    assert isinstance(err["code"], str) and err["code"]
    assert err["type"].endswith("_error")
    assert err["param"] is None or isinstance(err["param"], str)


def test_a_retry_after_given_as_an_http_date_is_read() -> None:
    """RFC 9110 allows an HTTP-date; it was ignored (the ordinary backoff and 'retry after 1')."""
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    from sekisho._upstream import parse_retry_after

    when = datetime.now(UTC) + timedelta(seconds=45)
    got = parse_retry_after(format_datetime(when, usegmt=True))
    assert got is not None and 40 < got <= 45
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Mon, 01 Jan 2001 00:00:00 GMT") == 0.0  # past: now
    assert parse_retry_after("soon") is None
