"""bench/lib: the percentile definition, the closed loop, and the SSE reader (through the
client, against a real HTTP/1.1 server on a loopback port that sends chunked event streams in
small pieces)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import time
from collections.abc import AsyncIterator

import pytest
from lib.client import ChatClient, ChatResult, chat_body
from lib.loop import closed_loop
from lib.stats import PERCENTILE_DEFINITION, percentile


def test_percentile_interpolates_linearly_between_closest_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    assert "linear interpolation" in PERCENTILE_DEFINITION


def test_percentile_is_numpys_default_definition() -> None:
    # statistics.quantiles(method="inclusive") is the same definition (Hyndman & Fan type 7).
    rng = random.Random(3)
    for size in (2, 3, 10, 101, 999):
        values = [rng.expovariate(1.0) for _ in range(size)]
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        for q in (1, 25, 50, 90, 99):
            assert percentile(values, q) == pytest.approx(cuts[q - 1], rel=1e-12)
        assert percentile(values, 50) == pytest.approx(statistics.median(values), rel=1e-12)


def test_percentile_rejects_q_outside_0_to_100() -> None:
    with pytest.raises(ValueError):
        percentile([1.0], 101)


async def test_closed_loop_sends_count_requests_from_its_workers() -> None:
    seen: list[tuple[int, int]] = []

    async def request(worker: int, index: int) -> int:
        seen.append((worker, index))
        await asyncio.sleep(0.001 * (worker + 1))  # workers of unequal speed
        return index

    started = time.perf_counter()
    block = await closed_loop(request, workers=3, count=10)
    outside = time.perf_counter() - started
    assert sorted(block.results) == list(range(10))
    assert {worker for worker, _ in seen} == {0, 1, 2}
    assert 0 < block.window_s <= outside  # in seconds, within the call


def chunk(content: str | None = None, finish: str | None = None, **extra: object) -> str:
    delta = {} if content is None else {"content": content}
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})


GOOD = (
    f"data: {chunk('')}\r\n\r\n"  # the role chunk: no content yet
    ": keep-alive comment\n\n"
    f"data: {chunk('Hel')}\n\n"
    f"data: {chunk('lo')}\n\n"
    f"data: {chunk(finish='stop')}\n\n"
    f"data: {json.dumps({'choices': [], 'usage': {'completion_tokens': 2}})}\n\n"
    "data: [DONE]\n\n"
)


class Server:
    """Answers every request on a connection with the next canned (status, body), chunked,
    in pieces of `piece` bytes, so that events arrive split across reads."""

    def __init__(self, replies: list[tuple[int, str]], piece: int = 7) -> None:
        self.replies = replies
        self.piece = piece
        self.connections = 0
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    int(line.split(b":")[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length")
                )
                await reader.readexactly(length)
                status, body = self.replies[min(self.requests, len(self.replies) - 1)]
                self.requests += 1
                kind = "text/event-stream" if status == 200 else "application/json"
                writer.write(
                    f"HTTP/1.1 {status} X\r\ncontent-type: {kind}\r\n"
                    "transfer-encoding: chunked\r\nserver-timing: auth;dur=1.5\r\n\r\n".encode()
                )
                data = body.encode()
                for i in range(0, len(data), self.piece):
                    part = data[i : i + self.piece]
                    writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def serve(server: Server) -> AsyncIterator[str]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        listener.close()


async def stream_from(server: Server, times: int = 1) -> list[ChatResult]:
    results: list[ChatResult] = []
    async for url in serve(server):
        async with ChatClient(url, "sk-x", timeout_s=5) as client:
            for _ in range(times):
                results.append(await client.stream(chat_body("hi", "m")))
    return results


async def test_stream_reads_chunks_to_done_and_reuses_the_connection() -> None:
    server = Server([(200, GOOD)])
    first, second = await stream_from(server, times=2)
    for result in (first, second):
        assert result.error is None
        assert result.status == 200
        assert result.completion_tokens == 2
        assert result.finish_reason == "stop"
        assert result.server_timing() == {"auth": 1.5}
        moments = [result.first_event_s, result.ttft_s, result.last_content_s, result.total_s]
        assert None not in moments and moments == sorted(moments)  # type: ignore[type-var]
    # Read to its end after [DONE], the body frees the connection for the next request.
    assert (server.connections, server.requests) == (1, 2)


async def test_error_event_and_missing_done_and_http_errors_come_back_as_errors() -> None:
    error_event = f"data: {chunk('a')}\n\ndata: {json.dumps({'error': {'code': 'x'}})}\n\n"
    no_done = f"data: {chunk('a')}\n\n"
    server = Server([(200, error_event), (200, no_done), (429, '{"error": {}}')])
    errored, cut, refused = await stream_from(server, times=3)
    assert errored.error is not None and "error event" in errored.error
    assert errored.ttft_s is not None  # the content before the error still counts
    assert cut.error is not None and "without [DONE]" in cut.error
    assert refused.error is not None and refused.error.startswith("http 429")
