"""Embedding inputs to token ids, the same way for every embedding engine.

Both engines (transformers on CPU, vLLM's pooling runner on GPU) take token ids they did not
cut themselves, so that the limits, the truncation and the token counts a caller sees do not
depend on which engine serves the model: texts are tokenized without special tokens, checked
against the window, cut at the end when the request asks for truncation (else refused), and
then wrapped in the model's special tokens ([CLS] ... [SEP] for BERT-style models).

The special tokens come from parlance.common.tokens.special_tokens, which works across
transformers 4 and 5 and vLLM's tokenizer wrappers.
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
