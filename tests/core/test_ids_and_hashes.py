"""Identifiers that sort by time, the random pool behind them, and the store's keyed hashes."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time

from hypothesis import given
from hypothesis import strategies as st

from sekisho import _ids
from sekisho.api.http import new_request_id, request_id
from sekisho.store.crypto import KEYED_HASH_PREFIX, TenantKeys


def test_request_ids_lead_with_the_time_and_sort_in_creation_order() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = []
    for _ in range(50):
        ids.append(new_request_id())
        time.sleep(0.002)
    after_ms = time.time_ns() // 1_000_000
    assert ids == sorted(ids)
    for rid in ids:
        assert re.fullmatch(r"req_[0-9a-f]{24}", rid)
        assert before_ms <= int(rid[4:16], 16) <= after_ms
    # the gateway accepts its own ids when a client echoes one back
    assert request_id({"headers": [(b"x-request-id", ids[0].encode())]}) == ids[0]


def test_ids_minted_in_one_millisecond_are_still_unique_and_unguessable() -> None:
    ids = [_ids.time_ordered_id("rec_") for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    tails = {i[-12:] for i in ids}
    assert len(tails) == len(ids)  # the random half alone tells them apart


def test_the_random_pool_hands_out_each_byte_once() -> None:
    pool = _ids._RandomPool(size=64)
    chunks = [pool.take(12) for _ in range(40)]  # crosses several refills
    assert all(len(c) == 12 for c in chunks)
    assert len(set(chunks)) == len(chunks)
    assert len(pool.take(100)) == 100  # larger than the pool's size


def test_a_forked_child_never_reuses_the_parents_random_bytes() -> None:
    _ids.random_bytes(1)  # make sure the parent holds fetched bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.write(write, _ids.random_bytes(32))
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 64)
    os.close(read)
    os.waitpid(pid, 0)
    parent = _ids.random_bytes(32)
    assert len(child) == 32
    assert child != parent


KEYS = TenantKeys("jp", "demo", 1, b"s" * 32, b"i" * 32, b"h" * 32)


@given(st.binary(max_size=5000))
def test_keyed_hash_is_hmac_sha256_under_the_tenants_hash_key(data: bytes) -> None:
    expected = hmac.new(b"h" * 32, data, hashlib.sha256).hexdigest()
    assert KEYS.keyed_hash(data) == KEYED_HASH_PREFIX + expected
    assert KEYS.keyed_hash(data) == KEYED_HASH_PREFIX + expected  # the kept state is not consumed


@given(st.text(max_size=40), st.text(max_size=300))
def test_index_hash_is_hmac_sha256_of_type_and_value_under_the_index_key(
    id_type: str, value: str
) -> None:
    msg = id_type.encode() + b"\0" + value.encode()
    assert KEYS.index_hash(id_type, value) == hmac.new(b"i" * 32, msg, "sha256").hexdigest()
    assert KEYS.index_hash(id_type, value) != KEYS.keyed_hash(msg).removeprefix(KEYED_HASH_PREFIX)
