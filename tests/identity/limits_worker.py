"""One gateway-like process hammering the shared Redis limiter (run by test_limits_redis.py)."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from sekisho.errors import RateLimited
from sekisho.identity import GatewayLimitsSpec, LimitsSpec, Principal
from sekisho.identity.limits import Limiter, RedisBackend


async def main(
    url: str, namespace: str, limits: str, start_at: float, attempts: int, tokens: int
) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    lim = Limiter(
        tenants={"acme": LimitsSpec.model_validate_json(limits)},
        defaults=GatewayLimitsSpec(namespace=namespace),
        backend=RedisBackend(client, namespace),
    )
    principal = Principal(tenant="acme", key_id="aaaaaaaaaaaa", role="app")
    await client.ping()
    await asyncio.sleep(max(0.0, start_at - time.time()))

    async def one() -> bool:
        try:
            await lim.admit(principal, "gpt-4o", tokens)
        except RateLimited:
            return False
        return True

    began = time.time()
    results: list[bool] = []
    for _ in range(attempts // 20):  # 20 requests in flight at a time
        results += await asyncio.gather(*(one() for _ in range(20)))
    print(json.dumps({"admitted": sum(results), "began": began, "ended": time.time()}))
    await lim.close()


if __name__ == "__main__":
    url, ns, limits, start, attempts, tokens = sys.argv[1:]
    asyncio.run(main(url, ns, limits, float(start), int(attempts), int(tokens)))
