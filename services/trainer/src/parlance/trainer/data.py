"""Preference data: reading TRL's preference JSONL (the admin export's format), validating it,
normalizing it, and splitting off a held-out part.

Accepted lines (TRL's preference formats, one JSON object a line):
- conversational, explicit prompt (what the export writes):
  {"prompt": [{"role", "content"}...], "chosen": [{"role": "assistant", ...}], "rejected": [...]}
- plain, explicit prompt: {"prompt": "...", "chosen": "...", "rejected": "..."} (the prompt is
  read as one user turn, each answer as one assistant turn);
- conversational, implicit prompt: {"chosen": [...whole conversation], "rejected": [...]}: the
  prompt is the turns both share.

Every pair is refused, with its line number, when it is not JSON, misses a field, has an empty
answer, or has two identical answers (nothing to learn, and a trainer would be told both that
A beats B and nothing else). The whole input is refused when any line is bad: a partial model
trained on silently dropped data would have a card that lies about its data.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from parlance.trainer.errors import TrainError

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# Bad lines named in one error message; the rest are counted.
MAX_REPORTED = 10

Turn = dict[str, str]
Turns = tuple[tuple[str, str], ...]  # (role, content) of each message


@dataclass(frozen=True, slots=True)
class Pair:
    """One comparison: the prompt's turns, then the preferred and the other answer's turns."""

    line: int
    prompt: Turns
    chosen: Turns
    rejected: Turns

    @property
    def group(self) -> str:
        """The prompt's identity: pairs of one prompt stay on one side of the split."""
        return json.dumps(self.prompt)

    def conversation(self, answer: Turns) -> list[Turn]:
        return [{"role": r, "content": c} for r, c in self.prompt + answer]


class LineError(ValueError):
    """What is wrong with one line; read_jsonl names it with the line's number."""


R = TypeVar("R")


def read_jsonl(data: bytes, source: str, parse_line: Callable[[int, str], R], noun: str) -> list[R]:
    """Every record of the JSONL (`parse_line(line number, text)` for each non-blank line), or
    TrainError naming the bad lines: the whole input is refused when any line is bad."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrainError(f"{source} is not UTF-8 text (byte {exc.start})") from None
    records: list[R] = []
    problems: list[str] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            records.append(parse_line(line_no, raw))
        except LineError as exc:
            problems.append(f"line {line_no}: {exc}")
    if problems:
        shown = "\n  ".join(problems[:MAX_REPORTED])
        more = len(problems) - MAX_REPORTED
        tail = f"\n  ... and {more} more bad lines" if more > 0 else ""
        raise TrainError(
            f"{source}: {len(problems)} of {len(problems) + len(records)} lines are not usable "
            f"{noun}; fix or remove them:\n  {shown}{tail}"
        )
    if not records:
        raise TrainError(f"{source} holds no {noun} (it is empty)")
    return records


def json_object(raw: str, expected: str) -> dict[str, Any]:
    """One line's JSON object; LineError when it is not JSON or not an object."""
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise LineError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise LineError(f"expected a JSON object with {expected}")
    return record


def messages(value: list[Any], field: str) -> Turns:
    """A list of {"role", "content"} messages as turns; LineError names the bad one."""
    turns = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise LineError(f"'{field}'[{index}] is not a message object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise LineError(
                f"'{field}'[{index}] has role {role!r}; expected one of {sorted(ROLES)}"
            )
        if not isinstance(content, str):
            raise LineError(f"'{field}'[{index}] content must be a string")
        turns.append((role, content))
    return tuple(turns)


def _turns(value: Any, field: str, default_role: str) -> Turns:
    if isinstance(value, str):
        return ((default_role, value),)
    if not isinstance(value, list):
        raise LineError(f"'{field}' must be a string or a list of messages")
    return messages(value, field)


def _split_implicit(chosen: Turns, rejected: Turns) -> tuple[Turns, ...]:
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _text(turns: Turns) -> str:
    return "\n".join(content for _, content in turns).strip()


def parse_line(line_no: int, raw: str) -> Pair:
    """One JSONL line as a Pair; LineError says what is wrong with it."""
    record = json_object(raw, "'prompt', 'chosen' and 'rejected'")
    missing = [k for k in ("chosen", "rejected") if k not in record]
    if missing:
        raise LineError(f"missing {', '.join(repr(k) for k in missing)}")
    chosen = _turns(record["chosen"], "chosen", "assistant")
    rejected = _turns(record["rejected"], "rejected", "assistant")
    if "prompt" in record:
        prompt = _turns(record["prompt"], "prompt", "user")
    elif isinstance(record["chosen"], list) and isinstance(record["rejected"], list):
        prompt, chosen, rejected = _split_implicit(chosen, rejected)
    else:
        raise LineError("a pair of plain texts needs a 'prompt'")
    if not prompt or not _text(prompt):
        raise LineError("the prompt is empty")
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if not _text(turns):
            raise LineError(f"'{name}' is empty")
    if _text(chosen) == _text(rejected):
        raise LineError("'chosen' and 'rejected' are the same answer")
    return Pair(line_no, prompt, chosen, rejected)


def parse_preferences(data: bytes, source: str) -> list[Pair]:
    """Every pair of the JSONL, or TrainError naming the bad lines (blank lines are skipped)."""
    return read_jsonl(data, source, parse_line, "preference pairs")


def check_enough(pairs: list[Pair], min_pairs: int, source: str) -> None:
    if len(pairs) < min_pairs:
        raise TrainError(
            f"{source} holds {len(pairs)} preference pairs; at least {min_pairs} are needed "
            "(--min-pairs) to train and to hold some out for the accuracy figure"
        )


class Grouped(Protocol):
    """A training record with a prompt identity (preference pairs, SFT examples)."""

    @property
    def group(self) -> str: ...


G = TypeVar("G", bound=Grouped)


@dataclass(frozen=True, slots=True)
class Split(Generic[G]):
    train: list[G]
    held_out: list[G]

    @staticmethod
    def prompts(pairs: list[G]) -> int:
        return len({p.group for p in pairs})


def split(pairs: list[G], eval_fraction: float, seed: int, noun: str = "pairs") -> Split[G]:
    """A held-out part of about eval_fraction of the records, whole prompts at a time. The
    order of prompts is a hash of (seed, prompt), so the split does not depend on the file's
    order and a prompt stays on its side when more data is added."""
    if not 0.0 < eval_fraction < 1.0:
        raise TrainError(
            f"--eval-fraction must be between 0 and 1 (exclusive), not {eval_fraction}"
        )
    groups: dict[str, list[G]] = defaultdict(list)
    for pair in pairs:
        groups[pair.group].append(pair)
    if len(groups) < 2:
        raise TrainError(
            f"all {len(pairs)} {noun} answer one prompt: nothing can be held out without that "
            f"prompt being on both sides; add {noun} of other prompts"
        )
    order = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}\0{g}".encode()).digest())
    target = max(1, round(eval_fraction * len(pairs)))
    held_out: list[G] = []
    chosen_groups = set()
    for group in order[:-1]:  # the last prompt always trains
        if len(held_out) >= target:
            break
        held_out.extend(groups[group])
        chosen_groups.add(group)
    train = [p for p in pairs if p.group not in chosen_groups]
    return Split(train=train, held_out=held_out)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
