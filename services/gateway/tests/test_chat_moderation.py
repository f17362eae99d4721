"""Moderation in the chat flow: input refused before generating; output held back in windows
(cut by the public WindowCutter), each released only after safety passed it."""

from __future__ import annotations

from pathlib import Path

import pytest

from parlance.gateway.config import GatewaySettings
from parlance.gateway.moderation import WindowCutter
from parlance.safety.v1 import safety_pb2
from parlance.testing.fakes import Script
from parlance.testing.inprocess import InProcessGateway, inprocess_gateway

CUTTER = WindowCutter(first_chars=16, min_chars=8, max_chars=160)


def test_the_first_window_is_short_then_one_sentence_each() -> None:
    text = "Hello there, this is a friendly answer. You are wrong. Have a nice day."
    deltas = [text[i : i + 3] for i in range(0, len(text), 3)]
    assert CUTTER.windows(deltas) == [
        "Hello there, this ",
        "is a friendly answer.",
        " You are wrong.",
        " Have a nice day.",
    ]


def test_a_decimal_point_ends_no_window() -> None:
    # Character by character, as a stream may bring it: "0." must wait for what follows.
    text = "Take one tablet. Lower doses (0.5 mg) suit most adults. See step 2. Then rest."
    assert CUTTER.windows(list(text)) == [
        "Take one ",
        "tablet. Lower doses (0.5 mg) suit most adults.",
        " See step 2.",
        " Then rest.",
    ]
    # A number ending a sentence closes it once the next character says so.
    assert CUTTER.cut("It costs 30.", first=False, final=False) is None
    assert CUTTER.cut("It costs 30. Then", first=False, final=False) == "It costs 30."


def test_the_last_delta_closes_whatever_is_held() -> None:
    assert CUTTER.windows(["Short"]) == ["Short"]
    assert CUTTER.windows(["Hi ", "there"]) == ["Hi there"]


def test_text_without_sentence_ends_is_cut_at_a_space_within_the_limit() -> None:
    text = "word " * 100
    windows = CUTTER.windows([text[i : i + 7] for i in range(0, len(text), 7)])
    assert "".join(windows) == text
    assert max(len(w) for w in windows) <= 160
    assert all(w.endswith(" ") for w in windows)


def test_a_word_longer_than_the_limit_is_cut_at_the_limit() -> None:
    assert CUTTER.cut("x" * 200, first=False, final=False) == "x" * 160


def test_disabled_moderation_releases_every_delta_at_once() -> None:
    off = WindowCutter.from_settings(GatewaySettings(moderate_output=False))
    assert off.windows(["Hel", "lo"]) == ["Hel", "lo"]


@pytest.mark.parametrize(
    ("text", "first", "cut"),
    [
        ("Hello", True, None),  # too short for the first window
        ("Hello there my friend", True, "Hello there my "),
        ("No end yet here", False, None),  # no sentence end
        ("Sentence one. Two", False, "Sentence one."),
        ("One. Two", False, None),  # the sentence end comes before min_chars
    ],
)
def test_cut(text: str, first: bool, cut: str | None) -> None:
    assert CUTTER.cut(text, first=first, final=False) == cut


async def test_each_window_is_classified_with_the_one_before(gw: InProcessGateway) -> None:
    gw.generator.script = Script(deltas=["Hello there, this ", "is fine. ", "All good."])
    body = (await gw.chat()).json()
    assert body["choices"][0]["message"]["content"] == "Hello there, this is fine. All good."
    outputs = gw.safety.texts(safety_pb2.DIRECTION_OUTPUT)
    assert outputs == ["Hello there, this ", "Hello there, this is fine.", "is fine. All good."]
    assert gw.safety.texts(safety_pb2.DIRECTION_INPUT) == ["Hi there"]


async def test_a_flagged_window_ends_the_choice_with_content_filter(gw: InProcessGateway) -> None:
    gw.generator.script = Script(
        deltas=["Hello there, this ", "is fine. ", "You badword. ", "More text here."]
    )
    body = (await gw.chat()).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["content"] == "Hello there, this is fine."
    # Usage still counts every token the engine made and the prompt.
    assert body["usage"]["completion_tokens"] >= 3
    assert body["usage"]["prompt_tokens"] > 0


async def test_a_flagged_stream_never_sends_the_flagged_window(gw: InProcessGateway) -> None:
    gw.generator.script = Script(deltas=["Hello there, this ", "is fine. ", "You badword. "])
    events = await gw.events(gw.body(stream=True))
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert text == "Hello there, this is fine."
    assert events[-2]["choices"][0]["finish_reason"] == "content_filter"
    assert events[-1] == "[DONE]"


def flag_only(gw: InProcessGateway, *texts: str) -> None:
    """The fake safety flags exactly these texts (and its flag words)."""
    verdict = gw.safety._verdict
    gw.safety._verdict = lambda t: verdict("badword" if t in texts else t)  # type: ignore[method-assign]


async def test_a_flagged_first_fragment_is_judged_again_with_its_continuation(
    gw: InProcessGateway,
) -> None:
    gw.generator.script = Script(deltas=["Tell me a secret ", "number 4711."])
    flag_only(gw, "Tell me a secret ")
    body = (await gw.chat()).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "Tell me a secret number 4711."
    outputs = gw.safety.texts(safety_pb2.DIRECTION_OUTPUT)
    assert outputs == ["Tell me a secret ", "Tell me a secret number 4711."]


@pytest.mark.parametrize(
    ("deltas", "flagged"),
    [
        # The continuation flags too: nothing of the fragment is sent.
        (["You badword ", "and more."], ()),
        # Nothing follows the fragment: its own verdict stands.
        (["Tell me a secret ", ""], ("Tell me a secret ",)),
        # A sentence is not a fragment.
        (["Tell me a lie. ", "Go on."], ("Tell me a lie.",)),
    ],
)
async def test_a_flagged_first_fragment_is_never_released_on_its_own(
    gw: InProcessGateway, deltas: list[str], flagged: tuple[str, ...]
) -> None:
    gw.generator.script = Script(deltas=deltas)
    flag_only(gw, *flagged)
    events = await gw.events(gw.body(stream=True))
    choices = [e["choices"][0] for e in events if isinstance(e, dict) and e.get("choices")]
    assert "".join(c["delta"].get("content", "") for c in choices) == ""
    assert choices[-1]["finish_reason"] == "content_filter"


async def test_safety_down_mid_stream_fails_closed(gw: InProcessGateway) -> None:
    gw.generator.script = Script(deltas=["Hello there, this ", "is fine. "])
    gw.safety.down = False
    original = gw.safety.classify
    calls = 0

    async def failing(texts: list[str], direction: int) -> safety_pb2.ClassifyResponse:
        nonlocal calls
        calls += 1
        if direction == safety_pb2.DIRECTION_OUTPUT and calls > 2:
            gw.safety.down = True
        return await original(texts, direction)  # type: ignore[arg-type]

    gw.safety.classify = failing  # type: ignore[method-assign]
    events = await gw.events(gw.body(stream=True))
    text = "".join(
        e["choices"][0]["delta"].get("content", "")
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )
    # Only the window safety passed was released; then the error event.
    assert text == "Hello there, this "
    assert events[-2]["error"]["code"] == "service_unavailable"


async def test_moderation_can_be_switched_off(tmp_path: Path) -> None:
    async with inprocess_gateway(tmp_path, moderate_input=False, moderate_output=False) as gw:
        assert (await gw.chat(gw.body("badword"))).status_code == 200
        assert gw.safety.calls == []
