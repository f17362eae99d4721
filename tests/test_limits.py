"""API keys, rate limits, concurrency leases and the response cache under load, with the stack
as processes (the scripted engine, so streams are long and cheap), a real redis-server of the
tests' own and, where Redis must go away mid-test, one more redis-server on its own port."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from parlance.testing import (
    ALICE,
    ALICE_KEY,
    BOB,
    BOB_KEY,
    MODEL,
    RedisProcess,
    ServiceProcess,
    Stack,
    StackPool,
    base_url,
    bearer,
    chat,
    iter_events,
    scrape,
    scripted_generator,
    start_extra_gateway,
    static_key_id,
    total,
    wait_until,
)

ADMIN_KEY = "sk-admin-test-limits-0123456789"
ADMIN = bearer(ADMIN_KEY)
# The scripted engine echoes the last user message, one word a token, at 50 tokens/s.
# A long, plain prompt (~80 words). Not "word0 word1 ...": the default MiniLM safety head
# scores that made-up sequence as violence (0.76, a known false positive, issue 19).
LONG = " ".join(["The garden needs water in the morning and some shade in the afternoon."] * 6)


def body(content: str = "Hi there", max_tokens: int = 1, **extra: object) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        **extra,
    }


@pytest.fixture(scope="module")
def limits_stack(stacks: StackPool) -> Iterator[Stack]:
    stack = stacks.start(
        "limits",
        gateway_env={
            "GATEWAY_ADMIN_KEY": ADMIN_KEY,
            "GATEWAY_KEY_CACHE_TTL_S": "1",
            "GATEWAY_MAX_CONCURRENT_PER_KEY": "256",
            "GATEWAY_RPM_LIMIT": "100000",
        },
        env={"generator": scripted_generator(tokens_per_s=50)},
    )
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def rdb(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server)
    yield client
    client.close()


def url(target: Stack | ServiceProcess, path: str = "/v1/chat/completions") -> str:
    return base_url(target) + path


def create_key(stack: Stack, user_id: str, **limits: int) -> dict:
    response = httpx.post(
        url(stack, "/v1/admin/keys"), json={"user_id": user_id, **limits}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    return response.json()


def lease_count(rdb: redis.Redis, key_id: str) -> int:
    return int(rdb.zcard(f"parlance:lease:{key_id}"))


# --- rate limits ------------------------------------------------------------------------------


def test_100_concurrent_clients_against_a_limit_of_n_get_exactly_n(limits_stack: Stack) -> None:
    key = create_key(limits_stack, "crowd", rpm_limit=17)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            timeout=60, limits=httpx.Limits(max_connections=100)
        ) as client:
            return await asyncio.gather(
                *(
                    client.post(url(limits_stack), json=body(), headers=bearer(key["key"]))
                    for _ in range(100)
                )
            )

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 17, statuses
    assert statuses.count(429) == 83
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert float(refused.headers["retry-after"]) > 0
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_two_gateways_sharing_redis_allow_exactly_the_limit_together(limits_stack: Stack) -> None:
    """One key's limit holds across replicas: 100 concurrent requests spread evenly over two
    gateways on the same Redis get exactly N answers between them, not N from each."""
    key = create_key(limits_stack, "crowd-of-two", rpm_limit=17)
    other = start_extra_gateway(limits_stack, {})
    try:

        async def burst() -> list[httpx.Response]:
            targets = [url(limits_stack), url(other)]
            async with httpx.AsyncClient(
                timeout=60, limits=httpx.Limits(max_connections=100)
            ) as client:
                return await asyncio.gather(
                    *(
                        client.post(targets[i % 2], json=body(), headers=bearer(key["key"]))
                        for i in range(100)
                    )
                )

        statuses = [r.status_code for r in asyncio.run(burst())]
    finally:
        other.stop()
        limits_stack.services.pop(f"gateway-{other.http_port}", None)
    assert statuses.count(200) == 17, statuses
    assert statuses.count(429) == 83, statuses


def test_per_key_limits_from_the_admin_api_apply(limits_stack: Stack) -> None:
    key = create_key(limits_stack, "carol", rpm_limit=2, max_tokens=5)
    headers = bearer(key["key"])
    too_long = chat(limits_stack, body(max_tokens=6), headers)
    assert too_long.status_code == 400, too_long.text
    assert too_long.json()["error"]["param"] == "max_tokens"
    # The refused request still counted for RPM (it reached the limiter): one more is allowed.
    assert chat(limits_stack, body(max_tokens=5), headers).status_code == 200
    third = chat(limits_stack, body(max_tokens=5), headers)
    assert third.status_code == 429, third.text
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
    assert third.headers["x-ratelimit-limit-requests"] == "2"
    assert int(third.headers["retry-after"]) >= 1


def test_every_response_carries_the_ratelimit_headers(limits_stack: Stack) -> None:
    key = create_key(limits_stack, "dave", rpm_limit=4, tpm_limit=1000)
    headers = bearer(key["key"])
    ok = chat(limits_stack, body(max_tokens=3), headers)
    with httpx.stream(
        "POST", url(limits_stack), json=body(max_tokens=3, stream=True), headers=headers
    ) as streamed:
        streamed.read()
    too_many_tokens = chat(limits_stack, body(max_tokens=2000), headers)
    assert too_many_tokens.status_code == 429
    assert "Request too large" in too_many_tokens.json()["error"]["message"]
    invalid = chat(limits_stack, body(max_tokens=3, n=100), headers)
    assert invalid.status_code == 400
    too_many_requests = chat(limits_stack, body(max_tokens=3), headers)
    assert too_many_requests.status_code == 429
    for response in (ok, streamed, too_many_tokens, invalid, too_many_requests):
        for kind in ("requests", "tokens"):
            for field in ("limit", "remaining", "reset"):
                assert f"x-ratelimit-{field}-{kind}" in response.headers, (
                    response.status_code,
                    dict(response.headers),
                )
    assert ok.headers["x-ratelimit-limit-tokens"] == "1000"
    assert int(ok.headers["x-ratelimit-remaining-tokens"]) < 1000


def test_tpm_reconciles_after_a_stream_cut_short(limits_stack: Stack, rdb: redis.Redis) -> None:
    # 600 tokens a minute come back at 10 a second: a reservation that was not reconciled
    # would stay visible for most of a minute.
    key = create_key(limits_stack, "erin", tpm_limit=600)
    headers = bearer(key["key"])
    prompt = " ".join(f"w{i}" for i in range(150))  # ~600 characters: ~150 tokens estimated
    with httpx.stream(
        "POST", url(limits_stack), json=body(prompt, max_tokens=400, stream=True), headers=headers
    ) as response:
        assert response.status_code == 200
        reserved = 600 - int(response.headers["x-ratelimit-remaining-tokens"])
        assert reserved >= 500
        chunks = 0
        for event in iter_events(response):
            if any("content" in choice["delta"] for choice in event["choices"]):
                chunks += 1
                if chunks == 3:
                    break  # the client goes away mid-stream

    tpm_key = f"parlance:rl:tpm:{key['id']}"

    def outstanding() -> float:
        """Tokens still charged: the limit's offset ("<written_ms> <ahead_ms>") now."""
        seconds, micros = rdb.time()
        state = rdb.get(tpm_key)
        if not state:
            return 0.0
        written_ms, ahead_ms = state.split()
        elapsed_ms = seconds * 1000 + micros // 1000 - int(written_ms)
        return max(0.0, float(ahead_ms) - elapsed_ms) / (60_000 / 600)

    wait_until(lambda: outstanding() < 300, 8, "the unused reservation is refunded")
    # What the cut stream really cost (its prompt and the tokens generated) stays charged.
    assert outstanding() > 50
    following = chat(limits_stack, body(max_tokens=1), headers)
    assert following.status_code == 200
    assert int(following.headers["x-ratelimit-remaining-tokens"]) > 600 - 300


# --- concurrency leases -----------------------------------------------------------------------


def test_200_streams_cancelled_at_random_points_leave_no_lease(
    limits_stack: Stack, rdb: redis.Redis
) -> None:
    rng = random.Random(5)
    plan = [rng.choice(["before-headers", "mid-stream", "mid-stream", "end"]) for _ in range(200)]
    limit = asyncio.Semaphore(40)

    async def one(client: httpx.AsyncClient, how: str) -> None:
        payload = body(LONG, max_tokens=60, stream=True)
        async with limit:
            if how == "before-headers":
                try:
                    await asyncio.wait_for(
                        client.post(url(limits_stack), json=payload, headers=BOB),
                        rng.uniform(0.0, 0.3),
                    )
                except TimeoutError:
                    pass
                return
            stop_after = rng.randint(0, 40) if how == "mid-stream" else 10_000
            async with client.stream(
                "POST", url(limits_stack), json=payload, headers=BOB
            ) as response:
                assert response.status_code == 200, await response.aread()
                seen = 0
                async for _ in response.aiter_lines():
                    seen += 1
                    if seen > stop_after:
                        break

    async def run() -> None:
        async with httpx.AsyncClient(
            timeout=60, limits=httpx.Limits(max_connections=200)
        ) as client:
            await asyncio.gather(*(one(client, how) for how in plan))

    asyncio.run(run())
    key_id = static_key_id(BOB_KEY)
    port = limits_stack.services["gateway"].metrics_port
    assert port is not None
    wait_until(
        lambda: (
            lease_count(rdb, key_id) == 0
            and total(scrape(port), "parlance_gateway_leases_held") == 0
            and total(scrape(port), "parlance_gateway_requests_in_flight") == 0
        ),
        15,
        "every lease released",
    )


def test_a_killed_gateways_leases_expire(limits_stack: Stack, rdb: redis.Redis) -> None:
    key = create_key(limits_stack, "frank", max_concurrent=1)
    headers = bearer(key["key"])
    gateway = start_extra_gateway(limits_stack, {"GATEWAY_LEASE_TTL_S": "1.5"})
    name = f"gateway-{gateway.http_port}"
    try:
        with httpx.stream(
            "POST", url(gateway), json=body(LONG, max_tokens=80, stream=True), headers=headers
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()  # kept: dropping it would close the connection
            next(lines)
            assert lease_count(rdb, key["id"]) == 1
            # The one slot is taken: another request on any gateway is refused.
            assert chat(limits_stack, body(), headers).status_code == 429
            gateway.kill()  # SIGKILL: no release, no more heartbeats
        assert lease_count(rdb, key["id"]) == 1
        gateway.start()
        limits_stack.wait_ready(name)
        # The restarted gateway does not know the lease; it expires by its TTL in Redis.
        wait_until(lambda: lease_count(rdb, key["id"]) == 0, 10, "the dead gateway's lease expired")
        assert chat(gateway, body(), headers).status_code == 200
        assert chat(limits_stack, body(), headers).status_code == 200
    finally:
        gateway.stop()
        limits_stack.services.pop(name, None)


# --- Redis outage -----------------------------------------------------------------------------


def test_redis_stopped_mid_test_follows_the_policy_and_recovers(limits_stack: Stack) -> None:
    private = RedisProcess()
    private.start()
    gateways: dict[str, ServiceProcess] = {}
    try:
        for policy in ("local", "open", "closed"):
            gateways[policy] = start_extra_gateway(
                limits_stack,
                {
                    "GATEWAY_REDIS_URL": private.url,
                    "GATEWAY_RPM_LIMIT": "3",
                    "GATEWAY_RATELIMIT_ON_REDIS_DOWN": policy,
                    "GATEWAY_LEASES_ON_REDIS_DOWN": policy,
                },
            )
        # Redis up: the limit is shared through Redis, so all gateways together allow 3.
        statuses = [chat(gateways[p], body(), ALICE).status_code for p in ("local", "open")]
        statuses += [chat(gateways["closed"], body(), ALICE).status_code for _ in range(2)]
        assert statuses == [200, 200, 200, 429]
        private.stop()

        def outcomes(policy: str, count: int = 5) -> list[int]:
            return [chat(gateways[policy], body(), ALICE).status_code for _ in range(count)]

        # local: each gateway keeps the limit on its own; open: no limit; closed: 503.
        assert outcomes("local") == [200, 200, 200, 429, 429]
        assert outcomes("open") == [200] * 5
        refused = chat(gateways["closed"], body(), ALICE)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "service_unavailable"
        for gateway in gateways.values():
            assert gateway.http_port is not None
            samples = scrape(gateway.metrics_port)
            assert total(samples, "parlance_gateway_redis_fallback_active") == 1
            assert total(samples, "parlance_gateway_redis_errors_total") >= 1

        private.start()

        def back_on_redis(gateway: ServiceProcess) -> bool:
            # A request that reached Redis switches the fallback gauge off again.
            chat(gateway, body(), ALICE)
            assert gateway.http_port is not None
            samples = scrape(gateway.metrics_port)
            return total(samples, "parlance_gateway_redis_fallback_active") == 0

        for policy, gateway in gateways.items():
            wait_until(lambda g=gateway: back_on_redis(g), 10, f"{policy} gateway on Redis")
        client = redis.Redis.from_url(private.url)
        try:
            assert client.exists(f"parlance:rl:rpm:{static_key_id(ALICE_KEY)}") == 1
            client.flushall()  # the limit starts afresh
        finally:
            client.close()
        # Shared again: three gateways, one limit of 3.
        statuses = [chat(gateways[p], body(), ALICE).status_code for p in gateways]
        statuses.append(chat(gateways["open"], body(), ALICE).status_code)
        assert statuses == [200, 200, 200, 429]
    finally:
        for gateway in gateways.values():
            gateway.stop()
            limits_stack.services.pop(f"gateway-{gateway.http_port}", None)
        private.stop()


# --- response cache ---------------------------------------------------------------------------


def test_one_tenant_never_receives_another_tenants_cached_answer(
    limits_stack: Stack, rdb: redis.Redis
) -> None:
    question = body("Tell me a secret number 4711", max_tokens=8, temperature=0)
    before = set(rdb.scan_iter("parlance:cache:*"))
    assert chat(limits_stack, question, ALICE).headers["x-cache"] == "miss"
    assert chat(limits_stack, question, ALICE).headers["x-cache"] == "hit"
    # Same request, another tenant: generated afresh, then served from bob's own entry.
    assert chat(limits_stack, question, BOB).headers["x-cache"] == "miss"
    assert chat(limits_stack, question, BOB).headers["x-cache"] == "hit"
    assert len(set(rdb.scan_iter("parlance:cache:*")) - before) == 2
    # The tenant is the user, not the key: alice's new key shares her cache, a new user not.
    alice_key = create_key(limits_stack, "alice")
    assert chat(limits_stack, question, bearer(alice_key["key"])).headers["x-cache"] == "hit"
    other_key = create_key(limits_stack, "mallory")
    assert chat(limits_stack, question, bearer(other_key["key"])).headers["x-cache"] == "miss"
    bypass = httpx.post(
        url(limits_stack),
        json=question,
        headers={**ALICE, "Cache-Control": "no-cache"},
        timeout=60,
    )
    assert bypass.headers["x-cache"] == "bypass"


# --- API keys ---------------------------------------------------------------------------------


def test_revoked_keys_stop_working_on_every_replica(limits_stack: Stack) -> None:
    key = create_key(limits_stack, "grace")
    headers = bearer(key["key"])
    other = start_extra_gateway(limits_stack, {"GATEWAY_KEY_CACHE_TTL_S": "1"})
    try:
        assert chat(limits_stack, body(), headers).status_code == 200
        assert chat(other, body(), headers).status_code == 200  # cached on that replica now
        revoked = httpx.delete(url(limits_stack, f"/v1/admin/keys/{key['id']}"), headers=ADMIN)
        assert revoked.status_code == 200, revoked.text
        refused = chat(limits_stack, body(), headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        wait_until(lambda: chat(other, body(), headers).status_code == 401, 4, "revoked there")
        listed = httpx.get(
            url(limits_stack, "/v1/admin/keys"),
            params={"user_id": "grace", "include_revoked": "true"},
            headers=ADMIN,
        ).json()["data"]
        assert [k["id"] for k in listed] == [key["id"]] and listed[0]["revoked_at"]
        assert "key" not in listed[0]
    finally:
        other.stop()
        limits_stack.services.pop(f"gateway-{other.http_port}", None)


def test_admin_routes_need_the_admin_key(limits_stack: Stack) -> None:
    assert httpx.get(url(limits_stack, "/v1/admin/keys")).status_code == 401
    assert httpx.get(url(limits_stack, "/v1/admin/keys"), headers=ALICE).status_code == 403
    wrong = {"Authorization": "Bearer sk-admin-wrong"}
    assert httpx.get(url(limits_stack, "/v1/admin/keys"), headers=wrong).status_code == 401


def test_keys_are_stored_only_as_digests(limits_stack: Stack) -> None:
    key = create_key(limits_stack, "heidi")
    secret = key["key"]
    assert secret.startswith("sk-parlance-") and secret not in json.dumps(key["hint"])
    database = Path(limits_stack.data_dir) / "gateway.db"
    stored = b"".join(p.read_bytes() for p in database.parent.glob("gateway.db*"))
    assert stored, "the key store file is missing"
    assert secret.encode() not in stored
    assert secret[len("sk-parlance-") :].encode() not in stored
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in stored


def test_the_cli_creates_lists_and_revokes(limits_stack: Stack) -> None:
    gateway_env = limits_stack.services["gateway"].env
    env = {**os.environ, "GATEWAY_DATABASE_URL": gateway_env["GATEWAY_DATABASE_URL"]}
    cli = [str(Path(sys.executable).parent / "parlance-gateway"), "keys"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    created = run("create", "--user", "ivan", "--name", "laptop", "--rpm", "7")
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout)
    assert record["user_id"] == "ivan" and record["rpm_limit"] == 7
    assert "not shown again" in created.stderr
    ok = chat(limits_stack, body(), bearer(record["key"]))
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-ratelimit-limit-requests"] == "7"
    listed = [json.loads(line) for line in run("list", "--user", "ivan").stdout.splitlines()]
    assert [k["id"] for k in listed] == [record["id"]]
    assert all("key" not in k for k in listed)
    revoked = run("revoke", record["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert run("list", "--user", "ivan").stdout.strip() == ""
    assert run("revoke", record["id"]).returncode == 1
    # Another process revoked it: the gateway notices within its key cache TTL (1 s here).
    wait_until(
        lambda: chat(limits_stack, body(), bearer(record["key"])).status_code == 401,
        4,
        "revocation seen by the gateway",
    )
