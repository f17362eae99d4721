"""The generator targets (clients/targets.py): GATEWAY_GENERATOR_URL's entries and DNS
discovery's lookups. The resolver here is a test double of DNS (no name server runs in the
tests); the discovery loop against real generator processes is in tests/test_models_routing.py.
"""

from __future__ import annotations

import pytest

from parlance.gateway.clients.targets import Discovery, address, host_and_port, parse_targets


def test_entries_and_their_hosts() -> None:
    assert parse_targets("a:1, b:2") == ["a:1", "b:2"]
    assert parse_targets('["dns:///generator:50051"]') == ["dns:///generator:50051"]
    assert host_and_port("generator:50051") == ("generator", 50051)
    assert host_and_port("dns:///generator.parlance.svc:50051") == ("generator.parlance.svc", 50051)
    assert host_and_port("dns://10.0.0.10:53/generator:50051") == ("generator", 50051)
    assert host_and_port("[fd00::1]:50051") == ("fd00::1", 50051)
    for bad in ("generator", "dns:///generator", "generator:http", ":50051"):
        with pytest.raises(ValueError, match="needs a port"):
            host_and_port(bad)
    assert address("fd00::1", 50051) == "[fd00::1]:50051"
    assert address("10.1.2.3", 50051) == "10.1.2.3:50051"


async def test_a_failed_lookup_keeps_the_last_addresses() -> None:
    answers: dict[str, list[str] | OSError] = {
        "dns:///chat:1": ["10.0.0.1:1", "10.0.0.2:1"],
        "dns:///embed:2": ["10.0.0.3:2"],
    }

    async def resolver(entry: str) -> list[str]:
        answer = answers[entry]
        if isinstance(answer, OSError):
            raise answer
        return answer

    discovery = Discovery(answers, resolver)
    assert await discovery.addresses() == (["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:2"], [])
    answers["dns:///chat:1"] = OSError("SERVFAIL")
    answers["dns:///embed:2"] = ["10.0.0.4:2"]
    assert await discovery.addresses() == (
        ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.4:2"],
        ["dns:///chat:1"],
    )


def test_a_malformed_entry_fails_at_start() -> None:
    with pytest.raises(ValueError, match="needs a port"):
        Discovery(["dns:///generator"])


async def test_the_real_resolver_finds_localhost() -> None:
    from parlance.gateway.clients.targets import resolve

    assert "127.0.0.1:50051" in await resolve("dns:///localhost:50051")
