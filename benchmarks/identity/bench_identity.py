"""Cost of identity on the hot path: key lookup, JWT verification, admit+settle.

Run: .venv/bin/python benchmarks/identity/bench_identity.py  (Redis at 127.0.0.1:6379 optional)
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from sekisho.identity import (
    Authenticator,
    AuthSpec,
    GatewayLimitsSpec,
    KeyStore,
    LimitsSpec,
    Principal,
)
from sekisho.identity.limits import Limiter, RedisBackend, redis_client
from sekisho.identity.oidc import SigningKey
from sekisho.identity.usage import SQLiteUsage


def per_call(n: int, started: float) -> float:
    return (time.perf_counter() - started) / n * 1e6


async def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    store = KeyStore(tmp / "identity.db")
    for i in range(10_000):  # a realistic table, not an empty one
        store.create("acme", name=f"k{i}")
    key, _ = store.create("acme")
    n = 20_000
    t = time.perf_counter()
    for _ in range(n):
        store.authenticate(key)
    print(f"KeyStore.authenticate (SQLite, 10k keys, no cache): {per_call(n, t):.1f} µs")

    spec = AuthSpec.model_validate(
        {
            "oidc": [
                {
                    "issuer": "https://idp.example",
                    "audience": "a",
                    "algorithms": ["RS256", "ES256"],
                    "tenant": "acme",
                    "default_role": "app",
                }
            ]
        }
    )
    auth = Authenticator(store, spec)
    assert auth.oidc is not None
    keys = auth.oidc.issuers["https://idp.example"]
    for alg, private in (
        ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
    ):
        algo = RSAAlgorithm if alg == "RS256" else ECAlgorithm
        raw = dict(algo.to_jwk(private.public_key(), as_dict=True)) | {"kid": alg, "alg": alg}
        keys._keys[alg] = SigningKey(alg, jwt.PyJWK(raw), raw["kty"], raw.get("crv"), alg)
        keys._fetched_at = time.monotonic()
        now = int(time.time())
        token = jwt.encode(
            {"iss": "https://idp.example", "aud": "a", "sub": "s", "iat": now, "exp": now + 3600},
            private,
            algorithm=alg,
            headers={"kid": alg},
        )
        m = 2000
        t = time.perf_counter()
        for _ in range(m):
            await auth.authenticate(f"Bearer {token}")
        print(f"Authenticator JWT {alg} (keys cached): {per_call(m, t):.1f} µs")

    p = Principal(tenant="acme", key_id="aaaaaaaaaaaa", role="app")
    limits = LimitsSpec.model_validate(
        {
            "requests_per_minute": 10**9,
            "tokens_per_minute": 10**12,
            "tokens_per_day": 10**15,
            "tokens_per_month": 10**15,
            "per_key": {"requests_per_minute": 10**9, "tokens_per_day": 10**15},
        }
    )
    lim = Limiter(tenants={"acme": limits})
    t = time.perf_counter()
    for _ in range(n):
        await lim.admit(p, "m", 100)
    print(f"Limiter.admit in-process (6 limits): {per_call(n, t):.1f} µs")
    lim = Limiter(tenants={"acme": limits}, usage=SQLiteUsage(tmp / "usage.db"))
    t = time.perf_counter()
    for _ in range(n // 4):
        await lim.settle(await lim.admit(p, "m", 100), 80, 20)
    print(f"admit+settle in-process with SQLite usage: {per_call(n // 4, t):.1f} µs")

    try:
        client = redis_client("redis://127.0.0.1:6379/0")
        await client.ping()
    except Exception as exc:
        print(f"Redis: skipped ({exc})")
        return
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    lim = Limiter(
        tenants={"acme": limits},
        defaults=GatewayLimitsSpec(namespace=ns),
        backend=RedisBackend(client, ns),
    )
    m = 5000
    t = time.perf_counter()
    for _ in range(m):
        await lim.admit(p, "m", 100)
    print(f"Limiter.admit Redis (6 limits, one Lua call, sequential): {per_call(m, t):.1f} µs")
    t = time.perf_counter()
    await asyncio.gather(*(lim.admit(p, "m", 100) for _ in range(m)))
    print(f"Limiter.admit Redis, 5000 concurrent: {per_call(m, t):.1f} µs each (throughput)")
    keys_ = [k async for k in client.scan_iter(f"sekisho:{ns}:*")]
    if keys_:
        await client.delete(*keys_)
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
