"""How many connections busi-serve holds, and for how long (uvicorn's HTTP protocol, extended).

uvicorn closes a keep-alive connection that stays idle after a response (`timeout_keep_alive`),
but holds forever a connection that never completes its request headers (a port scan, a
slowloris) or its body, and its `limit_concurrency` answers 503 only once headers have
arrived, so idle connections pile up until the process runs out of file descriptors (then
its accept loop logs "Too many open files" without end and the health check stops). This
protocol adds what it lacks:

- a header timeout: from the connection's start (or the first byte of a later request on it)
  to the request's complete headers; then no gap longer than the same timeout between the
  pieces of its body. A connection that is slower is closed;
- a connection limit: beyond `max_connections`, the connection that has waited longest for a
  request (fresh, or idle in keep-alive) is closed to make room, so an idle flood cannot lock
  out a health check; only when every connection has a request in progress is the new one
  answered 503 and closed. Descriptors stay below the process limit (`ensure_open_files`).

uvicorn takes the class through its public `http=` setting; what it overrides are the
asyncio protocol methods, httptools' parser callbacks and uvicorn's `on_response_complete`.
"""

from __future__ import annotations

import json
import resource

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from busi.runtime.errors import UsageError

#: descriptors beyond the connections: model files, threads' pipes, the listening socket, logs
SPARE_FILES = 256


def protocol(max_connections: int, header_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a connection limit and header and body timeouts."""
    body = json.dumps({"error": f"{max_connections} connections have requests in progress, the server's limit; "
                                "try again later"}).encode()
    busy = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    waiting: dict = {}  # connections waiting for a request, the longest-waiting first (insertion order)

    class Protocol(HttpToolsProtocol):
        _timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                oldest = next(iter(waiting), None)
                if oldest is None:  # every connection has a request in progress
                    transport.write(busy)
                    transport.close()
                    return
                waiting.pop(oldest)
                oldest.transport.close()
            self._wait_for_request()

        def data_received(self, data: bytes) -> None:
            if self._timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of a next request: its headers are due within the timeout
            super().data_received(data)

        def on_headers_complete(self) -> None:
            waiting.pop(self, None)
            self._arm()  # the body (if any) must keep coming
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            self._arm()
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._disarm()  # the request is whole: the model may take its time
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._wait_for_request(arm=False)  # uvicorn's keep-alive timeout runs now

        def connection_lost(self, exc):
            self._disarm()
            waiting.pop(self, None)
            super().connection_lost(exc)

        def _wait_for_request(self, arm: bool = True) -> None:
            waiting.pop(self, None)
            waiting[self] = None
            if arm:
                self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._timer = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _too_slow(self) -> None:
            self._timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return Protocol


def ensure_open_files(max_connections: int) -> None:
    """Raise the soft limit on open files to what `max_connections` needs (up to the hard
    limit); a hard limit below that is a usage error, not a server that fails under load."""
    need = max_connections + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise UsageError(f"--max-connections {max_connections} needs {need} open files, but this process may open "
                         f"at most {hard} (ulimit -Hn): lower --max-connections or raise the limit")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
