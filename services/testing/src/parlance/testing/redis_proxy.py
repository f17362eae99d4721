"""A test double of the network between the gateway and Redis that loses one reply: Redis runs
the command, the client's socket timeout goes off before the reply arrives (a lost reply: the
caller cannot tell whether its command ran). The lost-reply tests of joint_limits.py and
ratelimit.py use it against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

# Longer than the gateway's RedisState socket timeout (1 s): the client gives up on the reply.
HOLD_S = 1.5


class ReplyHoldingProxy:
    """Test double of the network between the gateway and Redis: forwards every byte both
    ways, except that once armed with a marker it holds back Redis's reply to the next command
    carrying it (Redis ran it) for HOLD_S, then drops that connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.marker: bytes | None = None
        self.held = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._server is not None:
            self._server.close()

    async def _connection(
        self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter
    ) -> None:
        server, to_server = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        holding = asyncio.Event()

        async def upstream() -> None:
            while chunk := await client.read(65536):
                if self.marker is not None and self.marker in chunk:
                    self.marker = None
                    holding.set()
                to_server.write(chunk)
                await to_server.drain()

        async def downstream() -> None:
            while chunk := await server.read(65536):
                if holding.is_set():
                    self.held += 1
                    await asyncio.sleep(HOLD_S)
                    break
                to_client.write(chunk)
                await to_client.drain()

        pumps = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        self._tasks.update(pumps)
        with contextlib.suppress(Exception):
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
            self._tasks.discard(pump)
        for writer in (to_client, to_server):
            writer.close()


def script_sha(script: str) -> bytes:
    """The SHA1 an EVALSHA of `script` carries: the marker that picks its command."""
    return hashlib.sha1(script.encode()).hexdigest().encode()
