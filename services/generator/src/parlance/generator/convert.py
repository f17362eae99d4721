"""Conversions between the generator's proto messages and its domain types (pure functions)."""

from __future__ import annotations

from parlance.common.errors import InvalidArgument
from parlance.generator.engine.base import (
    ChatMessage,
    ChoiceDelta,
    EmbeddingInput,
    EmbeddingRequest,
    EmbeddingResult,
    FinishReason,
    GenerationRequest,
    GenerationStep,
    ModelInfo,
    ModelTask,
    SamplingOptions,
    ScoreRequest,
    ScoreResult,
    TokenLogprob,
)
from parlance.generator.v1 import generator_pb2 as pb

# "developer" is OpenAI's newer name for "system"; chat templates only know the latter.
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

_FINISH_REASONS = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.ABORT: pb.FINISH_REASON_ABORT,
}


def messages_from_proto(chat: pb.ChatInput) -> tuple[ChatMessage, ...]:
    if not chat.messages:
        raise InvalidArgument("messages must not be empty", param="messages")
    messages = []
    for message in chat.messages:
        role = _ROLES.get(message.role)
        if role is None:
            raise InvalidArgument(f"unsupported role {message.role!r}", param="messages")
        name = message.name if message.HasField("name") else None
        messages.append(ChatMessage(role=role, content=message.content, name=name))
    return tuple(messages)


def sampling_from_proto(params: pb.SamplingParams) -> SamplingOptions:
    return SamplingOptions(
        max_tokens=params.max_tokens if params.HasField("max_tokens") else None,
        temperature=params.temperature if params.HasField("temperature") else None,
        top_p=params.top_p if params.HasField("top_p") else None,
        top_k=params.top_k if params.HasField("top_k") else None,
        min_p=params.min_p if params.HasField("min_p") else None,
        repetition_penalty=(
            params.repetition_penalty if params.HasField("repetition_penalty") else None
        ),
        presence_penalty=params.presence_penalty if params.HasField("presence_penalty") else None,
        frequency_penalty=(
            params.frequency_penalty if params.HasField("frequency_penalty") else None
        ),
        seed=params.seed if params.HasField("seed") else None,
        stop=tuple(params.stop),
        n=params.n or 1,
        logprobs=params.logprobs,
        top_logprobs=params.top_logprobs if params.HasField("top_logprobs") else None,
        ignore_eos=params.ignore_eos,
    )


def prompt_input_from_proto(
    message: pb.GenerateRequest | pb.CountTokensRequest,
) -> tuple[tuple[ChatMessage, ...] | None, str | None]:
    """(messages, prompt) from the request's `input` oneof."""
    which = message.WhichOneof("input")
    if which == "chat":
        return messages_from_proto(message.chat), None
    if which == "prompt":
        return None, message.prompt
    raise InvalidArgument("give either chat messages or a prompt", param="messages")


def generation_request_from_proto(
    request: pb.GenerateRequest, request_id: str
) -> GenerationRequest:
    messages, prompt = prompt_input_from_proto(request)
    return GenerationRequest(
        request_id=request_id,
        messages=messages,
        prompt=prompt,
        sampling=sampling_from_proto(request.sampling),
    )


def token_logprob_to_proto(logprob: TokenLogprob) -> pb.TokenLogprob:
    return pb.TokenLogprob(
        token=logprob.token,
        logprob=logprob.logprob,
        token_bytes=logprob.token_bytes,
        top_logprobs=[
            pb.TopLogprob(token=t.token, logprob=t.logprob, token_bytes=t.token_bytes)
            for t in logprob.top_logprobs
        ],
    )


def choice_delta_to_proto(delta: ChoiceDelta) -> pb.ChoiceDelta:
    return pb.ChoiceDelta(
        index=delta.index,
        text=delta.text,
        token_count=delta.token_count,
        finish_reason=_FINISH_REASONS[delta.finish_reason],
        logprobs=[token_logprob_to_proto(lp) for lp in delta.logprobs],
    )


def step_to_proto(step: GenerationStep, model: str) -> pb.GenerateResponse:
    response = pb.GenerateResponse(
        choices=[choice_delta_to_proto(d) for d in step.choices], model=model
    )
    if step.usage is not None:
        response.usage.prompt_tokens = step.usage.prompt_tokens
        response.usage.completion_tokens = step.usage.completion_tokens
    return response


_TASKS = {
    ModelTask.CHAT: pb.MODEL_TASK_CHAT,
    ModelTask.EMBED: pb.MODEL_TASK_EMBED,
    ModelTask.REWARD: pb.MODEL_TASK_REWARD,
}
_TASKS_FROM_PROTO: dict[int, ModelTask] = {int(v): k for k, v in _TASKS.items()}


def task_from_proto(task: int) -> ModelTask:
    if task not in _TASKS_FROM_PROTO:
        raise InvalidArgument(
            "task must be given (MODEL_TASK_EMBED, MODEL_TASK_REWARD, or MODEL_TASK_CHAT with a "
            "parent for a LoRA adapter)",
            param="task",
        )
    return _TASKS_FROM_PROTO[task]


def model_info_to_proto(info: ModelInfo) -> pb.ModelInfo:
    return pb.ModelInfo(
        id=info.id,
        created=info.created,
        owned_by=info.owned_by,
        max_model_len=info.max_model_len,
        engine=info.engine,
        task=_TASKS[info.task],
        dimensions=info.dimensions,
        parent=info.parent,
    )


def embedding_input_from_proto(item: pb.EmbedInput, index: int) -> EmbeddingInput:
    which = item.WhichOneof("input")
    if which == "text":
        return item.text
    if which == "tokens":
        return tuple(item.tokens.ids)
    raise InvalidArgument(f"input {index} is empty: give a text or token ids", param="input")


def embedding_request_from_proto(request: pb.EmbedRequest, request_id: str) -> EmbeddingRequest:
    if request.HasField("dimensions") and request.dimensions < 1:
        raise InvalidArgument("dimensions must be at least 1", param="dimensions")
    return EmbeddingRequest(
        request_id=request_id,
        inputs=tuple(embedding_input_from_proto(x, i) for i, x in enumerate(request.inputs)),
        dimensions=request.dimensions if request.HasField("dimensions") else None,
        truncate=request.truncate,
    )


def embedding_result_to_proto(result: EmbeddingResult, model: str) -> pb.EmbedResponse:
    return pb.EmbedResponse(
        embeddings=[
            pb.Embedding(values=vector, token_count=count)
            for vector, count in zip(result.vectors, result.token_counts, strict=True)
        ],
        usage=pb.Usage(prompt_tokens=sum(result.token_counts)),
        model=model,
    )


def score_request_from_proto(request: pb.ScoreRequest, request_id: str) -> ScoreRequest:
    return ScoreRequest(
        request_id=request_id,
        messages=messages_from_proto(pb.ChatInput(messages=request.messages)),
        candidates=tuple(request.candidates),
    )


def score_result_to_proto(result: ScoreResult, model: str) -> pb.ScoreResponse:
    return pb.ScoreResponse(
        scores=result.scores,
        token_counts=result.token_counts,
        truncated=result.truncated,
        usage=pb.Usage(prompt_tokens=sum(result.token_counts)),
        model=model,
    )
