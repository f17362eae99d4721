"""The engine interfaces and the domain types the generator speaks internally.

Chat engines (`Engine`) are shaped after the two engines they must fit: llama.cpp (a pool of
blocking contexts driven from worker threads) and vLLM's AsyncLLM (in-process, streaming DELTA
outputs, `abort(request_id)`). Embedding engines (`EmbeddingEngine`) answer a batch of inputs
with one unit vector each. The servicer converts proto messages to and from these types;
engines never see protobuf.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from parlance.common.errors import InvalidArgument, ParlanceError

# OpenAI's bound on top_logprobs; the proto documents the same range.
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """Mirrors the proto's SamplingParams; None means "engine default" (OpenAI's defaults)."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    logprobs: bool = False
    top_logprobs: int | None = None
    ignore_eos: bool = False


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """Exactly one of `messages` (rendered with the model's chat template) or `prompt`."""

    request_id: str
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    sampling: SamplingOptions = field(default_factory=SamplingOptions)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise InvalidArgument("give either chat messages or a prompt", param="messages")


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    logprob: float
    token_bytes: bytes


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    token_bytes: bytes
    top_logprobs: tuple[TopLogprob, ...] = ()


@dataclass(slots=True)
class ChoiceDelta:
    """One choice's progress since the previous step."""

    index: int
    text: str = ""
    token_count: int = 0
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def merge(self, later: ChoiceDelta) -> None:
        """Folds a later delta of the same choice into this one (coalescing a backlog)."""
        self.text += later.text
        self.token_count += later.token_count
        self.logprobs.extend(later.logprobs)
        if later.finish_reason is not None:
            self.finish_reason = later.finish_reason


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    # Across all choices.
    completion_tokens: int


@dataclass(slots=True)
class GenerationStep:
    """What an engine yields: deltas of some choices; the last step carries usage."""

    choices: list[ChoiceDelta] = field(default_factory=list)
    usage: Usage | None = None
    # Seconds the request waited for an engine slot; set on the first step by engines that queue.
    queued_s: float | None = None


class ModelTask(enum.Enum):
    """What a model does: chat models generate, embed models turn texts into vectors, reward
    models score answers to a conversation."""

    CHAT = "chat"
    EMBED = "embed"
    REWARD = "reward"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    # Unix seconds when the engine loaded the model.
    created: int
    # Chat: the context window (prompt + completion). Embed: the longest input in tokens.
    max_model_len: int
    engine: str
    owned_by: str = "parlance"
    task: ModelTask = ModelTask.CHAT
    # Embed models: the length of their vectors.
    dimensions: int = 0
    # LoRA adapters: the id of the base chat model they apply to ("" for base models).
    parent: str = ""


@dataclass(frozen=True, slots=True)
class EngineStats:
    running: int
    waiting: int


def coalesce(steps: Sequence[GenerationStep]) -> GenerationStep:
    """Merges consecutive steps into one, so a slow reader gets fewer, larger messages."""
    merged = GenerationStep(queued_s=steps[0].queued_s)
    by_index: dict[int, ChoiceDelta] = {}
    for step in steps:
        for delta in step.choices:
            if delta.index in by_index:
                by_index[delta.index].merge(delta)
            else:
                copy = ChoiceDelta(
                    delta.index,
                    delta.text,
                    delta.token_count,
                    delta.finish_reason,
                    list(delta.logprobs),
                )
                by_index[delta.index] = copy
                merged.choices.append(copy)
        if step.usage is not None:
            merged.usage = step.usage
        if merged.queued_s is None:
            merged.queued_s = step.queued_s
    return merged


class AdaptersUnsupported(ParlanceError):
    """The engine cannot serve LoRA adapters (or was started without them)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(slots=True, eq=False)
class AdapterHandle:
    """A LoRA adapter an engine has loaded (engines subclass it with what they hold). `users`
    counts the requests using it until the engine has really finished with them (a cancelled
    llama.cpp request runs to its next token); `retired` is set when it is unloaded, and the
    engine frees it once `users` is 0."""

    adapter_id: str
    # The file or folder the engine loaded, and the sha256 of its weights file.
    source: str
    digest: str
    users: int = 0
    retired: bool = False


class Engine(ABC):
    """A chat model runtime. One instance serves one model for the life of the process.

    Engines that serve LoRA adapters (llama.cpp, vLLM) override the three adapter methods; an
    adapter is then served as a model of its own (serving.AdapterModel) whose requests run on
    this engine with the adapter applied to them only."""

    task = ModelTask.CHAT

    #: Short name for metrics and ListModels ("llama.cpp", "vllm", "scripted").
    name: str

    @abstractmethod
    async def start(self) -> None:
        """Loads the model; the service reports SERVING only after this returns."""

    @abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationStep, None]:
        """Streams the request's progress. Leaving the iterator early (cancellation) aborts the
        request. Raises InvalidArgument(param=...) for a parameter the engine cannot honour."""

    @abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stops a request at its next token and frees its slot; unknown ids are ignored."""

    @abstractmethod
    async def count_tokens(
        self, *, messages: Sequence[ChatMessage] | None = None, prompt: str | None = None
    ) -> int:
        """Tokens of the prompt as generate() would feed it (chat template included)."""

    @abstractmethod
    def model_info(self) -> ModelInfo: ...

    @abstractmethod
    def stats(self) -> EngineStats:
        """Requests running and waiting for a slot now (read by the metrics gauges)."""

    @abstractmethod
    async def close(self) -> None:
        """Aborts what still runs and releases the model (and its adapters)."""

    async def load_adapter(self, adapter_id: str, folder: Path) -> AdapterHandle:
        """Loads the LoRA adapter of a parlance-train adapter folder for this model. Raises
        lora.AdapterError (a ValueError) for an adapter that is missing, corrupt or trained on
        another base; AdaptersUnsupported where the engine cannot serve adapters. Leaves the
        engine unchanged when it raises."""
        raise AdaptersUnsupported(
            f"the {self.name} engine does not serve LoRA adapters", param="parent"
        )

    def generate_with_adapter(
        self, request: GenerationRequest, adapter: AdapterHandle
    ) -> AsyncGenerator[GenerationStep, None]:
        """generate() with the adapter applied to this request only."""
        raise AdaptersUnsupported(
            f"the {self.name} engine does not serve LoRA adapters", param="parent"
        )

    async def unload_adapter(self, adapter: AdapterHandle) -> None:
        """Retires the adapter: new requests with it are refused, and it is freed as soon as
        the requests using it have finished (now, when none do)."""
        raise AdaptersUnsupported(
            f"the {self.name} engine does not serve LoRA adapters", param="parent"
        )


# Per sampling field: the values every engine accepts, and the message for the others.
_RANGE_CHECKS: tuple[tuple[str, Callable[[float], bool], str], ...] = (
    ("max_tokens", lambda v: v >= 1, "max_tokens must be at least 1"),
    ("temperature", lambda v: 0.0 <= v <= 2.0, "temperature must be between 0 and 2"),
    ("top_p", lambda v: 0.0 < v <= 1.0, "top_p must be in (0, 1]"),
    ("min_p", lambda v: 0.0 <= v <= 1.0, "min_p must be between 0 and 1"),
    ("repetition_penalty", lambda v: v > 0.0, "repetition_penalty must be positive"),
    ("presence_penalty", lambda v: -2.0 <= v <= 2.0, "presence_penalty must be between -2 and 2"),
    ("frequency_penalty", lambda v: -2.0 <= v <= 2.0, "frequency_penalty must be between -2 and 2"),
    ("n", lambda v: v >= 1, "n must be at least 1"),
)


def check_sampling_common(options: SamplingOptions) -> None:
    """Range checks that hold for every engine (engines add their own limits)."""
    for param, valid, message in _RANGE_CHECKS:
        value = getattr(options, param)
        if value is not None and not valid(value):
            raise InvalidArgument(message, param=param)
    if options.top_logprobs is not None:
        if not options.logprobs:
            raise InvalidArgument("top_logprobs needs logprobs", param="top_logprobs")
        if not 0 <= options.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidArgument(
                f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}", param="top_logprobs"
            )
    if any(not s for s in options.stop):
        raise InvalidArgument("stop strings must not be empty", param="stop")


# An input to embed: text, or token ids of the model's own vocabulary (special tokens excluded).
EmbeddingInput = str | tuple[int, ...]


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    request_id: str
    inputs: tuple[EmbeddingInput, ...]
    # Length of the vectors; None: the model's own.
    dimensions: int | None = None
    # Inputs longer than the model's max_model_len: cut to it (True) or refused (False).
    truncate: bool = False

    def __post_init__(self) -> None:
        if not self.inputs:
            raise InvalidArgument("input must not be empty", param="input")


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    # One L2-normalized vector per input, in order.
    vectors: list[list[float]]
    # Tokens each input took (special tokens included, after truncation).
    token_counts: list[int]


class EncoderNotExported(ParlanceError):
    """The embedding model is not served from an exported graph (PyTorch or vLLM runs it)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True, slots=True, repr=False)
class ExportedEncoder:
    """An embedding model as another process can run it: the ONNX graph the engine serves
    (token ids and mask in, unit-length float32 vectors out) and how its inputs are made
    (embed_inputs.encode_inputs: tokens without special tokens, cut to fit, then wrapped)."""

    graph: bytes
    graph_sha256: str
    tokenizer_json: str
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    max_model_len: int
    pad_token_id: int
    dimensions: int


class EmbeddingEngine(ABC):
    """An embedding model runtime. One instance serves one model for the life of the process."""

    task = ModelTask.EMBED
    #: Short name for metrics and ListModels ("transformers", ...).
    name: str

    @abstractmethod
    async def start(self) -> None:
        """Loads the model; the service reports SERVING only after this returns."""

    @abstractmethod
    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """The request's vectors. Raises InvalidArgument(param=...) for an input the model
        cannot take (too long without truncate, an unknown token id) or a `dimensions` it
        cannot produce."""

    @abstractmethod
    def model_info(self) -> ModelInfo: ...

    @abstractmethod
    def stats(self) -> EngineStats:
        """Calls being embedded and waiting for the next batch now."""

    def exported(self) -> ExportedEncoder:
        """The graph this engine serves from, for a caller that runs it itself."""
        raise EncoderNotExported(
            f"embedding model {self.model_info().id!r} is not served from an exported ONNX "
            f"graph ({self.name})"
        )

    @abstractmethod
    async def close(self) -> None:
        """Finishes what is queued and releases the model."""


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """Candidate answers to one conversation, each to be scored after it."""

    request_id: str
    messages: tuple[ChatMessage, ...]
    candidates: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.candidates:
            raise InvalidArgument("candidates must not be empty", param="candidates")


@dataclass(frozen=True, slots=True)
class ScoreResult:
    # One per candidate, in order; higher is preferred (the model's own scale).
    scores: list[float]
    # Tokens of each scored sequence (conversation + candidate, after truncation).
    token_counts: list[int]
    # Sequences that lost the start of their conversation to fit the model's window.
    truncated: int = 0


class RewardEngine(ABC):
    """A reward model runtime (engine/reward.py). One instance serves one model until it is
    unloaded."""

    task = ModelTask.REWARD
    #: Short name for metrics and ListModels ("transformers", ...).
    name: str

    @abstractmethod
    async def start(self) -> None:
        """Loads the model; raises ValueError or OSError for a folder that is not a reward
        model (LoadModel reports it as INVALID_ARGUMENT)."""

    @abstractmethod
    async def score(self, request: ScoreRequest) -> ScoreResult:
        """One score per candidate. Raises InvalidArgument(param=...) for a call over the
        engine's caps (candidates, characters)."""

    @abstractmethod
    def model_info(self) -> ModelInfo: ...

    @abstractmethod
    def stats(self) -> EngineStats:
        """Calls being scored and waiting for the next batch now."""

    @abstractmethod
    async def close(self) -> None:
        """Finishes what is queued and releases the model."""
