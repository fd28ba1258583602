"""Server connections over time: pg_stat_activity sampled from a thread, grouped by application_name."""

from __future__ import annotations

import asyncio
import threading
import time

import asyncpg


class Sampler(threading.Thread):
    """pg_stat_activity every ``interval`` (100 ms), grouped by application_name (its own connection, not
    counted)."""

    def __init__(self, url: str, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.interval = interval
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        conn = await asyncpg.connect(self.url, server_settings={"application_name": "harness.sampler"})
        try:
            while not self._halt.is_set():
                rows = await conn.fetch(
                    "SELECT application_name, count(*) AS n FROM pg_stat_activity"
                    " WHERE backend_type = 'client backend' AND application_name <> 'harness.sampler'"
                    " GROUP BY 1"
                )
                self.samples.append(
                    (time.monotonic() - self.t0, {r["application_name"]: r["n"] for r in rows})
                )
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
