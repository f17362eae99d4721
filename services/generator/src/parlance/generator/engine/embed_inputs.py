"""Embedding inputs to token ids, the same way for every embedding engine.

Both engines (transformers on CPU, vLLM's pooling runner on GPU) take token ids they did not
cut themselves, so that the limits, the truncation and the token counts a caller sees do not
depend on which engine serves the model: texts are tokenized without special tokens, checked
against the window, cut at the end when the request asks for truncation (else refused), and
then wrapped in the model's special tokens ([CLS] ... [SEP] for BERT-style models).

The special tokens are found by tokenizing one word with and without them (`special_tokens`),
through the tokenizer's plain call only: transformers 5 dropped the helpers 4.x had for this
(`build_inputs_with_special_tokens`), and vLLM hands out its own tokenizer wrappers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from parlance.common.errors import InvalidArgument
from parlance.generator.engine.base import EmbeddingInput


def encode_inputs(
    tokenizer: Any,
    inputs: Sequence[EmbeddingInput],
    *,
    specials: tuple[list[int], list[int]],
    max_len: int,
    vocab_size: int,
    truncate: bool,
    model: str,
) -> list[list[int]]:
    """Token ids per input, special tokens included (`specials`: special_tokens(tokenizer)).
    InvalidArgument for an input that is too long (without truncation) or holds ids outside the
    vocabulary."""
    texts = [x for x in inputs if isinstance(x, str)]
    tokenized = iter(
        tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        if texts
        else []
    )
    prefix, suffix = specials
    room = max_len - len(prefix) - len(suffix)
    sequences = []
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            ids = list(next(tokenized))
        else:
            ids = list(item)
            if any(not 0 <= i < vocab_size for i in ids):
                raise InvalidArgument(
                    f"input {index} has token ids outside the model's vocabulary "
                    f"(0-{vocab_size - 1})",
                    param="input",
                )
        if len(ids) > room:
            if not truncate:
                length = len(ids) + len(prefix) + len(suffix)
                raise InvalidArgument(
                    f"input {index} is {length} tokens long; model {model!r} takes at most "
                    f"{max_len} per input. Shorten it, or ask for truncation.",
                    param="input",
                )
            ids = ids[:room]
        sequences.append([*prefix, *ids, *suffix])
    return sequences


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after one sequence ([CLS] and [SEP] for BERT)."""
    plain = list(tokenizer("hello", add_special_tokens=False)["input_ids"])
    wrapped = list(tokenizer("hello", add_special_tokens=True)["input_ids"])
    for start in range(len(wrapped) - len(plain) + 1):
        if wrapped[start : start + len(plain)] == plain:
            return wrapped[:start], wrapped[start + len(plain) :]
    raise ValueError("cannot tell the tokenizer's special tokens from its text tokens")


def check_dimensions(requested: int | None, dimensions: int, model: str) -> None:
    """Refuses a vector length other than the model's own (no model here was trained to be
    shortened: cutting its vectors would silently lose quality)."""
    if requested is not None and requested != dimensions:
        raise InvalidArgument(
            f"model {model!r} makes {dimensions}-dimensional vectors and cannot shorten them "
            f"(it was not trained for it): leave dimensions unset or set it to {dimensions}",
            param="dimensions",
        )


def check_input_count(count: int, limit: int) -> None:
    if count > limit:
        raise InvalidArgument(f"{count} inputs in one call; the limit is {limit}", param="input")
