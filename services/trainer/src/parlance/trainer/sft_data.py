"""SFT data: reading TRL's conversational SFT JSONL (the admin export's `kind=sft` format),
validating it, and turning each line into a prompt and the answer to learn.

Accepted lines (one JSON object a line):
- {"messages": [{"role", "content"}...]} ending in an assistant turn (what the export writes:
  the path from the conversation's root to an answer a user rated +1);
- {"prompt": [...messages], "completion": [{"role": "assistant", ...}]} (TRL's
  prompt-completion form).

The loss is on the final assistant turn only (TRL's completion-only loss): that is the answer a
user vouched for; the earlier turns are the context it answered. As for preference pairs, the
whole input is refused when any line is bad, each bad line named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from parlance.trainer.data import LineError, Turn, Turns, json_object, messages, read_jsonl


@dataclass(frozen=True, slots=True)
class Example:
    line: int
    prompt: Turns
    completion: Turns

    @property
    def group(self) -> str:
        """The prompt's identity: examples of one prompt stay on one side of the split."""
        return json.dumps(self.prompt)

    def record(self) -> dict[str, list[Turn]]:
        """TRL's conversational prompt-completion record."""
        return {
            "prompt": [{"role": r, "content": c} for r, c in self.prompt],
            "completion": [{"role": r, "content": c} for r, c in self.completion],
        }


def _messages(value: Any, field: str) -> Turns:
    if not isinstance(value, list) or not value:
        raise LineError(f"'{field}' must be a non-empty list of messages")
    return messages(value, field)


def parse_line(line_no: int, raw: str) -> Example:
    """One JSONL line as an Example; LineError says what is wrong with it."""
    record = json_object(raw, "'messages'")
    if "messages" in record:
        turns = _messages(record["messages"], "messages")
        prompt, completion = turns[:-1], turns[-1:]
    elif "prompt" in record and "completion" in record:
        prompt = _messages(record["prompt"], "prompt")
        completion = _messages(record["completion"], "completion")
    elif "chosen" in record:
        raise LineError("a preference pair: train it with `parlance-train dpo`")
    else:
        raise LineError("missing 'messages' (or 'prompt' and 'completion')")
    if any(role != "assistant" for role, _ in completion):
        raise LineError("the conversation must end with the assistant's answer")
    if not "".join(c for _, c in completion).strip():
        raise LineError("the final answer is empty")
    if not any(role == "user" and content.strip() for role, content in prompt):
        raise LineError("no user turn before the answer")
    return Example(line_no, prompt, completion)


def parse_examples(data: bytes, source: str) -> list[Example]:
    """Every example of the JSONL, or TrainError naming the bad lines (blank lines skipped)."""
    return read_jsonl(data, source, parse_line, "SFT examples")
