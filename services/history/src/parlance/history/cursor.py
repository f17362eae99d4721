"""Opaque cursors of the conversation list: the (updated_at, id) of a page's last row."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from parlance.common.errors import InvalidArgument
from parlance.history.domain import ConversationRecord


def encode_cursor(last: ConversationRecord) -> str:
    payload = json.dumps([last.updated_at.isoformat(), last.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        updated_at, last_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        when = datetime.fromisoformat(updated_at)
        if when.tzinfo is None or not isinstance(last_id, str):
            raise ValueError("malformed cursor")
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidArgument("invalid cursor", param="cursor") from exc
    return when, last_id
