"""What the gateway tells history about each stored message: its moderation verdict
(moderation_json) and whether the gateway generated it (issue 14, finding 2, the gateway's
part: the training export takes only generated, unflagged answers)."""

from __future__ import annotations

import json
from pathlib import Path

from parlance.testing.fakes import Script, wait_for
from parlance.testing.inprocess import InProcessGateway, inprocess_gateway


def verdicts(message: object) -> dict[str, dict[str, object]]:
    return json.loads(message.moderation_json)  # type: ignore[attr-defined, no-any-return]


async def test_each_message_carries_its_verdict(gw: InProcessGateway) -> None:
    await gw.chat(store=True)
    question, answer = gw.history.appends[0].messages
    assert verdicts(question)["input"]["flagged"] is False
    assert verdicts(question)["input"]["model"] == "fake-safety"
    assert verdicts(answer)["output"]["flagged"] is False
    assert set(verdicts(answer)["output"]["categories"]) == {"harassment"}  # type: ignore[arg-type]


async def test_only_the_gateways_answer_is_marked_generated(gw: InProcessGateway) -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Text the client wrote"},
        {"role": "user", "content": "And?"},
    ]
    await gw.chat(gw.body(messages=messages, store=True))
    stored = gw.history.appends[0].messages
    assert [(m.role, m.generated) for m in stored] == [
        ("user", False),
        ("assistant", False),
        ("user", False),
        ("assistant", True),
    ]
    # The client's "assistant" text was classified with the request, as input.
    assert set(verdicts(stored[1])) == {"input"}


async def test_a_filtered_answer_is_stored_flagged(gw: InProcessGateway) -> None:
    gw.generator.script = Script(deltas=["Hello there, this ", "badword here. ", "more"])
    await gw.chat(store=True)
    answer = gw.history.appends[0].messages[-1]
    assert answer.finish_reason == "content_filter"
    assert verdicts(answer)["output"]["flagged"] is True
    assert verdicts(answer)["output"]["flagged_categories"] == ["harassment"]


async def test_a_cached_answer_keeps_its_verdict(gw: InProcessGateway) -> None:
    await gw.chat(store=True, temperature=0)
    hit = await gw.chat(store=True, temperature=0)
    assert hit.headers["x-cache"] == "hit"
    first, second = (a.messages[-1] for a in gw.history.appends)
    assert second.generated
    assert second.moderation_json == first.moderation_json != ""


async def test_a_stopped_answer_is_generated_with_the_verdicts_of_what_was_sent(
    gw: InProcessGateway,
) -> None:
    gw.generator.script = Script(deltas=["Hello there, this ", "is a test. ", "more"], hang_after=2)
    await gw.stream_until_disconnect(gw.body(stream=True, store=True), 3)
    await wait_for(lambda: len(gw.history.appends) == 1)
    answer = gw.history.appends[0].messages[-1]
    assert (answer.finish_reason, answer.generated) == ("cancelled", True)
    assert verdicts(answer)["output"]["flagged"] is False


async def test_without_moderation_there_is_no_verdict(tmp_path: Path) -> None:
    async with inprocess_gateway(tmp_path, moderate_input=False, moderate_output=False) as gw:
        await gw.chat(store=True)
        question, answer = gw.history.appends[0].messages
        assert (question.moderation_json, answer.moderation_json) == ("", "")
        assert answer.generated
