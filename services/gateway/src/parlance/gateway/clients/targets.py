"""The generator targets: GATEWAY_GENERATOR_URL's entries, and replicas found in DNS
(GATEWAY_GENERATOR_DISCOVERY=dns).

By default each entry of GATEWAY_GENERATOR_URL is one target and gRPC balances the addresses
behind it (`dns:///generator:50051` and its `round_robin` policy): the gateway then cannot
tell the replicas apart, so it can neither keep a conversation on one (affinity) nor send a
call to the least busy. With DNS discovery the gateway resolves each entry's host itself,
every GATEWAY_GENERATOR_REFRESH_S, and every address becomes a target of its own (a channel
to that one pod): a Kubernetes headless Service's ready pods, or compose's replicas of one
service. A pod that leaves DNS stops taking calls at once; its channel is closed once the
calls on it have finished. A failed lookup keeps the targets of the last good one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable, Iterable

# (entry) -> the "address:port" targets it stands for now.
Resolver = Callable[[str], Awaitable[list[str]]]


def parse_targets(value: str) -> list[str]:
    """GATEWAY_GENERATOR_URL: one target, or several separated by commas (or a JSON list)."""
    text = value.strip()
    if text.startswith("["):
        items = json.loads(text)
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError("GATEWAY_GENERATOR_URL as JSON must be a list of strings")
    else:
        items = text.split(",")
    targets = [t.strip() for t in items if t.strip()]
    if not targets:
        raise ValueError("GATEWAY_GENERATOR_URL names no generator target")
    return targets


def host_and_port(entry: str) -> tuple[str, int]:
    """The host and port of a target entry: "host:port", "dns:///host:port",
    "dns://authority/host:port" or "[v6]:port". ValueError when there is no port."""
    text = entry
    if text.startswith("dns:"):
        text = text.removeprefix("dns:").lstrip("/")
        if "/" in text:  # dns://authority/host:port: the authority is gRPC's, not ours
            text = text.split("/", 1)[1]
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"generator target {entry!r} needs a port (host:port)")
    return host.strip("[]"), int(port)


def address(host: str, port: int) -> str:
    """A gRPC target for one address (IPv6 in brackets)."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


async def resolve(entry: str) -> list[str]:
    """Every address the entry's host resolves to, as targets, sorted; OSError when the lookup
    fails (including a name with no addresses)."""
    host, port = host_and_port(entry)
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    found = sorted({address(str(info[4][0]), port) for info in infos})
    if not found:
        raise OSError(f"{host} has no addresses")
    return found


class Discovery:
    """The addresses each entry stood for at its last good lookup."""

    def __init__(self, entries: Iterable[str], resolver: Resolver = resolve) -> None:
        self.entries = list(entries)
        for entry in self.entries:
            host_and_port(entry)  # a malformed entry fails at start-up, not at the first lookup
        self._resolver = resolver
        self._last: dict[str, list[str]] = {}

    async def addresses(self) -> tuple[list[str], list[str]]:
        """(every address to target now, entries whose lookup failed this time)."""
        results = await asyncio.gather(
            *(self._resolver(entry) for entry in self.entries), return_exceptions=True
        )
        failed = []
        for entry, result in zip(self.entries, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(entry)
            else:
                self._last[entry] = result
        wanted = dict.fromkeys(a for entry in self.entries for a in self._last.get(entry, []))
        return list(wanted), failed
