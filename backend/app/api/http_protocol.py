"""The API's HTTP/1.1 protocol: uvicorn's httptools protocol with bounds on what a connection can make a
worker hold before its request reaches the app (so before authentication, before any deadline).

httptools (llhttp) parses as bytes arrive and bounds nothing: a header value is accumulated until it
ends, however long, and a connection that never finishes its headers (or never sends one) is kept for
ever. 200 connections each sending 1 MB of headers and stopping took the API from 529 to 741 MB; a
100 KB header and 10,000 headers were answered 200. Here, per connection:

* **Header section size**: more than ``MAX_REQUEST_HEADER_BYTES`` (request line and headers) is 431
  and the connection closed. Counted on the raw bytes of the reads the section came in (a header that
  never ends is refused once the limit is passed, not when it ends), and, when those are over the
  limit but the section ended in them, exactly on the parsed request line and headers.
* **Header count**: more than ``MAX_REQUEST_HEADERS`` lines is 431.
* **Header deadline**: a section not finished ``REQUEST_HEADER_TIMEOUT_SECONDS`` after the connection
  was accepted, or after the first bytes of the next request on a kept-alive one, is 408 and closed
  (slowloris; a connection that says nothing). Idle between requests, uvicorn's
  ``--timeout-keep-alive`` (``API_KEEP_ALIVE_SECONDS``) closes it.
* **Body size**: a ``Content-Length`` over ``MAX_REQUEST_BODY_BYTES`` is 413 before the app runs; a
  chunked body is counted as it arrives and refused (413, closed) once it passes the limit. Bounded here
  rather than by FastAPI's ``max_body_size``, which wraps every request in two more middleware layers
  (the app's and the route's) whether it has a body or not: 7% of a read's throughput
  (scripts/bench_request_path.py). Four anonymous 250 MB POSTs once took the API from 592 MB to 3.1 GB.
* **Connections**: one more than ``API_MAX_CONNECTIONS_PER_WORKER`` is answered 503 and closed before
  anything is read. uvicorn's ``--limit-concurrency`` would answer 503 only once a request's headers
  are complete, so it bounds nothing above. The count is ``server_state.connections``, the set the
  drain (app.api.server) waits on, so a refused connection leaves it when it closes, like any other.

While the process drains (``app.api.drain``), every request read is its connection's last: answered with
``Connection: close``, and the connection closed after it.

Chosen over uvicorn's h11 protocol (``--http h11 --h11-max-incomplete-event-size``), which bounds the
size but has no header deadline and costs throughput: scripts/bench_http_parser.py, figures in
docs/benchmarks.md. Selected by the start command (``--http app.api.http_protocol:...``).
"""

from __future__ import annotations

import asyncio
from itertools import chain
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.api import admission, drain
from app.config.settings import get_settings


class _Refused(Exception):
    """Raised from a parser callback to stop httptools mid-feed; data_received answers ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_settings()
        self._max_header_bytes = settings.MAX_REQUEST_HEADER_BYTES
        self._max_headers = settings.MAX_REQUEST_HEADERS
        self._max_body_bytes = settings.MAX_REQUEST_BODY_BYTES
        self._body_bytes = 0  # of the request being read
        self._header_timeout = settings.REQUEST_HEADER_TIMEOUT_SECONDS
        self._max_connections = settings.API_MAX_CONNECTIONS_PER_WORKER
        self._reading_headers = True  # from the accept, or a request's first byte, to its headers' end
        self._raw_header_bytes = 0
        self._read_bytes = 0  # of the read being parsed
        self._header_timer: asyncio.TimerHandle | None = None
        self._refusal: int | None = None
        self._shed = False  # the request being read was refused by admission control (its rest ignored)

    # --- connection -----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            self._refuse(503)
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        # The timer's callback references this protocol: cancelled, so nothing of a closed connection
        # (its parser's buffers included) is kept alive until the deadline.
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, with the refusals of the parser callbacks below answered as such rather than 400.
        self._unset_keepalive_if_required()
        self._read_bytes = len(data)
        if self._reading_headers:
            self._raw_header_bytes += self._read_bytes
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(self._refusal)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._reading_headers:
            if self._raw_header_bytes > self._max_header_bytes:
                self._refuse(431)
            elif self._header_timer is None:
                # The next request's headers began on a kept-alive connection. Armed only when a read
                # ends inside a header section: a request that arrives whole costs no timer (measured:
                # arming one per request cost 5% of a no-op route's throughput).
                self._arm_header_timer()

    # --- parser callbacks -----------------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._disarm_header_timer()
        # The parsed section, for one that arrived whole in a read (the raw check in data_received only
        # sees sections still unfinished after one). Checked once here rather than per header: an
        # override of on_header costs two Python calls per header on every request.
        headers = self.headers
        if len(headers) > self._max_headers:
            self._stop_parser(431)
        # The raw count covers every read the section came in: when that is within the limit, so is
        # the section, and the exact count (about 1 us a request) is skipped.
        if self._raw_header_bytes > self._max_header_bytes:
            # Names and values, plus ": " and CRLF per line.
            size = len(self.url) + 4 * len(headers) + sum(map(len, chain.from_iterable(headers)))
            if size > self._max_header_bytes:
                self._stop_parser(431)
        has_body = False
        for name, value in headers:
            if name == b"content-length":
                if value.isdigit() and int(value) > self._max_body_bytes:
                    self._stop_parser(413)
                has_body = has_body or value != b"0"
            elif name == b"transfer-encoding":
                has_body = True
        if admission.overloaded() and not has_body and self._refuse_overloaded():
            return
        super().on_headers_complete()
        if drain.draining():
            drain.close_after_response(self)

    def on_body(self, body: bytes) -> None:
        if self._shed:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self._max_body_bytes:
            self._stop_parser(413)
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._shed:
            self._shed = False
            if not self.transport.is_closing():
                self.on_response_complete()  # uvicorn's: arm the keep-alive timer, read on
            return
        super().on_message_complete()

    def on_message_begin(self) -> None:
        # The first byte of a request. Marked here rather than when the previous request ended, so that
        # an idle kept-alive connection arms no header timer (uvicorn's keep-alive timer bounds it).
        # The raw count starts with the whole read this byte came in: exact unless the client pipelines
        # (the read then also holds the previous request's tail, and the count errs on the high side).
        super().on_message_begin()
        self._reading_headers = True
        self._raw_header_bytes = self._read_bytes
        self._body_bytes = 0
        # A request pipelined after a refused one: the keep-alive timer its refusal armed stops here.
        self._unset_keepalive_if_required()

    # --- overload -------------------------------------------------------------------------------------
    def _refuse_overloaded(self) -> bool:
        """Admission control's refusal (app.api.admission), written as the headers end when the process
        is at its limit: no asyncio task, no ASGI stack, no wait for the event loop's next round. Only for
        a request without a body (its bytes are all read) and not pipelined behind a response still
        being written (answers stay in order); any other goes on to the app, which refuses it there."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return False
        raw_path = self.url.partition(b"?")[0].decode("latin-1")
        path = unquote(raw_path) if "%" in raw_path else raw_path
        refusal = admission.early_refusal(self.parser.get_method().decode("ascii"), path)
        if refusal is None:
            return False
        headers, body = refusal
        keep_alive = self.parser.should_keep_alive() and not drain.draining()
        content = [STATUS_LINE[503]]
        for name, value in [*self.server_state.default_headers, *headers]:
            content += [name, b": ", value, b"\r\n"]
        if not keep_alive:
            content.append(b"connection: close\r\n")
        content += [b"\r\n", body]
        self.transport.write(b"".join(content))
        if not keep_alive:
            self.transport.close()
        self._shed = True
        return True

    # --- bounds ---------------------------------------------------------------------------------------
    def _stop_parser(self, status: int) -> None:
        self._refusal = status
        raise _Refused(status)  # httptools turns it into HttpParserCallbackError for data_received

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self._header_timeout, self._header_deadline_passed)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        if self._reading_headers:
            self._refuse(408)

    def _refuse(self, status: int) -> None:
        """Answer ``status`` with no body and close: nothing more is read from this connection."""
        self._disarm_header_timer()
        self._reading_headers = False
        if self.transport.is_closing():
            return
        cycle = self.cycle
        refused_body = status == 413 and cycle is not None and not cycle.response_started
        if refused_body:
            # The app is waiting for the rest of this body: its own answer, to a body it never got
            # whole, is dropped, and it is told the client went away.
            cycle.disconnected = True
            cycle.message_event.set()
        if cycle is None or cycle.response_complete or refused_body:  # never inside a response being written
            self.transport.write(STATUS_LINE[status] + b"content-length: 0\r\nconnection: close\r\n\r\n")
        self.transport.close()
