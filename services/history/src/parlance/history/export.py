"""Training data from the users' feedback, in the formats TRL's trainers read. Pure functions.

SFT (SFTTrainer, conversational): {"messages": [...the path from the root to a positively
rated answer, that answer included]}. Preference (DPOTrainer, conversational, explicit prompt):
{"prompt": [...], "chosen": [answer], "rejected": [answer]}, from sibling answers rated +1 and
-1, or from an answer the user corrected (the correction chosen, the original rejected).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from parlance.history.domain import ExportFilter, ExportMessage


def is_flagged(moderation_json: str) -> bool:
    """Whether any verdict in the message's moderation JSON says flagged (the object may hold
    one verdict or several, nested by direction or as a list)."""
    if not moderation_json:
        return False
    try:
        verdicts = json.loads(moderation_json)
    except ValueError:
        # Unreadable verdicts cannot vouch for the text: treat as flagged, never export it.
        return True
    stack: list[Any] = [verdicts]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("flagged") is True:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


class _Conversation:
    def __init__(self, messages: Iterable[ExportMessage]) -> None:
        self.nodes = {m.id: m for m in messages}
        self.children: dict[str | None, list[ExportMessage]] = defaultdict(list)
        for m in sorted(self.nodes.values(), key=lambda m: (m.created_at, m.id)):
            self.children[m.parent_id].append(m)

    def path(self, message_id: str | None) -> list[dict[str, str]]:
        """Root first, down to message_id included ([] for None)."""
        turns: list[dict[str, str]] = []
        seen: set[str] = set()
        current = message_id
        while current is not None and current in self.nodes and current not in seen:
            seen.add(current)
            node = self.nodes[current]
            turns.append(_turn(node.role, node.content))
            current = node.parent_id
        turns.reverse()
        return turns


def _in_window(message: ExportMessage, flt: ExportFilter) -> bool:
    if flt.since is not None and message.created_at < flt.since:
        return False
    return flt.until is None or message.created_at < flt.until


def _model_ok(flt: ExportFilter, *messages: ExportMessage) -> bool:
    return not flt.model or any(m.model == flt.model for m in messages)


def records(messages: Iterable[ExportMessage], flt: ExportFilter) -> list[dict[str, Any]]:
    """The training records of one conversation (all its messages, any branch)."""
    messages = list(messages)
    if any(is_flagged(m.moderation_json) for m in messages):
        return []
    conv = _Conversation(messages)
    answers = [m for group in conv.children.values() for m in group if m.role == "assistant"]
    answers.sort(key=lambda m: (m.created_at, m.id))
    out: list[dict[str, Any]] = []
    if flt.kind in ("all", "sft"):
        for answer in answers:
            if answer.rating == 1 and _in_window(answer, flt) and _model_ok(flt, answer):
                out.append({"messages": conv.path(answer.id)})
    if flt.kind in ("all", "preference"):
        for parent_id, group in conv.children.items():
            prompt = conv.path(parent_id)
            rated = [m for m in group if m.role == "assistant"]
            chosen = [m for m in rated if m.rating == 1]
            rejected = [m for m in rated if m.rating == -1]
            if not prompt:
                continue
            for good in chosen:
                for bad in rejected:
                    # A pair dates from its newer answer.
                    newer = max(good, bad, key=lambda m: (m.created_at, m.id))
                    if _in_window(newer, flt) and _model_ok(flt, good, bad):
                        out.append(_pair(prompt, good.content, bad.content))
            for answer in rated:
                corrected = answer.corrected_content.strip()
                if corrected and corrected != answer.content.strip():
                    if _in_window(answer, flt) and _model_ok(flt, answer):
                        out.append(_pair(prompt, answer.corrected_content, answer.content))
    return out


def _pair(prompt: list[dict[str, str]], chosen: str, rejected: str) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "chosen": [_turn("assistant", chosen)],
        "rejected": [_turn("assistant", rejected)],
    }
