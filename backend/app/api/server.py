"""Serve the API with uvicorn, with a shutdown that fits a deploy window.

    python -m app.api.server app.main:app --host 0.0.0.0 --port 8000 --workers 8 \
        --http app.api.http_protocol:BoundedHttpToolsProtocol --timeout-keep-alive 5 \
        --timeout-graceful-shutdown 9

uvicorn's own CLI, config and servers (``app.start_commands`` gives this line), with three
changes to what happens at SIGTERM:

* **New connections are refused at once.** uvicorn's supervisor binds the listening socket and every
  worker gets a copy; stock, the supervisor keeps its copy open until the workers have exited and a
  worker closes its own only at its next 0.1 s tick, so for seconds the kernel still completed
  handshakes that nobody would accept, and reset them at exit. Here the supervisor closes its copy
  and signals the workers in the signal handler, and each worker closes its copy from its own
  handler: the socket is gone within milliseconds and a connect gets ECONNREFUSED, which a load
  balancer retries on another server.
* **Open connections drain.** For API_DRAIN_SECONDS (or until they are all closed) a worker still
  serves the connections it has, every response with ``Connection: close`` and ``/health`` 503
  ``draining`` (``app.api.drain``); then uvicorn's shutdown closes the idle ones and waits for the
  requests in flight up to ``--timeout-graceful-shutdown`` (``app.sizing.api_graceful_shutdown_timeout``),
  and the lifespan closes the pools.
* **The tree exits in time.** The supervisor kills a worker still alive one second before
  ``app.sizing.shutdown_seconds`` (Railway's drainingSeconds), then exits itself.

With API_ADMISSION=edge the supervisor also answers HAProxy's agent-check (``app.api.edge``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import os
import signal
import socket
import time
from types import FrameType

from uvicorn.config import Config
from uvicorn.server import Server
from uvicorn.supervisors import multiprocess
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from app import sizing
from app.api import drain, edge
from app.config.settings import get_settings


class DrainingServer(Server):
    """uvicorn's server (one worker process), which stops listening in its signal handler and drains
    its open connections before uvicorn's own shutdown."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sockets: list[socket.socket] = []
        self._accepted: set[asyncio.Task[object]] = set()  # referenced until the connection is set up

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = list(sockets or [])
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn would notice should_exit at its next tick (up to 0.1 s later); stop listening now.
        # call_soon_threadsafe is the one loop call that is safe from a signal handler.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop_listening)

    def _stop_listening(self) -> None:
        if drain.draining():
            return
        # First: the requests in flight, and the connections accepted below, are answered with
        # Connection: close.
        drain.begin(self.server_state.connections)
        loop = asyncio.get_running_loop()
        for server in self.servers:
            for listener in server.sockets:
                self._accept_pending(loop, listener.fileno())
            server.close()  # uvicorn's shutdown closes it again: idempotent
        for sock in self._sockets:
            sock.close()

    def _accept_pending(self, loop: asyncio.AbstractEventLoop, fileno: int) -> None:
        """Accept every connection the kernel has completed but nobody accepted yet, and serve it.

        Closing a listening socket resets those: the client had already sent its request on them, so
        an edge sees an empty answer (a 502) rather than a refused connect it would retry elsewhere
        (seen in scripts/rehearse_deploy.py: 2 of 6 API SIGTERMs). The queue is shared by every
        worker and lives until the last copy closes, so each worker empties it just before closing
        its own; only a handshake completing between that and the close is still reset.
        """
        protocol = functools.partial(
            self.config.http_protocol_class,
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )
        with socket.socket(fileno=os.dup(fileno)) as listener:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:  # BlockingIOError: the queue is empty (the socket is non-blocking)
                    return
                conn.setblocking(False)
                task = loop.create_task(loop.connect_accepted_socket(protocol, conn))
                self._accepted.add(task)
                task.add_done_callback(self._accepted.discard)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._stop_listening()
        deadline = time.monotonic() + get_settings().API_DRAIN_SECONDS
        while self.server_state.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await super().shutdown(sockets=sockets)


class DrainingProcess(Process):
    """A worker process of the supervisor, running a DrainingServer (this object is pickled to it)."""

    @property
    def server(self) -> Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server


class DrainingMultiprocess(Multiprocess):
    """uvicorn's supervisor, which lets go of the listening socket the moment SIGTERM or SIGINT
    arrives and bounds how long it waits for its workers."""

    def __init__(self, config: Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self._stopping_since: float | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop_signal)

    def _on_stop_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signal_queue.append(sig)  # uvicorn's loop does the rest: terminate_all, join_all
        if self._stopping_since is not None:
            return
        self._stopping_since = time.monotonic()
        # Plain syscalls only: this runs between two bytecodes of the supervisor's loop.
        for sock in self.sockets:
            sock.close()
        for process in self.processes:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    def keep_subprocess_alive(self) -> None:
        if self._stopping_since is None:  # without the socket, a replacement could not serve anyway
            super().keep_subprocess_alive()

    def restart_all(self) -> None:
        if self._stopping_since is None:
            super().restart_all()

    def join_all(self) -> None:
        # Each worker bounds its own shutdown; this is the backstop, a second before Railway's SIGKILL.
        since = self._stopping_since or time.monotonic()
        deadline = since + sizing.shutdown_seconds(get_settings(), "api") - 1
        for process in self.processes:
            process.process.join(max(0.0, deadline - time.monotonic()))
            if process.process.is_alive():
                multiprocess.logger.error(f"Child process [{process.pid}] outlived the shutdown; killing it")
                process.kill()
                process.process.join()


def main() -> None:
    settings = get_settings()
    if settings.API_ADMISSION == "edge":
        edge.start_agent(settings)
    # uvicorn builds its servers from these module-level names and offers no other hook; every CLI
    # option still goes through uvicorn's own parser and run(). (The package's ``uvicorn.main``
    # attribute is the CLI function, which hides the module of the same name.)
    cli = importlib.import_module("uvicorn.main")
    cli.Server = DrainingServer
    cli.Multiprocess = DrainingMultiprocess
    multiprocess.Process = DrainingProcess  # type: ignore[misc]
    cli.main()


if __name__ == "__main__":
    main()
