"""Tokenizer helpers that work across transformers 4 and 5 and vLLM's tokenizer wrappers."""

from __future__ import annotations

from typing import Any


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after one sequence ([CLS] and [SEP] for BERT).

    Found by tokenizing one word with and without them, through the tokenizer's plain call
    only: transformers 5 dropped the helper 4.x had for this (`build_inputs_with_special_tokens`)
    and vLLM hands out its own tokenizer wrappers.
    """
    plain = list(tokenizer("hello", add_special_tokens=False)["input_ids"])
    wrapped = list(tokenizer("hello", add_special_tokens=True)["input_ids"])
    for start in range(len(wrapped) - len(plain) + 1):
        if wrapped[start : start + len(plain)] == plain:
            return wrapped[:start], wrapped[start + len(plain) :]
    raise ValueError("cannot tell the tokenizer's special tokens from its text tokens")
