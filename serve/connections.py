"""How many connections busi-serve holds, and for how long (uvicorn's HTTP protocol, extended).

uvicorn closes a keep-alive connection that stays idle after a response (`timeout_keep_alive`),
but a connection that never completes its request headers (a port scan, a slow client, a
slowloris) is held forever, and its `limit_concurrency` answers 503 only once headers have
arrived, so idle connections pile up until the process runs out of file descriptors (then
its accept loop logs "Too many open files" without end and the health check stops). This
protocol adds the two limits it lacks:

- a header timeout: from the connection's start (or the first byte of a later request on it)
  to the request's complete headers; a connection that takes longer is closed;
- a connection limit: a connection beyond `max_connections` is answered 503 and closed at
  once, so the descriptors in use stay below the process limit (`ensure_open_files`).

uvicorn takes the class through its public `http=` setting; what it overrides are the
asyncio protocol methods and httptools' parser callbacks.
"""

from __future__ import annotations

import json
import resource

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from busi.runtime.errors import UsageError

#: descriptors beyond the connections: model files, threads' pipes, the listening socket, logs
SPARE_FILES = 256


def protocol(max_connections: int, header_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a connection limit and a header timeout."""
    body = json.dumps({"error": f"{max_connections} connections are open, the server's limit; try again later"}).encode()
    busy = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    class Protocol(HttpToolsProtocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(busy)
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of a next request: its headers are due within the timeout
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
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
