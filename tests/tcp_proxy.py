"""A TCP proxy between the service and its database that a test drives into a fault.

Modes, switchable at any time while connections are open:

- pass-through (the default), optionally with `latency` seconds added to every chunk each way;
- `reset()`: every open connection is aborted with a TCP RST, and while `refusing` is set new
  ones are reset as soon as they are accepted;
- `black_hole`: nothing is forwarded in either direction, on open connections and on new ones,
  as behind a route that drops every packet; bytes are held, not lost, so once healed they flow
  on as TCP's retransmission would deliver them.

`heal()` returns to plain pass-through.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.latency = 0.0
        self.refusing = False
        self.accepted = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def black_hole(self) -> bool:
        return not self._flowing.is_set()

    @black_hole.setter
    def black_hole(self, on: bool) -> None:
        if on:
            self._flowing.clear()
        else:
            self._flowing.set()

    @property
    def open_connections(self) -> int:
        """Client-side connections currently open through the proxy."""
        return sum(1 for writer in self._writers if writer.get_extra_info("peername") is not None)

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def heal(self) -> None:
        self.latency = 0.0
        self.refusing = False
        self._flowing.set()

    def reset(self) -> None:
        """Abort every open connection, both sides, with a TCP RST."""
        for writer in list(self._writers):
            _abort(writer)
        self._writers.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter):  # type: ignore[no-untyped-def]
        self.accepted += 1
        if self.refusing:
            _abort(client)
            return
        self._writers.add(client)
        server: asyncio.StreamWriter | None = None
        try:
            await self._flowing.wait()  # a dropped SYN: no answer until the route heals
            server_reader, server = await asyncio.open_connection(
                self.target_host, self.target_port
            )
            self._writers.add(server)
            pumps = [
                asyncio.create_task(self._pump(client_reader, server)),
                asyncio.create_task(self._pump(server_reader, client)),
            ]
            self._tasks.update(pumps)
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                    self._tasks.discard(pump)
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (client, server):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                await self._flowing.wait()
                if self.latency:
                    await asyncio.sleep(self.latency)
                writer.write(chunk)
                await writer.drain()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: what a peer sees when a middlebox drops the connection."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
