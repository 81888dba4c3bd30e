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
    # 4 requests in flight at a time, a batch every 10 ms at most: the burst lasts a few hundred
    # milliseconds, so the other process, woken a little later on a busy machine, still competes
    # (with 20 at a time and no pause, one process could spend it all in a few milliseconds).
    for _ in range(attempts // 4):
        results += await asyncio.gather(*(one() for _ in range(4)))
        await asyncio.sleep(0.01)
    print(json.dumps({"admitted": sum(results), "began": began, "ended": time.time()}))
    await lim.close()


if __name__ == "__main__":
    url, ns, limits, start, attempts, tokens = sys.argv[1:]
    asyncio.run(main(url, ns, limits, float(start), int(attempts), int(tokens)))
