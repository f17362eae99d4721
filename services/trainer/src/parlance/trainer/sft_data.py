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

from parlance.trainer.data import MAX_REPORTED, ROLES, Turn
from parlance.trainer.errors import TrainError

Turns = tuple[tuple[str, str], ...]


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


class _LineError(ValueError):
    pass


def _messages(value: Any, field: str) -> Turns:
    if not isinstance(value, list) or not value:
        raise _LineError(f"'{field}' must be a non-empty list of messages")
    turns = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise _LineError(f"'{field}'[{index}] is not a message object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise _LineError(
                f"'{field}'[{index}] has role {role!r}; expected one of {sorted(ROLES)}"
            )
        if not isinstance(content, str):
            raise _LineError(f"'{field}'[{index}] content must be a string")
        turns.append((role, content))
    return tuple(turns)


def parse_line(line_no: int, raw: str) -> Example:
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _LineError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise _LineError("expected a JSON object with 'messages'")
    if "messages" in record:
        turns = _messages(record["messages"], "messages")
        prompt, completion = turns[:-1], turns[-1:]
    elif "prompt" in record and "completion" in record:
        prompt = _messages(record["prompt"], "prompt")
        completion = _messages(record["completion"], "completion")
    elif "chosen" in record:
        raise _LineError("a preference pair: train it with `parlance-train dpo`")
    else:
        raise _LineError("missing 'messages' (or 'prompt' and 'completion')")
    if any(role != "assistant" for role, _ in completion):
        raise _LineError("the conversation must end with the assistant's answer")
    if not "".join(c for _, c in completion).strip():
        raise _LineError("the final answer is empty")
    if not any(role == "user" and content.strip() for role, content in prompt):
        raise _LineError("no user turn before the answer")
    return Example(line_no, prompt, completion)


def parse_examples(data: bytes, source: str) -> list[Example]:
    """Every example of the JSONL, or TrainError naming the bad lines (blank lines skipped)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrainError(f"{source} is not UTF-8 text (byte {exc.start})") from None
    examples: list[Example] = []
    problems: list[str] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            examples.append(parse_line(line_no, raw))
        except _LineError as exc:
            problems.append(f"line {line_no}: {exc}")
    if problems:
        shown = "\n  ".join(problems[:MAX_REPORTED])
        more = len(problems) - MAX_REPORTED
        tail = f"\n  ... and {more} more bad lines" if more > 0 else ""
        raise TrainError(
            f"{source}: {len(problems)} of {len(problems) + len(examples)} lines are not usable "
            f"SFT examples; fix or remove them:\n  {shown}{tail}"
        )
    if not examples:
        raise TrainError(f"{source} holds no SFT examples (it is empty)")
    return examples
