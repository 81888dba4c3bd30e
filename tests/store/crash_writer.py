"""Writer for the crash test: put records as fast as possible, print each id once committed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sekisho.store import Stores
from store.helpers import FULL_7, Region, Sink, Tenant, exchange


async def main(data_dir: Path) -> None:
    stores = await Stores.open(
        {"jp": Region("JP")}, data_dir, audit=Sink(), tenants={"demo": Tenant("jp", FULL_7)}
    )
    tenant = stores.for_tenant("demo", "jp")

    async def writer(n: int) -> None:
        i = 0
        while True:
            ref = await tenant.put(exchange(request_id=f"w{n}-{i}", prompt=f"prompt {n} {i}"))
            assert ref is not None
            sys.stdout.write(f"{ref.record_id} w{n}-{i}\n")
            sys.stdout.flush()
            i += 1

    await asyncio.gather(*(writer(n) for n in range(16)))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
