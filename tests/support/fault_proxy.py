"""A TCP proxy in front of a real server that can pass, stall or refuse: network faults on demand.

A stalled database is not a stopped one: the connections stay open, the kernel still acknowledges every
packet, and no reply ever comes (a hung server, a saturated link, a NAT that lost its state). Only
deadlines in the application notice that, and these tests exist to prove they do. The proxy runs its
own event loop in a daemon thread, so it keeps stalling while the test's loop (or a subprocess) waits.

* ``stall()``: bytes are read but not forwarded, either way, on every connection, old and new; new
  connections are still accepted, as the stalled server's kernel would.
* ``refuse()``: every connection is reset and new ones are refused (a server that is gone).
* ``restore()``: bytes flow again (the ones held during a stall are delivered, as a network would).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from devkit.ports import free_port
from tests.support.env import BASE_ENV


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # --- control, from any thread ---------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def stall(self) -> None:
        self._call(self._set_flowing(False))

    def restore(self) -> None:
        self._call(self._restore())

    def refuse(self) -> None:
        self._call(self._refuse())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    @property
    def connections(self) -> int:
        return len(self._writers)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # --- on the proxy's loop --------------------------------------------------------------------------
    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        self._flowing.set() if flowing else self._flowing.clear()

    async def _restore(self) -> None:
        if self._server is None:
            await self._listen()
        await self._set_flowing(True)

    async def _refuse(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _shutdown(self) -> None:
        await self._refuse()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, server_writer}
        try:
            await asyncio.gather(
                self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer)
            )
        except asyncio.CancelledError:
            pass  # the proxy is stopping; asyncio's server callback would report a cancelled handler
        finally:
            self._writers -= {client_writer, server_writer}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One side ended: end the other, so a client that gives up also frees its server connection.
            writer.close()


def through(proxy: FaultProxy) -> str:
    """The session database's URL, reached through ``proxy``."""
    parts = urlsplit(BASE_ENV["DATABASE_URL"])
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's PostgreSQL."""
    target = urlsplit(BASE_ENV["DATABASE_URL"])
    started = FaultProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    try:
        yield started
    finally:
        started.stop()
