"""Pure conversions between the OpenAI schema and the gRPC contracts."""

from __future__ import annotations

from typing import Any

from parlance.gateway.chat.protocol import (
    ChatCompletionRequest,
    ChoiceLogprobs,
    TokenLogprob,
    TopLogprob,
)
from parlance.generator.v1 import generator_pb2

FINISH_REASONS = {
    generator_pb2.FINISH_REASON_STOP: "stop",
    generator_pb2.FINISH_REASON_LENGTH: "length",
}

# OpenAI's "developer" role is the newer name of "system".
_ROLE_FOR_MODEL = {"developer": "system"}


def sampling_params(
    request: ChatCompletionRequest, max_tokens: int
) -> generator_pb2.SamplingParams:
    """The request's sampling; `max_tokens` is the effective limit (the request's, or the
    key's when the request sets none)."""
    params = generator_pb2.SamplingParams(
        stop=request.stop_list(),
        n=request.n or 1,
        logprobs=bool(request.logprobs),
        ignore_eos=bool(request.ignore_eos),
        max_tokens=max_tokens,
    )
    for name in (
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "seed",
    ):
        value = getattr(request, name)
        if value is not None:
            setattr(params, name, value)
    if request.top_logprobs is not None:
        params.top_logprobs = request.top_logprobs
    return params


def chat_message(role: str, content: str) -> generator_pb2.ChatMessage:
    return generator_pb2.ChatMessage(role=stored_role(role), content=content)


def stored_role(role: str) -> str:
    """The role as the model and history know it (history keeps system, user, assistant)."""
    return _ROLE_FOR_MODEL.get(role, role)


def logprobs(items: Any) -> ChoiceLogprobs | None:
    """OpenAI's `logprobs` object of a choice from the generator's TokenLogprob list."""
    if not items:
        return None
    return ChoiceLogprobs(
        content=[
            TokenLogprob(
                token=lp.token,
                logprob=lp.logprob,
                bytes=list(lp.token_bytes) if lp.token_bytes else None,
                top_logprobs=[
                    TopLogprob(
                        token=top.token,
                        logprob=top.logprob,
                        bytes=list(top.token_bytes) if top.token_bytes else None,
                    )
                    for top in lp.top_logprobs
                ],
            )
            for lp in items
        ],
        refusal=None,
    )


def cache_material(
    request: ChatCompletionRequest,
    model: str,
    context: list[generator_pb2.ChatMessage],
    max_tokens: int,
) -> dict[str, Any]:
    """Everything that changes the output, for the cache key."""
    sampling = sampling_params(request, max_tokens)
    return {
        "model": model,
        "messages": [[m.role, m.content] for m in context],
        "sampling": {field.name: value for field, value in sampling.ListFields()}
        | {"stop": list(sampling.stop)},
    }
