"""A test's own servicer (a double of a model service) behind a real gRPC server on a free
port, for tests of the gateway's gRPC clients (deadlines, batching, idle timeouts)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc


@asynccontextmanager
async def serving(
    add_to_server: Callable[[Any, grpc.aio.Server], None], servicer: Any
) -> AsyncIterator[str]:
    """Serves `servicer` (added by the generated `add_*Servicer_to_server`) on 127.0.0.1 and a
    free port; yields the address; stops the server at once on the way out."""
    server = grpc.aio.server()
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
