"""The fastest honest API: answers ``200 {}`` to every request once it has read the whole body.

    .venv/bin/python -m bench.sink [--port 0]

B1 points the service at it, so what is measured is the service, not an API. It speaks just enough
HTTP/1.1 for aiohttp's client (keep-alive, ``Content-Length`` bodies), on a raw asyncio protocol:
no routing, no JSON, no validation. It prints its URL as the first line of stdout and runs until
SIGTERM/SIGINT; it counts requests and body bytes and prints them when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Connection: keep-alive\r\n\r\n{}"
)


class _Counts:
    requests = 0
    body_bytes = 0


class _Http(asyncio.Protocol):
    """One connection: requests are answered in order, each once its body is complete."""

    def __init__(self, counts: _Counts) -> None:
        self._counts = counts
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(buffer) < end + 4 + length:
                return
            del buffer[: end + 4 + length]
            self._counts.requests += 1
            self._counts.body_bytes += length
            assert self._transport is not None
            self._transport.write(_ANSWER)


async def _serve(host: str, port: int) -> _Counts:
    loop = asyncio.get_running_loop()
    counts = _Counts()
    server = await loop.create_server(lambda: _Http(counts), host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"http://{host}:{bound}", flush=True)
    await stop.wait()
    server.close()
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    counts = asyncio.run(_serve(args.host, args.port))
    print(f"requests {counts.requests} body_bytes {counts.body_bytes}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
