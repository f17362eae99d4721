"""The inputs of POST /v1/embeddings: checked against the size limits before anything is
reserved or sent, and the token estimate that TPM reserves for them."""

from __future__ import annotations

from parlance.gateway import errors
from parlance.gateway.config import GatewaySettings
from parlance.gateway.embeddings_protocol import EmbeddingRequest

# The generator's token ids are uint32.
MAX_TOKEN_ID = 2**32 - 1

Item = str | list[int]


def input_items(body: EmbeddingRequest, settings: GatewaySettings) -> list[Item]:
    """The request's inputs as a list (a string, or one token array, is a list of one),
    within the size limits. 400 (param "input") otherwise."""
    raw = body.input
    if isinstance(raw, str):
        items: list[Item] = [raw]
    elif raw and isinstance(raw[0], int):
        items = [list(raw)]
    else:
        items = list(raw)  # type: ignore[arg-type]
    if not items:
        raise errors.invalid_request("input must not be empty.", param="input")
    if len(items) > settings.embeddings_max_inputs:
        raise errors.invalid_request(
            f"Too many inputs: {len(items)}; at most {settings.embeddings_max_inputs} per request.",
            param="input",
        )
    total = 0
    for index, item in enumerate(items):
        if not item:
            raise errors.invalid_request(
                f"input[{index}] is empty; every input needs at least one character or token.",
                param="input",
            )
        if isinstance(item, str):
            if len(item) > settings.embeddings_max_input_chars:
                raise errors.invalid_request(
                    f"input[{index}] is {len(item)} characters long; the limit is "
                    f"{settings.embeddings_max_input_chars}.",
                    param="input",
                    code="context_length_exceeded",
                )
            total += len(item)
        elif any(token < 0 for token in item):
            raise errors.invalid_request(f"input[{index}] has a negative token id.", param="input")
        elif any(token > MAX_TOKEN_ID for token in item):
            # Past the generator's uint32 field: the request message could not be built (a
            # 500 before; schemathesis found it). No vocabulary is that large.
            raise errors.invalid_request(
                f"input[{index}] has a token id above {MAX_TOKEN_ID}, outside any vocabulary.",
                param="input",
            )
        else:
            total += len(item) * 4
    if total > settings.embeddings_max_total_chars:
        raise errors.invalid_request(
            f"The inputs total {total} characters; the limit is "
            f"{settings.embeddings_max_total_chars}.",
            param="input",
            code="context_length_exceeded",
        )
    return items


def estimate_tokens(items: list[Item]) -> int:
    """What TPM reserves before the call: ~4 characters a token plus the special tokens
    (reconciled with the generator's count afterwards)."""
    return sum((len(i) // 4 if isinstance(i, str) else len(i)) + 2 for i in items)
