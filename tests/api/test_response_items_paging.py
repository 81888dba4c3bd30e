"""Paging a kept response's input items as the OpenAI API pages lists (``order``, ``limit``,
``after``): whatever the list and the page size, following ``after`` from page to page yields
every item exactly once, in the order asked for, and ``has_more`` says whether to go on."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sekisho.api.openai import list_page
from sekisho.errors import InvalidRequest


def walk(items: list[dict[str, Any]], order: str, limit: int) -> list[str]:
    seen: list[str] = []
    query = {"order": order, "limit": str(limit)}
    for _ in range(len(items) + 2):
        page = list_page(items, query)
        assert len(page["data"]) <= limit
        if page["data"]:
            assert page["first_id"] == page["data"][0]["id"]
            assert page["last_id"] == page["data"][-1]["id"]
        seen += [i["id"] for i in page["data"]]
        if not page["has_more"]:
            return seen
        query = {**query, "after": page["last_id"]}
    raise AssertionError("paging did not end")


@given(n=st.integers(min_value=0, max_value=40), limit=st.integers(min_value=1, max_value=100),
       order=st.sampled_from(["asc", "desc"]))  # fmt: skip
def test_following_after_yields_every_item_once_in_order(n: int, limit: int, order: str) -> None:
    items = [{"id": f"msg_{i}"} for i in range(n)]
    ids = [i["id"] for i in items]
    assert walk(items, order, limit) == (ids if order == "asc" else ids[::-1])


@given(n=st.integers(min_value=1, max_value=40), limit=st.integers(min_value=1, max_value=100),
       order=st.sampled_from(["asc", "desc"]))  # fmt: skip
def test_following_before_back_from_the_end_yields_every_other_item_once(
    n: int, limit: int, order: str
) -> None:
    items = [{"id": f"msg_{i}"} for i in range(n)]
    ids = [i["id"] for i in items] if order == "asc" else [i["id"] for i in items][::-1]
    seen: list[str] = []
    cursor = ids[-1]
    while True:
        page = list_page(items, {"order": order, "limit": str(limit), "before": cursor})
        assert len(page["data"]) <= limit
        seen = [i["id"] for i in page["data"]] + seen
        if not page["has_more"]:
            break
        cursor = page["first_id"]
    assert seen == ids[:-1]


def test_the_default_is_newest_first_twenty_at_a_time() -> None:
    items = [{"id": f"msg_{i}"} for i in range(25)]
    page = list_page(items, {})
    assert [i["id"] for i in page["data"]] == [f"msg_{i}" for i in range(24, 4, -1)]
    assert page["has_more"] is True


@pytest.mark.parametrize(
    ("query", "param"),
    [({"order": "up"}, "order"), ({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"),
     ({"limit": "ten"}, "limit"), ({"after": "msg_99"}, "after"),
     ({"before": "msg_99"}, "before")],
)  # fmt: skip
def test_a_bad_query_is_a_400_naming_the_parameter(query: dict[str, str], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        list_page([{"id": "msg_0"}], query)
    assert err.value.param == param
