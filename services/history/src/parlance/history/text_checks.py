"""Text every database can store: no U+0000 and no lone surrogates, in any field.

PostgreSQL's text type cannot hold U+0000 at all, and UTF-8 (so protobuf and both databases)
cannot carry a lone surrogate. Such a value is refused up front with InvalidArgument, the
caller's mistake, instead of failing inside the database, where the error would read as
"database unavailable" and be retried forever.
"""

from __future__ import annotations

import re

from parlance.common.errors import InvalidArgument

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(value: str) -> bool:
    """Whether the text holds a character no backend can store."""
    return _UNSTORABLE.search(value) is not None


def check_text(value: str | None, param: str) -> None:
    """Raises InvalidArgument when `value` holds U+0000 or a lone surrogate."""
    if value and unstorable(value):
        raise InvalidArgument(
            f"{param} contains U+0000 or an unpaired surrogate, which cannot be stored",
            param=param,
        )


# Intents and implicit-feedback kinds: short tokens that are safe in a URL, a metric label and
# a log line.
_TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def check_token(value: str, param: str) -> None:
    """Raises InvalidArgument unless `value` is empty or a token (1-64 characters from
    [A-Za-z0-9_.:-]: every intent route name the gateway accepts is one)."""
    if value and _TOKEN.fullmatch(value) is None:
        raise InvalidArgument(
            f"{param} must be 1-64 characters from [A-Za-z0-9_.:-]",
            param=param,
        )
