"""Leaving out max_tokens neither lifts the key's max_tokens limit nor the TPM reservation
(issue 14, finding 3: a key limited to 5 tokens got 2,012); ignore_eos only for the users the
settings allow it."""

from __future__ import annotations

from pathlib import Path

from parlance.testing.inprocess import InProcessGateway, inprocess_gateway


async def test_the_keys_limit_goes_to_the_generator(gw: InProcessGateway) -> None:
    caller = await gw.create_key(max_tokens=5)
    assert (await gw.chat(caller=caller)).status_code == 200
    assert gw.generator.requests[-1].sampling.max_tokens == 5


async def test_without_a_key_limit_the_gateways_limit_goes(gw: InProcessGateway) -> None:
    assert (await gw.chat()).status_code == 200
    sampling = gw.generator.requests[-1].sampling
    assert sampling.HasField("max_tokens")
    assert sampling.max_tokens == gw.settings.max_tokens_limit


async def test_an_explicit_max_tokens_is_sent_as_asked(gw: InProcessGateway) -> None:
    await gw.chat(max_tokens=7)
    assert gw.generator.requests[-1].sampling.max_tokens == 7


async def test_the_reservation_is_no_larger_than_the_keys_limit(gw: InProcessGateway) -> None:
    caller = await gw.create_key(max_tokens=5, tpm=100)
    # ~3 prompt tokens + 5: it fits in 100 (the gateway's estimate, 256, would not).
    response = await gw.chat(caller=caller)
    assert response.status_code == 200, response.text
    assert int(response.headers["x-ratelimit-remaining-tokens"]) >= 100 - 5 - 10


async def test_ignore_eos_is_refused_to_other_keys(gw: InProcessGateway) -> None:
    response = await gw.chat(ignore_eos=True, max_tokens=5)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "ignore_eos"
    assert gw.generator.requests == []
    assert (await gw.chat(ignore_eos=False)).status_code == 200


async def test_ignore_eos_for_an_allowed_user(tmp_path: Path) -> None:
    async with inprocess_gateway(tmp_path) as gw:
        gw.settings.ignore_eos_users = gw.alice.user_id
        assert (await gw.chat(ignore_eos=True, max_tokens=5)).status_code == 200
        assert gw.generator.requests[-1].sampling.ignore_eos
        refused = await gw.chat(ignore_eos=True, max_tokens=5, caller=gw.bob)
        assert refused.status_code == 400
