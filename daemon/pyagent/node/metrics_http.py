"""``GET /metrics`` over HTTP/1.x, served by a small trio handler.

Why not prometheus_client's own server (``start_http_server``): it runs in a thread of its own, and its
collectors would read the daemon's dicts (connections, counters, the member table) from that thread
while the trio loop changes them, which is a race (``dict changed size during iteration``) and a bare
thread beside the daemon's nurseries. Here a scrape is one trio task: it reads a bounded request, renders
the registry with ``generate_latest`` on the loop (a few milliseconds, done every 15 s or so; the loop
waits for no I/O meanwhile) and closes the connection. Every connection is bounded in time, in header
bytes and in number.
"""

from __future__ import annotations

import logging

import trio
from prometheus_client import CollectorRegistry, generate_latest

from pyagent.config import parse_metrics_listen
from pyagent.errors import ConfigError

log = logging.getLogger("pyagent.metrics")

CONNECTIONS_MAX = 16
REQUEST_BYTES_MAX = 8192
REQUEST_TIMEOUT_S = 10.0
PATH = "/metrics"
# Every name here is a classic one (no UTF-8), so generate_latest's text is format 0.0.4, which every
# Prometheus release reads; newer prometheus_client labels the same text 1.0.0, which old ones do not know.
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def url_of(sockname: tuple[object, ...]) -> str:
    host, port = str(sockname[0]), sockname[1]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}{PATH}"


async def open_listeners(listen: str) -> list[trio.SocketListener]:
    host, port = parse_metrics_listen(listen, "[metrics] listen")
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {listen}: {exc.strerror or exc}; choose another [metrics] listen "
            f"or pass --metrics HOST:PORT"
        ) from None


async def serve(listeners: list[trio.SocketListener], registry: CollectorRegistry) -> None:
    limiter = trio.CapacityLimiter(CONNECTIONS_MAX)

    async def handle(stream: trio.SocketStream) -> None:
        # A scraper that hangs up, stalls or floods costs its own connection, never the daemon.
        async with stream:
            try:
                with trio.move_on_after(REQUEST_TIMEOUT_S):
                    try:
                        limiter.acquire_nowait()
                    except trio.WouldBlock:
                        await _respond(stream, 503, b"too many metrics connections\n")
                        return
                    try:
                        await _answer(stream, registry)
                    finally:
                        limiter.release()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.debug("metrics connection ended: %r", exc)

    await trio.serve_listeners(handle, listeners)


async def _answer(stream: trio.SocketStream, registry: CollectorRegistry) -> None:
    request = bytearray()
    while b"\r\n\r\n" not in request and b"\n\n" not in request:
        if len(request) > REQUEST_BYTES_MAX:
            await _respond(stream, 431, b"request too large\n")
            return
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        request += chunk
    line = bytes(request).split(b"\n", 1)[0].strip().split()
    if len(line) != 3 or not line[2].startswith(b"HTTP/"):
        await _respond(stream, 400, b"bad request\n")
        return
    method, target = line[0], line[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        await _respond(stream, 405, b"only GET\n", extra=b"Allow: GET, HEAD\r\n")
    elif target == PATH.encode():
        try:
            body = generate_latest(registry)
        except Exception:
            # A collector's bug (a plugin's, say) costs this scrape, not the daemon.
            log.exception("rendering the metrics failed")
            await _respond(stream, 500, b"rendering the metrics failed; see the daemon log\n")
            return
        await _respond(stream, 200, body, CONTENT_TYPE, head=method == b"HEAD")
    elif target == b"/":
        await _respond(stream, 200, b"pyagent: metrics at /metrics\n", head=method == b"HEAD")
    else:
        await _respond(stream, 404, b"not found; metrics are at /metrics\n")


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}
_REASONS |= {431: "Request Header Fields Too Large", 503: "Service Unavailable"}


async def _respond(
    stream: trio.SocketStream,
    status: int,
    body: bytes,
    content_type: bytes = b"text/plain; charset=utf-8",
    head: bool = False,
    extra: bytes = b"",
) -> None:
    header = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n".encode()
        + b"Content-Type: "
        + content_type
        + f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n".encode()
        + extra
        + b"\r\n"
    )
    await stream.send_all(header if head else header + body)
