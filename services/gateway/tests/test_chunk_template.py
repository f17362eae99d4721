"""The text-only SSE chunk is written from a template (chat/render.py): its bytes must be the
ones the protocol models serialize, for any text a model can produce."""

from __future__ import annotations

import random

from parlance.gateway.auth import Principal
from parlance.gateway.chat.prepared import PreparedChat
from parlance.gateway.chat.protocol import ChatCompletionRequest, ChunkChoice, DeltaMessage
from parlance.gateway.chat.render import ChunkWriter, dump

TEXTS = [
    "",
    "hello",
    ' quote " and backslash \\ and slash /',
    "\n\t\r\b\f",
    "".join(chr(i) for i in range(0x80)),
    "é 中文 😀 \u00a0",
    "\u2028\u2029\x7f",
    "</script><!--",
    "\ud7ff\ue000\uffff\U0010ffff",
]


def model_bytes(writer: ChunkWriter, index: int, text: str) -> bytes:
    choice = ChunkChoice(
        index=index, delta=DeltaMessage(content=text), logprobs=None, finish_reason=None
    )
    return writer._head + dump(choice) + writer._tail


def prepared(include_usage: bool, conversation_id: str | None) -> PreparedChat:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": include_usage},
        }
    )
    chat = PreparedChat(request, Principal("alice", "key_a"), "m", [], [("user", "hi")], 16)
    chat.conversation_id = conversation_id
    return chat


def test_template_matches_the_models() -> None:
    rng = random.Random(20)
    alphabet = [chr(c) for c in range(0x20)] + list('ab "\\/é中😀\u2028')
    texts = TEXTS + ["".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(300)]
    for usage, conversation in ((False, None), (True, "conv_1")):
        writer = ChunkWriter(prepared(usage, conversation))
        for index in (0, 1, 17):
            for text in texts:
                assert writer.content(index, text, None) == model_bytes(writer, index, text)
